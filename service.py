"""Picture Book as a BentoML service: the seed's `POST /generate` contract over the frame pipeline.

Two services: `PictureBook` (front: HTTP schema, base64 decoding and validation, response encoding) depends on
`PageModel` (holds the models on the GPU and draws whole adaptive batches through `pipeline/`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import bentoml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from starlette.responses import JSONResponse

from bento_models import declared_models, model_paths
from http_guards import AdmissionLimit, ApiKeyAuth, JsonBodyOnly, RefusePickledBodies
from pipeline import MAX_CHARACTERS, MAX_SEED, PageRequest, Settings, load_page_generator
from pipeline.images import ImageInputError, decode_image, decode_trusted_png, encode_png
from pipeline.sources import PROFILES

log = logging.getLogger("picturebook")
settings = Settings()
MAX_SIDE = PROFILES[settings.profile].max_side
# How a page that could not be drawn is answered (the other pages of its batch are not affected).
ERROR_STATUS = {"out_of_memory": 507, "timeout": 504, "invalid": 422, "internal": 500}

EXAMPLE_PNG = (  # a 1x1 white PNG, so /docs "Try it out" works as shown
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"
)


class GenerateRequest(BaseModel):
    """The seed's request, plus optional generation settings."""

    # Unknown fields are ignored, not refused: clients written against a later or earlier contract keep working.
    model_config = ConfigDict(extra="ignore")

    prev_frame: str | None = Field(
        None,
        description="The previous page, base64 PNG/JPEG/WEBP (a `data:image/...;base64,` prefix is accepted). "
        "Omit it for the first page of a book.",
        examples=[EXAMPLE_PNG],
    )
    characters: list[str] = Field(
        default_factory=list,
        max_length=MAX_CHARACTERS,
        description=f"Reference pictures of the characters, base64 images, 0 to {MAX_CHARACTERS}.",
        examples=[[EXAMPLE_PNG]],
    )
    prompt: str = Field(
        ...,
        min_length=1,
        max_length=settings.max_prompt_chars,
        description="What happens on the page: scene, characters' places and actions.",
        examples=["Two friends talk in a garden, character 1 on the left, character 2 on the right"],
    )
    seed: int | None = Field(
        None, ge=0, le=MAX_SEED, description="For a reproducible page; drawn at random when absent.", examples=[42]
    )
    negative_prompt: str = Field("", max_length=settings.max_prompt_chars, description="What the page should avoid.")
    width: int | None = Field(
        None, ge=64, le=MAX_SIDE, multiple_of=8, description="Page width in pixels; profile default when absent."
    )
    height: int | None = Field(
        None, ge=64, le=MAX_SIDE, multiple_of=8, description="Page height in pixels; profile default when absent."
    )
    steps: int | None = Field(None, ge=1, le=100, description="Denoising steps; profile default when absent.")
    guidance_scale: float | None = Field(None, ge=0.0, le=30.0, description="Classifier-free guidance scale.")


class GenerateResponse(BaseModel):
    img: str = Field(..., description="The new page, base64 PNG.")
    seed: int = Field(..., description="The seed the page was drawn with (send it back to redraw the same page).")
    batch_size: int = Field(..., description="Pages drawn together in the diffusion call that drew this one.")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Where the time went, in milliseconds.")


class PageJob(BaseModel):
    """One page as the front hands it to the model service: validated, images normalised and re-encoded as PNG."""

    prompt: str
    prev_frame: str | None = None
    characters: list[str] = Field(default_factory=list)
    seed: int | None = None
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    deadline: float | None = None  # wall-clock time after which the front no longer waits


class PageOutput(BaseModel):
    img: str | None = None
    seed: int | None = None
    batch_size: int = 0
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error_kind: str | None = None  # this page failed (its batch-mates did not): a pipeline.PageError kind
    error: str | None = None


@bentoml.service(
    name="picturebook-model",
    resources={"gpu": 1, "memory": "16Gi"},
    # Longer than the front's timeout: a batch stops itself at its requests' deadlines, between denoising steps.
    traffic={"timeout": settings.request_timeout_s + 30},
    # BentoML's client to this service replaces its HTTP session every `max_requests` calls or `max_age` seconds
    # (defaults 100 and 300 s) and closing the old one cuts the calls still in flight on it (500 "Server
    # disconnected"). The model is a Unix socket in the same pod, with nothing to re-resolve: keep one session.
    runner_connection={"max_requests": 2**62, "max_age": 1e12},
    workers=1,
)
class PageModel:
    locals().update(declared_models(settings))

    def __init__(self) -> None:
        # BentoML starts serving (and /readyz answers 200) only after __init__ returns: ready means loaded.
        started = time.perf_counter()
        self.generator = load_page_generator(model_paths(self, settings), settings)
        log.info("models loaded in %.1f s", time.perf_counter() - started)

    # BentoML wants a batchable API's max_batch_size > 1; batch size 1 means no batcher, and the front still sends
    # a one-page list, so `draw` has the same signature either way.
    @bentoml.api(
        batchable=settings.max_batch_size > 1,
        max_batch_size=max(2, settings.max_batch_size),
        max_latency_ms=settings.max_latency_ms,
    )
    def draw(self, jobs: list[PageJob]) -> list[PageOutput]:
        requests = [
            PageRequest(
                prompt=job.prompt,
                prev_frame=decode_trusted_png(job.prev_frame) if job.prev_frame else None,
                characters=tuple(decode_trusted_png(c) for c in job.characters),
                seed=job.seed,
                negative_prompt=job.negative_prompt,
                width=job.width,
                height=job.height,
                steps=job.steps,
                guidance_scale=job.guidance_scale,
                deadline=job.deadline,
            )
            for job in jobs
        ]
        return [
            PageOutput(img=encode_png(r.image), seed=r.seed, batch_size=r.batch_size, timings_ms=r.timings_ms)
            if r.ok
            else PageOutput(seed=r.seed, error_kind=r.error.kind, error=r.error.message)
            for r in self.generator.generate(requests)
        ]


