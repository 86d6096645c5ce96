"""`python -m bench.portrait`: what a character portrait (`POST /character`) costs, beside the pages of a book.

Alternating rounds on one tiny `bentoml serve` (side by side, so the machine's drift hits all alike), one request
at a time: a portrait, a first page (`/generate`, no characters: what a portrait is), and a continuation page with
that portrait as its character. Reports the median wall time of each and the model's diffusion time
(`timings_ms.diffusion`). A book with D described characters pays D portraits once, before its first page.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import requests

from bench.common import median, progress, rounded, write_and_show
from bench.served import server_to_measure

DESCRIPTIONS = [
    "a small red fox with a blue scarf",
    "a round brown bear in yellow boots",
    "a tall grey heron with round glasses",
]


def timed(url: str, route: str, body: dict) -> tuple[dict, float]:
    started = time.perf_counter()
    answer = requests.post(f"{url}/{route}", json=body, timeout=600)
    wall_ms = 1000 * (time.perf_counter() - started)
    answer.raise_for_status()
    return answer.json(), wall_ms


def one_round(url: str, n: int) -> dict:
    """A portrait, then a first page and a continuation page with the portrait in it, seeded by `n`."""
    portrait, portrait_ms = timed(url, "character", {"description": DESCRIPTIONS[n % len(DESCRIPTIONS)], "seed": n})
    first, first_ms = timed(url, "generate", {"prompt": "a fox finds a red kite in the grass", "seed": n})
    page = {"prompt": "the fox flies the kite", "prev_frame": first["img"], "characters": [portrait["img"]], "seed": n}
    later, later_ms = timed(url, "generate", page)
    return {
        "portrait_ms": portrait_ms,
        "first_page_ms": first_ms,
        "page_with_portrait_ms": later_ms,
        "portrait_diffusion_ms": portrait["timings_ms"].get("diffusion", 0.0),
        "first_page_diffusion_ms": first["timings_ms"].get("diffusion", 0.0),
        "page_with_portrait_diffusion_ms": later["timings_ms"].get("diffusion", 0.0),
    }


def measure(url: str, rounds: int, warm_up: bool = True) -> dict:
    """Medians over `rounds` alternating rounds against a running server, after one warm-up round."""
    if warm_up:
        one_round(url, 999)
    runs = []
    for round_number in range(rounds):
        progress(f"round {round_number + 1}/{rounds}")
        runs.append(one_round(url, round_number))
    medians = {key: median(run[key] for run in runs) for key in runs[0]}
    ratio = medians["portrait_ms"] / medians["first_page_ms"]
    return rounded({"rounds": runs, "medians": medians, "portrait_vs_first_page": ratio})


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.portrait", description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument("--url", help="measure a server already running here instead of starting one")
    parser.add_argument("--no-warm-up", dest="warm_up", action="store_false", help="skip the warm-up round")
    args = parser.parse_args(argv)
    with server_to_measure(args.url) as url:
        result = measure(url, args.rounds, args.warm_up)
    write_and_show(result, args.out, "portrait.json")
    return result


if __name__ == "__main__":
    main()
