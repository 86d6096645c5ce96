"""ASGI guards in front of the model: who may call, what they may send, and how many at once.

ASGI middleware in Starlette's types (no BentoML import), added to the services with `add_asgi_middleware`. Each
guard answers with one of serving/errors.py's answers before the request body is read whole, so a refused request
costs almost nothing. Every guard reads its headers through `headers_of`: each header a guard or BentoML decides on
has one value, or the request is refused.
"""

from __future__ import annotations

import asyncio
import hmac

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors

# Health, readiness, metrics and the API docs stay open: probes and scrapers carry no key and are never throttled.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/", "/docs.json", "/schema.json"})
# The headers some guard or BentoML's request parsing acts on, that the HTTP parser lets through twice: each may
# appear once. Content-Length and Transfer-Encoding are not here: h11, uvicorn's parser here, refuses conflicting
# Content-Lengths and a repeated Transfer-Encoding itself and folds identical Content-Lengths into one
# (tests/test_hardening.py shows it over TCP). httptools would not: tests/test_framework.py keeps it uninstalled,
# and serving/framework.py refuses to start where uvicorn would pick another parser.
DECISIVE_HEADERS = ("authorization", "content-type")
MIB = 1024 * 1024


def is_open(scope: Scope) -> bool:
    # CORS preflights carry no credentials by design; BentoML's CORS middleware (inside these guards) answers them.
    if scope.get("method") == "OPTIONS":
        return True
    path = scope.get("path", "")
    # The studio's static files hold no data; its API calls carry the key like any other client's.
    return path in OPEN_PATHS or path.startswith(("/static_content/", "/studio/")) or path == "/studio"


