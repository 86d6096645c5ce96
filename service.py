"""Picture Book as BentoML services, a table of contents: `PictureBook` (front: HTTP schema, pictures checked, the
answer encoded) depends on `PageModel` (the models on the GPU, drawing adaptive batches). What each route does lives
in `serving/`, the model work in `pipeline/`, every patch of BentoML, uvicorn and Pillow in serving/framework.py."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import bentoml
from bentoml.validators import ContentType

from pipeline.config import ModelSettings
from serving import errors, framework
from serving.bento_models import declared_models, model_paths
from serving.book_gate import BookGate
from serving.book_jobs import Books
from serving.book_routes import book_app
from serving.books import BookRequest, BookResult, PdfRequest, pdf_file
from serving.characters import PortraitRequest, PortraitResponse, character_portrait
from serving.content_safety import PromptGate
from serving.draining import Draining
from serving.drawing import PageDrawer
from serving.guards import AdmissionLimit, ApiKeyAuth, JsonBodyOnly, RefusePickledBodies
from serving.hangups import CancelOnHangUp
from serving.listening import http_config, warn_if_open_to_the_network
from serving.metrics import model_gauges
from serving.model_client import ModelClient
from serving.readiness import FastReadiness
from serving.schemas import GenerateRequest, GenerateResponse, validated_by_bentoml
from serving.settings import serving_settings as settings
from serving.studio import studio_app
from serving.threads import torch_thread
from serving.wire import PageAnswer, PageJob, TextVerdict, draw_jobs, moderate_texts

connections = framework.install(settings)  # every patch of BentoML, uvicorn and Pillow, before any server starts
model_settings = ModelSettings()
api_key = settings.api_key.get_secret_value() if settings.api_key is not None else None
prompts = PromptGate(settings, model_settings.moderation)  # lists then model, for /generate and books at submit
# Books in Redis (PICTUREBOOK_REDIS_URL) or in this process; one per front process, its worker drawing here.
books = Books(settings, prompts)


@bentoml.service(
    name="picturebook-model",
    resources={"gpu": 1, "memory": "16Gi"},
    # Longer than the front's timeout: a batch stops itself at its requests' deadlines, between denoising steps.
    traffic={"timeout": settings.request_timeout_s + 30},
    # BentoML's client replaces its session every 100 calls or 300 s, cutting calls in flight: one Unix socket, keep it.
    runner_connection={"max_requests": 2**62, "max_age": 1e12},
    workers=1,
)
class PageModel:
    locals().update(declared_models(model_settings, settings.bento_model))

    def __init__(self) -> None:
        from pipeline.loading import load_models

        # BentoML serves (and /readyz answers 200) only once __init__ returns: ready means loaded, checkers included.
        paths = model_paths(self, model_settings)
        self.generator, self.moderator = torch_thread.run(load_models, paths, model_settings)
        model_gauges(model_settings)

    # A batchable API's max_batch_size must be > 1; at 1 there is no batcher, and `draw` still takes a list.
    @bentoml.api(
        batchable=settings.max_batch_size > 1,
        max_batch_size=max(2, settings.max_batch_size),
        max_latency_ms=settings.max_latency_ms,
    )
    @torch_thread.runs_here  # one OpenMP team in this process (serving/threads.py)
    def draw(self, jobs: list[PageJob]) -> list[PageAnswer]:
        return draw_jobs(self.generator, jobs)

    @bentoml.api
    async def abandon(self, job_ids: list[str]) -> None:
        """The front's clients for these jobs hung up (async: `draw` holds the one worker thread)."""
        self.generator.abandon(job_ids)

    # Every user text after the lists; a whole book's texts in one call (serving/content_safety.py).
    @bentoml.api(batchable=True, max_batch_size=2 * settings.max_book_pages + 1, max_latency_ms=settings.max_latency_ms)
    @torch_thread.runs_here
    def moderate(self, texts: list[str]) -> list[TextVerdict]:
        return moderate_texts(self.moderator, texts, self.generator.translate)


