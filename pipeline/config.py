"""The one typed place for configuration: every knob is a `PICTUREBOOK_*` environment variable.

The README's configuration table lists the same fields; keep the two in step.
"""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict


class Profile(str, Enum):
    sdxl = "sdxl"
    tiny = "tiny"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PICTUREBOOK_", extra="ignore")

    profile: Profile = Field(Profile.sdxl, description="Model profile: `sdxl` (real weights, GPU) or `tiny` (random offline weights).")
    model_dir: Path | None = Field(
        None,
        description="Directory holding the model repositories in their hub layout (see README); "
        "when unset, `sdxl` resolves pinned revisions through the Hugging Face cache and `tiny` builds into `tiny_dir`.",
    )
    tiny_dir: Path = Field(Path.home() / ".cache" / "picturebook" / "tiny", description="Where the `tiny` profile writes its weights.")
    device: str | None = Field(None, description="torch device; default `cuda` when available, else `cpu`.")
    dtype: str | None = Field(None, description="`float16`, `bfloat16` or `float32`; default float16 on CUDA, float32 on CPU.")

    # GPU levers (docs/PERFORMANCE.md says what each is expected to give).
    attention: Literal["sdpa", "eager"] = Field("sdpa", description="Attention kernels: PyTorch SDPA or the eager reference.")
    channels_last: bool | None = Field(None, description="channels_last memory format for the convolutional models; default on with CUDA.")
    fuse_qkv: bool = Field(False, description="Fuse Q/K/V projections of self-attention (IP-Adapter cross-attention is kept).")
    compile: bool = Field(False, description="torch.compile the UNet and ControlNet (warmed up at start-up).")
    compile_mode: str = Field("max-autotune-no-cudagraphs", description="torch.compile mode.")
    compile_backend: str = Field("inductor", description="torch.compile backend.")
    warmup: bool | None = Field(None, description="Draw one page at start-up before reporting ready; default on when compiling.")
    cpu_offload: bool = Field(False, description="Model CPU offload for small GPUs (~8 GB); needs CUDA.")
    vae_tiling: bool = Field(False, description="Decode the VAE in tiles: less memory for large pages.")

    face_adapter_scale: float = Field(0.7, ge=0.0, le=2.0, description="IP-Adapter scale of the face adapter (character pictures).")
    style_adapter_scale: float = Field(0.4, ge=0.0, le=2.0, description="IP-Adapter scale of the style adapter (previous page).")
    controlnet_scale: float = Field(0.5, ge=0.0, le=2.0, description="Depth ControlNet conditioning scale.")
    embedding_cache_size: int = Field(256, ge=0, description="Character embeddings kept in the LRU cache (0 disables it).")

    max_batch_size: int = Field(4, ge=1, description="Adaptive batching: most pages in one diffusion call; 1 turns the batcher off.")
    max_latency_ms: int = Field(60_000, ge=1, description="Adaptive batching: latency budget a request may wait in the batch queue plus run.")
    request_timeout_s: int = Field(120, ge=1, description="Seconds a /generate request may take end to end.")
    max_concurrency: int = Field(16, ge=1, description="Requests the front service admits at once; more get 429/503.")
    port: int = Field(8000, ge=1, le=65535, description="HTTP port of `bentoml serve` (the seed's backend used 8000).")

    max_image_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest decoded size of one request image.")
    max_image_pixels: int = Field(16_000_000, ge=4096, description="Most pixels in one request image, checked before decoding.")
    max_prompt_chars: int = Field(2000, ge=1, description="Longest prompt or negative prompt accepted.")

    max_body_bytes: int = Field(
        64 * 1024 * 1024, ge=1024, description="Largest /generate body; larger ones get 413 before they are read whole."
    )
    retry_after_s: int = Field(5, ge=1, description="`Retry-After` seconds sent with 429/503 when overloaded.")
    api_key: SecretStr | None = Field(
        None, description="When set, /generate requires `Authorization: Bearer <key>`; health and metrics stay open."
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins allowed by CORS (JSON list, e.g. '[\"https://a.example\"]'); empty = CORS off."
    )

    # Test-only fault injection (off by default): exercise the out-of-memory path on a CPU.
    fault_oom_batch_over: int | None = Field(
        None, ge=1, description="TEST ONLY: a diffusion call with more pages than this raises out-of-memory."
    )
    fault_oom_prompt_marker: str | None = Field(
        None, description="TEST ONLY: a diffusion call including a prompt that contains this raises out-of-memory."
    )

    bento_model: str | None = Field(
        None,
        description="Tag of a BentoML model holding all model folders (made by `python -m bento_models import`); "
        "the offline alternative to hub downloads for `sdxl`.",
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
