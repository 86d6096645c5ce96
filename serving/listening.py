"""Where the front listens (its port and CORS, for BentoML), and a warning at start when that is every interface
with no API key.

`bentoml serve` binds `0.0.0.0` unless given `--host` (a container needs that; a laptop may not want it), and
without `PICTUREBOOK_API_KEY` `/generate` then answers anyone who can reach the machine. BentoML binds the socket
in its arbiter and hands each worker the descriptor as `--fd N`: the worker reads its address from there.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import socket
import sys

log = logging.getLogger(__name__)


def http_config(settings) -> dict:
    """The front's `http` options: its port, and CORS for `PICTUREBOOK_CORS_ORIGINS` (off when there are none)."""
    return {
        "port": settings.port,
        "cors": {
            "enabled": bool(settings.cors_origins),
            "access_control_allow_origins": settings.cors_origins,
            "access_control_allow_methods": ["GET", "POST"],
            "access_control_allow_headers": ["Authorization", "Content-Type"],
        },
    }


def listening_address(argv: list[str] | None = None) -> tuple[str, int] | None:
    """(host, port) of the TCP socket this BentoML worker serves, or None (no `--fd`, or a Unix socket)."""
    argv = sys.argv if argv is None else argv
    try:
        fd = int(argv[argv.index("--fd") + 1])
        with socket.socket(fileno=os.dup(fd)) as sock:  # a duplicate: closing it leaves the server's socket open
            address = sock.getsockname()
    except (ValueError, IndexError, OSError):
        return None
    return (address[0], address[1]) if isinstance(address, tuple) else None


def open_to_the_network(address: tuple[str, int] | None, api_key: str | None) -> str | None:
    """The warning to log when `address` is every interface (0.0.0.0 or ::) and there is no API key, else None."""
    if address is None or api_key is not None or not ipaddress.ip_address(address[0]).is_unspecified:
        return None
    host, port = address
    return (
        f"listening on all interfaces ({host}:{port}) with no API key: /generate and the book routes answer anyone "
        "who can reach this machine. Serve this machine only with `bentoml serve --host 127.0.0.1`, or set "
        "PICTUREBOOK_API_KEY (a container needs 0.0.0.0: keep it, and put a key or a network policy in front)"
    )


def warn_if_open_to_the_network(api_key: str | None) -> None:
    warning = open_to_the_network(listening_address(), api_key)
    if warning is not None:
        log.warning(warning)
