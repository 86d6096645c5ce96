"""`python -m bench.mixed_characters`: a batch of pages with 0-3 characters as one diffusion call (what the regional
masks allow) against one call per character count (how they were grouped before), side by side in one process.

Tiny profile, in-process: 8 continuation pages with 0, 1, 2, 3, 0, 1, 2, 3 characters, alternating rounds, medians.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

from bench.common import median, progress
from testkit.pictures import picture


def main(rounds: int = 3) -> dict:
    from pipeline import ModelPaths, ModelSettings, Profile, load_page_generator
    from pipeline.tiny import build_tiny_models

    with tempfile.TemporaryDirectory() as scratch:
        root = build_tiny_models(Path(scratch) / "tiny")
        settings = ModelSettings(profile=Profile.tiny, model_dir=root, device="cpu")
        result = measure(load_page_generator(ModelPaths.under(root), settings), rounds)
    print(json.dumps(result, indent=2))
    return result


def measure(generator, rounds: int) -> dict:
    """The two ways, in alternating rounds on one page generator, after one warm-up call."""
    from pipeline import PageRequest

    pages = [
        PageRequest(
            prompt=f"page {i}",
            prev_frame=picture(100 + i),
            characters=tuple(picture(200 + 4 * i + k, (96, 96)) for k in range(i % 4)),
            seed=i,
        )
        for i in range(8)
    ]
    by_count = [[p for p in pages if len(p.characters) == n] for n in range(4)]
    generator.generate(pages)  # warm-up (and the character embeddings cached for both ways)
    timings = {"one_call": [], "one_call_per_count": []}
    for round_number in range(rounds):
        progress(f"round {round_number + 1}/{rounds}")
        started = time.perf_counter()
        assert {r.batch_size for r in generator.generate(pages)} == {8}
        timings["one_call"].append(time.perf_counter() - started)
        started = time.perf_counter()
        for group in by_count:
            generator.generate(group)
        timings["one_call_per_count"].append(time.perf_counter() - started)
    result = {way: {"median_s": median(t), "pages_per_s": len(pages) / median(t)} for way, t in timings.items()}
    result["ratio_one_call_vs_per_count"] = (
        result["one_call"]["pages_per_s"] / result["one_call_per_count"]["pages_per_s"]
    )
    return result


if __name__ == "__main__":
    main()
