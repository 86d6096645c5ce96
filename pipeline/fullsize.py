"""The `sdxl` model set at its real size, with random weights, built offline: `python -m pipeline.fullsize DIR`.

Every folder of `MODEL_REPOS` is written in its hub layout from the real repositories' configuration files (kept in
`pipeline/fullsize_configs/`, where `SOURCES.md` says where each came from), so `PICTUREBOOK_PROFILE=sdxl` with
`PICTUREBOOK_MODEL_DIR=DIR` loads it through the one loading path, exactly as it loads the real weights. Random weights
cost the same memory and FLOPs as trained ones: this is what proves the real-size code and measures it without a hub.

The weights are seeded per tensor (the same seed gives the same bytes) and streamed to disk one tensor at a time,
so the build never holds a model in memory: the architectures are instantiated on the meta device only to learn
their tensor names and shapes. Weights are written in float16 (the loader casts them to the requested dtype), the
depth network in float32 as its real `.pt` is.
"""

from __future__ import annotations

import argparse
import json
import shutil
import struct
import sys
import zlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import torch

from .config import Profile
from .sources import (
    ADAPTER_SUBFOLDER,
    DRAFT_LORA_WEIGHTS,
    FACE_ADAPTER_WEIGHTS,
    IMAGE_ENCODER_FOLDER,
    MODEL_REPOS,
    PROFILES,
    STYLE_ADAPTER_WEIGHTS,
)
from .tiny import (
    FULL_SIZE_DRAFT_RANK,
    PlusAdapterShape,
    build_atomically,
    draft_lora_state_dict,
    plus_adapter_state_dict,
)

CONFIGS = Path(__file__).resolve().parent / "fullsize_configs"
BASE = MODEL_REPOS["base"].folder
WEIGHTS_DTYPE = torch.float16

# IP-Adapter plus, SDXL, ViT-H: the reference Resampler(dim=1280, depth=4, dim_head=64, heads=20, num_queries=16,
# embedding_dim=1280 (ViT-H hidden size), output_dim=2048 (the UNet's cross-attention width), ff_mult=4).
SDXL_PLUS_ADAPTER = PlusAdapterShape(vision_width=1280, width=1280, queries=16, depth=4, kv_std=0.02)

# Tensors written as constants instead of random draws. The safety checker flags a picture when its cosine with a
# concept embedding exceeds that concept's threshold (`*_weights`). Random thresholds (drawn around 0) would flag every
# page, as about half of them are negative; above the largest cosine (1) no random concept ever flags, so the random
# set draws pages while its check still runs the whole ViT-L/14, costing what the real check costs.
CONSTANT_TENSORS = {
    "safety_checker": {"concept_embeds_weights": 2.0, "special_care_embeds_weights": 2.0},
}


