"""The real `bentoml serve` on loopback: a fresh model store, peak memory of the server, concurrent clients."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests

from bench.common import median
from bench.workload import payload
from testkit.server import REPO, bentoml_serve, free_port, server_env

REQUEST_TIMEOUT_S = 180
RSS_SAMPLE_S = 0.2


def prepare_store(bentoml_home: Path) -> None:
    """Put the tiny weights in the model store first, so every start below measures the same (warm) path."""
    run = subprocess.run(
        [sys.executable, "-m", "serving.bento_models", "import", "--profile", "tiny"],
        cwd=REPO,
        env=server_env(bentoml_home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0:
        raise RuntimeError(f"python -m serving.bento_models import failed ({run.returncode}): {run.stderr[-2000:]}")


@contextmanager
def server_to_measure(url: str | None, **env: str):
    """Yield the base URL a benchmark measures: `url` as given (a server already running), or that of a tiny
    `bentoml serve` with `env`, started in a temporary home whose store gets the tiny set first, and stopped after."""
    if url:
        yield url
        return
    with tempfile.TemporaryDirectory() as home:
        prepare_store(Path(home))
        with bentoml_serve(Path(home) / "serve.log", Path(home), free_port(), **env) as (started, _):
            yield started


class PeakRss(threading.Thread):
    """Samples the RSS of a process and all its descendants, summed; keeps the peak."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.peak_bytes = 0
        self.processes_at_peak = 0
        self.done = threading.Event()

    def sample(self) -> None:
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for process in processes:
            try:
                total += process.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        if total > self.peak_bytes:
            self.peak_bytes, self.processes_at_peak = total, len(processes)

    def run(self) -> None:
        while not self.done.wait(RSS_SAMPLE_S):
            self.sample()


@contextmanager
def serve(bentoml_home: Path, log_path: Path, **env: str):
    """Yield (base_url, ready_s, rss sampler): memory is sampled from the moment the process exists."""
    samplers: list[PeakRss] = []

    def watch(process) -> None:
        samplers.append(PeakRss(process.pid))
        samplers[0].start()

    try:
        with bentoml_serve(log_path, bentoml_home, free_port(), on_start=watch, **env) as (url, ready_s):
            yield url, ready_s, samplers[0]
    finally:
        for sampler in samplers:
            sampler.done.set()
            sampler.join()


def post(session: requests.Session, url: str, body: dict) -> tuple[float, int, int]:
    """(seconds, status, batch_size) of one POST /generate."""
    started = time.perf_counter()
    response = session.post(f"{url}/generate", json=body, timeout=REQUEST_TIMEOUT_S)
    elapsed = time.perf_counter() - started
    batch_size = response.json().get("batch_size", 0) if response.status_code == 200 else 0
    return elapsed, response.status_code, batch_size


def concurrent_load(url: str, clients: int, per_client: int, first_index: int = 0) -> dict:
    """`clients` threads, each with its own session, send `per_client` requests back to back (closed loop).
    Returns the raw samples: wall time, and (seconds, status, batch_size) per request."""
    samples: list[tuple[float, int, int]] = []
    lock = threading.Lock()
    start = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        with requests.Session() as session:
            start.wait()
            for j in range(per_client):
                sample = post(session, url, payload(first_index + k * per_client + j))
                with lock:
                    samples.append(sample)

    threads = [threading.Thread(target=client, args=(k,), daemon=True) for k in range(clients)]
    for thread in threads:
        thread.start()
    start.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join(REQUEST_TIMEOUT_S * per_client)
    return {"wall_s": time.perf_counter() - started, "samples": samples}


def summary(wall_s: float, samples: list[tuple[float, int, int]]) -> dict:
    """pages/s and the rest of a row of the served table, from the samples of one or more loads."""
    ok = [s for s in samples if s[1] == 200]
    return {
        "pages": len(ok),
        "failures": len(samples) - len(ok),
        "wall_s": wall_s,
        "pages_per_s": len(ok) / wall_s if wall_s else None,
        "median_latency_ms": median([s[0] * 1000 for s in ok]) if ok else None,
        "mean_batch_size": sum(s[2] for s in ok) / len(ok) if ok else None,
        "statuses": sorted({s[1] for s in samples}),
    }
