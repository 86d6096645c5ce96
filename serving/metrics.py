"""Picture Book's own Prometheus metrics, beside BentoML's, on the same /metrics."""

from __future__ import annotations

import bentoml

# kind: prompt_refused (front), picture_flagged (each flagged draw), picture_refused (still flagged after redraws)
REFUSALS = bentoml.metrics.Counter(
    name="picturebook_content_refusals",
    documentation="Content refused by the safety layers, by kind",
    labelnames=["kind"],
)
# Every process that imports this module has the gauge (at 0), and only the model worker sets it: one value, the
# largest over the live processes, or /metrics shows one line per process and the front's 0 fires `== 0` alerts.
SAFETY_CHECKER_ENABLED = bentoml.metrics.Gauge(
    name="picturebook_safety_checker_enabled",
    documentation="1 when every drawn page passes the picture safety checker, 0 when it was turned off",
    multiprocess_mode="livemax",
)


def count_picture_checks(results) -> None:
    """The model side's refusals, from a batch of pipeline.PageResult."""
    for result in results:
        if result.flagged_draws:
            REFUSALS.labels(kind="picture_flagged").inc(result.flagged_draws)
        if result.error is not None and result.error.kind == "content_refused":
            REFUSALS.labels(kind="picture_refused").inc()
