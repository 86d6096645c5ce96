"""ASGI guards in front of the model: who may call, what they may send, and how many at once.

Plain ASGI (no BentoML import), added to the front service with `add_asgi_middleware`. Each guard answers with a
JSON error before the request body is read whole, so a refused request costs almost nothing.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Awaitable, Callable

Scope = dict
Receive = Callable[[], Awaitable[dict]]
Send = Callable[[dict], Awaitable[None]]

# Health, readiness, metrics and the API docs stay open: probes and scrapers carry no key and are never throttled.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz", "/metrics", "/", "/docs.json", "/schema.json"})


def is_open(scope: Scope) -> bool:
    # CORS preflights carry no credentials by design; BentoML's CORS middleware (inside these guards) answers them.
    if scope.get("method") == "OPTIONS":
        return True
    path = scope.get("path", "")
    # The studio's static files hold no data; its API calls carry the key like any other client's.
    return path in OPEN_PATHS or path.startswith(("/static_content/", "/studio/")) or path == "/studio"


async def send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] = ()) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"application/json"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": json.dumps(body).encode()})


class ApiKeyAuth:
    """`Authorization: Bearer <key>` on every route but the open ones, compared in constant time."""

    def __init__(self, app, api_key: str):
        self.app = app
        self.expected = f"Bearer {api_key}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not is_open(scope):
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self.expected):
                await send_json(
                    send,
                    401,
                    {"error": "missing or wrong API key", "detail": [{"loc": ["header", "Authorization"]}]},
                    [(b"www-authenticate", b"Bearer")],
                )
                return
        await self.app(scope, receive, send)


class AdmissionLimit:
    """At most `limit` requests in flight; the next ones get 429 with Retry-After at once instead of queueing."""

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
    """POST bodies must be JSON (415 otherwise) and no larger than `max_bytes` (413, decided before reading)."""

    def __init__(self, app, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or is_open(scope):
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])
        media_type = headers.get(b"content-type", b"").split(b";")[0].strip().lower()
        if media_type != b"application/json":
            await send_json(
                send,
                415,
                {"error": "the body must be application/json", "detail": [{"loc": ["header", "Content-Type"]}]},
            )
            return
        declared = headers.get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await send_json(send, 413, {"error": f"the body is larger than {self.max_bytes} bytes"})
            return

        # A chunked body has no Content-Length: read it here, up to the limit, then hand it on. (The API reads
        # the body whole anyway, so buffering it first costs no extra memory.)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > self.max_bytes:
                await send_json(send, 413, {"error": f"the body is larger than {self.max_bytes} bytes"})
                return
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> dict:
            nonlocal replayed
            if replayed:
                return await receive()  # after the body: wait for the disconnect, as the server would
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)


class RefusePickledBodies:
    """For the internal model service: JSON only, never BentoML's pickle media type, so nothing is unpickled."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and b"pickle" in dict(scope["headers"]).get(b"content-type", b""):
            await send_json(send, 415, {"error": "pickled request bodies are refused"})
            return
        await self.app(scope, receive, send)
