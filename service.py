"""Picture Book as BentoML services: the seed's `POST /generate` contract over the page pipeline.

A table of contents: `PictureBook` (front: HTTP schema, pictures checked, the answer encoded) depends on `PageModel`
(holds the models on the GPU and draws whole adaptive batches through `pipeline/`). What each route does lives in
`serving/`, the model work in `pipeline/`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import bentoml

from pipeline.config import ModelSettings
from serving.bento_models import declared_models, model_paths
from serving.drawing import PageDrawer
from serving.guards import AdmissionLimit, ApiKeyAuth, JsonBodyOnly, RefusePickledBodies
from serving.model_client import ModelClient
from serving.schemas import GenerateRequest, GenerateResponse, PageJob, PageOutput
from serving.settings import serving_settings as settings

log = logging.getLogger("picturebook")
model_settings = ModelSettings()
api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None


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
    locals().update(declared_models(model_settings, settings.bento_model))

    def __init__(self) -> None:
        from pipeline.loading import load_page_generator

        # BentoML starts serving (and /readyz answers 200) only after __init__ returns: ready means loaded.
        started = time.perf_counter()
        self.generator = load_page_generator(model_paths(self, model_settings), model_settings)
        log.info("models loaded in %.1f s", time.perf_counter() - started)

    # BentoML wants a batchable API's max_batch_size > 1; batch size 1 means no batcher, and the front still sends
    # a one-page list, so `draw` has the same signature either way.
    @bentoml.api(
        batchable=settings.max_batch_size > 1,
        max_batch_size=max(2, settings.max_batch_size),
        max_latency_ms=settings.max_latency_ms,
    )
    def draw(self, jobs: list[PageJob]) -> list[PageOutput]:
        results = self.generator.generate([job.page_request() for job in jobs])
        return [PageOutput.from_result(result) for result in results]


# Outermost first. The model's socket is reachable from anything in the pod: the same key, and JSON only.
if api_key is not None:
    PageModel.add_asgi_middleware(ApiKeyAuth, api_key=api_key)
PageModel.add_asgi_middleware(RefusePickledBodies)


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
        {"name": "PICTUREBOOK_PROFILE", "value": model_settings.profile.value},
        {"name": "HF_HUB_OFFLINE", "value": "1", "stage": "runtime"},
    ],
    traffic={"timeout": settings.request_timeout_s},  # concurrency is bounded by AdmissionLimit (adds Retry-After)
    workers=1,
)
class PictureBook:
    model = bentoml.depends(PageModel)

    def __init__(self) -> None:
        self.client = ModelClient(type(self).__dict__["model"], self.model, api_key)
        self.pages = PageDrawer(self.client, settings)

    @bentoml.on_startup
    async def connect_to_model(self) -> None:
        await self.client.open()

    @bentoml.on_shutdown
    async def disconnect_from_model(self) -> None:
        await self.client.close()

    @bentoml.api(route="/generate", input_spec=GenerateRequest, output_spec=GenerateResponse)
    async def generate(self, **fields: Any) -> GenerateResponse:
        return await self.pages.generate(GenerateRequest(**fields))


# Outermost first: refuse unauthenticated callers, then bodies that are not small JSON arriving in time, then excess
# load (a request is admitted once its body is here, so slow senders hold no slot).
if api_key is not None:
    PictureBook.add_asgi_middleware(ApiKeyAuth, api_key=api_key)
PictureBook.add_asgi_middleware(JsonBodyOnly, **settings.body_limits)
PictureBook.add_asgi_middleware(AdmissionLimit, limit=settings.max_concurrency, retry_after_s=settings.retry_after_s)