def is_event_stream(scope: Scope) -> bool:
    """`GET /books/{id}/events`: open for a whole book and drawing nothing (it waits on the book store). Held in an
    admission slot, one watching client would take the slot for minutes, and the studio, which fetches each page's
    picture while its stream is open, would be refused its own pictures on a server with one slot."""
    path = scope.get("path", "")
    return scope.get("method") == "GET" and path.startswith("/books/") and path.endswith("/events")


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` for an app after a guard read the whole body: the body once, then the server's own messages."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if replayed:
            return await receive()  # after the body: wait for the disconnect, as the server would
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class DuplicateHeader(ValueError):
    """A decisive header given twice, or a body framed both by Content-Length and by Transfer-Encoding."""

    def __init__(self, name: str):
        super().__init__(name)
        self.name = name.title()


def headers_of(scope: Scope) -> Headers:
    """The request's headers (Starlette's, which read the first value); raises DuplicateHeader when one of
    DECISIVE_HEADERS appears more than once, or the body is framed both ways.

    A guard reading one value and BentoML the other is how a pickle once got past the check (`dict(scope["headers"])`
    keeps the last value, Starlette's `request.headers` the first)."""
    headers = Headers(scope=scope)
    for name in DECISIVE_HEADERS:
        if len(headers.getlist(name)) > 1:
            raise DuplicateHeader(name)
    # RFC 9112 §6.1: such a request may be refused, and its connection must be closed either way (a proxy in front
    # may have framed the body by the other header). h11 lets it through, reading Transfer-Encoding.
    if "transfer-encoding" in headers and "content-length" in headers:
        raise DuplicateHeader("content-length")
    return headers


def media_type(headers: Headers) -> str | None:
    """The Content-Type without parameters, parsed as BentoML parses it (then lower-cased); None when absent."""
    value = headers.get("content-type")
    return None if value is None else value.split(";")[0].strip().lower()


async def checked_headers(scope: Scope, receive: Receive, send: Send) -> Headers | None:
    """`headers_of`, or None after answering 400 to a duplicated decisive header."""
    try:
        return headers_of(scope)
    except DuplicateHeader as error:
        await errors.ambiguous_header(error.name)(scope, receive, send)
        return None


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on every route but the open ones; the scheme is case-insensitive (RFC 9110
    §11.1), the key compared in constant time."""

    def __init__(self, app: ASGIApp, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = await checked_headers(scope, receive, send)
            if headers is None:
                return
            if not is_open(scope) and not self.authorized(headers.get("authorization", "").encode("latin-1")):
                await errors.missing_api_key()(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def authorized(self, given: bytes) -> bool:
        scheme, _, token = given.partition(b" ")
        # compare_digest first, so the time taken does not depend on whether the scheme matched
        return hmac.compare_digest(token.lstrip(b" "), self.key) and scheme.lower() == b"bearer"


class AdmissionLimit:
    """At most `limit` requests in flight; the next ones get 429 with Retry-After at once instead of queueing.

    Placed inside JsonBodyOnly, so a request takes a slot only once its body has arrived: slow senders hold none."""

    def __init__(self, app: ASGIApp, limit: int, retry_after_s: int):
        self.app = app
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope) or is_event_stream(scope):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            message = f"too many requests in flight (limit {self.limit}); retry later"
            await errors.too_many(message, self.retry_after_s)(scope, receive, send)
            return
        # The slot is held until the response is sent, not until the app returns: a BentoML task (a book job) runs
        # after its submit answer inside the same ASGI call, and must not hold a slot for its whole duration.
        self.in_flight += 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                self.in_flight -= 1

        async def send_then_release(message: Message) -> None:
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body", False):
                release()

        try:
            await self.app(scope, receive, send_then_release)
        finally:
            release()


class JsonBodyOnly:
    """POST bodies must be JSON (415 otherwise), no larger than `max_bytes` (413, decided before reading when the
    length is declared), and keep arriving: within `min_read_s` plus `read_s_per_mib` for every MiB received so far
    (408 otherwise, so declaring a large body buys a trickling sender nothing). Bodies being received hold at most
    `max_buffered_bytes` together (429 beyond: it bounds their memory as admission did before, while slow senders,
    holding a few bytes each, block nobody). The body is read whole here and handed on, so what is inside
    (admission, the API) never waits on a slow sender."""

    def __init__(
        self,
        app: ASGIApp,
        max_bytes: int,
        min_read_s: float,
        read_s_per_mib: float,
        max_buffered_bytes: int,
        retry_after_s: int,
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.min_read_s = min_read_s
        self.read_s_per_mib = read_s_per_mib
        self.max_buffered_bytes = max_buffered_bytes
        self.retry_after_s = retry_after_s
        self.buffered = 0  # bytes of all bodies being received

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = await checked_headers(scope, receive, send)
        if headers is None:
            return
        if scope["method"] != "POST" or is_open(scope):
            await self.app(scope, receive, send)
            return
        if media_type(headers) != "application/json":
            await errors.not_json()(scope, receive, send)
            return
        declared = headers.get("content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await errors.body_too_large(self.max_bytes)(scope, receive, send)
            return
        body = await self.read_body(scope, receive, send)
        if body is None:
            return
        await self.app(scope, replaying(body, receive), send)

    async def read_body(self, scope: Scope, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once the request has been answered (413, 408, 429, or the client has gone).

        A chunked body has no Content-Length: it is counted as it arrives. (The API reads the body whole anyway,
        so buffering it here costs no extra memory.)"""
        chunks: list[bytes] = []
        try:
            return await self._read(scope, receive, send, chunks)
        finally:
            self.buffered -= sum(len(chunk) for chunk in chunks)

    async def _read(self, scope: Scope, receive: Receive, send: Send, chunks: list[bytes]) -> bytes | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        size = 0
        while True:
            allowed = self.min_read_s + self.read_s_per_mib * size / MIB
            try:
                message = await asyncio.wait_for(receive(), started + allowed - loop.time())
            except TimeoutError:
                await errors.body_too_slow(size, allowed)(scope, receive, send)
                return None
            if message["type"] == "http.disconnect":
                # Nobody will read this answer, but the request must end with one: BentoML's TimeoutMiddleware
                # (outside these guards) waits for the first message sent, and until then a client that left
                # mid-body kept the worker from stopping on SIGTERM.
                await errors.client_left_mid_body()(scope, receive, send)
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await errors.body_too_large(self.max_bytes)(scope, receive, send)
                return None
            if self.buffered + len(chunk) > self.max_buffered_bytes:
                message = "too many request bodies arriving at once; retry later"
                await errors.too_many(message, self.retry_after_s, close=True)(scope, receive, send)
                return None
            chunks.append(chunk)
            self.buffered += len(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)


class RefusePickledBodies:
    """For the internal model service: bodies are JSON (or untyped, which BentoML reads as JSON), never BentoML's
    pickle media type nor anything else it would parse differently, so nothing is ever unpickled."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = await checked_headers(scope, receive, send)
            if headers is None:
                return
            if media_type(headers) not in (None, "application/json"):
                await errors.pickle_refused()(scope, receive, send)
                return
        await self.app(scope, receive, send)
