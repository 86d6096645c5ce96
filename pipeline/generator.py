"""Page requests in, pages out: groups a batch into diffusion calls that can share one run of the pipeline."""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Callable

import torch
from PIL import Image

from .config import Settings
from .embeddings import ImageEmbedder
from .sources import ProfileSpec

log = logging.getLogger(__name__)

MAX_SEED = 2**32 - 1
MAX_CHARACTERS = 4
MAX_STEPS = 100


@dataclass(frozen=True)
class PageRequest:
    prompt: str
    prev_frame: Image.Image | None = None
    characters: tuple[Image.Image, ...] = ()
    seed: int | None = None
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None

    def group_key(self) -> tuple:
        """Requests with the same key run in one diffusion call (the pipeline takes these per call, not per item)."""
        return (self.width, self.height, self.steps, self.guidance_scale, len(self.characters), self.prev_frame is not None)


@dataclass
class PageResult:
    image: Image.Image
    seed: int
    batch_size: int  # pages in the diffusion call that drew this one
    timings_ms: dict[str, float] = field(default_factory=dict)


class GenerationInterrupted(RuntimeError):
    """The caller's `should_stop` said to stop between denoising steps (e.g. the request timed out)."""


class PageGenerator:
    def __init__(self, pipe, depth, settings: Settings, spec: ProfileSpec):
        self.pipe = pipe
        self.depth = depth
        self.settings = settings
        self.spec = spec
        self.embedder = ImageEmbedder(pipe.image_encoder, pipe.feature_extractor, settings.embedding_cache_size)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def with_defaults(self, request: PageRequest) -> PageRequest:
        """The request with every optional setting filled in (a seed drawn if absent), checked against the profile."""
        resolved = replace(
            request,
            seed=secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed,
            width=self.spec.width if request.width is None else request.width,
            height=self.spec.height if request.height is None else request.height,
            steps=self.spec.steps if request.steps is None else request.steps,
            guidance_scale=self.spec.guidance_scale if request.guidance_scale is None else request.guidance_scale,
        )
        check_request(resolved, self.spec)
        return resolved

    def generate(
        self, requests: list[PageRequest], should_stop: Callable[[], bool] | None = None
    ) -> list[PageResult]:
        """One result per request, in order. A page depends only on its own request, never on its batch-mates."""
        resolved = [self.with_defaults(request) for request in requests]
        groups: dict[tuple, list[int]] = {}
        for index, request in enumerate(resolved):
            groups.setdefault(request.group_key(), []).append(index)
        results: list[PageResult | None] = [None] * len(resolved)
        for indices in groups.values():
            for index, result in zip(indices, self.generate_group([resolved[i] for i in indices], should_stop)):
                results[index] = result
        return results  # type: ignore[return-value]

    @torch.inference_mode()
    def generate_group(
        self, requests: list[PageRequest], should_stop: Callable[[], bool] | None = None
    ) -> list[PageResult]:
        """One diffusion call for requests that share a group key (all fields resolved)."""
        first = requests[0]
        width, height = first.width, first.height
        continuation = first.prev_frame is not None
        n_characters = len(first.characters)
        timings: dict[str, float] = {}

        started = time.perf_counter()
        if continuation:
            control_images = [
                self.depth(request.prev_frame, width, height, self.spec.depth_resolution) for request in requests
            ]
        else:
            # First page: nothing to follow; the ControlNet is switched off by its scale, not removed.
            control_images = [Image.new("RGB", (width, height))] * len(requests)
        timings["depth"] = _ms_since(started)

        started = time.perf_counter()
        face_embeds = self._face_embeddings(requests, n_characters)
        style_embeds = self._style_embeddings(requests, continuation)
        timings["encode"] = _ms_since(started)

        self.pipe.set_ip_adapter_scale(
            [
                self.settings.face_adapter_scale if n_characters else 0.0,
                self.settings.style_adapter_scale if continuation else 0.0,
            ]
        )
        # One CPU generator per request: the same seed gives the same initial latents on any device, alone or batched.
        generators = [torch.Generator("cpu").manual_seed(request.seed) for request in requests]

        def on_step_end(pipe, step, timestep, callback_kwargs):
            if should_stop is not None and should_stop():
                raise GenerationInterrupted(f"stopped after step {step + 1} of {first.steps}")
            return callback_kwargs

        started = time.perf_counter()
        output = self.pipe(
            prompt=[request.prompt for request in requests],
            negative_prompt=[request.negative_prompt for request in requests],
            image=control_images,
            controlnet_conditioning_scale=self.settings.controlnet_scale if continuation else 0.0,
            ip_adapter_image_embeds=[face_embeds, style_embeds],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            width=width,
            height=height,
            generator=generators,
            output_type="pil",
            callback_on_step_end=on_step_end,
        )
        timings["diffusion"] = _ms_since(started)
        return [
            PageResult(image=image, seed=request.seed, batch_size=len(requests), timings_ms=dict(timings))
            for image, request in zip(output.images, requests)
        ]

    def _with_negatives(self, positives: list[torch.Tensor]) -> torch.Tensor:
        """diffusers' layout for per-item adapter inputs: (2B, images, tokens, width), all negatives first."""
        negative = self.embedder.negative()
        stacked = torch.stack(positives)
        negatives = negative.expand(stacked.shape[1], *negative.shape[1:]).unsqueeze(0).expand_as(stacked)
        return torch.cat([negatives, stacked]).to(self.pipe.unet.dtype)

    def _face_embeddings(self, requests: list[PageRequest], n_characters: int) -> torch.Tensor:
        if n_characters == 0:
            # Face adapter off (scale 0); it still needs an input of the right shape.
            return self._with_negatives([self.embedder.negative()] * len(requests))
        return self._with_negatives([self.embedder.encode_cached(list(r.characters)) for r in requests])

    def _style_embeddings(self, requests: list[PageRequest], continuation: bool) -> torch.Tensor:
        if not continuation:
            return self._with_negatives([self.embedder.negative()] * len(requests))
        encoded = self.embedder.encode([request.prev_frame for request in requests])
        return self._with_negatives([embedding.unsqueeze(0) for embedding in encoded])


def check_request(request: PageRequest, spec: ProfileSpec) -> None:
    """Raise ValueError naming the field when a resolved request cannot be drawn."""
    for name in ("width", "height"):
        value = getattr(request, name)
        if value % 8 or not 64 <= value <= spec.max_side:
            raise ValueError(f"{name}: must be a multiple of 8 between 64 and {spec.max_side}, got {value}")
    if not 1 <= request.steps <= MAX_STEPS:
        raise ValueError(f"steps: must be between 1 and {MAX_STEPS}, got {request.steps}")
    if not 0 <= request.seed <= MAX_SEED:
        raise ValueError(f"seed: must be between 0 and {MAX_SEED}, got {request.seed}")
    if len(request.characters) > MAX_CHARACTERS:
        raise ValueError(f"characters: at most {MAX_CHARACTERS} pictures, got {len(request.characters)}")


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
