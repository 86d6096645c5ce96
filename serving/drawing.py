"""The front's work for one page: decode and check the request's pictures, hand the page to the model service,
and turn its answer into the HTTP response."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import bentoml
from starlette.responses import JSONResponse

from .content_safety import PromptGate
from .errors import field_error, overloaded, page_error
from .images import ImageInputError, decode_image, encode_png
from .model_client import ModelClient
from .prompt_filter import with_safe_negative
from .schemas import GenerateRequest, GenerateResponse, PageJob, PageOutput
from .settings import ServingSettings

log = logging.getLogger(__name__)
ABANDON_CALL_S = 10  # telling the model service about a hang-up is best effort: never hold a cancelled task long


class Overloaded(Exception):
    """The model service's batch queue is full: an overload to retry later, not a failure."""


def page_job(request: GenerateRequest, deadline: float, limits: dict[str, int], safe_negative: str) -> PageJob:
    """The request with its pictures decoded, checked and re-encoded (a 400 naming the field when one is bad), and
    the child-safe negative prompt put before the page's own."""
    try:
        prev = decode_image(request.prev_frame, "prev_frame", **limits) if request.prev_frame else None
        characters = [decode_image(c, f"characters[{i}]", **limits) for i, c in enumerate(request.characters)]
    except ImageInputError as error:
        raise field_error(error) from None
    # Lossless and fast: the model service only decodes what this service already checked.
    return PageJob(
        **request.model_dump(exclude={"prev_frame", "characters", "negative_prompt"}),
        negative_prompt=with_safe_negative(request.negative_prompt, safe_negative),
        prev_frame=encode_png(prev, compress_level=1) if prev else None,
        characters=[encode_png(c, compress_level=1) for c in characters],
        deadline=deadline,
        job_id=uuid.uuid4().hex,
    )


class PageDrawer:
    def __init__(self, client: ModelClient, settings: ServingSettings, prompts: PromptGate):
        self.client = client
        self.settings = settings
        self.prompts = prompts

    async def draw(self, job: PageJob) -> PageOutput:
        """One page through the model service's adaptive batcher; raises Overloaded when its queue is full.

        Cancelled (the client hung up, see serving/hangups.py): the model service is told, so it does not draw
        the page for nobody. Cancelling the call alone would not stop it: the model service never sees the closed
        connection while the page waits in its batcher or is being drawn in a thread."""
        try:
            [output] = await self.client.calls.draw([job])
        except bentoml.exceptions.BentoMLException as error:
            if error.error_code.value in (429, 503):
                raise Overloaded(str(error)) from None
            raise
        except asyncio.CancelledError:
            await self.abandon(job)
            raise
        return PageOutput.model_validate(output) if isinstance(output, dict) else output

    async def abandon(self, job: PageJob) -> None:
        try:
            await asyncio.wait_for(self.client.calls.abandon(job_ids=[job.job_id]), ABANDON_CALL_S)
        except Exception as error:  # the model may be gone too; its deadline check still stops the page
            log.warning("could not tell the model service that job %s was abandoned: %r", job.job_id, error)

    async def page(self, request: GenerateRequest) -> PageOutput:
        """A checked request drawn: decode its pictures (400 naming the field), then through the batcher."""
        deadline = time.time() + self.settings.request_timeout_s
        settings = self.settings
        job = await asyncio.to_thread(page_job, request, deadline, settings.image_limits, settings.safe_negative_prompt)
        return await self.draw(job)

    async def generate(self, request: GenerateRequest) -> GenerateResponse | JSONResponse:
        refused = self.prompts.refusal([("prompt", request.prompt)])  # before any model work; negatives are free
        if refused is not None:
            return refused
        try:
            output = await self.page(request)
        except Overloaded as error:
            return overloaded(str(error), self.settings.retry_after_s)
        if output.error_kind:
            return page_error(output.error_kind, output.error)
        return output.response()