@dataclass(frozen=True)
class Component:
    name: str
    repo: str  # key of MODEL_REPOS
    weights: str  # the weights file, relative to the repository folder
    published: int  # parameter count of the real weights
    published_source: str
    rounding: int = 0  # half a unit of the published figure's last digit, where only a rounded figure is published

    def matches(self, built: int) -> bool:
        """Within 0.1 % of the published count (or within its rounding, where that is coarser)."""
        return abs(built - self.published) <= max(self.published // 1000, self.rounding)


COMPONENTS = (
    Component(
        "unet",
        "base",
        "unet/diffusion_pytorch_model.safetensors",
        2_567_463_684,
        "SDXL base UNet, 2,567,463,684 parameters (SDXL report: 2.6 B; diffusers' count of the hub weights)",
    ),
    Component(
        "text_encoder",
        "base",
        "text_encoder/model.safetensors",
        123_060_480,
        "CLIP ViT-L/14 text tower, 123,060,480 parameters (openai/clip-vit-large-patch14)",
    ),
    Component(
        "text_encoder_2",
        "base",
        "text_encoder_2/model.safetensors",
        694_659_840,
        "OpenCLIP ViT-bigG/14 text tower + projection, 694,659,840 parameters",
    ),
    Component(
        "vae",
        "vae",
        "diffusion_pytorch_model.safetensors",
        83_653_863,
        "SDXL VAE (fp16-fix has the same architecture), 83,653,863 parameters",
    ),
    Component(
        "controlnet",
        "controlnet",
        "diffusion_pytorch_model.safetensors",
        1_250_000_000,
        "controlnet-depth-sdxl-1.0: 1.25 B parameters (its 5.0 GB float32 weights file)",
        5_000_000,
    ),
    Component(
        "image_encoder",
        "ip_adapter",
        f"{IMAGE_ENCODER_FOLDER}/model.safetensors",
        632_076_800,
        "OpenCLIP ViT-H/14 vision tower + projection, 632,076,800 parameters (2.53 GB of float32)",
    ),
    Component(
        "face_adapter",
        "ip_adapter",
        f"{ADAPTER_SUBFOLDER}/{FACE_ADAPTER_WEIGHTS}",
        424_000_000,
        "ip-adapter-plus-face_sdxl_vit-h.safetensors: 424 M parameters (its 848 MB float16 file)",
        500_000,
    ),
    Component(
        "style_adapter",
        "ip_adapter",
        f"{ADAPTER_SUBFOLDER}/{STYLE_ADAPTER_WEIGHTS}",
        424_000_000,
        "ip-adapter-plus_sdxl_vit-h.safetensors: 424 M parameters (its 848 MB float16 file)",
        500_000,
    ),
    Component(
        "depth",
        "depth",
        PROFILES[Profile.sdxl].depth_checkpoint,
        123_000_000,
        "dpt_hybrid-midas-501f0c75.pt: MiDaS v3 DPT-Hybrid, 123 M parameters (MiDaS model table)",
        500_000,
    ),
    Component(
        "safety_checker",
        "safety_checker",
        "model.safetensors",
        304_000_000,
        "CompVis/stable-diffusion-safety-checker (CLIP ViT-L/14 vision tower + projection + 20 concepts): 304.0 M "
        "parameters, from its 608,018,440-byte float16 model.safetensors (at most 304,009,216 with an empty header; "
        "~48 KB of header for 396 tensors) and its 1.22 GB float32 pytorch_model.bin",
    ),
    Component(
        "translator",
        "translator",
        "model.safetensors",
        78_000_000,
        "Helsinki-NLP/opus-mt-zh-en (MarianMT, 6+6 layers, 512 wide, 65,001 pieces): about 78 M parameters; its "
        "sister opus-mt-en-zh (same config) holds 144,569,321 elements in pytorch_model.bin, which is 77,943,296 "
        "distinct parameters plus two more copies of the tied 65,001 x 512 embedding and final_logits_bias",
        500_000,
    ),
    Component(
        "moderation",
        "moderation",
        "model.safetensors",
        596_000_000,
        "Qwen3Guard-Gen-0.6B = Qwen3-0.6B's architecture: 0.6 B parameters (model card; 0.44 B non-embedding), "
        "596 M with the tied 151,936 x 1,024 embedding counted once",
        1_000_000,
    ),
)
TRANSLATOR = MODEL_REPOS["translator"].folder


def _config(relative: str) -> dict:
    return json.loads((CONFIGS / relative).read_text())


def meta_model(name: str):
    """The component's architecture from its config, on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        if name == "unet":
            from diffusers import UNet2DConditionModel

            return UNet2DConditionModel.from_config(_config(f"{BASE}/unet/config.json"))
        if name == "controlnet":
            from diffusers import ControlNetModel

            return ControlNetModel.from_config(_config(f"{MODEL_REPOS['controlnet'].folder}/config.json"))
        if name == "vae":
            from diffusers import AutoencoderKL

            return AutoencoderKL.from_config(_config(f"{MODEL_REPOS['vae'].folder}/config.json"))
        if name in ("text_encoder", "text_encoder_2"):
            from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

            model_class = CLIPTextModel if name == "text_encoder" else CLIPTextModelWithProjection
            return model_class(CLIPTextConfig.from_dict(_config(f"{BASE}/{name}/config.json")))
        if name == "image_encoder":
            from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

            folder = MODEL_REPOS["ip_adapter"].folder
            return CLIPVisionModelWithProjection(
                CLIPVisionConfig.from_dict(_config(f"{folder}/{IMAGE_ENCODER_FOLDER}/config.json"))
            )
        if name == "depth":
            from .depth import build_depth_network

            return build_depth_network(PROFILES[Profile.sdxl].depth_architecture)
        if name == "moderation":
            from transformers import Qwen3Config, Qwen3ForCausalLM

            return Qwen3ForCausalLM(Qwen3Config.from_dict(_config(f"{MODEL_REPOS['moderation'].folder}/config.json")))
        if name == "safety_checker":
            from diffusers.pipelines.stable_diffusion.safety_checker import StableDiffusionSafetyChecker
            from transformers import CLIPConfig

            folder = MODEL_REPOS["safety_checker"].folder
            return StableDiffusionSafetyChecker(CLIPConfig.from_dict(_config(f"{folder}/config.json")))
        if name == "translator":
            from transformers import MarianConfig, MarianMTModel

            return MarianMTModel(MarianConfig.from_dict(_config(f"{TRANSLATOR}/config.json")))
    raise KeyError(name)


def _meta_normal(name, shape, std):
    return torch.empty(shape, device="meta")


def tensor_shapes(name: str) -> dict[str, torch.Size]:
    """Every tensor the component's weights file holds, by key, computed without allocating any weight."""
    if name in ("face_adapter", "style_adapter"):
        state = plus_adapter_state_dict(meta_model("unet"), SDXL_PLUS_ADAPTER, _meta_normal)
        return {key: tensor.shape for key, tensor in state.items()}
    if name == "translator":  # its embeddings are tied (one matrix under three keys): each parameter once
        return {key: tensor.shape for key, tensor in meta_model(name).named_parameters()}
    shapes = {key: tensor.shape for key, tensor in meta_model(name).state_dict().items()}
    if name == "moderation":
        shapes.pop("lm_head.weight")  # tied to the embeddings (tie_word_embeddings), not stored
    return shapes


@cache
def parameter_counts() -> dict[str, int]:
    return {c.name: sum(shape.numel() for shape in tensor_shapes(c.name).values()) for c in COMPONENTS}


# ---------------------------------------------------------------------------------------------------------------------
# Deterministic random tensors


def _generator(seed: int, key: str) -> torch.Generator:
    # Per-tensor seeds: a tensor's bytes do not depend on which tensors were drawn before it.
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(key.encode()))


