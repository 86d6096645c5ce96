"""The pipeline in this process: one page's latency, pages/s by batch size, and how both change with the shape."""

from __future__ import annotations

import math
import time
from pathlib import Path

from bench.common import median, progress
from bench.workload import SIZE, page_request


def quiet_libraries() -> None:
    import warnings

    warnings.filterwarnings("ignore")
    try:
        from diffusers.utils import logging as diffusers_logging
        from transformers.utils import logging as transformers_logging

        for library in (diffusers_logging, transformers_logging):
            library.set_verbosity_error()
            library.disable_progress_bar()
    except ImportError:
        pass


def load_generator(model_dir: Path):
    """Build the tiny weights (seconds, offline) and load them as the service does, on the CPU."""
    from pipeline import ModelPaths, ModelSettings, Profile, load_page_generator
    from pipeline.tiny import build_tiny_models

    quiet_libraries()
    root = build_tiny_models(model_dir)
    settings = ModelSettings(profile=Profile.tiny, model_dir=root, device="cpu")
    return load_page_generator(ModelPaths.under(root), settings)


def draw(generator, requests) -> list:
    results = generator.generate(requests)
    for result in results:
        if not result.ok:
            raise RuntimeError(f"in-process page failed: {result.error}")
        if result.batch_size != len(requests):
            raise RuntimeError(f"expected one diffusion call of {len(requests)}, got batch_size {result.batch_size}")
    return results


def pages_per_s(generator, batch: int, pages: int, size: int = SIZE) -> float:
    """Pages per second drawing `pages` (rounded up to whole calls) in calls of `batch`, after one warm-up call."""
    calls = max(1, math.ceil(pages / batch))
    draw(generator, [page_request(i, size) for i in range(batch)])  # warm-up: this shape's first call
    started = time.perf_counter()
    for call in range(calls):
        draw(generator, [page_request(100 + call * batch + j, size) for j in range(batch)])
    elapsed = time.perf_counter() - started
    return calls * batch / elapsed


def latency_ms(generator, request, repeats: int, samples: list | None = None) -> float:
    """Median wall time of drawing one page alone, after one warm-up (each time appended to `samples`)."""
    draw(generator, [request])
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        draw(generator, [request])
        times.append((time.perf_counter() - started) * 1000)
    if samples is not None:
        samples.extend(times)
    return median(times)


def warm_up(generator) -> None:
    for i in range(3):  # first calls after loading are slower (allocations, kernel selection)
        draw(generator, [page_request(i)])


def shape_tables(generator, params: dict) -> dict:
    """How one page's latency grows with the number of characters and the page size, and where batching pays."""
    repeats = params["latency_repeats"]
    by_characters = {}
    for count in range(5):
        by_characters[count] = latency_ms(generator, page_request(0, characters=count), repeats)
        progress(f"in-process: {count} characters: {by_characters[count]:.0f} ms")
    by_size, gain_by_size = {}, {}
    for size in (128, 256, 512):
        by_size[size] = latency_ms(generator, page_request(0, size), repeats)
        pages = params["throughput_pages"] if size <= SIZE else params["large_pages"]
        gain_by_size[size] = pages_per_s(generator, 8, pages, size) / pages_per_s(generator, 1, pages, size)
        progress(f"in-process: {size}px: {by_size[size]:.0f} ms per page, batch-8 gain {gain_by_size[size]:.2f}")
    return {
        "latency_by_characters_ms": by_characters,
        "latency_by_size_ms": by_size,
        "inprocess_batch_gain_by_size": gain_by_size,
    }
