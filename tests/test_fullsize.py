"""The full-size random set's architecture (meta device: no weights allocated) and the GPU benchmark's CPU-side logic.

The full-size build and run themselves are a benchmark (`python -m bench --full-size`), not a test: ~12 GB of
weights and ~20 minutes. Its code path runs here on the tiny set, and the GPU benchmark's child up to its CUDA check.
"""

import json
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from bench.run import main as bench_main
from pipeline import fullsize
from pipeline.sources import MODEL_REPOS
from testkit.server import REPO


@pytest.fixture(scope="module")
def table():
    return {row["component"]: row for row in fullsize.parameter_table()}


def test_every_component_matches_its_published_parameter_count(table):
    assert set(table) == {c.name for c in fullsize.COMPONENTS}
    for name, row in table.items():
        assert row["matches"], f"{name}: built {row['built']:,}, published {row['published']:,}"
    # The well-known exact counts, exactly.
    assert table["unet"]["built"] == 2_567_463_684
    assert (table["text_encoder"]["built"], table["text_encoder_2"]["built"]) == (123_060_480, 694_659_840)
    assert table["image_encoder"]["built"] == 632_076_800


def test_safety_checker_is_clip_vit_l_and_its_thresholds_never_flag_a_random_set():
    """The checker's vision tower is CLIP ViT-L/14 at 224 px, and the thresholds written as constants exist by those
    names: were they renamed, the build would draw them at random and flag every page of the full-size bench."""
    shapes = fullsize.tensor_shapes("safety_checker")
    assert shapes["vision_model.embeddings.patch_embedding.weight"] == torch.Size([1024, 3, 14, 14])
    assert shapes["vision_model.embeddings.position_embedding.weight"] == torch.Size([(224 // 14) ** 2 + 1, 1024])
    assert shapes["visual_projection.weight"] == torch.Size([768, 1024])
    assert sum(key.endswith(".self_attn.q_proj.weight") for key in shapes) == 24
    for key, threshold in fullsize.CONSTANT_TENSORS["safety_checker"].items():
        assert key in shapes and threshold > 1  # a cosine never exceeds 1


def test_adapters_have_the_layout_diffusers_converts(table):
    """The plus adapters' keys: a 4-layer resampler at ViT-H width, K/V for each of SDXL's 70 cross-attentions."""
    shapes = fullsize.tensor_shapes("face_adapter")
    kv = [key for key in shapes if key.startswith("ip_adapter.")]
    assert len(kv) == 2 * 70
    assert shapes["image_proj.latents"] == torch.Size([1, 16, 1280])
    assert shapes["image_proj.proj_in.weight"] == torch.Size([1280, 1280])  # reads ViT-H's 1280-wide hidden states
    assert shapes["image_proj.proj_out.weight"] == torch.Size([2048, 1280])  # writes the UNet's cross-attention width
    assert {shapes[key][0] for key in kv} == {640, 1280}
    assert table["face_adapter"]["built"] == table["style_adapter"]["built"]


def test_the_draft_lora_has_the_size_of_the_real_file():
    """788 modules of SDXL's UNet at rank 64: 196,751,360 parameters, 787,005,440 bytes in float32, the real file's
    787,359,648 bytes less its safetensors header (pipeline/tiny.py says how the layout was inferred)."""
    spreads = fullsize.draft_lora_spreads()
    modules = {key.rsplit(".lora_", 1)[0] for key in spreads}
    assert len(modules) == 788 and len(spreads) == 2 * 788
    assert sum(shape.numel() for shape, _ in spreads.values()) == 196_751_360
    ranks = {shape[0] for key, (shape, _) in spreads.items() if ".lora_A." in key}
    assert ranks == {64} and all(std > 0 for _, std in spreads.values())


def test_configs_are_stored_for_every_model_folder():
    folders = {path.name for path in fullsize.CONFIGS.iterdir() if path.is_dir()}
    no_config = ("depth", "draft_lora")  # a checkpoint and a LoRA: no config file of their own
    assert folders == {repo.folder for key, repo in MODEL_REPOS.items() if key not in no_config}
    for path in fullsize.CONFIGS.rglob("*.json"):
        json.loads(path.read_text())
    assert "Where each configuration comes from" in (fullsize.CONFIGS / "SOURCES.md").read_text()


def test_streaming_writer_round_trips_through_safetensors(tmp_path):
    from safetensors.torch import load_file

    shapes = {"a.weight": torch.Size([3, 5]), "b.bias": torch.Size([7]), "c.norm.weight": torch.Size([2, 2, 3])}
    norms = {"c.norm.weight"}

    def make(key, shape):
        return fullsize.random_tensor(0, key, shape, norms, torch.float16)

    path = tmp_path / "x.safetensors"
    fullsize.write_safetensors_streaming(path, shapes, make, torch.float16)
    loaded = load_file(str(path))
    assert {key: tensor.shape for key, tensor in loaded.items()} == shapes
    for key, shape in shapes.items():
        assert torch.equal(loaded[key], make(key, shape)), key  # deterministic per tensor
    assert loaded["c.norm.weight"].eq(1).all() and loaded["b.bias"].eq(0).all()
    assert 0 < loaded["a.weight"].float().std() < 1


# --- python -m bench --gpu: argument handling and the JSON it writes, on a machine without CUDA ---


def test_gpu_bench_skips_cleanly_without_cuda(tmp_path, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the skip path is not taken")
    result = bench_main(["--gpu", "--out", str(tmp_path), "--part", "all", "--batches", "1,2"])
    written = json.loads((tmp_path / "gpu.json").read_text())
    assert "CUDA" in written["skipped"] and result["skipped"] == written["skipped"]
    assert written["levers"] == {} and written["machine"]["gpu"] is None
    assert written["request"].startswith("1024×1024, 30 steps")


def test_gpu_bench_plans_the_levers_in_the_documented_order():
    from bench import gpu

    def args(*argv):
        import argparse

        parser = argparse.ArgumentParser()
        gpu.add_arguments(parser)
        return parser.parse_args(list(argv))

    assert gpu.plan(args()) == [
        ("fp16_sdpa", (1, 2, 4)), ("channels_last", (1, 2, 4)), ("fuse_qkv", (1, 2, 4)), ("cpu_offload", (1,)),
    ]  # fmt: skip
    assert gpu.plan(args("--part", "compile", "--batches", "2")) == [("compile", (2,))]
    assert [lever for lever, _ in gpu.plan(args("--part", "all"))] == list(gpu.LEVERS)
    # Each lever adds to the one before, as docs/PERFORMANCE.md orders them.
    assert gpu.LEVERS["compile"] == {**gpu.LEVERS["fuse_qkv"], "compile": True}


@pytest.mark.parametrize(
    "argv",
    [
        ["--gpu", "--batches", "0"],
        ["--gpu", "--batches", "one"],
        ["--gpu", "--part", "turbo"],
        ["--gpu", "--full-size"],
    ],
)
def test_gpu_bench_rejects_bad_arguments(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        bench_main(argv)
    assert exit_info.value.code == 2
    assert "error" in capsys.readouterr().err


def test_bench_children_refuse_to_run_alone():
    import subprocess

    def alone(module):
        return subprocess.run([sys.executable, "-m", module], capture_output=True, text=True, timeout=120)

    with ThreadPoolExecutor(2) as pool:  # two interpreters at once, one per core
        for run in pool.map(alone, ("bench.gpu", "bench.fullsize")):
            assert run.returncode != 0 and "python -m bench" in run.stderr


# --- the real-size benchmarks' children, run as `python -m bench` runs them ---
# Their code only runs in a benchmark, so an import or settings break there went unseen (issue 22): run them here.


def test_full_size_bench_runs_end_to_end_on_the_tiny_set(tiny_dir, tmp_path):
    """`python -m bench --full-size` as a user runs it, its build step and its child process as they are, on the
    tiny set (`--profile tiny`): every step of the real-size run, in seconds."""
    import subprocess

    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--full-size", "--profile", "tiny", "--model-dir", str(tiny_dir),
         "--no-large", "--out", str(out)],
        capture_output=True, text=True, timeout=600, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    report = json.loads((out / "bench.json").read_text())
    assert report["profile"] == "tiny" and report["build"]["reused"]
    assert report["run"]["checks"] and all(report["run"]["checks"].values()), report["run"]["checks"]
    assert report["run"]["check_pages"]["full"]["size"] == [256, 256]
    pair = report["run"]["draft_vs_final"]  # issue 27: one page of each quality, side by side, and the ratio
    assert (pair["final"]["steps_of_the_quality"], pair["draft"]["steps_of_the_quality"]) == (4, 2)
    assert (pair["final"]["scheduler"], pair["draft"]["scheduler"]) == ("EulerDiscreteScheduler", "DDIMScheduler")
    assert pair["final"]["page_s_is"] == "estimated from the steps drawn" and pair["draft_over_final_page_s"] > 0
    assert tiny_dir.exists(), "a set given with --model-dir is kept"


def test_gpu_bench_child_gets_to_its_cuda_check(tiny_dir, tmp_path):
    """The child of `python -m bench --gpu`, started with the command `run` uses: on a machine without CUDA it
    must import everything and build its settings, then stop with a clear message, not an ImportError."""
    import subprocess

    from bench import gpu

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the child would measure (python -m bench --gpu does that)")
    report = tmp_path / "gpu-fp16_sdpa.json"

    def child(lever):
        command = gpu.child_command(lever, tiny_dir, report, (1, 2), 2, 64)
        return lever, subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=REPO)

    levers = ("compile", "cpu_offload")  # every lever's settings but one, and the other kind
    with ThreadPoolExecutor(2) as pool:  # two children at once, one per core
        runs = list(pool.map(child, levers))
    for lever, run in runs:
        assert run.returncode == 1, run.stderr[-4000:]
        assert "Traceback" not in run.stderr, run.stderr[-4000:]
        assert f"bench.gpu child {lever}: CUDA is not available" in run.stderr
        assert not report.exists()


def test_gpu_bench_command_skips_cleanly_without_cuda(tmp_path):
    """`python -m bench --gpu` itself, as a process: argument parsing, imports, the skip record, exit 0."""
    import subprocess

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the skip path is not taken")
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--gpu", "--out", str(tmp_path), "--part", "all"],
        capture_output=True, text=True, timeout=120, cwd=REPO,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert "CUDA" in json.loads((tmp_path / "gpu.json").read_text())["skipped"]
