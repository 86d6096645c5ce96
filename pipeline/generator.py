"""Page requests in, pages out: groups a batch into diffusion calls that can share one run of the pipeline."""

from __future__ import annotations

import hashlib
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field, replace

import torch
from PIL import Image

from .config import ModelSettings
from .embeddings import ImageEmbedder
from .faults import FaultSettings
from .page import MAX_SEED, ErrorKind, PageRequest, Quality, ResolvedPage, check_request, default_regions
from .safety import PictureChecker
from .sources import DRAFT_ADAPTER, ProfileSpec

log = logging.getLogger(__name__)


@dataclass
class PageResult:
    image: Image.Image | None
    seed: int
    batch_size: int  # pages in the diffusion call that drew this one
    timings_ms: dict[str, float] = field(default_factory=dict)
    error: PageError | None = None  # set (and image None) when this page could not be drawn
    flagged: bool = False  # the picture check flagged `image`: it must not leave
    flagged_draws: int = 0  # draws of this page the picture check flagged, redraws included
    prompt_drawn: str | None = None  # the prompt the text encoders read (its Chinese translated); None if not drawn

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(frozen=True)
class PageError:
    kind: ErrorKind
    message: str


class GenerationInterrupted(RuntimeError):
    """Nobody waits for any page of a diffusion call any more (deadlines passed, clients gone); stopped between
    denoising steps."""


class AbandonedJobs:
    """Job ids whose clients hung up. Filled from the serving loop, read between denoising steps (another thread).

    An id usually leaves when its call ends; one that names no running job (its page was already done) expires after
    `keep_s`, and at most `most` are kept, so a flood of hang-ups cannot grow it without bound."""

    def __init__(self, keep_s: float = 900, most: int = 10_000):
        self.keep_s = keep_s
        self.most = most
        self._since: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, job_ids) -> None:
        now = time.monotonic()
        with self._lock:
            for job_id in job_ids:
                self._since[job_id] = now
            expired = [job_id for job_id, since in self._since.items() if now - since > self.keep_s]
            for job_id in expired:
                del self._since[job_id]
            for job_id in list(self._since)[: max(0, len(self._since) - self.most)]:  # oldest first
                del self._since[job_id]

    def __contains__(self, job_id: str | None) -> bool:
        return job_id is not None and job_id in self._since

    def discard(self, job_ids) -> None:
        with self._lock:
            for job_id in job_ids:
                self._since.pop(job_id, None)


