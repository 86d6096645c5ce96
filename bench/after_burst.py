"""A lone request after a burst: does the adaptive batcher go back to answering single clients at once?

`python -m bench.after_burst [--clients 40] [--burst-s 60] [--singles 10] [--training 12]
[--env KEY=VALUE ... | --url URL]`

Starts the real server (tiny profile; `--url` measures one already running instead), sends `--training` lone
requests for the batcher to learn from, times `--singles` sequential requests (the page time), runs `--clients`
concurrent clients for `--burst-s` seconds, then times `--singles` sequential requests right after and again, and
prints the medians and their ratios as JSON. Both sides of a ratio come from the same server minutes apart: on a
shared machine, run before and after a change back to back and compare ratios, not seconds.
"""

from __future__ import annotations

import argparse
import json
import threading
import time

import requests

from bench.common import median, progress
from bench.served import server_to_measure
from bench.workload import payload


def lone_requests(url: str, count: int, first: int) -> list[float]:
    seconds = []
    with requests.Session() as session:
        for i in range(count):
            started = time.perf_counter()
            response = session.post(f"{url}/generate", json=payload(first + i), timeout=180)
            seconds.append(time.perf_counter() - started)
            response.raise_for_status()
    return seconds


def burst(url: str, clients: int, duration_s: float) -> dict[str, int]:
    stop_at = time.monotonic() + duration_s
    statuses: dict[int, int] = {}
    lock = threading.Lock()

    def client(index: int) -> None:
        with requests.Session() as session:
            i = 0
            while time.monotonic() < stop_at:
                status = session.post(f"{url}/generate", json=payload(10_000 * index + i), timeout=180).status_code
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
                if status != 200:
                    time.sleep(0.2)
                i += 1

    threads = [threading.Thread(target=client, args=(index,)) for index in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


def measure(url: str, clients: int, burst_s: float, singles: int, training: int) -> dict:
    """Lone requests before a burst of `clients`, right after it and `singles` requests later, on one server."""
    lone_requests(url, training, 0)  # the batcher's training calls
    before = lone_requests(url, singles, 100)
    progress(f"lone before: median {median(before):.3f} s; burst of {clients} clients")
    statuses = burst(url, clients, burst_s)
    after = lone_requests(url, singles, 200)
    progress(f"lone after: median {median(after):.3f} s")
    later = lone_requests(url, singles, 300)
    return {
        "burst_statuses": statuses,
        "lone_before_s": [round(s, 3) for s in before],
        "lone_after_s": [round(s, 3) for s in after],
        "lone_later_s": [round(s, 3) for s in later],
        "median_before_s": round(median(before), 3),
        "median_after_s": round(median(after), 3),
        "median_later_s": round(median(later), 3),
        "ratio_after": round(median(after) / median(before), 2),
        "ratio_later": round(median(later) / median(before), 2),
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--burst-s", type=float, default=60)
    parser.add_argument("--singles", type=int, default=10)
    parser.add_argument("--training", type=int, default=12, help="lone requests first, which the batcher learns from")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--env", action="append", default=[], help="KEY=VALUE for the server this run starts")
    where.add_argument("--url", help="measure a server already running here instead of starting one")
    args = parser.parse_args(argv)
    env = dict(item.split("=", 1) for item in args.env)
    timing = (args.clients, args.burst_s, args.singles, args.training)

    with server_to_measure(args.url, **env) as url:
        result = {**({"url": url} if args.url else {"env": env}), **measure(url, *timing)}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
