"""`/readyz` answers fast: it asks the model service, and past READY_ANSWER_S it answers 503 instead of waiting.

BentoML's probe waits up to 5 s on the model service, longer than a probe's usual timeout while the model worker
restarts.
"""

from __future__ import annotations

import asyncio

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors

READY_ANSWER_S = 2.0  # well inside a readiness probe's timeout (deploy/k8s: 5 s)


class FastReadiness:
    """ASGI middleware, inside Draining (which answers /readyz itself while draining)."""

    def __init__(self, app: ASGIApp, moderation: bool | None = None, books=None):
        self.app = app
        # Shown on every /readyz answer: whether user texts pass the moderation model (PICTUREBOOK_MODERATION).
        self.headers = [] if moderation is None else [(b"x-picturebook-moderation", b"on" if moderation else b"off")]
        # And where books are kept, and whether that store answers (`X-Picturebook-Books`). Books unavailable do not
        # make the replica unready: /generate does not need them.
        self.books = books

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/readyz":
            await self.app(scope, receive, send)
            return
        started = False
        headers = self.headers
        if self.books is not None:
            headers = [*headers, (b"x-picturebook-books", (await self.books.health()).encode())]

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and headers:
                message = {**message, "headers": [*message.get("headers", []), *headers]}
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracked), READY_ANSWER_S)
        except TimeoutError:
            if not started:
                answer = errors.not_ready(f"the model service did not answer in {READY_ANSWER_S} s")
                await answer(scope, receive, tracked)