def _uniform(seed: int, key: str, shape, std: float, dtype: torch.dtype) -> torch.Tensor:
    bound = std * 3**0.5  # a uniform distribution with this standard deviation: cheaper to draw than a normal
    return torch.empty(shape).uniform_(-bound, bound, generator=_generator(seed, key)).to(dtype)


def _norm_parameters(model) -> set[str]:
    norms = (torch.nn.LayerNorm, torch.nn.GroupNorm, torch.nn.BatchNorm2d)
    return {
        f"{module_name}.{param}".lstrip(".")
        for module_name, module in model.named_modules()
        if isinstance(module, norms)
        for param in ("weight", "bias")
    }


def random_tensor(seed: int, key: str, shape, norms: set[str], dtype: torch.dtype) -> torch.Tensor:
    """A weight drawn so that a deep random network keeps activations of order one (finite in 16 bits).

    Normalisation layers start as identity (weight 1, bias 0), biases at 0, embeddings at 0.02 as CLIP initialises
    them, every other weight with variance 1 / fan-in. The ControlNet's zero convolutions get the same random weights
    as everything else, so the depth conditioning acts on the page instead of adding zero.
    """
    if key in norms:
        return (torch.ones if key.endswith("weight") else torch.zeros)(shape, dtype=dtype)
    if key.endswith("bias") or len(shape) == 0:
        return torch.zeros(shape, dtype=dtype)
    if "embedding" in key and len(shape) == 2 and not key.endswith("proj.weight"):
        return _uniform(seed, key, shape, 0.02, dtype)
    fan_in = max(1, torch.Size(shape[1:]).numel())
    return _uniform(seed, key, shape, fan_in**-0.5, dtype)


# ---------------------------------------------------------------------------------------------------------------------
# Writers

