"""`python -m bench.books`: a whole book alone, and several books submitted together, against the real server.

Alternating rounds on one tiny `bentoml serve` (side by side, so the machine's drift hits both alike): one 6-page
book alone, then 4 such books at once. Reports the median wall time of each and pages per second; book pages go
through the same adaptive batcher as /generate, so books in flight together can share diffusion calls.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.common import median, progress, rounded
from bench.served import prepare_store
from testkit.pictures import PROMPTS, picture, png_b64
from testkit.server import bentoml_serve, free_port

PAGES = 6
BOOKS_TOGETHER = 4


def book(n: int) -> dict:
    return {
        "title": f"Book {n}",
        "characters": [png_b64(picture(2000 + n, (96, 96)))],
        "pages": [{"text": PROMPTS[(n + i) % len(PROMPTS)], "seed": 100 * n + i} for i in range(PAGES)],
    }


def draw_books(url: str, books: list[dict]) -> dict:
    """Submit every book at once; wait until all are done. Wall seconds, pages/s, and the batch sizes seen."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(books)) as pool:
        ids = list(pool.map(lambda b: requests.post(f"{url}/book/submit", json=b, timeout=60).json()["task_id"], books))
    pending = set(ids)
    while pending:
        for task_id in list(pending):
            status = requests.get(f"{url}/book/status", params={"task_id": task_id}, timeout=30).json()["status"]
            if status == "failed":
                raise RuntimeError(f"book {task_id} failed")
            if status == "completed":
                pending.discard(task_id)
        time.sleep(0.05)
    wall = time.perf_counter() - started
    results = [requests.get(f"{url}/book/get", params={"task_id": i}, timeout=60).json() for i in ids]
    sizes = [page["batch_size"] for result in results for page in result["pages"]]
    return {"wall_s": wall, "pages_per_s": len(sizes) / wall, "mean_batch_size": sum(sizes) / len(sizes)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.books", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as home:
        prepare_store(Path(home))
        log = Path(home) / "serve.log"
        with bentoml_serve(log, Path(home), free_port(), PICTUREBOOK_MAX_BOOKS=str(BOOKS_TOGETHER)) as (url, _):
            draw_books(url, [book(99)])  # warm-up
            rounds = {"alone": [], "together": []}
            for round_number in range(args.rounds):
                progress(f"round {round_number + 1}/{args.rounds}")
                rounds["alone"].append(draw_books(url, [book(0)]))
                rounds["together"].append(draw_books(url, [book(n) for n in range(BOOKS_TOGETHER)]))
    summary = {name: {key: median(r[key] for r in runs) for key in runs[0]} for name, runs in rounds.items()}
    summary["throughput_ratio_together_vs_alone"] = summary["together"]["pages_per_s"] / summary["alone"]["pages_per_s"]
    result = rounded({"pages_per_book": PAGES, "books_together": BOOKS_TOGETHER, "rounds": rounds, **summary})
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "books.json").write_text(json.dumps(result, indent=2))
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}, indent=2))
    return result


if __name__ == "__main__":
    main()
