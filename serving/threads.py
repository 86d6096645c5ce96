"""One thread for all of the model worker's torch work: loading the models and every `draw`, so the process holds
one OpenMP team (why: docs/DESIGN.md, "One torch thread").

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
