"""Progress on stderr, small statistics, and a bench's result written and shown."""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

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


def write_and_show(result: dict, out: Path, name: str) -> None:
    """The whole result as out/name; on stdout, everything but the per-round figures."""
    out.mkdir(parents=True, exist_ok=True)
    (out / name).write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
