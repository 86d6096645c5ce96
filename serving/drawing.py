"""The front's work for one page: decode and check the request's pictures, hand the page to the model service,
and turn its answer into the HTTP response."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import bentoml
from starlette.responses import JSONResponse

from pipeline.page import Quality

from .content_safety import PromptGate
from .errors import field_error, overloaded, page_error
from .images import ImageInputError, normalised_png
from .model_client import ModelClient
from .prompt_filter import with_safe_negative
from .schemas import GenerateRequest, GenerateResponse
from .settings import ServingSettings
from .wire import PageAnswer, PageJob

if TYPE_CHECKING:
    from .books import BookRequest

    Page = GenerateRequest | BookRequest  # a page's settings (PageSettings) and its cast's regions (Cast)

log = logging.getLogger(__name__)
ABANDON_CALL_S = 10  # telling the model service about a hang-up is best effort: never hold a cancelled task long


class Overloaded(Exception):
    """The model service's batch queue is full: an overload to retry later, not a failure."""


@dataclass(frozen=True)
class PagePictures:
    """A page's pictures as the model service takes them: decoded, checked and normalised, as PNG base64."""

    prev_frame: str | None
    characters: list[str]


def checked_pictures(
    prev_frame: str | None,
    characters: list[str | None],
    limits: dict,
    prev_field: str = "prev_frame",
    schema: str = "GenerateRequest",
) -> PagePictures:
    """Untrusted pictures through the one untrusted decoder, once; a bad one is a 400 naming its field."""
    try:
        prev = normalised_png(prev_frame, prev_field, limits) if prev_frame else None
        # None: a place in a book's cast whose picture the book draws itself (a described member)
        cast = [
            normalised_png(c, f"characters[{i}]", limits) if c is not None else None for i, c in enumerate(characters)
        ]
    except ImageInputError as error:
        raise field_error(error, schema) from None
    return PagePictures(prev, cast)


def page_job(
    page: Page,
    prompt: str,
    seed: int | None,
    pictures: PagePictures,
    deadline: float,
    safe_negative: str,
    quality: Quality = Quality.final,
) -> PageJob:
    """A checked page (a /generate request, or a book's settings and cast) as the wire's job, the child-safe
    negative prompt put before the page's own."""
    return PageJob(
        prompt=prompt,
        negative_prompt=with_safe_negative(page.negative_prompt, safe_negative),
        prev_frame=pictures.prev_frame,
        characters=pictures.characters,
        regions=page.regions,
        seed=seed,
        width=page.width,
        height=page.height,
        steps=page.steps,
        guidance_scale=page.guidance_scale,
        deadline=deadline,
        job_id=uuid.uuid4().hex,
        quality=quality,
    )


def response(answer: PageAnswer) -> GenerateResponse:
    """A drawn page's answer as the public response: its fields were validated when the answer arrived."""
    return GenerateResponse.model_construct(
        img=answer.img,
        seed=answer.seed,
        batch_size=answer.batch_size,
        timings_ms=answer.timings_ms,
        prompt_drawn=answer.prompt_drawn,
    )


class PageDrawer:
    def __init__(self, client: ModelClient, settings: ServingSettings, prompts: PromptGate):
        self.client = client
        self.settings = settings
        self.prompts = prompts

    async def draw(self, job: PageJob) -> PageAnswer:
        """One page through the model service's adaptive batcher; raises Overloaded when its queue is full.

        BentoML's client parses the answer into PageAnswer (the front's one validation of it).
        Cancelled (the client hung up, see serving/hangups.py): the model service is told, so it does not draw
        the page for nobody. Cancelling the call alone would not stop it: the model service never sees the closed
        connection while the page waits in its batcher or is being drawn in a thread."""
        try:
            [answer] = await self.client.calls.draw([job])
        except bentoml.exceptions.BentoMLException as error:
            if error.error_code.value in (429, 503):
                raise Overloaded(str(error)) from None
            raise
        except asyncio.CancelledError:
            await self.abandon(job)
            raise
        return answer

    async def abandon(self, job: PageJob) -> None:
        try:
            await asyncio.wait_for(self.client.calls.abandon(job_ids=[job.job_id]), ABANDON_CALL_S)
        except Exception as error:  # the model may be gone too; its deadline check still stops the page
            log.warning("could not tell the model service that job %s was abandoned: %r", job.job_id, error)

    async def page(
        self, page: Page, prompt: str, seed: int | None, pictures: PagePictures, quality: Quality = Quality.final
    ) -> PageAnswer:
        """A checked page with checked pictures, through the batcher, with its deadline from now."""
        deadline = time.time() + self.settings.request_timeout_s
        safe_negative = self.settings.safe_negative_prompt
        return await self.draw(page_job(page, prompt, seed, pictures, deadline, safe_negative, quality))

    async def generate(self, request: GenerateRequest) -> GenerateResponse | JSONResponse:
        refused = await self.prompts.refusal([("prompt", request.prompt)])  # before any model work; negatives are free
        if refused is not None:
            return refused
        settings = self.settings
        deadline = time.time() + settings.request_timeout_s
        limits = settings.image_limits
        pictures = await asyncio.to_thread(checked_pictures, request.prev_frame, request.characters, limits)
        job = page_job(
            request, request.prompt, request.seed, pictures, deadline, settings.safe_negative_prompt, request.quality
        )
        try:
            answer = await self.draw(job)
        except Overloaded as error:
            return overloaded(str(error), self.settings.retry_after_s)
        if answer.error_kind:
            return page_error(answer.error_kind, answer.error)
        return response(answer)
