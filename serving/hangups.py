"""Hang-ups (the front only): a request whose client disconnects after sending its body, before the response
starts, is cancelled, and PageDrawer tells the model service the page is abandoned (serving/drawing.py).

Once a request's body is read, the server's next message can only be the client's disconnect. uvicorn, Starlette
and BentoML cancel nothing by themselves: without this, a page whose client left was drawn to the end while the
next client waited.
"""

from __future__ import annotations

import asyncio
import logging

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from . import errors
from .guards import is_open

log = logging.getLogger(__name__)


class CancelOnHangUp:
    """ASGI middleware for the front's POSTs (open routes pass untouched)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not is_open(scope):
            await cancel_on_hang_up(self.app, scope, receive, send)
        else:
            await self.app(scope, receive, send)


async def cancel_on_hang_up(app: ASGIApp, scope: Scope, receive: Receive, send: Send) -> None:
    """Run `app`, cancelled if the client disconnects after sending its body and before the response starts."""
    body_read = asyncio.Event()
    hung_up = asyncio.Event()
    responding = False

    async def app_receive() -> Message:
        if body_read.is_set():  # from here on the watcher below is the one reader
            await hung_up.wait()
            return {"type": "http.disconnect"}
        message = await receive()
        if message["type"] == "http.disconnect":
            hung_up.set()
        elif not message.get("more_body", False):
            body_read.set()
        return message

    async def app_send(message: Message) -> None:
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
        # response until the request timeout, and uvicorn's shutdown waits for that.
        await errors.client_closed()(scope, receive, send)
    finally:
        watcher.cancel()
