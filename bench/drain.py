"""SIGTERM with pages in flight: how long the server takes to exit, and what every client gets.

`python -m bench.drain [--runs 10] [--in-flight 3] [--steps 30]`

Each run starts the real server (tiny profile), sends `--in-flight` pages, sends SIGTERM to `bentoml serve` 1.5 s
later (as Kubernetes does), sends one more page 0.5 s after the signal, and records the exit time and every status
(a dropped connection is "dropped"). Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import requests

from bench.common import progress
from bench.served import prepare_store
from bench.workload import payload
from testkit.server import bentoml_serve, free_port


def status(url: str, body: dict) -> int | str:
    try:
        return requests.post(f"{url}/generate", json=body, timeout=180).status_code
    except requests.RequestException:
        return "dropped"


def one_run(home: Path, in_flight: int, steps: int) -> dict:
    started: list[subprocess.Popen] = []
    with bentoml_serve(home / "serve.log", home, free_port(), on_start=started.append) as (url, _):
        [process] = started
        status(url, payload(0))  # warm
        with ThreadPoolExecutor(in_flight + 1) as pool:
            pages = [pool.submit(status, url, {**payload(i), "steps": steps}) for i in range(1, in_flight + 1)]
            time.sleep(1.5)
            signalled = time.monotonic()
            process.send_signal(signal.SIGTERM)
            time.sleep(0.5)
            late = status(url, payload(99))
            statuses = [page.result() for page in pages]
        code = process.wait(300)
        return {"exit_s": round(time.monotonic() - signalled, 2), "code": code, "in_flight": statuses, "late": late}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=10)
    parser.add_argument("--in-flight", type=int, default=3)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    runs = []
    with tempfile.TemporaryDirectory() as home:
        prepare_store(Path(home))
        for index in range(args.runs):
            runs.append(one_run(Path(home), args.in_flight, args.steps))
            progress(f"run {index + 1}: {runs[-1]}")
    exits = [run["exit_s"] for run in runs]
    print(json.dumps({"runs": runs, "exit_s_min": min(exits), "exit_s_max": max(exits)}, indent=1))


if __name__ == "__main__":
    main()
