"""`python -m bench [--quick] [--out DIR]`: in-process and served, side by side, in one run.

`python -m bench --full-size` and `python -m bench --gpu` are the real-size benchmarks (bench/fullsize.py,
bench/gpu.py): random weights at SDXL's real size, on this CPU and on a CUDA machine.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from bench import inprocess, interleaved, served
from bench.common import progress, ratio, rounded
from bench.machine import describe
from bench.report import check_targets, write
from bench.workload import CHARACTER_SIZE, CHARACTERS, SIZE

BUSY_LOAD = 0.5  # 1-minute load average above which other work is competing for the cores

PARAMS = {
    # repeats of a single-page latency in the shape tables; pages per in-process throughput point there (256 px and
    # smaller; 512 px); pairs of (in-process, HTTP) single pages; alternating rounds; requests per client per round.
    "quick": {
        "latency_repeats": 3,
        "throughput_pages": 8,
        "large_pages": 8,
        "http_repeats": 5,
        "rounds": 2,
        "per_client": 1,
    },
    "full": {
        "latency_repeats": 9,
        "throughput_pages": 32,
        "large_pages": 16,
        "http_repeats": 15,
        "rounds": 6,
        "per_client": 2,
    },
}
SERVERS = {"batching_on": 8, "batching_off": 1}  # PICTUREBOOK_MAX_BATCH_SIZE


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="fewer repeats: about 5 minutes instead of about 10")
    parser.add_argument(
        "--out", type=Path, default=None, help="output folder (default bench-out/, bench-out/fullsize/, bench-out/gpu/)"
    )
    real_size = parser.add_argument_group("real-size benchmarks (random weights at SDXL's size)")
    modes = real_size.add_mutually_exclusive_group()
    modes.add_argument(
        "--full-size",
        action="store_true",
        help="build the full-size set and run it on this CPU (~12 min, 13 GB disk, 17 GB RAM)",
    )
    modes.add_argument(
        "--gpu", action="store_true", help="the GPU levers on a CUDA machine (skips cleanly without CUDA)"
    )
    real_size.add_argument("--model-dir", type=Path, help="reuse (or build into, and keep) the full-size set here")
    real_size.add_argument(
        "--scratch", type=Path, help="where a temporary full-size set is built (default: the temp folder)"
    )
    real_size.add_argument("--keep", action="store_true", help="keep the temporary full-size set")
    real_size.add_argument("--no-large", dest="large", action="store_false", help="--full-size: skip the 1024² step")
    real_size.add_argument(
        "--profile",
        choices=["sdxl", "tiny"],
        default="sdxl",
        help="--full-size: the model set built (or found in --model-dir); `tiny` runs the same steps on the tiny set "
        "in seconds, a check of this code path (tests/test_fullsize.py), not a benchmark",
    )
    from bench.gpu import add_arguments as add_gpu_arguments

    add_gpu_arguments(real_size)
    args = parser.parse_args(argv)
    if args.full_size or args.gpu:
        from bench import fullsize, gpu

        args.out = args.out or Path("bench-out") / ("fullsize" if args.full_size else "gpu")
        return fullsize.run(args) if args.full_size else gpu.run(args)
    args.out = args.out or Path("bench-out")
    params = PARAMS["quick" if args.quick else "full"]
    started = time.monotonic()
    machine = describe()
    progress(f"{'quick' if args.quick else 'full'} run on {machine['cpu_count']} × {machine['cpu_model']}: {params}")
    if machine["load_average_at_start"][0] > BUSY_LOAD:
        progress(f"the machine is busy (load average {machine['load_average_at_start']}): numbers will be noisy")
    logs = args.out / "logs"
    logs.mkdir(parents=True, exist_ok=True)

    with tempfile.TemporaryDirectory(prefix="picturebook-bench-") as scratch, ExitStack() as servers:
        scratch = Path(scratch)
        progress("in-process: loading the tiny pipeline")
        generator = inprocess.load_generator(scratch / "tiny")
        inprocess.warm_up(generator)
        tables = inprocess.shape_tables(generator, params)

        home = scratch / "bentoml_home"
        progress("served: putting the tiny weights in a fresh BentoML model store")
        served.prepare_store(home)
        details, urls, samplers = {}, {}, {}
        for name, max_batch_size in SERVERS.items():  # one after the other: each start is timed alone
            mode = f"PICTUREBOOK_MAX_BATCH_SIZE={max_batch_size}"
            url, ready_s, samplers[name] = servers.enter_context(
                served.serve(home, logs / f"serve-{name}.log", PICTUREBOOK_MAX_BATCH_SIZE=str(max_batch_size))
            )
            urls[name] = url
            details[name] = {"mode": mode, "ready_s": ready_s}
            progress(f"served ({name}, {mode}): ready after {ready_s:.1f} s")

        latency = interleaved.one_page_latency(generator, urls, params["http_repeats"])
        measured = interleaved.throughput(generator, urls, params["rounds"], params["per_client"])
        for name, sampler in samplers.items():
            sampler.sample()
            details[name].update(
                peak_rss_mb=sampler.peak_bytes / 2**20,
                processes=sampler.processes_at_peak,
                by_clients=measured["by_clients"][name],
            )

    local = measured["inprocess_pages_per_s"]
    served_pages = {name: {c: row["pages_per_s"] for c, row in d["by_clients"].items()} for name, d in details.items()}
    gain_inprocess = ratio(local[8], local[1])
    gain_served = ratio(served_pages["batching_on"][8], served_pages["batching_off"][8])
    result = {
        "quick": args.quick,
        "params": params,
        "request_shape": f"{SIZE}×{SIZE} continuation page (prev_frame) with {CHARACTERS} character "
        f"({CHARACTER_SIZE}×{CHARACTER_SIZE}), tiny profile steps and guidance, prompt/seed/pictures vary",
        "inprocess_pages_per_s": local,
        "served_pages_per_s": served_pages,
        "inprocess_latency_ms": latency["medians_ms"]["inprocess"],
        "http_latency_ms": latency["medians_ms"]["batching_on"],
        "http_latency_no_batcher_ms": latency["medians_ms"]["batching_off"],
        "latency_medians_ms": latency["medians_ms"],
        "latency_breakdown_ms": latency["breakdown_ms"],
        "latency_samples_ms": latency["samples_ms"],
        "http_overhead_ratio": ratio(latency["medians_ms"]["batching_on"], latency["medians_ms"]["inprocess"]),
        "http_overhead_ratio_no_batcher": ratio(
            latency["medians_ms"]["batching_off"], latency["medians_ms"]["inprocess"]
        ),
        "served_over_inprocess_b8": ratio(served_pages["batching_on"][8], local[8]),
        "batching_gain_served": gain_served,
        "batching_gain_inprocess": gain_inprocess,
        "batching_gain_served_vs_inprocess": ratio(gain_served, gain_inprocess),
        "ready_s": details["batching_on"]["ready_s"],
        "peak_rss_mb": max(d["peak_rss_mb"] for d in details.values()),
        **tables,
        "served_details": details,
        "machine": {**machine, "load_average_at_end": [round(x, 2) for x in os.getloadavg()]},
        "duration_s": time.monotonic() - started,
    }
    result = rounded(json.loads(json.dumps(result)))  # string keys, as bench.json has them
    result["targets"] = check_targets(result)
    json_path, md_path = write(result, args.out)
    for key, check in result["targets"].items():
        progress(f"{key} = {check['value']} (target {check['target']}): {'met' if check['met'] else 'NOT met'}")
    progress(f"wrote {json_path} and {md_path} in {result['duration_s']:.0f} s")
    failed = {
        f"{name}, {clients} clients": f"{row['failures']} requests failed (statuses {row['statuses']})"
        for name, d in result["served_details"].items()
        for clients, row in d["by_clients"].items()
        if row["failures"]
    }
    if failed:
        progress(f"FAILED requests: {failed}")
        raise SystemExit(1)
    return result
