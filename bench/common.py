"""Progress on stderr and small statistics."""

from __future__ import annotations

import statistics
import sys
import time

_STARTED = time.monotonic()


def progress(message: str) -> None:
    print(f"[bench {time.monotonic() - _STARTED:6.0f} s] {message}", file=sys.stderr, flush=True)


def median(values) -> float:
    return float(statistics.median(values))


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if not numerator or not denominator:
        return None
    return numerator / denominator


def rounded(value, digits: int = 3):
    """Round floats inside nested dicts/lists for the report."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {key: rounded(item, digits) for key, item in value.items()}
    if isinstance(value, list):
        return [rounded(item, digits) for item in value]
    return value
