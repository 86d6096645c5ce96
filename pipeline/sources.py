"""Where each model comes from: hub identifiers, pinned revisions, the files used, and per-profile defaults.

This is the only place that names a model repository. `PICTUREBOOK_MODEL_DIR` holds one folder per entry of
`MODEL_REPOS`, each in the layout of its hub repository, for both profiles.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from .config import Profile


@dataclass(frozen=True)
class ModelRepo:
    folder: str  # name of the folder under PICTUREBOOK_MODEL_DIR (and of the BentoML model)
    repo_id: str
    revision: str  # a commit hash, so a rebuild gets the same bytes
    include: tuple[str, ...]  # only the files the pipeline reads


# Revisions are commits of the hub repositories; bump them deliberately.
MODEL_REPOS: dict[str, ModelRepo] = {
    "base": ModelRepo(
        folder="stable-diffusion-xl-base-1.0",
        repo_id="stabilityai/stable-diffusion-xl-base-1.0",
        revision="462165984030d82259a11f4367a4eed129e94a7b",
        include=(
            "model_index.json",
            "scheduler/*.json",
            "text_encoder/config.json",
            "text_encoder/model.safetensors",
            "text_encoder_2/config.json",
            "text_encoder_2/model.safetensors",
            "tokenizer/*",
            "tokenizer_2/*",
            "unet/config.json",
            "unet/diffusion_pytorch_model.safetensors",
        ),
    ),
    "controlnet": ModelRepo(
        folder="controlnet-depth-sdxl-1.0",
        repo_id="diffusers/controlnet-depth-sdxl-1.0",
        revision="17bb97973f29801224cd66f192c5ffacf82648b4",
        include=("config.json", "diffusion_pytorch_model.safetensors"),
    ),
    "vae": ModelRepo(
        folder="sdxl-vae-fp16-fix",
        repo_id="madebyollin/sdxl-vae-fp16-fix",
        revision="207b116dae70ace3637169f1ddd2434b91b3a8cd",
        include=("config.json", "diffusion_pytorch_model.safetensors"),
    ),
    "ip_adapter": ModelRepo(
        folder="IP-Adapter",
        repo_id="h94/IP-Adapter",
        revision="018e402774aeeddd60609b4ecdb7e298259dc729",
        include=(
            "sdxl_models/ip-adapter-plus-face_sdxl_vit-h.safetensors",
            "sdxl_models/ip-adapter-plus_sdxl_vit-h.safetensors",
            "models/image_encoder/config.json",
            "models/image_encoder/model.safetensors",
        ),
    ),
    "depth": ModelRepo(
        folder="Annotators",
        repo_id="lllyasviel/Annotators",
        revision="982e7edaec38759d914a963c48c4726685de7d96",
        include=("dpt_hybrid-midas-501f0c75.pt",),
    ),
}

# The image safety classifier. Its safetensors file exists only on the hub's `refs/pr/41` revision ("fp16
# safetensors", one commit on top of main's cb41f3a; main has a pickled pytorch_model.bin only). Public projects
# such as Acly/krita-ai-diffusion and comfyui-tooling-nodes download `resolve/refs%2Fpr%2F41/model.safetensors`
# (608,018,440 bytes, sha256 08902f19b1cfebd7c989f152fc0507bef6898c706a91d666509383122324b511, as pinned by
# nixified-ai/flake); the PR's page on the hub (discussions/41) names its commit, pinned here.
MODEL_REPOS["safety_checker"] = ModelRepo(
    folder="stable-diffusion-safety-checker",
    repo_id="CompVis/stable-diffusion-safety-checker",
    revision="1664e306d2258485321cbbd8083074c9474d4e41",
    include=("config.json", "preprocessor_config.json", "model.safetensors"),
)

# Chinese prompts into English (pipeline/translation.py). MarianMT, CC-BY-4.0 (attribution: README, NOTICE). The
# revision is the one public projects pin (e.g. TransIME's notices: tree/cf10909...); no converted safetensors
# revision of it was found (docs/SECURITY.md), so its pickled pytorch_model.bin is read with weights_only=True.
MODEL_REPOS["translator"] = ModelRepo(
    folder="opus-mt-zh-en",
    repo_id="Helsinki-NLP/opus-mt-zh-en",
    revision="cf109095479db38d6df799875e34039d4938aaa6",
    include=(
        "config.json",
        "generation_config.json",
        "pytorch_model.bin",
        "source.spm",
        "target.spm",
        "tokenizer_config.json",
        "vocab.json",
    ),
)
# The text moderation model (pipeline/moderation.py), Apache-2.0: Qwen3Guard-Gen-0.6B at fada3b2f, the revision that
# independent public projects pin and that their Hugging Face caches hold (snapshots/fada3b2f...); the commit pinned
# here before (b2992b9c...) was found in no public source. The 4B (PICTUREBOOK_MODERATION_MODEL=Qwen/Qwen3Guard-Gen-4B,
# same template and answers, sharded weights) is the documented option for more recall at ~7x the cost. It stays on
# "main": its hub has a commit 173cf65c90524d5d55585a066d9ea7a7451af8c1, but nothing public shows that this commit
# holds the weights; check its file list before pinning it for production (docs/SECURITY.md).
MODERATION_REPOS: dict[str, ModelRepo] = {
    "Qwen/Qwen3Guard-Gen-0.6B": ModelRepo(
        folder="Qwen3Guard-Gen-0.6B",
        repo_id="Qwen/Qwen3Guard-Gen-0.6B",
        revision="fada3b2f655b89601929198343c94cd2f64d93cc",
        include=(
            "config.json",
            "generation_config.json",
            "model.safetensors",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
            "merges.txt",
        ),
    ),
    "Qwen/Qwen3Guard-Gen-4B": ModelRepo(
        folder="Qwen3Guard-Gen-4B",
        repo_id="Qwen/Qwen3Guard-Gen-4B",
        revision="main",
        include=(
            "config.json",
            "generation_config.json",
            "model-*.safetensors",
            "model.safetensors.index.json",
            "tokenizer.json",
            "tokenizer_config.json",
            "vocab.json",
            "merges.txt",
        ),
    ),
}
MODEL_REPOS["moderation"] = MODERATION_REPOS[os.environ.get("PICTUREBOOK_MODERATION_MODEL", "Qwen/Qwen3Guard-Gen-0.6B")]

# The few-step LoRA of `quality: draft` pages (pipeline/generator.py), OpenRAIL++ (NOTICE). Hyper-SD's 8-step
# "CFG-preserved" SDXL LoRA: trained to keep classifier-free guidance (the card: guidance 5 to 8), so the child-safe
# negative prompt still acts, unlike LCM/TCD/Lightning LoRAs that want guidance near 1. The card's diffusers recipe:
# DDIMScheduler with timestep_spacing="trailing", 8 steps, guidance 5.0; it also states ControlNet compatibility.
# The revision is the hub commit a08b9c3 ("Upload 12-step SD15/XL CFG LoRAs"), whose tree lists this file (added
# in ebed5c7, 30 Apr 2024, unchanged since per the file's commit history); public projects pin the same bytes:
# 787,359,648 bytes, sha256 55b51334c85061afff5eff7c550b61963c8b8607a5868bbe4f26db49374719b1 (nixified-ai/flake's
# fetchFromHuggingFace hash, converted from base64). safetensors only; nothing pickled.
MODEL_REPOS["draft_lora"] = ModelRepo(
    folder="Hyper-SD",
    repo_id="ByteDance/Hyper-SD",
    revision="a08b9c3da8dc3be0a6e79b04721bf237241403f9",
    include=("Hyper-SDXL-8steps-CFG-lora.safetensors",),
)
DRAFT_LORA_WEIGHTS = "Hyper-SDXL-8steps-CFG-lora.safetensors"
DRAFT_ADAPTER = "draft"  # the adapter name the LoRA is loaded under (diffusers/PEFT), switched per diffusion call

FACE_ADAPTER_WEIGHTS = "ip-adapter-plus-face_sdxl_vit-h.safetensors"
STYLE_ADAPTER_WEIGHTS = "ip-adapter-plus_sdxl_vit-h.safetensors"
ADAPTER_SUBFOLDER = "sdxl_models"
IMAGE_ENCODER_FOLDER = "models/image_encoder"


@dataclass(frozen=True)
class ProfileSpec:
    """What differs between profiles besides the weights themselves."""

    depth_architecture: str  # a key of pipeline.depth.ARCHITECTURES
    depth_checkpoint: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    depth_resolution: int  # controlnet-aux `detect_resolution`
    max_side: int  # largest width/height a request may ask for
    draft_steps: int = 8  # `quality: draft`: the LoRA's step count (Hyper-SDXL-8steps-CFG)
    draft_guidance_scale: float = 5.0  # the card's 5 to 8; above 1, so the negative prompt is still read


PROFILES: dict[Profile, ProfileSpec] = {
    Profile.sdxl: ProfileSpec(
        depth_architecture="dpt_hybrid",
        depth_checkpoint="dpt_hybrid-midas-501f0c75.pt",
        width=1024,
        height=1024,
        steps=30,
        guidance_scale=5.0,
        depth_resolution=512,
        max_side=1536,
    ),
    Profile.tiny: ProfileSpec(
        depth_architecture="dpt_tiny",
        depth_checkpoint="dpt_tiny-midas.pt",
        width=256,
        height=256,
        steps=4,
        guidance_scale=5.0,
        depth_resolution=256,
        max_side=768,
        draft_steps=2,  # fewer than its 4 final steps, as the real draft is fewer than 30
    ),
}
