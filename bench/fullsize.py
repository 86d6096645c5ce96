"""`python -m bench --full-size`: the real-size `sdxl` model set, random weights, built and run on this CPU.

1. Builds the set (`pipeline.fullsize`) in a child process: build time, its peak RSS, disk size.
2. Loads it in a fresh child process through the one loading path (`load_page_generator`, profile `sdxl`, the code
   `bentoml serve` runs) and draws pages there: time to ready, peak RSS, seconds per denoising step at 256² and
   1024², and the checks that the real-size code works: page size, finite latents, and each of the two adapters
   and the ControlNet changing the page; then one page of each `quality` (final, draft) at 1024², side by side.
3. Writes OUT/bench.json and removes the models unless `--keep`.

`--profile tiny` runs the same two children on the tiny set (`pipeline.tiny`) in seconds: tests/test_fullsize.py
runs it so that this code path cannot break unseen; its figures mean nothing.

On CPU the models run in bfloat16: float32 would need twice the memory (~25 GB, more than the machine has) and
float16 is slow and partly unsupported on CPU, while bfloat16 has float32's range, so random weights stay finite.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import median, progress, rounded
from bench.machine import describe

CPU_DTYPE = "bfloat16"
CHECK_SIZE, CHECK_STEPS = 256, 2
LARGE_SIZE, LARGE_STEPS = 1024, 1
CHARACTERS = 2


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def _children_peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def disk_bytes(root: Path) -> int:
    return sum(path.stat().st_size for path in Path(root).rglob("*") if path.is_file())


def run(args) -> dict:
    from pipeline.fullsize import parameter_table

    started = time.monotonic()
    machine = describe()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    scratch = None
    if args.model_dir:
        root = Path(args.model_dir)
    else:
        scratch = Path(tempfile.mkdtemp(prefix="picturebook-fullsize-", dir=args.scratch))
        root = scratch / f"{args.profile}-random"
    try:
        result = {
            "machine": machine,
            "profile": args.profile,
            "dtype_on_cpu": CPU_DTYPE,
            "parameters": parameter_table(),
        }
        from pipeline.tiny import COMPLETE_MARKER

        reused = (root / COMPLETE_MARKER).exists()
        progress(f"{'reusing' if reused else 'building'} the full-size set in {root}")
        build_started = time.perf_counter()
        builder = "pipeline.fullsize" if args.profile == "sdxl" else "pipeline.tiny"
        subprocess.run([sys.executable, "-m", builder, str(root)], check=True)
        result["build"] = {
            "seconds": time.perf_counter() - build_started,
            "peak_rss_mb": _children_peak_rss_mb(),
            "disk_bytes": disk_bytes(root),
            "reused": reused,  # then the figures above are not a build's
        }
        progress(f"built: {result['build']}")

        report = out / "fullsize-child.json"
        progress("loading it through load_page_generator in a fresh process, then drawing pages")
        subprocess.run(
            [
                sys.executable,
                "-m",
                "bench.fullsize",
                "--child",
                str(root),
                str(report),
                "--large" if args.large else "--no-large",
                args.profile,
            ],
            check=True,
        )
        result["run"] = json.loads(report.read_text())
        report.unlink()
    finally:
        if scratch is not None and not args.keep:
            shutil.rmtree(scratch, ignore_errors=True)
        elif scratch is not None:
            progress(f"kept the models in {root}")
    result["duration_s"] = time.monotonic() - started
    # Other work on the machine slows every figure; the load at the end says whether it ran alone.
    result["machine"]["load_average_at_end"] = list(os.getloadavg())
    result = rounded(result)
    (out / "bench.json").write_text(json.dumps(result, indent=2) + "\n")
    progress(f"wrote {out / 'bench.json'}")
    failed = [name for name, ok in result["run"]["checks"].items() if not ok]
    if failed:
        progress(f"FAILED checks: {failed}")
        raise SystemExit(1)
    return result


# ---------------------------------------------------------------------------------------------------------------------
# The child: everything that needs the models in memory, so its peak RSS is the serving process's.


class StepClock:
    """Seconds per denoising step (ControlNet + UNet + scheduler), and the latents the VAE decodes, via hooks."""

    def __init__(self, pipe):
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.latents = None
        pipe.controlnet.register_forward_pre_hook(lambda module, inputs: self.starts.append(time.perf_counter()))
        pipe.unet.register_forward_hook(lambda module, inputs, output: self.ends.append(time.perf_counter()))
        pipe.vae.post_quant_conv.register_forward_pre_hook(self._capture)

    def _capture(self, module, inputs):
        self.latents = inputs[0].detach().float().clone()

    def reset(self):
        self.starts, self.ends, self.latents = [], [], None

    def step_seconds(self) -> list[float]:
        return [end - start for start, end in zip(self.starts, self.ends)]


def _draw(generator, clock, size: int, steps: int | None, quality: str = "final"):
    from bench.workload import character_picture, page_picture
    from pipeline import PageRequest

    request = PageRequest(
        prompt="a fox and a bear have a picnic by the river",
        prev_frame=page_picture(0, size),
        characters=tuple(character_picture(k) for k in range(CHARACTERS)),
        seed=7,
        width=size,
        height=size,
        steps=steps,
        quality=quality,
    )
    clock.reset()
    started = time.perf_counter()
    [result] = generator.generate([request])
    wall = time.perf_counter() - started
    if not result.ok:
        raise RuntimeError(f"the page failed: {result.error}")
    return result, clock.latents, clock.step_seconds(), wall


def draft_vs_final(generator, clock, size: int, steps_each: int | None = None, sync=lambda: None) -> dict:
    """One page of each quality at `size`², the same request (a continuation page with two characters, seed 7).

    `steps_each=None` draws each page in full (its quality's own steps: the GPU); a number draws that many steps of
    each (the CPU, where a 30-step 1024² page takes most of an hour) and the page is then estimated as its fixed costs
    (depth, image encoding, VAE decode, picture check: the measured wall time less its steps) plus its quality's
    steps at the measured median step time. A draft step costs more than a final one: the LoRA is unfused."""
    import numpy as np
    import torch

    from pipeline.page import Quality

    pages, images = {}, {}
    for quality in (Quality.final, Quality.draft):
        resolved = generator.resolve(_request_steps_only(quality))
        result, latents, step_s, wall = _draw(generator, clock, size, steps_each, quality.value)
        sync()
        images[quality.value] = np.asarray(result.image, dtype=np.float64)
        drawn = len(step_s)
        step = median(step_s) if step_s else None
        fixed = wall - sum(step_s)
        pages[quality.value] = {
            "steps_of_the_quality": resolved.steps,
            "guidance_scale": resolved.guidance_scale,
            "scheduler": type(generator.pipe.scheduler).__name__,
            "steps_drawn": drawn,
            "wall_s": wall,
            "step_s": step_s,
            "step_s_median": step,
            "fixed_s": fixed,
            "page_s": wall if drawn == resolved.steps else fixed + resolved.steps * step,
            "page_s_is": "measured" if drawn == resolved.steps else "estimated from the steps drawn",
            "timings_ms": result.timings_ms,
            "latents_finite": latents is not None and bool(torch.isfinite(latents).all()),
        }
        progress(f"child: {quality.value} page at {size}²: {pages[quality.value]}")
    final, draft = pages["final"], pages["draft"]
    return {
        "size": size,
        **pages,
        "draft_over_final_page_s": draft["page_s"] / final["page_s"],
        "draft_over_final_step_s": draft["step_s_median"] / final["step_s_median"],
        "pixel_mean_abs_diff": float(np.abs(images["draft"] - images["final"]).mean()),
    }


def _request_steps_only(quality):
    from pipeline import PageRequest

    return PageRequest(prompt="steps", seed=0, quality=quality)


TRANSLATION_PROMPTS = (
    "两个角色在花园中交谈，左边是角色1，右边是角色2",
    "小狐狸在森林里找到一只红色的风筝。",
    "女孩和她的狗在月光下走回家。",
    "晴天，兔子在河边读书。",
)


def translation_timing(generator) -> dict | None:
    """What translating a page's Chinese prompt costs, uncached: each prompt alone, then all in one call (as the
    prompts of one diffusion call are translated). Random weights never stop early: every call decodes to its cap."""
    translator = generator.translator
    if translator is None:
        return None
    translator.generate(["预热"])
    alone = []
    for prompt in TRANSLATION_PROMPTS:
        started = time.perf_counter()
        translator.generate([prompt])
        alone.append((time.perf_counter() - started) * 1000)
    started = time.perf_counter()
    translator.generate(list(TRANSLATION_PROMPTS))
    together = (time.perf_counter() - started) * 1000
    return {
        "prompts": len(TRANSLATION_PROMPTS),
        "ms_per_prompt_alone": alone,
        "median_ms_alone": median(alone),
        "ms_all_in_one_call": together,
        "ms_per_page_in_one_call": together / len(TRANSLATION_PROMPTS),
    }


MODERATION_TEXTS = [
    "two characters talk in a garden, character 1 on the left, character 2 on the right",
    "The fox finds a red kite in the tall grass and runs to show the hedgehog.",
    "小狐狸在花园里找到了一只红色的风筝。",
    "a knight meets a dragon at the edge of the dark forest, watercolour, soft light",
]


def moderation_cost(root: Path, settings) -> dict:
    """The moderation model's load time, memory and cost per prompt (one alone, then the four together), on the same
    loading path the model service uses."""
    import psutil
    import torch

    from pipeline import ModelPaths
    from pipeline.loading import load_text_moderator

    cuda = settings.on_cuda
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    gpu_before = torch.cuda.memory_allocated() if cuda else 0
    before = psutil.Process().memory_info().rss / 2**20
    started = time.perf_counter()
    moderator = load_text_moderator(ModelPaths.under(root), settings.model_copy(update={"moderation": True}))
    sync()
    load_s = time.perf_counter() - started
    loaded = psutil.Process().memory_info().rss / 2**20
    gpu_loaded = torch.cuda.memory_allocated() if cuda else 0
    moderator.moderate(MODERATION_TEXTS[:1])  # one-off costs
    sync()
    started = time.perf_counter()
    moderator.moderate(MODERATION_TEXTS[:1])
    sync()
    one_s = time.perf_counter() - started
    started = time.perf_counter()
    verdicts = moderator.moderate(MODERATION_TEXTS)
    sync()
    batch_s = time.perf_counter() - started
    tokens = [len(moderator.tokenizer(moderator.prompt(text)).input_ids) for text in MODERATION_TEXTS]
    return {
        "load_s": load_s,
        "rss_added_mb": loaded - before,
        "gpu_weights_gb": (gpu_loaded - gpu_before) / 2**30,
        "one_prompt_s": one_s,
        "per_prompt_in_batch_of_4_s": batch_s / len(MODERATION_TEXTS),
        "prompt_tokens": tokens,
        "max_new_tokens": moderator.max_new_tokens,
        "levels": [verdict.level for verdict in verdicts],  # random weights: unparseable, i.e. refused
    }


def child(root: Path, report: Path, large: bool, profile: str = "sdxl") -> None:
    import numpy as np
    import psutil
    import torch

    from bench.inprocess import quiet_libraries
    from pipeline import ModelPaths, ModelSettings, Profile, load_page_generator

    quiet_libraries()
    rss = {"before_load_mb": psutil.Process().memory_info().rss / 2**20}
    settings = ModelSettings(profile=Profile(profile), model_dir=root, device="cpu", dtype=CPU_DTYPE)
    started = time.perf_counter()
    generator = load_page_generator(ModelPaths.under(root), settings)
    load_s = time.perf_counter() - started
    rss["after_load_mb"] = psutil.Process().memory_info().rss / 2**20
    rss["peak_during_load_mb"] = _peak_rss_mb()
    progress(
        f"child: loaded in {load_s:.1f} s, RSS {rss['after_load_mb']:.0f} MB (peak {rss['peak_during_load_mb']:.0f} MB)"
    )
    clock = StepClock(generator.pipe)

    pages, latents, images = {}, {}, {}
    variants = {
        "full": {},
        "face_adapter_off": {"face_adapter_scale": 0.0},
        "style_adapter_off": {"style_adapter_scale": 0.0},
        "controlnet_off": {"controlnet_scale": 0.0},
    }
    for name, change in variants.items():
        generator.settings = settings.model_copy(update=change)
        result, final_latents, steps, wall = _draw(generator, clock, CHECK_SIZE, CHECK_STEPS)
        latents[name], images[name] = final_latents, np.asarray(result.image, dtype=np.float64)
        pages[name] = {
            "wall_s": wall,
            "step_s": steps,
            "timings_ms": result.timings_ms,
            "size": list(result.image.size),
        }
        progress(f"child: {name}: {wall:.1f} s, steps {[round(s, 2) for s in steps]} s, {result.timings_ms}")
    generator.settings = settings

    def changed(name: str) -> dict:
        return {
            "latent_mean_abs_diff": float((latents[name] - latents["full"]).abs().mean()),
            "pixel_mean_abs_diff": float(np.abs(images[name] - images["full"]).mean()),
        }

    effects = {name: changed(name) for name in variants if name != "full"}
    full = latents["full"]
    checks = {
        "page_size": all(page["size"] == [CHECK_SIZE, CHECK_SIZE] for page in pages.values()),
        "latents_finite": all(bool(torch.isfinite(x).all()) for x in latents.values()),
        "page_not_blank": float(images["full"].std()) > 1.0,
        **{
            f"{name}_changes_page": effect["latent_mean_abs_diff"] > 0 and effect["pixel_mean_abs_diff"] > 0
            for name, effect in effects.items()
        },
    }
    result = {
        "load_s": load_s,
        "rss": rss,
        "check_pages": {
            "size": CHECK_SIZE,
            "steps": CHECK_STEPS,
            "characters": CHARACTERS,
            "continuation": True,
            **pages,
        },
        "effects": effects,
        "latents_stats": {"mean": float(full.mean()), "std": float(full.std()), "max_abs": float(full.abs().max())},
        "checks": checks,
        "step_s": {str(CHECK_SIZE): median([s for page in pages.values() for s in page["step_s"]])},
    }
    if large:
        page, final_latents, steps, wall = _draw(generator, clock, LARGE_SIZE, LARGE_STEPS)
        result["step_s"][str(LARGE_SIZE)] = steps[0]
        result["large_page"] = {
            "size": LARGE_SIZE,
            "steps": LARGE_STEPS,
            "wall_s": wall,
            "timings_ms": page.timings_ms,
            "latents_finite": bool(torch.isfinite(final_latents).all()),
        }
        checks["large_page_finite"] = result["large_page"]["latents_finite"]
        progress(f"child: {LARGE_SIZE}²: {wall:.1f} s, step {steps[0]:.1f} s, {page.timings_ms}")
    draft_size = LARGE_SIZE if large else CHECK_SIZE
    result["draft_vs_final"] = draft_vs_final(generator, clock, draft_size, steps_each=LARGE_STEPS if large else 1)
    checks["draft_page_finite"] = result["draft_vs_final"]["draft"]["latents_finite"]
    checks["draft_differs_from_final"] = result["draft_vs_final"]["pixel_mean_abs_diff"] > 0
    progress(
        f"child: draft/final page time at {draft_size}²: {result['draft_vs_final']['draft_over_final_page_s']:.3f}"
    )
    result["translation"] = translation_timing(generator)
    if result["translation"] is not None:
        result["translation"]["diffusion_ms_beside"] = pages["full"]["timings_ms"].get("diffusion")
        progress(f"child: translation {result['translation']}")
    result["moderation"] = moderation_cost(root, settings)
    progress(f"child: moderation: {result['moderation']}")
    rss["peak_mb"] = _peak_rss_mb()
    result["threads"] = torch.get_num_threads()
    report.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "--child":
        large = len(sys.argv) < 5 or sys.argv[4] == "--large"
        child(Path(sys.argv[2]), Path(sys.argv[3]), large, *sys.argv[5:6])
    else:
        raise SystemExit("run it as `python -m bench --full-size`")
