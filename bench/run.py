"""`python -m bench [--quick] [--out DIR]`: in-process and served, side by side, in one run."""

from __future__ import annotations

import argparse
import gc
import json
import os
import tempfile
import time
from pathlib import Path

from bench import inprocess, served
from bench.common import progress, ratio, rounded
from bench.machine import describe
from bench.report import check_targets, write
from bench.workload import CHARACTER_SIZE, CHARACTERS, SIZE

BUSY_LOAD = 0.5  # 1-minute load average above which other work is competing for the cores

PARAMS = {
    # pages per in-process throughput point (256 and 128 px; 512 px), repeats of a single-page latency,
    # pages per served point (per client: this ÷ clients), sequential requests for the HTTP latency.
    "quick": {"throughput_pages": 8, "large_pages": 8, "latency_repeats": 3, "served_pages": 16, "http_repeats": 5},
    "full": {"throughput_pages": 32, "large_pages": 16, "latency_repeats": 9, "served_pages": 48, "http_repeats": 15},
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats: a few minutes instead of ~10-20")
    parser.add_argument("--out", type=Path, default=Path("bench-out"), help="output folder (default bench-out/)")
    args = parser.parse_args(argv)
    params = PARAMS["quick" if args.quick else "full"]
    started = time.monotonic()
    machine = describe()
    progress(f"{'quick' if args.quick else 'full'} run on {machine['cpu_count']} × {machine['cpu_model']}: {params}")
    if machine["load_average_at_start"][0] > BUSY_LOAD:
        progress(f"the machine is busy (load average {machine['load_average_at_start']}): numbers will be noisy")
    args.out.mkdir(parents=True, exist_ok=True)
    logs = args.out / "logs"
    logs.mkdir(exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="picturebook-bench-") as scratch:
        scratch = Path(scratch)
        local = inprocess.run(scratch / "tiny", params)
        gc.collect()

        home = scratch / "bentoml_home"
        progress("served: putting the tiny weights in a fresh BentoML model store")
        served.prepare_store(home)
        on = guarded("batching_on", lambda: served.run_config("batching_on", 8, home, logs, params, latency=True))
        off = guarded("batching_off", lambda: served.run_config("batching_off", 1, home, logs, params, latency=False))

    def pages_per_s(config: dict) -> dict:
        return {clients: row["pages_per_s"] for clients, row in config.get("by_clients", {}).items()}

    served_pages = {"batching_on": pages_per_s(on), "batching_off": pages_per_s(off)}
    gain_inprocess = ratio(local["inprocess_pages_per_s"][8], local["inprocess_pages_per_s"][1])
    gain_served = ratio(served_pages["batching_on"].get(8), served_pages["batching_off"].get(8))
    result = {
        "quick": args.quick,
        "params": params,
        "request_shape": f"{SIZE}×{SIZE} continuation page (prev_frame) with {CHARACTERS} character "
        f"({CHARACTER_SIZE}×{CHARACTER_SIZE}), tiny profile steps and guidance, prompt/seed/pictures vary",
        "inprocess_pages_per_s": local["inprocess_pages_per_s"],
        "served_pages_per_s": served_pages,
        "inprocess_latency_ms": local["inprocess_latency_ms"],
        "http_latency_ms": on.get("http_latency_ms"),
        "inprocess_latency_samples_ms": local["inprocess_latency_samples_ms"],
        "http_latency_samples_ms": on.get("http_latency_samples_ms"),
        "http_overhead_ratio": ratio(on.get("http_latency_ms"), local["inprocess_latency_ms"]),
        "served_over_inprocess_b8": ratio(served_pages["batching_on"].get(8), local["inprocess_pages_per_s"][8]),
        "batching_gain_served": gain_served,
        "batching_gain_inprocess": gain_inprocess,
        "batching_gain_served_vs_inprocess": ratio(gain_served, gain_inprocess),
        "ready_s": on.get("ready_s"),
        "peak_rss_mb": max((c["peak_rss_mb"] for c in (on, off) if "peak_rss_mb" in c), default=None),
        "latency_by_characters_ms": local["latency_by_characters_ms"],
        "latency_by_size_ms": local["latency_by_size_ms"],
        "inprocess_batch_gain_by_size": local["inprocess_batch_gain_by_size"],
        "served_details": {"batching_on": on, "batching_off": off},
        "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "duration_s": time.monotonic() - started,
    }
    result = rounded(json.loads(json.dumps(result)))  # string keys, as bench.json has them
    result["targets"] = check_targets(result)
    json_path, md_path = write(result, args.out)
    for key, check in result["targets"].items():
        progress(f"{key} = {check['value']} (target {check['target']}): {'met' if check['met'] else 'NOT met'}")
    progress(f"wrote {json_path} and {md_path} in {result['duration_s']:.0f} s")
    errors = {name: c["error"] for name, c in result["served_details"].items() if "error" in c}
    if errors:
        progress(f"FAILED parts: {errors}")
        raise SystemExit(1)
    return result


def guarded(name: str, measure) -> dict:
    """A served configuration that fails is reported (its numbers null), not allowed to lose the whole run."""
    try:
        return measure()
    except Exception as error:  # noqa: BLE001 - reported in bench.json and as the exit code
        progress(f"served ({name}) failed: {error}")
        return {"error": f"{type(error).__name__}: {error}"}
