"""Idle connections: a connection must deliver a request's headers within `header_timeout_s` (from opening, or from
its last response), and at most `most` are open per worker. serving/framework.py hands uvicorn's new connections
here (`bound_connections`); the model service's draining waits until none is open (serving/draining.py)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class OpenConnections:
    """uvicorn's open connections in this process (its server's set, seen from the first connection on).

    Reads `loop`, `transport`, `cycle`, `cycle.response_complete` and `connections` from uvicorn's h11 protocol:
    serving/framework.py's `check_uvicorn_protocol` fails at start if they change."""

    def __init__(self, header_timeout_s: float, most: int):
        self.header_timeout_s = header_timeout_s
        self.most = most
        self.seen: set | None = None

    def __bool__(self) -> bool:
        return bool(self.seen)

    def opened(self, protocol, transport) -> None:
        """A connection was just made (after uvicorn's own `connection_made`)."""
        self.seen = protocol.connections
        if len(protocol.connections) > self.most:
            log.warning("more than %d connections open: closing a new one", self.most)
            transport.close()
            return
        protocol.loop.call_later(self.header_timeout_s, self._close_if_no_headers, protocol, None)

    def _close_if_no_headers(self, protocol, last_cycle) -> None:
        transport = protocol.transport
        if transport is None or transport.is_closing():
            return
        cycle = protocol.cycle
        waiting_for_headers = cycle is None or cycle.response_complete
        if waiting_for_headers and cycle is last_cycle:  # and no new request began since the last look
            transport.close()
            return
        protocol.loop.call_later(self.header_timeout_s, self._close_if_no_headers, protocol, cycle)
