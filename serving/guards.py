"""ASGI guards in front of the model: who may call, what they may send, and how many at once.

Plain ASGI (no BentoML import), added to the services with `add_asgi_middleware`. Each guard answers with a JSON
error before the request body is read whole, so a refused request costs almost nothing.

Every guard reads its headers through `headers_of`, which refuses a request carrying two values of a header that a
guard or BentoML decides on: a guard reading one value and BentoML the other is how a pickle once got past the check
(`dict(scope["headers"])` keeps the last value, Starlette's `request.headers` the first).
"""

from __future__ import annotations

import asyncio
import hmac
import json
from collections.abc import Awaitable, Callable

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# Health, readiness, metrics and the API docs stay open: probes and scrapers carry no key and are never throttled.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/", "/docs.json", "/schema.json"})
# The headers some guard or BentoML's request parsing acts on: each may appear once.
DECISIVE_HEADERS = (b"authorization", b"content-type", b"content-length", b"transfer-encoding")
MIB = 1024 * 1024


def is_open(scope: Scope) -> bool:
    # CORS preflights carry no credentials by design; BentoML's CORS middleware (inside these guards) answers them.
    if scope.get("method") == "OPTIONS":
        return True
    path = scope.get("path", "")
    # The studio's static files hold no data; its API calls carry the key like any other client's.
    return path in OPEN_PATHS or path.startswith(("/static_content/", "/studio/")) or path == "/studio"


def replaying(body: bytes, receive: Receive) -> Receive:
    """A `receive` for an app after a guard read the whole body: the body once, then the server's own messages."""
    replayed = False

    async def replay() -> dict:
        nonlocal replayed
        if replayed:
            return await receive()  # after the body: wait for the disconnect, as the server would
        replayed = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class DuplicateHeader(ValueError):
    """A decisive header given twice, or a body framed both by Content-Length and by Transfer-Encoding."""

    def __init__(self, name: bytes):
        super().__init__(name.decode("latin-1"))
        self.name = name.decode("latin-1").title()


def headers_of(scope: Scope) -> dict[bytes, bytes]:
    """The request's headers by (lower-case) name, keeping the first value as Starlette does; raises DuplicateHeader
    when one of DECISIVE_HEADERS appears more than once."""
    headers: dict[bytes, bytes] = {}
    for name, value in scope["headers"]:
        if name in headers:
            if name in DECISIVE_HEADERS:
                raise DuplicateHeader(name)
            continue
        headers[name] = value
    # RFC 9112 §6.1: such a request may be refused, and its connection must be closed either way (a proxy in front
    # may have framed the body by the other header).
    if b"transfer-encoding" in headers and b"content-length" in headers:
        raise DuplicateHeader(b"content-length")
    return headers


def media_type(headers: dict[bytes, bytes]) -> bytes | None:
    """The Content-Type without parameters, parsed as BentoML parses it (then lower-cased); None when absent."""
    value = headers.get(b"content-type")
    return None if value is None else value.split(b";")[0].strip().lower()


