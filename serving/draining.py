"""Draining on SIGTERM: the worker stops taking work and finishes what it has before uvicorn's own shutdown runs.

The front answers new work 503 with `Retry-After` (and `Connection: close`) and `/readyz` 503, and lets the
requests in flight finish. The model service keeps serving until nothing is in flight and no connection is open:
until its front has finished, or gone quiet (uvicorn closes idle keep-alive connections after 5 s).
"""

from __future__ import annotations

import asyncio
import logging
import signal

from starlette.types import ASGIApp, Receive, Scope, Send

from . import errors
from .connections import OpenConnections
from .guards import is_open

log = logging.getLogger(__name__)


class Draining:
    """ASGI middleware, outermost. `public`: the front (refuses new work while draining); otherwise the internal
    model service (serves its front to the end, then waits for `connections` to close)."""

    def __init__(self, app: ASGIApp, *, public: bool, retry_after_s: int, connections: OpenConnections | None = None):
        self.app = app
        self.public = public
        self.retry_after_s = retry_after_s
        self.connections = connections
        self.in_flight = 0
        self.draining = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.drain_on_sigterm()
            await self.app(scope, receive, send)
        elif scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope.get("path") == "/readyz" and self.draining:
            await errors.not_ready("shutting down")(scope, receive, send)
        elif is_open(scope):
            await self.app(scope, receive, send)
        elif self.draining and self.public:
            await errors.shutting_down(self.retry_after_s)(scope, receive, send)
        else:
            self.in_flight += 1
            try:
                await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1

    def drain_on_sigterm(self) -> None:
        """Chain before uvicorn's SIGTERM handler (installed before the lifespan starts): drain, then hand on."""
        loop = asyncio.get_running_loop()
        hand_on = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame) -> None:
            if self.draining:  # a second SIGTERM: stop waiting
                hand_on_now(signum)
                return
            self.draining = True
            loop.call_soon_threadsafe(loop.create_task, self.drain_then(hand_on_now, signum))

        def hand_on_now(signum) -> None:
            if callable(hand_on):
                hand_on(signum, None)
            else:  # no Python handler before ours: restore the default and let it act
                signal.signal(signal.SIGTERM, hand_on)
                signal.raise_signal(signum)

        signal.signal(signal.SIGTERM, on_sigterm)

    async def drain_then(self, hand_on, signum) -> None:
        log.warning("SIGTERM: draining %d request(s) in flight", self.in_flight)
        while self.in_flight or (not self.public and self.connections):
            await asyncio.sleep(0.1)
        log.warning("drained; shutting down")
        hand_on(signum)
