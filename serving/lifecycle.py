"""A request's and a worker's life around the guards: hang-ups, draining on SIGTERM, readiness, idle connections.

`Lifecycle` is one ASGI middleware, added outermost to both services (service.py):

- **Hang-ups** (the front only): once a request's body is read, the server's next message can only be the client's
  disconnect. When it comes before the response starts, the request's task is cancelled, and PageDrawer tells the
  model service the page is abandoned (serving/drawing.py). uvicorn, Starlette and BentoML cancel nothing by
  themselves: without this, a page whose client left was drawn to the end while the next client waited.
- **Draining**: SIGTERM no longer stops the worker at once. The front answers new work 503 with `Retry-After` (and
  `Connection: close`), `/readyz` 503, and lets the requests in flight finish; then uvicorn's own shutdown runs. The
  model service keeps serving until nothing is in flight and no connection is open, i.e. until its front has
  finished (the front's pages reach it after their pictures are decoded) or gone quiet (uvicorn closes idle
  keep-alive connections after 5 s).
- **Readiness answers fast**: `/readyz` asks the model service (BentoML's probe waits up to 5 s on it, longer than
  a probe's usual timeout while the model worker restarts); past READY_ANSWER_S it answers 503 instead.
- **Idle connections** (`bound_connections`): a connection must deliver a request's headers within
  `header_timeout_s`, and at most `max_connections` are open per worker. uvicorn closes a connection only after
  it has sent a response (keep-alive), so one that sends nothing, or its headers a byte at a time, stayed open
  forever; and BentoML passes neither `limit_concurrency` nor a header timeout to uvicorn.
"""

from __future__ import annotations

import asyncio
import logging
import signal

from .guards import Receive, Scope, Send, is_open, send_json

log = logging.getLogger(__name__)
READY_ANSWER_S = 2.0  # well inside a readiness probe's timeout (deploy/k8s: 5 s)


class Lifecycle:
    def __init__(
        self,
        app,
        *,
        public: bool,
        retry_after_s: int,
        header_timeout_s: float,
        max_connections: int,
    ):
        """`public`: the front (refuses new work while draining, cancels hung-up requests); otherwise the internal
        model service (serves its front to the end)."""
        self.app = app
        self.public = public
        self.retry_after = str(retry_after_s).encode()
        self.header_timeout_s = header_timeout_s
        self.max_connections = max_connections
        self.in_flight = 0
        self.draining = False
        self.connections: OpenConnections | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            self.connections = bound_connections(self.header_timeout_s, self.max_connections)
            self.drain_on_sigterm()
            await self.app(scope, receive, send)
        elif scope["type"] != "http":
            await self.app(scope, receive, send)
        elif scope.get("path") == "/readyz":
            await self.readiness(scope, receive, send)
        elif is_open(scope):
            await self.app(scope, receive, send)
        elif self.draining and self.public:
            await send_json(
                send,
                503,
                {"error": "shutting down; retry on another replica"},
                [(b"retry-after", self.retry_after), (b"connection", b"close")],
            )
        else:
            self.in_flight += 1
            try:
                if self.public and scope["method"] == "POST":
                    await cancel_on_hang_up(self.app, scope, receive, send)
                else:
                    await self.app(scope, receive, send)
            finally:
                self.in_flight -= 1

    async def readiness(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.draining:
            await send_json(send, 503, {"error": "shutting down"})
            return
        started = False

        async def tracked(message: dict) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await asyncio.wait_for(self.app(scope, receive, tracked), READY_ANSWER_S)
        except TimeoutError:
            if not started:
                await send_json(send, 503, {"error": f"the model service did not answer in {READY_ANSWER_S} s"})

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


async def cancel_on_hang_up(app, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app`, cancelled if the client disconnects after sending its body and before the response starts."""
    body_read = asyncio.Event()
    hung_up = asyncio.Event()
    responding = False

    async def app_receive() -> dict:
        if body_read.is_set():  # from here on the watcher below is the one reader
            await hung_up.wait()
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.disconnect":
            hung_up.set()
        elif not message.get("more_body", False):
            body_read.set()
        return message

    async def app_send(message: dict) -> None:
        nonlocal responding
        responding = True
        await send(message)

    task = asyncio.ensure_future(app(scope, app_receive, app_send))

    async def watch() -> None:
        await body_read.wait()
        while (await receive())["type"] != "http.disconnect":  # after the body, only the disconnect matters
            pass
        hung_up.set()
        if not responding:
            task.cancel()

    watcher = asyncio.ensure_future(watch())
    try:
        await task
    except asyncio.CancelledError:
        if not task.cancelled():  # we were cancelled ourselves, not by the hang-up
            task.cancel()
            raise
        log.warning("%s %s: the client hung up; request cancelled", scope["method"], scope["path"])
        # Nobody reads it (uvicorn drops it), but BentoML's TimeoutMiddleware, outside this one, waits for a
        # response until the request timeout, and uvicorn's shutdown waits for that. 499: nginx's "client closed".
        await send_json(send, 499, {"error": "the client closed the connection"})
    finally:
        watcher.cancel()


def bound_connections(header_timeout_s: float, max_connections: int) -> OpenConnections:
    """Bound uvicorn's connections in this process: refuse past `max_connections` open ones, and close one that
    has not delivered a request's headers `header_timeout_s` after it opened or after its last response.

    A small patch of uvicorn's HTTP protocol classes (their `connection_made`), because BentoML builds uvicorn's
    Config itself and exposes no header timeout or connection limit. It reads `loop`, `transport`, `cycle`,
    `cycle.response_complete` and `connections` from the protocol; tests/test_lifecycle.py fails if they change."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    classes = [H11Protocol]
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:  # httptools not installed: uvicorn speaks h11
        pass
    else:
        classes.append(HttpToolsProtocol)
    OpenConnections.header_timeout_s, OpenConnections.most = header_timeout_s, max_connections
    for cls in classes:
        if not hasattr(cls, "_unbounded_connection_made"):
            cls._unbounded_connection_made = cls.connection_made
            cls.connection_made = _connection_made
    return OpenConnections()


class OpenConnections:
    """uvicorn's open connections in this process (its server's set, seen from the first connection on)."""

    header_timeout_s: float
    most: int
    seen: set | None = None

    def __bool__(self) -> bool:
        return bool(OpenConnections.seen)


def _connection_made(protocol, transport) -> None:
    type(protocol)._unbounded_connection_made(protocol, transport)
    OpenConnections.seen = protocol.connections
    if len(protocol.connections) > OpenConnections.most:
        log.warning("more than %d connections open: closing a new one", OpenConnections.most)
        transport.close()
        return
    protocol.loop.call_later(OpenConnections.header_timeout_s, _close_if_no_headers, protocol, None)


def _close_if_no_headers(protocol, last_cycle) -> None:
    transport = protocol.transport
    if transport is None or transport.is_closing():
        return
    cycle = protocol.cycle
    waiting_for_headers = cycle is None or cycle.response_complete
    if waiting_for_headers and cycle is last_cycle:  # and no new request began since the last look
        transport.close()
        return
    protocol.loop.call_later(OpenConnections.header_timeout_s, _close_if_no_headers, protocol, cycle)
