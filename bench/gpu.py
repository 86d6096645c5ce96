"""`python -m bench --gpu`: seconds per 1024², 30-step page and peak GPU memory for each lever, on a CUDA machine.

Builds the full-size random set on the GPU machine itself (it has no network; `pipeline.fullsize`, reused with
`--model-dir`), then measures, each in a fresh child process so memory peaks do not mix, the levers of
docs/PERFORMANCE.md in order, each adding to the one before:

    fp16_sdpa       float16 weights, PyTorch SDPA attention (the CUDA defaults, channels_last off)
    channels_last   + channels_last memory format for UNet, ControlNet and VAE
    fuse_qkv        + fused Q/K/V projections, the IP-Adapters' processors kept
    compile         + torch.compile of UNet and ControlNet (its compilation is not timed: one warm-up per shape)
    cpu_offload     fp16 + SDPA with model CPU offload (the original backend's 8 GB promise): peak memory

at batch 1, 2 and 4 (the same page as the CPU run: a continuation page with two characters), checking that every
page's latents are finite. With the first lever it also draws that page once as `quality: draft` and once as
`final`, each in full (8 LoRA steps against 30), and records the two side by side and their ratio (`draft`).
Random weights cost the same FLOPs as real ones, so the speeds are real.

One invocation stays under 10 minutes: each measurement runs under the time left (`--budget-s`) and what does not
fit is recorded as not run. The parts split the work: `--part eager` (the default: build + fp16_sdpa,
channels_last, fuse_qkv, cpu_offload), then `--part compile`; results accumulate in OUT/gpu.json. Without CUDA it
writes a `skipped` record and exits 0.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench.common import progress, rounded

LEVERS: dict[str, dict] = {
    "fp16_sdpa": {"channels_last": False},
    "channels_last": {"channels_last": True},
    "fuse_qkv": {"channels_last": True, "fuse_qkv": True},
    "compile": {"channels_last": True, "fuse_qkv": True, "compile": True},
    "cpu_offload": {"channels_last": False, "cpu_offload": True},
}
PARTS = {
    "eager": ["fp16_sdpa", "channels_last", "fuse_qkv", "cpu_offload"],
    "compile": ["compile"],
    "all": list(LEVERS),
}
OFFLOAD_BATCHES = (1,)  # offload is about fitting a small GPU, not throughput
TARGETS = {
    "diffusers_a100_compile_s": (
        2.45,
        "diffusers' published plain SDXL 1024²/30 steps on an A100 with torch.compile (2.4–2.5 s)",
    ),
    "tensorrt_h100_s": (1.5, "TensorRT's SDXL 1024²/30 steps on an H100 (~1.5 s)"),
    "offload_peak_gb": (8.0, "the original backend's promise: runs on an 8 GB GPU with model CPU offload"),
}
SAFETY_S = 20  # left for writing the results after the last child


def add_arguments(group) -> None:
    group.add_argument("--part", choices=sorted(PARTS), default="eager", help="--gpu: which levers (default: eager)")
    group.add_argument("--batches", type=_batches, default=(1, 2, 4), help="--gpu: batch sizes, e.g. 1,2,4")
    group.add_argument("--steps", type=int, default=30, help="--gpu: denoising steps per page (default 30)")
    group.add_argument("--size", type=int, default=1024, help="--gpu: page width and height (default 1024)")
    group.add_argument("--budget-s", type=float, default=570, help="--gpu: wall-clock budget of one invocation")


def _batches(text: str) -> tuple[int, ...]:
    import argparse

    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"batch sizes are integers separated by commas, got {text!r}") from None
    if not values or any(value < 1 for value in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be at least 1, got {text!r}")
    return values


def plan(args) -> list[tuple[str, tuple[int, ...]]]:
    """(lever, batch sizes) in the order they are measured."""
    return [(lever, OFFLOAD_BATCHES if lever == "cpu_offload" else tuple(args.batches)) for lever in PARTS[args.part]]


def _load_results(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def run(args) -> dict:
    import torch

    from bench.machine import describe

    started = time.monotonic()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "gpu.json"
    result = _load_results(path)
    result.setdefault("levers", {})
    result.update(
        machine=describe(), request=f"{args.size}×{args.size}, {args.steps} steps, continuation page, 2 characters"
    )
    if not torch.cuda.is_available():
        result["skipped"] = "CUDA is not available on this machine; nothing was measured"
        path.write_text(json.dumps(rounded(result), indent=2) + "\n")
        progress(f"no CUDA: skipped (wrote {path})")
        return result
    result.pop("skipped", None)

    from pipeline.fullsize import build_full_size_models
    from pipeline.tiny import COMPLETE_MARKER

    root = Path(args.model_dir or out / "models")
    reused = (root / COMPLETE_MARKER).exists()
    build_started = time.perf_counter()
    build_full_size_models(root, log=progress)
    result["build"] = {"seconds": time.perf_counter() - build_started, "reused": reused, "dir": str(root)}
    progress(f"models ready in {result['build']['seconds']:.0f} s ({'reused' if reused else 'built'})")

    for lever, batches in plan(args):
        left = args.budget_s - (time.monotonic() - started) - SAFETY_S
        if left < 60:
            result["levers"][lever] = {"not_run": "out of this invocation's time; run again with --part for it"}
            continue
        report = out / f"gpu-{lever}.json"
        command = child_command(lever, root, report, batches, args.steps, args.size)
        progress(f"{lever}: batches {batches}, {left:.0f} s left")
        try:
            subprocess.run(command, check=True, timeout=left)
            result["levers"][lever] = json.loads(report.read_text())
        except subprocess.TimeoutExpired:
            result["levers"][lever] = {"timed_out": f"stopped after {left:.0f} s"}
        except (subprocess.CalledProcessError, OSError, ValueError) as error:
            result["levers"][lever] = {"error": str(error)}
        progress(f"{lever}: {result['levers'][lever]}")
        report.unlink(missing_ok=True)
        path.write_text(json.dumps(rounded(result), indent=2) + "\n")  # after each lever, in case the next hangs

    result["targets"] = {key: {"value": value, "meaning": meaning} for key, (value, meaning) in TARGETS.items()}
    result["duration_s"] = time.monotonic() - started
    path.write_text(json.dumps(rounded(result), indent=2) + "\n")
    progress(f"wrote {path}")
    return result


def child_command(lever: str, root: Path, report: Path, batches: tuple[int, ...], steps: int, size: int) -> list[str]:
    """How `run` starts one lever's child (tests/test_fullsize.py starts it the same way)."""
    return [sys.executable, "-m", "bench.gpu", "--child", lever, str(root), str(report),
            ",".join(map(str, batches)), str(steps), str(size)]  # fmt: skip


