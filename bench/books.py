"""`python -m bench.books`: books on the embedded store and on Redis, side by side, against real servers.

Two tiny `bentoml serve` (one embedded, one with `PICTUREBOOK_REDIS_URL` on a Debian `redis-server` this starts on
a loopback port, nothing saved), in alternating rounds so the machine's drift hits both alike: one book alone, then
4 books at once, through `POST /books`. Reports the median wall time and pages per second of each, and what one
finished book takes in Redis (`MEMORY USAGE` of its keys, against its PNG bytes). The tiny set is built into a
temporary model store first, or taken from one that holds it already (`--models-home`).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.common import median, progress, rounded, write_and_show
from bench.served import prepare_store
from testkit.pictures import PROMPTS, picture, png_b64
from testkit.redis import RedisServer
from testkit.server import BackgroundServe, free_port, home_sharing_models

PAGES = 6
BOOKS_TOGETHER = 4


def book(n: int, pages: int = PAGES) -> dict:
    return {
        "title": f"Book {n}",
        "characters": [png_b64(picture(2000 + n, (96, 96)))],
        "pages": [{"text": PROMPTS[(n + i) % len(PROMPTS)], "seed": 100 * n + i} for i in range(pages)],
    }


def draw_books(url: str, books: list[dict]) -> dict:
    """Submit every book at once; wait until all are done. Wall seconds, pages/s, and the batch sizes seen."""
    started = time.perf_counter()
    with ThreadPoolExecutor(len(books)) as pool:
        answers = list(pool.map(lambda b: requests.post(f"{url}/books", json=b, timeout=120), books))
    ids = []
    for answer in answers:
        if answer.status_code != 202:
            raise RuntimeError(f"submit: {answer.status_code} {answer.text}")
        ids.append(answer.json()["id"])
    pending = set(ids)
    while pending:
        for book_id in list(pending):
            state = requests.get(f"{url}/books/{book_id}", timeout=30).json()
            status = state["status"]
            if status in ("failed", "canceled"):
                raise RuntimeError(f"book {book_id} {status}: {state['failure']}")
            if status == "completed":
                pending.discard(book_id)
        time.sleep(0.05)
    wall = time.perf_counter() - started
    pages = [requests.get(f"{url}/books/{i}/pages", timeout=60).json()["pages"] for i in ids]
    sizes = [page["batch_size"] for book_pages in pages for page in book_pages]
    return {"wall_s": wall, "pages_per_s": len(sizes) / wall, "mean_batch_size": sum(sizes) / len(sizes), "ids": ids}


def redis_bytes(redis_url: str, book_id: str, url: str) -> dict:
    """What one finished book takes in Redis, against the PNG bytes of its pages."""
    from serving.book_store import RedisStore

    async def measure() -> int:
        store = RedisStore(redis_url, retention_s=60)
        try:
            return await store.memory_bytes(book_id)
        finally:
            await store.close()

    pngs = [
        len(requests.get(f"{url}/books/{book_id}/pages/{k}.png", timeout=30).content)
        for k in range(requests.get(f"{url}/books/{book_id}", timeout=30).json()["pages_total"])
    ]
    used = asyncio.run(measure())
    return {"memory_usage_bytes": used, "png_bytes": sum(pngs), "pages": len(pngs), "overhead_bytes": used - sum(pngs)}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench.books", description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pages", type=int, default=PAGES, help="pages per book")
    parser.add_argument("--out", type=Path, default=Path("bench-out"))
    parser.add_argument(
        "--models-home",
        type=Path,
        help="a BentoML home whose model store already holds the tiny set, used as it is (default: build the set "
        "into a temporary home first)",
    )
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as home, RedisServer(Path(home) / "redis") as redis_server:
        models_home = args.models_home or Path(home)
        if args.models_home is None:
            prepare_store(models_home)
        # A page's timeout well past what a loaded machine takes: this measures throughput, not the timeout.
        env = {"PICTUREBOOK_MAX_BOOKS": str(BOOKS_TOGETHER), "PICTUREBOOK_REQUEST_TIMEOUT_S": "900"}
        # Both start at once, each in a BentoML home of its own over one model store (a start empties its home's
        # metrics folder, which the other would be using).
        store_env = {"embedded": {}, "redis": {"PICTUREBOOK_REDIS_URL": redis_server.url}}
        servers = {
            store: BackgroundServe(
                Path(home) / f"{store}.log",
                home_sharing_models(models_home, Path(home) / f"{store}-home"),
                free_port(),
                **env,
                **extra,
            )
            for store, extra in store_env.items()
        }
        try:
            urls = {store: server.ready()[0] for store, server in servers.items()}
            redis_url = urls["redis"]
            for url in urls.values():
                draw_books(url, [book(99, args.pages)])  # warm-up
            rounds = {f"{store}_{kind}": [] for store in urls for kind in ("alone", "together")}
            for round_number in range(args.rounds):
                progress(f"round {round_number + 1}/{args.rounds}")
                for store, url in urls.items():
                    rounds[f"{store}_alone"].append(draw_books(url, [book(0, args.pages)]))
                    together = [book(n, args.pages) for n in range(BOOKS_TOGETHER)]
                    rounds[f"{store}_together"].append(draw_books(url, together))
            memory = redis_bytes(redis_server.url, rounds["redis_alone"][-1]["ids"][0], redis_url)
        finally:
            for server in servers.values():
                server.close()
    summary = {
        name: {key: median(r[key] for r in runs) for key in runs[0] if key != "ids"} for name, runs in rounds.items()
    }
    for kind in ("alone", "together"):
        summary[f"redis_vs_embedded_{kind}"] = (
            summary[f"redis_{kind}"]["pages_per_s"] / summary[f"embedded_{kind}"]["pages_per_s"]
        )
    result = rounded(
        {
            "pages_per_book": args.pages,
            "books_together": BOOKS_TOGETHER,
            "load_average": list(os.getloadavg()),
            "rounds": {k: [{x: y for x, y in r.items() if x != "ids"} for r in v] for k, v in rounds.items()},
            **summary,
            "redis_one_finished_book": memory,
        }
    )
    write_and_show(result, args.out, "books.json")
    return result


if __name__ == "__main__":
    main()
