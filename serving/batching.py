"""A bound on how long BentoML's adaptive batcher holds a lone request waiting for batch-mates.

Why: BentoML's dispatcher (bentoml/_internal/marshal/dispatcher.py, `CorkDispatcher.controller`) keeps a request
waiting while `n * (wait_so_far + a) <= 0.95 * optimizer.wait`, where `optimizer.wait` is the mean, over the last
50 calls, of how long each call's oldest request sat in the queue. Under load that queue time is the time the model
spent on the previous batch (the request could not go anyway), so after a burst the learned wait is a whole batch's
time; every lone request then waits that long for company that does not come, logs about as much wait again, and
the mean decays by ~5 % per 50 requests: a page took 6-14x its time after a minute of 40 clients and did not recover.
`max_latency_ms` does not bound it (it only sheds requests whose queue time plus estimated run time exceed it).

The fix caps the learned wait at `fraction` of the dispatcher's own estimate of a one-page call (`o_a + o_b`, fitted
from call durations alone, which queueing does not inflate). A lone request then costs at most that fraction more
than its page, whatever came before; a burst still forms full batches, because requests that arrive while the model
is busy queue up and go together when it is free.

Private API: `bentoml._internal.marshal.dispatcher.Optimizer` with `trigger_refresh()` (where `wait`, `o_a`, `o_b`
are refreshed). `check_private_api` fails loudly if that changes shape (tests/test_lifecycle.py runs it).
"""

from __future__ import annotations


def check_private_api():
    from bentoml._internal.marshal.dispatcher import Optimizer

    optimizer = Optimizer(1.0)
    if not callable(getattr(Optimizer, "trigger_refresh", None)) or not all(
        isinstance(getattr(optimizer, name, None), (int, float)) for name in ("wait", "o_a", "o_b")
    ):
        raise RuntimeError("bentoml's batching Optimizer changed shape: see serving/batching.py")
    return Optimizer


def bound_batch_wait(fraction: float) -> None:
    """In this process, a lone request waits for batch-mates at most `fraction` of a one-page call's time."""
    optimizer_class = check_private_api()
    if not hasattr(optimizer_class, "_unbounded_trigger_refresh"):
        optimizer_class._unbounded_trigger_refresh = optimizer_class.trigger_refresh
        optimizer_class.trigger_refresh = _trigger_refresh
    optimizer_class.wait_fraction = fraction


def _trigger_refresh(optimizer) -> None:
    optimizer._unbounded_trigger_refresh()
    optimizer.wait = min(optimizer.wait, optimizer.wait_fraction * (optimizer.o_a + optimizer.o_b))
