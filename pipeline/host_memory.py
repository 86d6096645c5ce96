"""Keep the host allocator from returning a page's freed memory to the OS only to fault it back in for the next page:
fixed glibc malloc thresholds for the process (`keep_freed_memory`), and one trim after loading
(`release_freed_memory`). Why and what was measured: docs/DESIGN.md, "Host memory between pages".
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging
import platform

log = logging.getLogger(__name__)

# mallopt(3) parameters, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3

MALLOPT_SETTINGS = {
    M_MMAP_THRESHOLD: 32 << 20,  # glibc refuses more than half its thread-heap size (64 MiB on 64-bit)
    M_TRIM_THRESHOLD: 1 << 30,
    M_TOP_PAD: 64 << 20,  # a thread arena deletes an empty heap only when the heap below has room for this pad
}


@functools.cache
def _glibc() -> ctypes.CDLL | None:
    if platform.libc_ver()[0] != "glibc":
        return None
    return ctypes.CDLL(ctypes.util.find_library("c"))


def keep_freed_memory() -> None:
    """Set glibc's malloc thresholds for this process (idempotent); a warning names any parameter glibc refuses."""
    libc = _glibc()
    if libc is None:
        return
    refused = [parameter for parameter, value in MALLOPT_SETTINGS.items() if libc.mallopt(parameter, value) != 1]
    if refused:
        log.warning("glibc refused mallopt parameters %s: pages may fault their memory in again every time", refused)


def release_freed_memory() -> None:
    """Give every free block back to the OS now, once (after loading), whatever the thresholds say."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
