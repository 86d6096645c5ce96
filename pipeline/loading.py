"""The one loading path: model folders in their hub layout, loaded the same way for `sdxl` and `tiny`."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

from .config import ModelSettings
from .host_memory import keep_freed_memory, release_freed_memory
from .sources import (
    ADAPTER_SUBFOLDER,
    DRAFT_ADAPTER,
    DRAFT_LORA_WEIGHTS,
    FACE_ADAPTER_WEIGHTS,
    IMAGE_ENCODER_FOLDER,
    MODEL_REPOS,
    PROFILES,
    STYLE_ADAPTER_WEIGHTS,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelPaths:
    base: Path
    controlnet: Path
    vae: Path
    ip_adapter: Path
    depth: Path
    safety_checker: Path
    translator: Path
    moderation: Path
    draft_lora: Path

    @classmethod
    def under(cls, root: Path) -> ModelPaths:
        return cls(**{key: Path(root) / repo.folder for key, repo in MODEL_REPOS.items()})


def load_page_generator(paths: ModelPaths, settings: ModelSettings):
    from diffusers import AutoencoderKL, ControlNetModel

    from . import speedups
    from .depth import load_depth_estimator
    from .generator import PageGenerator
    from .safety import load_picture_checker
    from .sdxl_pipeline import PictureBookPipeline

    spec = PROFILES[settings.profile]
    device, dtype = settings.resolved_device, settings.torch_dtype
    keep_freed_memory()  # before the first tensor: every process that draws pages allocates the same way
    log.info("loading %s models on %s as %s", settings.profile.value, device, dtype)
    if settings.safety_checker:
        # Fail closed, and first: a checker that is configured but cannot load stops start-up before the large
        # models load (an operator hears of missing weights in seconds), so the service never becomes ready
        # without it.
        checker = load_picture_checker(paths.safety_checker, device, dtype)
    else:
        checker = None
        log.warning("the picture safety checker is OFF (PICTUREBOOK_SAFETY_CHECKER=false): pages are not checked")
    # use_safetensors=True: diffusers refuses pickled .bin weights instead of falling back to them.
    controlnet = ControlNetModel.from_pretrained(paths.controlnet, torch_dtype=dtype, use_safetensors=True)
    vae = AutoencoderKL.from_pretrained(paths.vae, torch_dtype=dtype, use_safetensors=True)
    pipe = PictureBookPipeline.from_pretrained(
        paths.base,
        controlnet=controlnet,
        vae=vae,
        torch_dtype=dtype,
        use_safetensors=True,
        add_watermarker=False,
    )
    speedups.before_adapters(pipe, settings)
    # Both adapters in one call so they share one image encoder (ViT-H for the real weights).
    pipe.load_ip_adapter(
        str(paths.ip_adapter),
        subfolder=ADAPTER_SUBFOLDER,
        weight_name=[FACE_ADAPTER_WEIGHTS, STYLE_ADAPTER_WEIGHTS],
        image_encoder_folder=IMAGE_ENCODER_FOLDER,
    )
    pipe.set_ip_adapter_scale([settings.face_adapter_scale, settings.style_adapter_scale])
    if settings.draft:
        load_draft_lora(pipe, paths.draft_lora)
    if not settings.cpu_offload:  # offload places each model itself; moving all first could not fit a small GPU
        pipe.to(device)
    speedups.after_adapters(pipe, settings)
    pipe.set_progress_bar_config(disable=True)
    depth = load_depth_estimator(paths.depth / spec.depth_checkpoint, spec.depth_architecture, device)
    translator = load_prompt_translator(paths.translator, settings)
    generator = PageGenerator(pipe, depth, settings, spec, checker=checker, translator=translator)
    release_freed_memory()  # what loading needed and freed; from here on, pages keep their own working set
    if settings.compile if settings.warmup is None else settings.warmup:
        warm_up(generator)
    return generator


def load_draft_lora(pipe, folder: Path) -> None:
    """The few-step LoRA, once, unfused under its adapter name and switched off: PageGenerator switches it on for a
    draft call and off for a final one (diffusers' enable_lora/disable_lora), never reloading it. After the
    IP-Adapters (it wraps the attention projections, not the processors, so theirs stay) and before the speed-ups
    (Q/K/V fusion skips the projections it wraps; torch.compile sees the wrapped modules)."""
    started = time.perf_counter()
    # A .safetensors weight_name: diffusers reads it with safetensors, never unpickling.
    pipe.load_lora_weights(str(folder), weight_name=DRAFT_LORA_WEIGHTS, adapter_name=DRAFT_ADAPTER)
    pipe.disable_lora()
    log.info("draft LoRA loaded in %.1f s", time.perf_counter() - started)


def load_prompt_translator(folder: Path, settings: ModelSettings):
    """The Chinese-to-English translator of drawing prompts, or None when PICTUREBOOK_TRANSLATION=false."""
    if not settings.translation:
        log.info("prompt translation is off (PICTUREBOOK_TRANSLATION=false): prompts are drawn as written")
        return None
    import torch

    from .translation import load_translator

    # float32 whatever PICTUREBOOK_DTYPE says: 0.3 GB, and no 16-bit overflow in a model converted from float32.
    return load_translator(folder, settings.resolved_device, torch.float32, settings.translation_cache_size)


def load_models(paths: ModelPaths, settings: ModelSettings):
    """Everything the model service holds: (the page generator, the text moderator or None)."""
    started = time.perf_counter()
    keep_freed_memory()  # before the moderator's first tensor too
    # The moderator first: missing or broken weights fail the start in seconds, before the large models load.
    moderator = load_text_moderator(paths, settings)
    models = load_page_generator(paths, settings), moderator
    log.info("models loaded in %.1f s", time.perf_counter() - started)
    return models


def load_text_moderator(paths: ModelPaths, settings: ModelSettings):
    """The text moderation model (pipeline/moderation.py), or None when PICTUREBOOK_MODERATION=false. Fail closed:
    configured but missing or broken weights raise, so the model service never becomes ready without it."""
    if not settings.moderation:
        log.warning("text moderation is OFF (PICTUREBOOK_MODERATION=false): texts pass the blocklists only")
        return None
    from .moderation import load_text_moderator as load

    started = time.perf_counter()
    device, dtype = settings.resolved_device, settings.torch_dtype
    moderator = load(paths.moderation, device, dtype, strict=settings.moderation_strict)
    log.info("text moderation model loaded in %.1f s", time.perf_counter() - started)
    return moderator


def warm_up(generator) -> list:
    """Draw throw-away pages of every group shape (first page or continuation, final or draft: each its own
    diffusion call), so compilation happens before the first user arrives. Returns their PageResults."""
    from PIL import Image

    from .page import PageRequest, Quality

    blank = Image.new("RGB", (64, 64), (128, 128, 128))
    started = time.perf_counter()
    results = generator.generate(
        [
            PageRequest(prompt="warm-up", seed=0),
            PageRequest(prompt="warm-up", prev_frame=blank, characters=(blank,), seed=0),
            *(
                [
                    PageRequest(prompt="warm-up", seed=0, quality=Quality.draft),
                    PageRequest(prompt="warm-up", prev_frame=blank, characters=(blank,), seed=0, quality=Quality.draft),
                ]
                if generator.drafts
                else []
            ),
        ]
    )
    log.info("warm-up took %.1f s", time.perf_counter() - started)
    return results
