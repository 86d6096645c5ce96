"""Keep the host allocator from returning a page's freed memory to the OS only to fault it back in for the next page.

torch's CPU tensors come from glibc's malloc, which by default gives memory back as soon as it is freed. Blocks above
a moving mmap threshold are unmapped. Free memory at the top of a heap is trimmed. A thread's own arena (the model
worker draws on one thread, serving/threads.py) deletes each 64 MiB heap of it that becomes empty. The next page
then allocates the same activations again, and the kernel zero-fills them page by page.

On the `tiny` profile a 256² page cost 10,000-67,000 minor page faults and ran 10-25 % slower than in a process whose
allocator history happened to keep that memory. How much a process kept depended on what it had drawn before, so the
same page also took different times in the model worker and in the benchmark's own process (docs/PERFORMANCE.md,
"The serving overhead on CPU").

Fixed thresholds make every process behave the same way:
- blocks up to 32 MiB come from a heap; that is the largest mmap threshold glibc accepts on 64-bit;
- up to 1 GiB of free memory stays at a heap's top;
- a top pad of one whole heap keeps a thread arena's empty heaps.

A process then keeps the working set of its largest page mapped instead of returning it and faulting it back in,
and its peak RSS does not change. Blocks above 32 MiB are still mapped and unmapped per use. Loading frees what it no
longer needs once, at the end (`release_freed_memory`), so the transient of loading is not kept. On a GPU host the
activations live on the device, and this changes little.

Other C libraries (musl, macOS) have other allocators: there both functions do nothing.
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
