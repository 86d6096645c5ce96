"""The real `bentoml serve` on loopback: readiness time, peak memory, and pages/s under concurrent clients."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests

from bench.common import median, progress
from bench.workload import payload
from tests.server import REPO, bentoml_serve, free_port, server_env

REQUEST_TIMEOUT_S = 180
RSS_SAMPLE_S = 0.2


def prepare_store(bentoml_home: Path) -> None:
    """Put the tiny weights in the model store first, so every start below measures the same (warm) path."""
    run = subprocess.run(
        [sys.executable, "-m", "bento_models", "import", "--profile", "tiny"],
        cwd=REPO,
        env=server_env(bentoml_home),
        capture_output=True,
        text=True,
        timeout=600,
    )
    if run.returncode != 0:
        raise RuntimeError(f"python -m bento_models import failed ({run.returncode}): {run.stderr[-2000:]}")


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
    """`clients` threads, each with its own session, send `per_client` requests back to back (closed loop)."""
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
    wall = time.perf_counter() - started
    ok = [s for s in samples if s[1] == 200]
    return {
        "clients": clients,
        "pages": len(ok),
        "failures": len(samples) - len(ok),
        "wall_s": wall,
        "pages_per_s": len(ok) / wall,
        "median_latency_ms": median([s[0] * 1000 for s in ok]) if ok else None,
        "mean_batch_size": sum(s[2] for s in ok) / len(ok) if ok else None,
        "statuses": sorted({s[1] for s in samples}),
    }


def http_latency_ms(url: str, repeats: int, samples: list | None = None) -> float:
    """Median end-to-end latency of the same page as bench.inprocess's baseline (`payload(0)`), one at a time."""
    times = []
    with requests.Session() as session:
        post(session, url, payload(0))  # warm-up
        for _ in range(repeats):
            elapsed, status, _ = post(session, url, payload(0))
            if status != 200:
                raise RuntimeError(f"POST /generate answered {status}")
            times.append(elapsed * 1000)
    if samples is not None:
        samples.extend(times)
    return median(times)


def run_config(
    name: str,
    max_batch_size: int,
    bentoml_home: Path,
    logs: Path,
    params: dict,
    latency: bool,
) -> dict:
    """One server (one batching setting): ready time, optional single-request latency, pages/s at 1, 4, 8 clients."""
    mode = f"PICTUREBOOK_MAX_BATCH_SIZE={max_batch_size}"
    progress(f"served ({name}): starting bentoml serve, {mode}")
    out: dict = {"mode": mode}
    with serve(bentoml_home, logs / f"serve-{name}.log", PICTUREBOOK_MAX_BATCH_SIZE=str(max_batch_size)) as (
        url,
        ready_s,
        rss,
    ):
        out["ready_s"] = ready_s
        progress(f"served ({name}): ready after {ready_s:.1f} s")
        if latency:
            out["http_latency_samples_ms"] = []
            out["http_latency_ms"] = http_latency_ms(url, params["http_repeats"], out["http_latency_samples_ms"])
            progress(f"served ({name}): one request alone: {out['http_latency_ms']:.0f} ms (median)")
        out["by_clients"] = {}
        index = 10_000
        for clients in (1, 4, 8):
            concurrent_load(url, clients, 1, index)  # warm-up round: lets the batcher see this load
            index += clients
            per_client = max(1, params["served_pages"] // clients)
            result = concurrent_load(url, clients, per_client, index)
            index += clients * per_client
            out["by_clients"][clients] = result
            progress(
                f"served ({name}): {clients} clients x {per_client}: {result['pages_per_s']:.2f} pages/s, "
                f"mean batch {result['mean_batch_size'] or 0:.2f}, {result['failures']} failures"
            )
        rss.sample()
    out["peak_rss_mb"] = rss.peak_bytes / 2**20
    out["processes"] = rss.processes_at_peak
    progress(f"served ({name}): peak RSS {out['peak_rss_mb']:.0f} MB over {out['processes']} processes")
    return out