_SAFETENSORS_DTYPES = {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32"}


def write_safetensors_streaming(path: Path, shapes: dict[str, torch.Size], make, dtype: torch.dtype) -> None:
    """A .safetensors file written tensor by tensor (`make(key, shape)`), so memory holds one tensor at a time.

    `safetensors.save_file` needs the whole state dict in memory, plus a byte copy of it: twice the UNet's 5 GB.
    """
    itemsize = torch.empty((), dtype=dtype).element_size()
    header, offset = {"__metadata__": {"format": "pt"}}, 0
    for key, shape in shapes.items():
        size = shape.numel() * itemsize
        header[key] = {
            "dtype": _SAFETENSORS_DTYPES[dtype],
            "shape": list(shape),
            "data_offsets": [offset, offset + size],
        }
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the format aligns the data that follows to 8 bytes
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:
        file.write(struct.pack("<Q", len(encoded)))
        file.write(encoded)
        for key, shape in shapes.items():
            tensor = make(key, shape).to(dtype).contiguous()
            assert tensor.shape == shape, (key, tensor.shape, shape)
            file.write(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")


def _copy_config(relative: str, staging: Path) -> None:
    target = staging / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(CONFIGS / relative, target)


def _write_model(name: str, staging: Path, seed: int) -> None:
    component = next(c for c in COMPONENTS if c.name == name)
    folder = staging / MODEL_REPOS[component.repo].folder
    model = meta_model(name)
    norms = _norm_parameters(model)
    shapes = tensor_shapes(name)
    constants = CONSTANT_TENSORS.get(name, {})

    def make(key, shape):
        if key in constants:
            return torch.full(shape, constants[key], dtype=WEIGHTS_DTYPE)
        return random_tensor(seed, key, shape, norms, WEIGHTS_DTYPE)

    write_safetensors_streaming(folder / component.weights, shapes, make, WEIGHTS_DTYPE)
    config = Path(component.weights).parent / "config.json"
    _copy_config(str(Path(MODEL_REPOS[component.repo].folder) / config), staging)


def _write_adapters(staging: Path, seed: int) -> None:
    unet = meta_model("unet")
    requested: dict[str, float] = {}

    def record(key, shape, std):
        requested[key] = std
        return torch.empty(shape, device="meta")

    # The shared layout function says which tensors are random (and with what spread) and which are constants.
    state = plus_adapter_state_dict(unet, SDXL_PLUS_ADAPTER, record)
    shapes = {key: tensor.shape for key, tensor in state.items()}
    for offset, weights in enumerate((FACE_ADAPTER_WEIGHTS, STYLE_ADAPTER_WEIGHTS), start=1):

        def make(key, shape, adapter_seed=seed + offset):  # two different adapters, as the real ones are
            if key not in requested:
                return state[key]
            return _uniform(adapter_seed, key, shape, requested[key], WEIGHTS_DTYPE)

        path = staging / MODEL_REPOS["ip_adapter"].folder / ADAPTER_SUBFOLDER / weights
        write_safetensors_streaming(path, shapes, make, WEIGHTS_DTYPE)


def draft_lora_spreads() -> dict[str, tuple[torch.Size, float]]:
    """The draft LoRA at SDXL's size: each tensor's shape and spread, from the layout function the tiny set uses
    (788 modules at rank 64: 196,751,360 parameters, the real file's 787 MB in float32; see pipeline/tiny.py)."""
    unet = meta_model("unet")
    spreads: dict[str, tuple[torch.Size, float]] = {}

    def record(key, shape, std):
        spreads[key] = (torch.Size(shape), std)
        return torch.empty(shape, device="meta")

    draft_lora_state_dict(unet, FULL_SIZE_DRAFT_RANK, record)
    return spreads


def _write_draft_lora(staging: Path, seed: int) -> None:
    spreads = draft_lora_spreads()

    def make(key, shape):
        return _uniform(seed + 3, key, shape, spreads[key][1], WEIGHTS_DTYPE)

    path = staging / MODEL_REPOS["draft_lora"].folder / DRAFT_LORA_WEIGHTS
    write_safetensors_streaming(path, {key: shape for key, (shape, _) in spreads.items()}, make, WEIGHTS_DTYPE)


def _write_tokenizers(staging: Path) -> None:
    """CLIP's byte-level BPE (vocab.json, merges.txt), the same for both SDXL tokenizers, from OpenAI's merge list.

    transformers ships no CLIP vocabulary; open_clip_torch ships OpenAI's `bpe_simple_vocab_16e6.txt.gz`, from which
    CLIP's tokenizer derives its 49,408-token vocabulary (OpenAI's `SimpleTokenizer` does the same).
    """
    import gzip
    from importlib.util import find_spec

    from transformers.convert_slow_tokenizer import bytes_to_unicode

    spec = find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError("the CLIP tokenizer files come from open_clip_torch: pip install -r requirements.txt")
    bpe = Path(list(spec.submodule_search_locations)[0]) / "bpe_simple_vocab_16e6.txt.gz"
    merges = gzip.open(bpe).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    symbols = list(bytes_to_unicode().values())
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m.split()) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    for name in ("tokenizer", "tokenizer_2"):
        folder = staging / BASE / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "vocab.json").write_text(json.dumps({token: i for i, token in enumerate(vocab)}, ensure_ascii=False))
        (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n")
        _copy_config(f"{BASE}/{name}/tokenizer_config.json", staging)


def _write_depth(staging: Path, seed: int) -> None:
    from .depth import build_depth_network

    torch.manual_seed(seed)
    network = build_depth_network(PROFILES[Profile.sdxl].depth_architecture)
    with torch.no_grad():
        # A positive output bias keeps the final ReLU (non-negative depth) from zeroing a random network's output.
        network.scratch.output_conv[4].bias.fill_(1.0)
    folder = staging / MODEL_REPOS["depth"].folder
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), folder / PROFILES[Profile.sdxl].depth_checkpoint)