async def send_json(send: Send, status: int, body: dict | bytes, headers: list[tuple[bytes, bytes]] = ()) -> None:
    """A JSON answer: `body` as a dict, or as JSON already serialised."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body if isinstance(body, bytes) else json.dumps(body).encode()})


async def checked_headers(scope: Scope, send: Send) -> dict[bytes, bytes] | None:
    """`headers_of`, or None after answering 400 to a duplicated decisive header."""
    try:
        return headers_of(scope)
    except DuplicateHeader as error:
        await send_json(
            send,
            400,
            {
                "error": f"the {error.name} header is ambiguous: sent twice, or with Transfer-Encoding",
                "detail": [{"loc": ["header", error.name]}],
            },
            [(b"connection", b"close")],
        )
        return None


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on every route but the open ones; the scheme is case-insensitive (RFC 9110
    §11.1), the key compared in constant time."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.key = api_key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = await checked_headers(scope, send)
            if headers is None:
                return
            if not is_open(scope) and not self.authorized(headers.get(b"authorization", b"")):
                await send_json(
                    send,
                    401,
                    {"error": "missing or wrong API key", "detail": [{"loc": ["header", "Authorization"]}]},
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        await self.app(scope, receive, send)

    def authorized(self, given: bytes) -> bool:
        scheme, _, token = given.partition(b" ")
        # compare_digest first, so the time taken does not depend on whether the scheme matched
        return hmac.compare_digest(token.lstrip(b" "), self.key) and scheme.lower() == b"bearer"


class AdmissionLimit:
    """At most `limit` requests in flight; the next ones get 429 with Retry-After at once instead of queueing.

    Placed inside JsonBodyOnly, so a request takes a slot only once its body has arrived: slow senders hold none."""

    def __init__(self, app, limit: int, retry_after_s: int):
        self.app = app
        self.limit = limit
        self.retry_after = str(retry_after_s).encode()
        self.in_flight = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or is_open(scope):
            await self.app(scope, receive, send)
            return
        if self.in_flight >= self.limit:
            await send_json(
                send,
                429,
                {"error": f"too many requests in flight (limit {self.limit}); retry later"},
                [(b"retry-after", self.retry_after)],
            )
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

        async def send_then_release(message: dict) -> None:
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
        self, app, max_bytes: int, min_read_s: float, read_s_per_mib: float, max_buffered_bytes: int, retry_after_s: int
    ):
        self.app = app
        self.max_bytes = max_bytes
        self.min_read_s = min_read_s
        self.read_s_per_mib = read_s_per_mib
        self.max_buffered_bytes = max_buffered_bytes
        self.retry_after = str(retry_after_s).encode()
        self.buffered = 0  # bytes of all bodies being received

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = await checked_headers(scope, send)
        if headers is None:
            return
        if scope["method"] != "POST" or is_open(scope):
            await self.app(scope, receive, send)
            return
        if media_type(headers) != b"application/json":
            await send_json(
                send,
                415,
                {"error": "the body must be application/json", "detail": [{"loc": ["header", "Content-Type"]}]},
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self.too_large(send)
            return
        body = await self.read_body(receive, send)
        if body is None:
            return
        await self.app(scope, replaying(body, receive), send)

    async def read_body(self, receive: Receive, send: Send) -> bytes | None:
        """The whole body, or None once the request has been answered (413, 408, 429, or the client has gone).

        A chunked body has no Content-Length: it is counted as it arrives. (The API reads the body whole anyway,
        so buffering it here costs no extra memory.)"""
        chunks: list[bytes] = []
        try:
            return await self._read(receive, send, chunks)
        finally:
            self.buffered -= sum(len(chunk) for chunk in chunks)

    async def _read(self, receive: Receive, send: Send, chunks: list[bytes]) -> bytes | None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        size = 0
        while True:
            allowed = self.min_read_s + self.read_s_per_mib * size / MIB
            try:
                message = await asyncio.wait_for(receive(), started + allowed - loop.time())
            except TimeoutError:
                await send_json(
                    send,
                    408,
                    {"error": f"the body did not arrive in time ({size} bytes in {allowed:.0f} s)"},
                    [(b"connection", b"close")],
                )
                return None
            if message["type"] == "http.disconnect":
                # Nobody will read this answer, but the request must end with one: BentoML's TimeoutMiddleware
                # (outside these guards) waits for the first message sent, and until then a client that left
                # mid-body kept the worker from stopping on SIGTERM.
                await send_json(send, 400, {"error": "the client left before sending the whole body"})
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                await self.too_large(send)
                return None
            if self.buffered + len(chunk) > self.max_buffered_bytes:
                await send_json(
                    send,
                    429,
                    {"error": "too many request bodies arriving at once; retry later"},
                    [(b"retry-after", self.retry_after), (b"connection", b"close")],
                )
                return None
            chunks.append(chunk)
            self.buffered += len(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    async def too_large(self, send: Send) -> None:
        await send_json(
            send, 413, {"error": f"the body is larger than {self.max_bytes} bytes"}, [(b"connection", b"close")]
        )


class RefusePickledBodies:
    """For the internal model service: bodies are JSON (or untyped, which BentoML reads as JSON), never BentoML's
    pickle media type nor anything else it would parse differently, so nothing is ever unpickled."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = await checked_headers(scope, send)
            if headers is None:
                return
            if media_type(headers) not in (None, b"application/json"):
                await send_json(send, 415, {"error": "request bodies must be application/json (pickles are refused)"})
                return
        await self.app(scope, receive, send)
