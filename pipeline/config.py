"""The model side's settings: which weights, on which device, with which levers. `PICTUREBOOK_*` variables.

The serving side has its own (serving/settings.py); test-only fault knobs live in pipeline/faults.py. The README's
configuration table lists all three, and tests/test_docs.py keeps them in step.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Profile(StrEnum):
    sdxl = "sdxl"
    tiny = "tiny"


class ModelSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PICTUREBOOK_", extra="ignore")

    profile: Profile = Field(
        Profile.sdxl, description="Model profile: `sdxl` (real weights, GPU) or `tiny` (random offline weights)."
    )
    model_dir: Path | None = Field(
        None,
        description="Directory holding the model repositories in their hub layout (see README); "
        "when unset, the models packed into the bento (the BentoML model store) are used.",
    )
    device: str | None = Field(None, description="torch device; default `cuda` when available, else `cpu`.")
    dtype: str | None = Field(
        None, description="`float16`, `bfloat16` or `float32`; default float16 on CUDA, float32 on CPU."
    )

    # GPU levers (docs/PERFORMANCE.md says what each is expected to give).
    attention: Literal["sdpa", "eager"] = Field(
        "sdpa", description="Attention kernels: PyTorch SDPA or the eager reference."
    )
    channels_last: bool | None = Field(
        None, description="channels_last memory format for the convolutional models; default on with CUDA."
    )
    fuse_qkv: bool = Field(
        False, description="Fuse Q/K/V projections of self-attention (IP-Adapter cross-attention is kept)."
    )
    compile: bool = Field(False, description="torch.compile the UNet and ControlNet (warmed up at start-up).")
    compile_mode: str = Field("max-autotune-no-cudagraphs", description="torch.compile mode.")
    compile_backend: str = Field("inductor", description="torch.compile backend.")
    warmup: bool | None = Field(
        None, description="Draw one page at start-up before reporting ready; default on when compiling."
    )
    cpu_offload: bool = Field(False, description="Model CPU offload for small GPUs (~8 GB); needs CUDA.")
    vae_tiling: bool = Field(False, description="Decode the VAE in tiles: less memory for large pages.")

    face_adapter_scale: float = Field(
        0.7, ge=0.0, le=2.0, description="IP-Adapter scale of the face adapter (character pictures)."
    )
    style_adapter_scale: float = Field(
        0.4, ge=0.0, le=2.0, description="IP-Adapter scale of the style adapter (previous page)."
    )
    controlnet_scale: float = Field(0.5, ge=0.0, le=2.0, description="Depth ControlNet conditioning scale.")
    safety_checker: bool = Field(
        True, description="Check every drawn page with the image safety classifier (fail closed); false turns it off."
    )
    safety_retries: int = Field(
        1, ge=0, le=5, description="Redraws, with a seed derived from the request's, of a page the checker flagged."
    )
    moderation: bool = Field(
        True,
        description="Judge every user text with the moderation model after the blocklists (fail closed); "
        "false turns it off.",
    )
    moderation_strict: bool = Field(
        True, description="Moderation: a `Controversial` verdict is refused too (false: only `Unsafe` is)."
    )
    moderation_model: Literal["Qwen/Qwen3Guard-Gen-0.6B", "Qwen/Qwen3Guard-Gen-4B"] = Field(
        "Qwen/Qwen3Guard-Gen-0.6B", description="Which Qwen3Guard-Gen the `sdxl` set downloads (see docs/SECURITY.md)."
    )
    draft: bool = Field(
        True,
        description="Load the few-step Hyper-SD LoRA for `quality: draft` pages (unfused, switched per diffusion "
        "call); false: no LoRA in memory and draft pages are refused.",
    )
    embedding_cache_size: int = Field(
        256, ge=0, description="Character embeddings kept in the LRU cache (0 disables it)."
    )
    translation: bool = Field(
        True,
        description="Translate the Chinese in drawing prompts into English before the text encoders read them "
        "(opus-mt-zh-en); false draws every prompt as written.",
    )
    translation_cache_size: int = Field(
        1024, ge=0, description="Translated prompt pieces kept in the LRU cache (0 disables it)."
    )

    @property
    def on_cuda(self) -> bool:
        return self.resolved_device.startswith("cuda")

    @property
    def resolved_device(self) -> str:
        if self.device:
            return self.device
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    @property
    def torch_dtype(self):
        import torch

        if self.dtype:
            return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[self.dtype]
        # fp16 on CPU is slow and partly unsupported; the fp16-fix VAE makes fp16 safe on CUDA.
        return torch.float16 if self.on_cuda else torch.float32