def _write_translator(staging: Path, seed: int) -> None:
    """opus-mt-zh-en at its real size (its config, 65,001 pieces), random: the tiny translator's writer with the real
    sizes, so the real tokenizer, model and generation run. 78 M parameters fit in memory; no streaming needed."""
    from .tiny import write_tiny_translator

    config = {key: value for key, value in _config(f"{TRANSLATOR}/config.json").items() if key != "model_type"}
    torch.manual_seed(seed)
    folder = staging / TRANSLATOR
    write_tiny_translator(folder, config_overrides=config, vocab_size=config["vocab_size"])
    for name in ("config.json", "generation_config.json", "tokenizer_config.json"):
        _copy_config(f"{TRANSLATOR}/{name}", staging)


def _write_moderation(staging: Path, seed: int) -> None:
    """Qwen3Guard-Gen-0.6B's architecture with random weights (bfloat16 files, as published), and an offline
    tokenizer with the prompt-moderation chat template (SOURCES.md says which)."""
    from .tiny import moderation_tokenizer

    folder = staging / MODEL_REPOS["moderation"].folder
    moderation_tokenizer(folder, regex=True, vocab=4096)
    model = meta_model("moderation")
    norms = _norm_parameters(model)

    def make(key, shape):
        return random_tensor(seed, key, shape, norms, torch.bfloat16)

    write_safetensors_streaming(folder / "model.safetensors", tensor_shapes("moderation"), make, torch.bfloat16)
    for name in ("config.json", "generation_config.json"):
        _copy_config(f"{MODEL_REPOS['moderation'].folder}/{name}", staging)


def build_full_size_models(root: Path, seed: int = 0, log=None) -> Path:
    """Write every model folder at its real size under `root` (idempotent: skipped when already complete)."""
    say = log or (lambda message: None)

    def write(staging: Path) -> None:
        for relative in ("model_index.json", "scheduler/scheduler_config.json"):
            _copy_config(f"{BASE}/{relative}", staging)
        _write_tokenizers(staging)
        for name in ("text_encoder", "text_encoder_2", "unet", "vae", "controlnet", "image_encoder", "safety_checker"):
            say(f"writing {name}")
            _write_model(name, staging, seed)
        _copy_config(f"{MODEL_REPOS['safety_checker'].folder}/preprocessor_config.json", staging)
        say("writing the two adapters")
        _write_adapters(staging, seed)
        say("writing the draft LoRA")
        _write_draft_lora(staging, seed)
        say("writing the depth network")
        _write_depth(staging, seed)
        say("writing the translator")
        _write_translator(staging, seed)
        say("writing the moderation model")
        _write_moderation(staging, seed)

    return build_atomically(root, write, {"profile": "sdxl", "weights": "random, full size", "seed": seed})


def parameter_table() -> list[dict]:
    counts = parameter_counts()
    return [
        {
            "component": c.name,
            "built": counts[c.name],
            "published": c.published,
            "relative_difference": abs(counts[c.name] - c.published) / c.published,
            "matches": c.matches(counts[c.name]),
            "published_source": c.published_source,
        }
        for c in COMPONENTS
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.fullsize", description=__doc__.splitlines()[0])
    parser.add_argument("dir", type=Path, nargs="?", help="where to write the model folders")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--counts", action="store_true", help="print the parameter table (no weights) and exit")
    args = parser.parse_args(argv)
    if args.counts or args.dir is None:
        for row in parameter_table():
            print(
                f"{row['component']:15} {row['built']:>14,} built  {row['published']:>14,} published  "
                f"{row['relative_difference']:.3%}  {'ok' if row['matches'] else 'MISMATCH'}"
            )
        return
    print(build_full_size_models(args.dir, args.seed, log=lambda message: print(message, file=sys.stderr, flush=True)))


if __name__ == "__main__":
    main()