def child(lever: str, root: Path, report: Path, batches: tuple[int, ...], steps: int, size: int) -> None:
    """One lever in this process: load as the service does, then per batch one untimed warm-up and one timed call."""
    import torch

    from bench.fullsize import CHARACTERS, StepClock
    from bench.inprocess import quiet_libraries
    from bench.workload import character_picture, page_picture
    from pipeline import ModelPaths, ModelSettings, PageRequest, Profile, load_page_generator

    quiet_libraries()
    settings = ModelSettings(
        profile=Profile.sdxl, model_dir=root, device="cuda", dtype="float16", attention="sdpa", warmup=False,
        **LEVERS[lever],
    )  # fmt: skip
    if not torch.cuda.is_available():  # after the imports and the settings: everything but the GPU is checked
        raise SystemExit(f"bench.gpu child {lever}: CUDA is not available on this machine; nothing was measured")
    started = time.perf_counter()
    generator = load_page_generator(ModelPaths.under(root), settings)
    torch.cuda.synchronize()
    result = {"settings": LEVERS[lever], "load_s": time.perf_counter() - started, "batches": {}}
    clock = StepClock(generator.pipe)

    def requests(batch: int, page_steps: int):
        return [
            PageRequest(
                prompt=f"page {i}: a fox and a bear have a picnic by the river",
                prev_frame=page_picture(i, size),
                characters=tuple(character_picture(i + k) for k in range(CHARACTERS)),
                seed=i,
                width=size,
                height=size,
                steps=page_steps,
            )  # fmt: skip
            for i in range(batch)
        ]

    for batch in batches:
        # Same shapes as the timed call, fewer steps: compilation (and cuDNN's choices) happen here, untimed.
        warm_started = time.perf_counter()
        generator.generate(requests(batch, 2))
        torch.cuda.synchronize()
        warm_s = time.perf_counter() - warm_started
        torch.cuda.reset_peak_memory_stats()
        clock.reset()
        timed_started = time.perf_counter()
        results = generator.generate(requests(batch, steps))
        torch.cuda.synchronize()
        wall = time.perf_counter() - timed_started
        failed = [r.error for r in results if not r.ok]
        steps_s = clock.step_seconds()
        result["batches"][str(batch)] = {
            "s_per_call": wall,
            "s_per_page": wall / batch,
            "pages_per_s": batch / wall,
            "step_s_median": sorted(steps_s)[len(steps_s) // 2] if steps_s else None,
            "peak_gpu_gb": torch.cuda.max_memory_allocated() / 2**30,
            "peak_gpu_reserved_gb": torch.cuda.max_memory_reserved() / 2**30,
            "warm_up_s": warm_s,
            "finite": clock.latents is not None and bool(torch.isfinite(clock.latents).all()) and not failed,
            "errors": [str(e) for e in failed],
        }
        progress(f"child {lever}: batch {batch}: {result['batches'][str(batch)]}")
    if lever == next(iter(LEVERS)):  # once per run, beside the pipeline as on the model service
        from bench.fullsize import draft_vs_final, moderation_cost

        if generator.drafts:
            for quality in ("final", "draft"):  # warm-up of each quality's shapes, untimed
                generator.generate(
                    [PageRequest(prompt="warm-up", seed=0, width=size, height=size, steps=2, quality=quality)]
                )
            result["draft"] = draft_vs_final(generator, clock, size, sync=torch.cuda.synchronize)
            progress(f"child {lever}: draft: {result['draft']}")

        result["moderation"] = moderation_cost(root, settings)
        progress(f"child {lever}: moderation: {result['moderation']}")
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    result["gpu"] = torch.cuda.get_device_name(0)
    report.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) == 8 and sys.argv[1] == "--child":
        _, _, lever, root, report, batches, steps, size = sys.argv
        child(lever, Path(root), Path(report), _batches(batches), int(steps), int(size))
    else:
        raise SystemExit("run it as `python -m bench --gpu`")