class PageGenerator:
    def __init__(
        self,
        pipe,
        depth,
        settings: ModelSettings,
        spec: ProfileSpec,
        faults: FaultSettings | None = None,
        checker: PictureChecker | None = None,
        translator=None,  # pipeline.translation.PromptTranslator, or None: prompts drawn as written
    ):
        self.checker = checker
        self.translator = translator
        self.pipe = pipe
        self.depth = depth
        self.settings = settings
        self.spec = spec
        self.faults = faults or FaultSettings()
        self.embedder = ImageEmbedder(pipe.image_encoder, pipe.feature_extractor, settings.embedding_cache_size)
        self.abandoned = AbandonedJobs()
        # One scheduler instance per quality, both from the base's config, chosen per call (set_timesteps resets
        # each one's state); the final one is the pipeline's own, so final pages are drawn exactly as before drafts.
        self.schedulers = {Quality.final: pipe.scheduler}
        self._lora_models = _models_with_adapter(pipe, DRAFT_ADAPTER)
        self.drafts = bool(self._lora_models)
        if self.drafts:
            from diffusers import DDIMScheduler

            # Hyper-SD's card: DDIM with "trailing" timesteps for its N-step LoRAs (eta 0, DDIM's default).
            self.schedulers[Quality.draft] = DDIMScheduler.from_config(
                pipe.scheduler.config, timestep_spacing="trailing"
            )
        self._quality: Quality | None = None  # what the pipeline is set up for now; None: not yet chosen

    def translate(self, texts: list[str]) -> list[str]:
        """The English the text encoders read for each text (pipeline/translation.py's rule): unchanged when it has
        no Chinese or translation is off; all of `texts` in one model call, each distinct piece once (LRU cache).
        Thread-safe. For callers that must see what is drawn, such as a moderation check of the prompts."""
        return self.translator.translate(texts) if self.translator is not None else list(texts)

    def _translated(self, requests: dict[int, ResolvedPage]) -> dict[int, ResolvedPage]:
        """Every page's prompt and negative prompt as drawn, translated together in one call."""
        order = list(requests)
        texts = [requests[i].prompt for i in order] + [requests[i].negative_prompt for i in order]
        english = self.translate(texts)
        return {
            index: replace(requests[index], prompt=english[k], negative_prompt=english[len(order) + k])
            for k, index in enumerate(order)
        }

    def abandon(self, job_ids: list[str]) -> None:
        """These jobs' clients hung up: their pages are not drawn, and a call stops at its next denoising step once
        every page in it is abandoned or past its deadline. Thread-safe; unknown ids are kept a while, then dropped."""
        self.abandoned.add(job_ids)

    def wanted(self, request: ResolvedPage, now: float) -> bool:
        """Someone still waits for this page."""
        return request.job_id not in self.abandoned and (request.deadline is None or now <= request.deadline)

    @property
    def device(self) -> torch.device:
        return self.pipe.unet.device

    def resolve(self, request: PageRequest) -> ResolvedPage:
        """The request with every optional setting filled in (a seed drawn if absent), checked against the profile.
        A draft's default steps and guidance are the LoRA's; a request's own steps or guidance_scale still win."""
        try:
            quality = Quality(request.quality)
        except ValueError:
            raise ValueError(f"quality: must be one of {[q.value for q in Quality]}, got {request.quality!r}") from None
        if quality is Quality.draft and not self.drafts:
            raise ValueError("quality: draft pages are off on this service (PICTUREBOOK_DRAFT=false)")
        draft = quality is Quality.draft
        steps = self.spec.draft_steps if draft else self.spec.steps
        guidance_scale = self.spec.draft_guidance_scale if draft else self.spec.guidance_scale
        resolved = ResolvedPage(
            prompt=request.prompt,
            prev_frame=request.prev_frame,
            characters=request.characters,
            seed=secrets.randbelow(MAX_SEED + 1) if request.seed is None else request.seed,
            negative_prompt=request.negative_prompt,
            width=self.spec.width if request.width is None else request.width,
            height=self.spec.height if request.height is None else request.height,
            steps=steps if request.steps is None else request.steps,
            guidance_scale=guidance_scale if request.guidance_scale is None else request.guidance_scale,
            regions=default_regions(len(request.characters)) if request.regions is None else request.regions,
            deadline=request.deadline,
            job_id=request.job_id,
            quality=quality,
        )
        check_request(resolved, self.spec)
        return resolved

    def generate(self, requests: list[PageRequest]) -> list[PageResult]:
        """One result per request, in order. A page depends only on its own request, never on its batch-mates.

        A failure stays with the requests it concerns: a group that runs out of accelerator memory is split and
        retried, down to single pages; requests past their deadline get a timeout; other groups go on. A request
        whose client has already hung up is not drawn (a timeout too: nobody reads that answer).
        """
        results: list[PageResult | None] = [None] * len(requests)
        resolved: dict[int, ResolvedPage] = {}
        for index, request in enumerate(requests):
            if request.job_id in self.abandoned:
                results[index] = PageResult(None, request.seed or 0, 0, error=PageError(ErrorKind.timeout, HUNG_UP))
                continue
            try:
                resolved[index] = self.resolve(request)
            except ValueError as error:
                results[index] = PageResult(None, request.seed or 0, 0, error=PageError(ErrorKind.invalid, str(error)))
        started = time.perf_counter()
        resolved = self._translated(resolved)
        translate_ms = _ms_since(started)
        try:
            drawn = self._draw_in_groups(resolved)
            # A flagged page never leaves: it is redrawn with a seed derived from its own, then refused.
            for attempt in range(1, self.settings.safety_retries + 1):
                flagged = {
                    i: replace(resolved[i], seed=redraw_seed(resolved[i].seed, attempt))
                    for i in drawn
                    if drawn[i].flagged
                }
                if not flagged:
                    break
                log.warning("%d page(s) flagged by the picture check; redrawing (attempt %d)", len(flagged), attempt)
                for index, result in self._draw_in_groups(flagged).items():
                    result.flagged_draws += drawn[index].flagged_draws
                    drawn[index] = result
        finally:
            self.abandoned.discard(request.job_id for request in requests if request.job_id is not None)
        for index, result in drawn.items():
            result.prompt_drawn = resolved[index].prompt
            result.timings_ms["translate"] = translate_ms
            if result.flagged:
                result = PageResult(None, result.seed, result.batch_size, flagged_draws=result.flagged_draws)
                result.error = PageError(ErrorKind.content_refused, "the drawn picture did not pass the safety check")
            results[index] = result
        return results  # type: ignore[return-value]

    def _draw_in_groups(self, requests: dict[int, ResolvedPage]) -> dict[int, PageResult]:
        groups: dict[tuple, list[int]] = {}
        for index, request in requests.items():
            groups.setdefault(request.group_key(), []).append(index)
        drawn = {}
        for indices in groups.values():
            drawn.update(zip(indices, self._generate_isolated([requests[i] for i in indices])))
        return drawn

    def _generate_isolated(self, requests: list[ResolvedPage]) -> list[PageResult]:
        try:
            return self.generate_group(requests)
        except torch.OutOfMemoryError:
            self._release_accelerator_memory()
            if len(requests) == 1:
                log.warning("out of memory on a single %sx%s page", requests[0].width, requests[0].height)
                return _failed(requests, ErrorKind.out_of_memory, "the page does not fit in accelerator memory")
            half = len(requests) // 2
            log.warning(
                "out of memory on a batch of %d pages; retrying as %d + %d", len(requests), half, len(requests) - half
            )
            return self._generate_isolated(requests[:half]) + self._generate_isolated(requests[half:])
        except GenerationInterrupted as stop:
            log.warning("%d page(s) %s", len(requests), stop)
            return _failed(requests, ErrorKind.timeout, str(stop))
        except Exception:
            log.exception("drawing %d page(s) failed", len(requests))
            return _failed(requests, ErrorKind.internal, "the page could not be drawn")

    def _release_accelerator_memory(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @torch.inference_mode()
    def generate_group(self, requests: list[ResolvedPage]) -> list[PageResult]:
        """One diffusion call for requests that share a group key (all fields resolved)."""
        first = requests[0]
        width, height = first.width, first.height
        continuation = first.prev_frame is not None
        n_characters = max(len(request.characters) for request in requests)  # fewer are padded with empty masks
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
        # Each character acts only inside its box; the style adapter (previous page) acts on the whole page.
        face_masks = self._region_masks(requests, n_characters, width, height) if n_characters else None

        self.pipe.set_ip_adapter_scale(
            [
                self.settings.face_adapter_scale if n_characters else 0.0,
                self.settings.style_adapter_scale if continuation else 0.0,
            ]
        )
        # One CPU generator per request: the same seed gives the same initial latents on any device, alone or batched.
        generators = [torch.Generator("cpu").manual_seed(request.seed) for request in requests]

        def on_step_end(pipe, step, timestep, callback_kwargs):
            # Stop only when nobody waits any more: a batch-mate still waiting gets its page.
            now = time.time()
            if not any(self.wanted(request, now) for request in requests):
                hung_up = all(request.job_id in self.abandoned for request in requests)
                why = HUNG_UP if hung_up else "timed out"
                raise GenerationInterrupted(f"{why}; stopped after step {step + 1} of {first.steps}")
            return callback_kwargs

        self.faults.inject([request.prompt for request in requests])
        self.use_quality(first.quality)
        started = time.perf_counter()
        output = self.pipe(
            prompt=[request.prompt for request in requests],
            negative_prompt=[request.negative_prompt for request in requests],
            image=control_images,
            controlnet_conditioning_scale=self.settings.controlnet_scale if continuation else 0.0,
            ip_adapter_image_embeds=[face_embeds, style_embeds],
            cross_attention_kwargs={"ip_adapter_masks": [face_masks, None]} if face_masks is not None else None,
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            width=width,
            height=height,
            generator=generators,
            output_type="pil",
            callback_on_step_end=on_step_end,
        )
        timings["diffusion"] = _ms_since(started)
        started = time.perf_counter()
        flags = self._flags(output.images, requests)
        timings["safety_check"] = _ms_since(started)
        return [
            PageResult(
                image=image,
                seed=request.seed,
                batch_size=len(requests),
                timings_ms=dict(timings),
                flagged=flagged,
                flagged_draws=int(flagged),
            )
            for image, request, flagged in zip(output.images, requests, flags)
        ]

    def use_quality(self, quality: Quality) -> None:
        """Set the pipeline up for a call of `quality` pages: the LoRA on (draft) or off (final), and that quality's
        scheduler. Nothing is loaded: the LoRA's layers stay in place and only their switch changes, and only when
        the quality differs from the last call's. Called on the one thread that draws."""
        if quality is self._quality:
            return
        from diffusers.utils.peft_utils import set_adapter_layers

        # On the modules themselves, not pipe.enable_lora()/disable_lora(): those skip a torch.compile'd UNet (an
        # OptimizedModule is no ModelMixin), so a compiled service would draw drafts with the LoRA still off.
        for model in self._lora_models:
            set_adapter_layers(model, enabled=quality is Quality.draft)
        self.pipe.scheduler = self.schedulers[quality]
        self._quality = quality

    def _flags(self, pictures: list[Image.Image], requests: list[ResolvedPage]) -> list[bool]:
        checked = self.checker.flagged(pictures) if self.checker is not None else [False] * len(pictures)
        return [flag or self.faults.flags(r.prompt, r.seed) for flag, r in zip(checked, requests)]

    def _with_negatives(self, positives: list[torch.Tensor]) -> torch.Tensor:
        """diffusers' layout for per-item adapter inputs: (2B, images, tokens, width), all negatives first."""
        negative = self.embedder.negative()
        stacked = torch.stack(positives)
        negatives = negative.expand(stacked.shape[1], *negative.shape[1:]).unsqueeze(0).expand_as(stacked)
        return torch.cat([negatives, stacked]).to(self.pipe.unet.dtype)

    def _face_embeddings(self, requests: list[ResolvedPage], n_characters: int) -> torch.Tensor:
        negative = self.embedder.negative()
        if n_characters == 0:
            # Face adapter off (scale 0); it still needs an input of the right shape.
            return self._with_negatives([negative] * len(requests))
        rows = []
        for request in requests:
            # Padding rows get an all-zero mask, so what they hold never reaches the page.
            padding = negative.expand(n_characters - len(request.characters), *negative.shape[1:])
            encoded = self.embedder.encode_cached(list(request.characters)) if request.characters else padding[:0]
            rows.append(torch.cat([encoded, padding]))
        return self._with_negatives(rows)

    def _region_masks(self, requests: list[ResolvedPage], n_characters: int, width: int, height: int) -> torch.Tensor:
        """(rows, characters, H, W) box masks at the latent grid (the page's aspect ratio, so diffusers neither pads
        nor cuts them), one row per UNet batch row: negatives first under classifier-free guidance, as the
        embeddings are. Made once per call on the UNet's device and dtype, not per attention layer."""
        rows, columns = height // self.pipe.vae_scale_factor, width // self.pipe.vae_scale_factor
        masks = torch.zeros(len(requests), n_characters, rows, columns)
        for row, request in enumerate(requests):
            for index, (x0, y0, x1, y1) in enumerate(request.regions):
                top, left = round(y0 * rows), round(x0 * columns)
                bottom, right = max(round(y1 * rows), top + 1), max(round(x1 * columns), left + 1)
                masks[row, index, top:bottom, left:right] = 1.0
        guided = requests[0].guidance_scale > 1 and self.pipe.unet.config.time_cond_proj_dim is None
        if guided:
            masks = torch.cat([masks, masks])
        return masks.to(device=self.pipe.unet.device, dtype=self.pipe.unet.dtype)

    def _style_embeddings(self, requests: list[ResolvedPage], continuation: bool) -> torch.Tensor:
        if not continuation:
            return self._with_negatives([self.embedder.negative()] * len(requests))
        encoded = self.embedder.encode([request.prev_frame for request in requests])
        return self._with_negatives([embedding.unsqueeze(0) for embedding in encoded])


HUNG_UP = "every client of the page hung up"


def redraw_seed(seed: int, attempt: int) -> int:
    """The seed of the `attempt`-th redraw of a flagged page: derived from the request's, so redraws reproduce."""
    digest = hashlib.sha256(f"{seed}:{attempt}".encode()).digest()
    return int.from_bytes(digest[:4], "big") % (MAX_SEED + 1)


def _models_with_adapter(pipe, adapter: str) -> list:
    """The pipeline's models (a compiled one unwrapped) into which the LoRA `adapter` was loaded."""
    models = []
    for name in ("unet", "text_encoder", "text_encoder_2"):
        model = getattr(pipe, name, None)
        model = getattr(model, "_orig_mod", model)  # torch.compile's OptimizedModule
        if model is not None and adapter in (getattr(model, "peft_config", None) or {}):
            models.append(model)
    return models


def _failed(requests: list[ResolvedPage], kind: ErrorKind, message: str) -> list[PageResult]:
    return [
        PageResult(image=None, seed=r.seed, batch_size=len(requests), error=PageError(kind, message)) for r in requests
    ]


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
