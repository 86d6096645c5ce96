"""The comparisons the targets are about, measured in alternation.

A shared 2-core VM drifts by tens of percent over minutes (another tenant, thermal limits), so a phase measured
in-process and a later phase measured served would compare two machines. Here every round draws a little of each
side — in-process calls, then the batching-on server, then the batching-off one (the servers' order flips every
round) — so drift lands on both sides of every ratio.
"""

from __future__ import annotations

import time

import requests

from bench.common import median, progress
from bench.inprocess import draw
from bench.served import REQUEST_TIMEOUT_S, concurrent_load, post, summary
from bench.workload import page_request, payload

BATCHES = (1, 2, 4, 8)
CLIENTS = (1, 4, 8)
# BentoML's adaptive batcher trains on its first calls (sizes 1, 2, 3), holding some for seconds while it waits for
# batch-mates a lone client never sends; it then waits, per call, up to the mean wait of its last 50 calls
# (bentoml/_internal/marshal/dispatcher.py). After 60 calls the training waits have left that window.
BATCHER_SETTLING_CALLS = 60


def one_page_latency(generator, servers: dict[str, str], repeats: int) -> dict:
    """The same page (`payload(0)` is `page_request(0)`), alone: in-process, then over HTTP to each server in turn,
    `repeats` times. Medians (ms) of the wall time by side, and for each server the part spent in the pipeline
    (the `timings_ms` the model service reports) and the rest (HTTP, JSON, PNG, the front service, waiting)."""
    wall: dict[str, list[float]] = {"inprocess": [], **{name: [] for name in servers}}
    pipeline: dict[str, list[float]] = {side: [] for side in wall}
    sessions = {name: requests.Session() for name in servers}
    try:
        for name, url in servers.items():
            for _ in range(BATCHER_SETTLING_CALLS if name == "batching_on" else 3):
                post(sessions[name], url, payload(0))
        for _ in range(repeats):
            started = time.perf_counter()
            [result] = draw(generator, [page_request(0)])
            wall["inprocess"].append((time.perf_counter() - started) * 1000)
            pipeline["inprocess"].append(sum(result.timings_ms.values()))
            for name, url in servers.items():
                started = time.perf_counter()
                response = sessions[name].post(f"{url}/generate", json=payload(0), timeout=REQUEST_TIMEOUT_S)
                wall[name].append((time.perf_counter() - started) * 1000)
                if response.status_code != 200:
                    raise RuntimeError(f"POST /generate to {name} answered {response.status_code}")
                pipeline[name].append(sum(response.json()["timings_ms"].values()))
    finally:
        for session in sessions.values():
            session.close()
    medians = {side: median(times) for side, times in wall.items()}
    breakdown = {
        side: {
            "pipeline_ms": median(pipeline[side]),
            "outside_pipeline_ms": median([w - p for w, p in zip(wall[side], pipeline[side])]),
        }
        for side in wall
    }
    progress("one page alone (medians): " + ", ".join(f"{side} {ms:.0f} ms" for side, ms in medians.items()))
    progress(f"  of which in the pipeline / outside it: {breakdown}")
    return {"medians_ms": medians, "breakdown_ms": breakdown, "samples_ms": wall}


def throughput(generator, servers: dict[str, str], rounds: int, per_client: int) -> dict:
    """pages/s in-process by batch size and served by clients, summed over `rounds` alternating rounds."""
    inprocess = {batch: [0, 0.0] for batch in BATCHES}  # pages, seconds
    served = {name: {clients: {"wall_s": 0.0, "samples": []} for clients in CLIENTS} for name in servers}
    index = 20_000
    for url in servers.values():  # one load of each size first: the batcher sees it before it counts
        for clients in CLIENTS:
            concurrent_load(url, clients, 1, index)
            index += clients
    for round_number in range(rounds):
        for batch in BATCHES:
            started = time.perf_counter()
            draw(generator, [page_request(index + j) for j in range(batch)])
            inprocess[batch][0] += batch
            inprocess[batch][1] += time.perf_counter() - started
            index += batch
        order = list(servers) if round_number % 2 == 0 else list(reversed(servers))
        for clients in CLIENTS:
            for name in order:
                load = concurrent_load(servers[name], clients, per_client, index)
                index += clients * per_client
                served[name][clients]["wall_s"] += load["wall_s"]
                served[name][clients]["samples"] += load["samples"]
        progress(f"round {round_number + 1}/{rounds} done")
    by_clients = {
        name: {clients: summary(totals["wall_s"], totals["samples"]) for clients, totals in rows.items()}
        for name, rows in served.items()
    }
    return {
        "inprocess_pages_per_s": {batch: pages / seconds for batch, (pages, seconds) in inprocess.items()},
        "by_clients": by_clients,
    }
