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


# stage: lists (serving/prompt_filter.py) or model (the moderation model); category: the list section or the
# model's first category (`moderation_failed` when the call failed and the request was refused for it).
TEXT_REFUSALS = bentoml.metrics.Counter(
    name="picturebook_text_refusals",
    documentation="User texts refused, by stage and category",
    labelnames=["stage", "category"],
)
MODERATION_ENABLED = bentoml.metrics.Gauge(
    name="picturebook_moderation_enabled",
    documentation="1 when every user text is judged by the moderation model, 0 when it was turned off",
    multiprocess_mode="livemax",
)


def model_gauges(settings) -> None:
    """The model worker's safety gauges, from its pipeline.config.ModelSettings."""
    SAFETY_CHECKER_ENABLED.set(1 if settings.safety_checker else 0)
    MODERATION_ENABLED.set(1 if settings.moderation else 0)


def count_picture_checks(results) -> None:
    """The model side's refusals, from a batch of pipeline.PageResult."""
    for result in results:
        if result.flagged_draws:
            REFUSALS.labels(kind="picture_flagged").inc(result.flagged_draws)
        if result.error is not None and result.error.kind == "content_refused":
            REFUSALS.labels(kind="picture_refused").inc()