# Outermost first. The model's socket is reachable from anything in the pod: the same key, and JSON only.
PageModel.add_asgi_middleware(Draining, public=False, retry_after_s=settings.retry_after_s, connections=connections)
PageModel.add_asgi_middleware(FastReadiness, moderation=model_settings.moderation)
if api_key is not None:
    PageModel.add_asgi_middleware(ApiKeyAuth, api_key=api_key)
PageModel.add_asgi_middleware(RefusePickledBodies)


@bentoml.service(
    name="picturebook",
    http=http_config(settings),  # its port, and CORS for the origins in the settings
    # Baked into the image: its profile, and no hub at run time (`bentoml containerize` downloads sdxl to build).
    envs=[
        {"name": "PICTUREBOOK_PROFILE", "value": model_settings.profile.value},
        {"name": "HF_HUB_OFFLINE", "value": "1", "stage": "runtime"},
    ],
    traffic={"timeout": settings.request_timeout_s},  # concurrency is bounded by AdmissionLimit (adds Retry-After)
    workers=1,
)
@bentoml.asgi_app(studio_app, path="/studio")
@bentoml.asgi_app(book_app(books), path="/")  # /books…: matches only its own routes (BentoML mounts passively)
class PictureBook:
    model = bentoml.depends(PageModel)

    def __init__(self) -> None:
        self.client = ModelClient(type(self).__dict__["model"], self.model, api_key)
        self.pages = PageDrawer(self.client, settings, prompts)
        prompts.use_model(self.client)

    @bentoml.on_startup
    async def start(self) -> None:
        warn_if_open_to_the_network(api_key)
        await self.client.open()
        await books.start(self.pages)

    @bentoml.on_shutdown
    async def disconnect_from_model(self) -> None:
        await books.stop()  # with Redis, a book drawing here goes back to the queue for another replica
        await self.client.close()

    @bentoml.api(route="/generate", input_spec=GenerateRequest, output_spec=GenerateResponse)
    async def generate(self, **fields: Any) -> GenerateResponse:
        return await self.pages.generate(validated_by_bentoml(GenerateRequest, fields))

    @bentoml.api(route="/character", input_spec=PortraitRequest, output_spec=PortraitResponse)
    async def character(self, **fields: Any) -> PortraitResponse:
        return await character_portrait(self.pages, validated_by_bentoml(PortraitRequest, fields))

    # Declared for BentoML's API document and typed clients only: BookGate answers /book/submit, /book/status,
    # /book/get and /book/progress from the book store, so this body never runs.
    @bentoml.task(route="/book", input_spec=BookRequest, output_spec=BookResult)
    async def book(self, **fields: Any) -> BookResult:
        return errors.not_a_job()

    @bentoml.api(route="/book/pdf", input_spec=PdfRequest)
    async def book_pdf(self, ctx: bentoml.Context, **fields: Any) -> Annotated[Path, ContentType("application/pdf")]:
        return await pdf_file(validated_by_bentoml(PdfRequest, fields), settings.image_limits, ctx)


# Outermost first: draining, /readyz, hang-ups; refuse unauthenticated callers; bodies that are not small JSON
# arriving in time; excess load (admitted once its body is here, so slow senders hold no slot); book submissions.
PictureBook.add_asgi_middleware(Draining, public=True, retry_after_s=settings.retry_after_s)
PictureBook.add_asgi_middleware(FastReadiness, moderation=model_settings.moderation, books=books)
PictureBook.add_asgi_middleware(CancelOnHangUp)
if api_key is not None:
    PictureBook.add_asgi_middleware(ApiKeyAuth, api_key=api_key)
PictureBook.add_asgi_middleware(JsonBodyOnly, **settings.body_limits)
PictureBook.add_asgi_middleware(AdmissionLimit, limit=settings.max_concurrency, retry_after_s=settings.retry_after_s)
PictureBook.add_asgi_middleware(BookGate, books=books)
