"""One thread for all of the model worker's torch work: loading the models and every `draw`.

Why (docs/PERFORMANCE.md, "The serving overhead on CPU"): torch's CPU kernels run on OpenMP, and libgomp gives every
thread that opens a parallel region a team of its own worker threads. The model worker loaded the models on its main
thread (one team) and BentoML ran each `draw` on an AnyIO worker thread (a second team, a third when two calls
overlap). Once a process holds more OpenMP threads than there are cores, libgomp stops spinning between parallel
regions (its "throttled" spin count, 100 iterations instead of ~300,000) and its threads sleep on a futex after every
operator and are woken for the next one: ~14,000 context switches a second, 0.9 cores busy instead of 2, and the
tiny pipeline's diffusion took 1.3-1.6x as long as the same call in a process with one team. One thread keeps one
team, so the worker waits between operators the way a plain Python process does.

`runs_here` keeps `draw` a sync API: BentoML still calls it on an AnyIO thread (and waits for it when the request is
cancelled, as before); that thread only hands the call over and waits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class TorchThread:
    """A single long-lived thread; calls from any thread run on it, one at a time, in arrival order."""

    def __init__(self, name: str = "torch") -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=name)

    def run(self, function: Callable[P, R], *args: P.args, **kwargs: P.kwargs) -> R:
        """`function(*args, **kwargs)` on the torch thread; blocks the caller until it returns (or raises)."""
        return self._executor.submit(function, *args, **kwargs).result()

    def runs_here(self, function: Callable[P, R]) -> Callable[P, R]:
        """Decorator: every call of `function` runs on the torch thread (signature kept, for BentoML's schema)."""

        @functools.wraps(function)
        def on_torch_thread(*args: P.args, **kwargs: P.kwargs) -> R:
            return self.run(function, *args, **kwargs)

        return on_torch_thread


# One per process: the model worker imports it; a second team is exactly what this module exists to avoid.
torch_thread = TorchThread()
