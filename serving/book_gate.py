"""The ASGI side of book jobs that BentoML's task routes do not give: checks at submit, the running-books limit,
and `GET /book/progress`. The plain `POST /book` BentoML also makes for a task is refused (405).

BentoML's `/book/submit` stores the raw request and answers a task id before the task parses it, so a bad book
would only fail later. This gate checks the book first (the schema, its pictures and its texts, as strictly as
/generate), and answers a 400 naming the field (`pages[3].prompt`, or a 422 for a refused text) before any task
exists. It also reserves one of `max_books`
slots (429 with Retry-After when none is free); the job frees it when it ends.
"""

from __future__ import annotations

import asyncio
import json
import re
from urllib.parse import parse_qs

from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from . import errors
from .books import BookJobs, BookRequest, book_pictures
from .content_safety import PromptGate
from .drawing import PagePictures
from .guards import replaying
from .settings import ServingSettings

BOOK, SUBMIT, PROGRESS = "/book", "/book/submit", "/book/progress"


class ProgressQuery(BaseModel):
    """`GET /book/progress?task_id=…&since=k`: `since` (from 0) sends the pictures of pages k and later only."""

    since: int = Field(0, ge=0, description="The first page whose picture to send; 0 (all) when absent.")

    @field_validator("since", mode="before")
    @classmethod
    def _whole_number(cls, since):
        if isinstance(since, str) and not re.fullmatch(r"-?[0-9]+", since):  # "1.0" or "1e3" is no page number
            raise ValueError("must be a whole number: the index of a page")
        return since


def check_book(body: bytes, limits: dict[str, int]) -> tuple[BookRequest, PagePictures]:
    """The parsed book and its pictures decoded, checked and normalised (kept for its pages), or a ValidationError
    naming the field."""
    book = BookRequest.model_validate_json(body)
    return book, book_pictures(book, limits)


class BookGate:
    def __init__(self, app, jobs: BookJobs, prompts: PromptGate, settings: ServingSettings):
        self.app = app
        self.jobs = jobs
        self.prompts = prompts
        self.image_limits = settings.image_limits
        self.retry_after_s = settings.retry_after_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PROGRESS and scope["method"] == "GET":
            await self._progress(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == SUBMIT and scope["method"] == "POST":
            await self._submit(scope, receive, send)
        elif scope["type"] == "http" and scope["path"] == BOOK and scope["method"] == "POST":
            # BentoML also serves every task as a plain call; a book takes minutes, past any HTTP timeout, and
            # would bypass the checks and the limit above.
            await errors.not_a_job()(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _progress(self, scope: Scope, receive: Receive, send: Send) -> None:
        query = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)  # "since=" is no number
        task_id = query.get("task_id", [""])[0]
        progress = self.jobs.progress(task_id) if task_id else None
        try:
            since = ProgressQuery.model_validate({"since": query.get("since", ["0"])[0]}).since
        except ValidationError as error:
            answer = errors.invalid_fields(error)
        else:
            if not task_id:
                answer = errors.bad_query("task_id is required")
            elif progress is None:
                answer = errors.not_found("no book with this task_id in this replica")
            else:
                # Serialised once, straight to the body; the pictures of the pages before `since` are left out.
                skipped = {"pages": set(range(min(since, len(progress.pages))))} if since else None
                answer = Response(progress.model_dump_json(exclude=skipped), media_type="application/json")
        await answer(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive, send: Send) -> None:
        chunks = []
        while True:  # JsonBodyOnly (outside this gate) has bounded and buffered it: one message
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        try:
            book, pictures = await asyncio.to_thread(check_book, body, self.image_limits)
        except ValidationError as error:
            await errors.invalid_fields(error)(scope, receive, send)
            return
        refused = await self.prompts.refusal(book.texts())
        if refused is not None:
            await refused(scope, receive, send)
            return
        if not self.jobs.reserve():
            message = f"{self.jobs.max_running} books are drawing already; retry later"
            await errors.too_many(message, self.retry_after_s)(scope, receive, send)
            return

        accepted = False

        async def watch_status(message: Message) -> None:
            nonlocal accepted
            if message["type"] == "http.response.start":
                accepted = message["status"] == 200
            elif message["type"] == "http.response.body" and accepted:
                # Progress exists from the task id's first answer on, before the job itself starts.
                self.jobs.start(json.loads(message["body"])["task_id"], len(book.pages), pictures)
            await send(message)

        try:
            await self.app(scope, replaying(body, receive), watch_status)
        finally:
            if not accepted:  # no task was made: the job that would free the slot never runs
                self.jobs.release()
