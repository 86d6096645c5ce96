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

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope.get("path") != "/readyz":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracked), READY_ANSWER_S)
        except TimeoutError:
            if not started:
                await errors.not_ready(f"the model service did not answer in {READY_ANSWER_S} s")(scope, receive, send)