# The model's socket is reachable from anything in the pod: the same key, when one is set, and JSON only.
if settings.api_key is not None:
    PageModel.add_asgi_middleware(ApiKeyAuth, api_key=settings.api_key.get_secret_value())
PageModel.add_asgi_middleware(RefusePickledBodies)


def field_error(error: ImageInputError) -> ValidationError:
    """An image problem as the same 400 body BentoML gives for schema errors: `detail[].loc` names the field."""
    location = tuple(int(part) if part.isdigit() else part for part in error.field.replace("]", "").split("["))
    return ValidationError.from_exception_data(
        "GenerateRequest",
        [{"type": "value_error", "loc": location, "input": "<image>", "ctx": {"error": error.message}}],
    )


@bentoml.service(
    name="picturebook",
    http={
        "port": settings.port,
        "cors": {
            "enabled": bool(settings.cors_origins),
            "access_control_allow_origins": settings.cors_origins,
            "access_control_allow_methods": ["GET", "POST"],
            "access_control_allow_headers": ["Authorization", "Content-Type"],
        },
    },
    # Baked into the bento's image: the profile it was built with, and no hub access (weights are inside).
    # HF_HUB_OFFLINE only at run time: `bentoml containerize` downloads the pinned sdxl models while building.
    envs=[
        {"name": "PICTUREBOOK_PROFILE", "value": settings.profile.value},
        {"name": "HF_HUB_OFFLINE", "value": "1", "stage": "runtime"},
    ],
    traffic={"timeout": settings.request_timeout_s},  # concurrency is bounded by AdmissionLimit (adds Retry-After)
    workers=1,
)
class PictureBook:
    model = bentoml.depends(PageModel)

    def __init__(self) -> None:
        dependency = type(self).__dict__["model"]
        resolved = self.model  # resolving sets the dependency's URL when the model runs in its own process
        # BentoML's own proxy speaks pickle between services; this client speaks JSON to the same endpoint.
        # (RemoteProxy is the class bentoml.depends builds; only the media type differs.)
        from _bentoml_impl.client import RemoteProxy

        self._json_proxy = (
            RemoteProxy(dependency.url, service=PageModel, media_type="application/json") if dependency.url else None
        )
        if self._json_proxy is not None and settings.api_key is not None:
            # The client's default headers are the dict its sessions are made with (no public setter exists).
            self._json_proxy._async.default_headers["Authorization"] = f"Bearer {settings.api_key.get_secret_value()}"
        self.pages = resolved.to_async if self._json_proxy is None else None

    @bentoml.on_startup
    async def connect_to_model(self) -> None:
        if self._json_proxy is not None:
            await self._json_proxy.__aenter__()
            self.pages = self._json_proxy.to_async

    @bentoml.on_shutdown
    async def disconnect_from_model(self) -> None:
        if self._json_proxy is not None:
            await self._json_proxy.close()

    @bentoml.api(route="/generate", input_spec=GenerateRequest, output_spec=GenerateResponse)
    async def generate(self, **fields: Any) -> GenerateResponse:
        request = GenerateRequest(**fields)
        deadline = time.time() + settings.request_timeout_s
        job = await asyncio.to_thread(self._job, request, deadline)
        try:
            [output] = await self.pages.draw([job])
        except bentoml.exceptions.BentoMLException as error:
            if error.error_code.value in (429, 503):  # the batcher's queue is full: an overload, not a failure
                return overloaded(str(error))
            raise
        output = PageOutput.model_validate(output) if isinstance(output, dict) else output
        if output.error_kind:
            return JSONResponse({"error": output.error, "kind": output.error_kind}, ERROR_STATUS[output.error_kind])
        return GenerateResponse(img=output.img, seed=output.seed, batch_size=output.batch_size, timings_ms=output.timings_ms)

    @staticmethod
    def _job(request: GenerateRequest, deadline: float) -> PageJob:
        limits = {"max_bytes": settings.max_image_bytes, "max_pixels": settings.max_image_pixels}
        try:
            prev = decode_image(request.prev_frame, "prev_frame", **limits) if request.prev_frame else None
            characters = [decode_image(c, f"characters[{i}]", **limits) for i, c in enumerate(request.characters)]
        except ImageInputError as error:
            raise field_error(error) from None
        # Lossless and fast: the model service only decodes what this service already checked.
        return PageJob(
            **request.model_dump(exclude={"prev_frame", "characters"}),
            prev_frame=encode_png(prev, compress_level=1) if prev else None,
            characters=[encode_png(c, compress_level=1) for c in characters],
            deadline=deadline,
        )


def overloaded(reason: str) -> JSONResponse:
    return JSONResponse(
        {"error": f"overloaded, retry later ({reason})"}, 503, headers={"Retry-After": str(settings.retry_after_s)}
    )


# Outermost first: refuse unauthenticated callers, then excess load, then bodies that are not small JSON.
if settings.api_key is not None:
    PictureBook.add_asgi_middleware(ApiKeyAuth, api_key=settings.api_key.get_secret_value())
PictureBook.add_asgi_middleware(AdmissionLimit, limit=settings.max_concurrency, retry_after_s=settings.retry_after_s)
PictureBook.add_asgi_middleware(JsonBodyOnly, max_bytes=settings.max_body_bytes)
