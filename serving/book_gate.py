"""The first book routes, kept for existing clients as thin aliases over the book store (serving/book_jobs.py):
`POST /book/submit`, `GET /book/status`, `GET /book/get`, `GET /book/progress`, answered here as BentoML's task
routes answered them. The plain `POST /book` BentoML also makes for a task is refused (405).

The `@bentoml.task` in service.py stays declared so that BentoML's API document and its typed clients
(`client.book.submit(...)`) still know these routes; its body never runs, since this middleware answers first.
Checks at submit are those of `POST /books` (Books.submit): a 400 naming the field, a 422 for a refused text, a
429 with Retry-After when every slot is taken, a 503 when the store is unreachable, before any job exists.
"""

from __future__ import annotations

import base64
import re
import time
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

from pydantic import BaseModel, Field, ValidationError, field_validator
from starlette.responses import JSONResponse, Response
from starlette.types import Receive, Scope, Send

from . import errors
from .book_store import FINAL, StoreUnavailable
from .books import (
    BookProgress,
    BookResult,
    CastPortrait,
    DrawnPage,
    book_pdf_b64,
    check_book,
    failure_status,
    pdf_cast,
)

if TYPE_CHECKING:
    from .book_jobs import Books

__all__ = ["BookGate", "ProgressQuery", "check_book"]
BOOK, SUBMIT, STATUS, GET, PROGRESS = "/book", "/book/submit", "/book/status", "/book/get", "/book/progress"
# BentoML stored a task's result a moment after its last progress, and clients poll /book/progress, then
# /book/status: a status turned final before that progress read would answer "completed" beside a progress still
# "running". /book/status keeps saying in_progress this long after the book finished.
STATUS_SETTLE_S = 0.5
CAST_FIELDS = ("index", "name", "description", "seed")


class ProgressQuery(BaseModel):
    """`GET /book/progress?task_id=…&since=k`: `since` (from 0) sends the pictures of pages k and later only."""

    since: int = Field(0, ge=0, description="The first page whose picture to send; 0 (all) when absent.")

    @field_validator("since", mode="before")
    @classmethod
    def _whole_number(cls, since):
        if isinstance(since, str) and not re.fullmatch(r"-?[0-9]+", since):  # "1.0" or "1e3" is no page number
            raise ValueError("must be a whole number: the index of a page")
        return since


def progress_status(status: str) -> str:
    return status if status in FINAL else "running"


class BookGate:
    def __init__(self, app, books: Books):
        self.app = app
        self.books = books

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = (scope.get("path"), scope.get("method")) if scope["type"] == "http" else None
        handler = {
            (SUBMIT, "POST"): self._submit,
            (STATUS, "GET"): self._status,
            (GET, "GET"): self._result,
            (PROGRESS, "GET"): self._progress,
        }.get(route)
        if handler is not None:
            try:
                answer = await handler(scope, receive)
            except StoreUnavailable as error:
                answer = errors.store_unavailable(str(error), self.books.settings.retry_after_s)
            if answer is not None:
                await answer(scope, receive, send)
        elif route == (BOOK, "POST"):
            # BentoML also serves every task as a plain call; a book takes minutes, past any HTTP timeout.
            await errors.not_a_job()(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _submit(self, scope: Scope, receive: Receive) -> Response | None:
        chunks = []
        while True:  # JsonBodyOnly (outside this gate) has bounded and buffered it: one message
            message = await receive()
            if message["type"] == "http.disconnect":
                return None
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        book_id, refused = await self.books.submit(b"".join(chunks))
        if refused is not None:
            return refused
        return JSONResponse({"task_id": book_id, "status": "in_progress"})

    async def _record(self, scope: Scope):
        """(task id, its record, the query), or an error answer in place of the record."""
        query = parse_qs(scope.get("query_string", b"").decode(), keep_blank_values=True)  # "since=" is no number
        task_id = query.get("task_id", [""])[0]
        if not task_id:
            return task_id, errors.bad_query("task_id is required"), query
        record = await self.books.store.record(task_id)
        if record is None:
            return task_id, errors.not_found("task_id not found (unknown, or expired)"), query
        return task_id, record, query

    async def _status(self, scope: Scope, receive: Receive) -> Response:
        task_id, record, _ = await self._record(scope)
        if isinstance(record, Response):
            return record
        settled = record.status in FINAL and time.time() - record.finished >= STATUS_SETTLE_S
        status = record.status if settled else "in_progress"
        created = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(record.created))
        executed = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(record.finished)) if settled else None
        return JSONResponse({"task_id": task_id, "status": status, "created_at": created, "executed_at": executed})

    async def _pages(self, task_id: str, since: int = 0) -> list[DrawnPage]:
        import base64

        store = self.books.store
        metas = await store.pages(task_id, since)
        pngs = [await store.png(task_id, meta["index"]) for meta in metas]
        return [
            DrawnPage(img=base64.b64encode(png).decode("ascii"), **{k: v for k, v in meta.items() if k != "replica"})
            for meta, png in zip(metas, pngs)
        ]

    async def _result(self, scope: Scope, receive: Receive) -> Response:
        import asyncio

        task_id, record, _ = await self._record(scope)
        if isinstance(record, Response):
            return record
        if record.status not in FINAL:
            return JSONResponse({"error": f"task {task_id} is not completed yet"}, status_code=400)
        pages = await self._pages(task_id)
        store = self.books.store
        job, portraits = await store.job(task_id), await store.cast(task_id)
        members = await asyncio.to_thread(pdf_cast, job, portraits) if job is not None else None
        pdf = await asyncio.to_thread(book_pdf_b64, record.info["title"], pages, members) if pages else None
        cast = [
            CastPortrait(img=base64.b64encode(png).decode("ascii"), **{k: meta[k] for k in CAST_FIELDS})
            for meta, png in portraits
        ]
        result = BookResult(
            cast=cast,
            status=record.status,
            title=record.info["title"],
            pages_total=record.total,
            pages=pages,
            failure=record.failure,
            pdf=pdf,
        )
        return Response(result.model_dump_json(), failure_status(record.failure), media_type="application/json")

    async def _progress(self, scope: Scope, receive: Receive) -> Response:
        task_id, record, query = await self._record(scope)
        try:
            since = ProgressQuery.model_validate({"since": query.get("since", ["0"])[0]}).since
        except ValidationError as error:
            return errors.invalid_fields(error)
        if isinstance(record, Response):
            return record
        pages = await self._pages(task_id)
        progress = BookProgress(
            task_id=task_id,
            status=progress_status(record.status),
            pages_done=len(pages),
            pages_total=record.total,
            pages=pages,
            failure=record.failure,
        )
        # The pictures of the pages before `since` are left out.
        skipped = {"pages": set(range(min(since, len(progress.pages))))} if since else None
        return Response(progress.model_dump_json(exclude=skipped), media_type="application/json")
