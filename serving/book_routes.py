"""The book routes, a Starlette app the front mounts (`@bentoml.asgi_app`): every replica answers for every book.

`POST /books` (202: id and URL), `GET /books/{id}` (status, pages done and total, seeds, failure; no pictures),
`GET /books/{id}/pages?since=k`, `GET /books/{id}/pages/{k}.png`, `GET /books/{id}/cast/{i}.png` (the portrait drawn
for member i, described in words), `GET /books/{id}/events` (Server-Sent Events: one
`page` event per page as it is drawn, then one `end`; `Last-Event-ID` resumes), `GET /books/{id}/pdf`,
`DELETE /books/{id}` (cancel), `POST /books/{id}/final` (the same book again, its seeds fixed, `quality: final`:
a new book, answered as `POST /books`). A book unknown or expired is a 404; an unreachable store a 503 with Retry-After.
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json

from PIL import Image
from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from . import errors
from .book_gate import ProgressQuery
from .book_jobs import FINAL, Books
from .book_store import Record, StoreUnavailable
from .books import pdf_cast
from .pdf import BookPage, render_book_pdf

EVENT_WAIT_S = 3.0  # a stream with nothing new sends a comment this often (and sees an expired book end)


def book_url(book_id: str) -> str:
    return f"/books/{book_id}"


def iso(seconds: float) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).isoformat()


def cast_body(book_id: str, portraits: list[tuple[dict, bytes]]) -> list[dict]:
    """The portraits drawn for the book's described members, without their pictures: each one's URL."""
    keep = ("index", "name", "description", "seed")
    return [
        {**{k: meta[k] for k in keep}, "url": f"{book_url(book_id)}/cast/{meta['index']}.png"} for meta, _ in portraits
    ]


def status_body(book_id: str, record: Record, portraits: list[tuple[dict, bytes]] = ()) -> dict:
    url = book_url(book_id)
    return {
        "id": book_id,
        "url": url,
        "status": record.status,
        "title": record.info["title"],
        "pages_done": record.done,
        "pages_total": record.total,
        "seeds": record.info["seeds"],
        "quality": record.info.get("quality", "final"),
        "cast": cast_body(book_id, portraits),
        "failure": record.failure,
        "replica": record.replica or None,
        "created_at": iso(record.created),
        "links": {"pages": f"{url}/pages", "events": f"{url}/events", "pdf": f"{url}/pdf"},
    }


def page_body(book_id: str, page: dict) -> dict:
    return {**page, "url": f"{book_url(book_id)}/pages/{page['index']}.png"}


def book_pdf(title: str, texts: list[str], pngs: list[bytes], job: str, portraits: list) -> bytes:
    pages = [BookPage(Image.open(io.BytesIO(png), formats=("PNG",)).convert("RGB"), t) for png, t in zip(pngs, texts)]
    return render_book_pdf(title, pages, pdf_cast(job, portraits))


def book_app(books: Books) -> Starlette:
    retry_after_s = books.settings.retry_after_s

    async def known(request: Request) -> tuple[str, Record]:
        book_id = request.path_params["book_id"]
        record = await books.store.record(book_id)
        if record is None:
            raise LookupError(book_id)
        return book_id, record

    def answers(handler):
        """The route's answer, or a 404 for a book unknown or expired, or a 503 for an unreachable store."""

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except LookupError:
                return errors.not_found("no such book (unknown, or expired)")
            except StoreUnavailable as error:
                return errors.store_unavailable(str(error), retry_after_s)

        return route

    async def submit(request: Request) -> Response:
        book_id, refused = await books.submit(await request.body())
        if refused is not None:
            return refused
        url = book_url(book_id)
        return JSONResponse({"id": book_id, "url": url}, status_code=202, headers={"Location": url})

    async def final(request: Request) -> Response:
        book_id, refused = await books.final(request.path_params["book_id"])
        if refused is not None:
            return refused
        url = book_url(book_id)
        return JSONResponse({"id": book_id, "url": url}, status_code=202, headers={"Location": url})

    async def status(request: Request) -> Response:
        book_id, record = await known(request)
        return JSONResponse(status_body(book_id, record, await books.store.cast(book_id)))

    async def cancel(request: Request) -> Response:
        book_id, _ = await known(request)
        record = await books.cancel(book_id)
        if record is None:
            raise LookupError(book_id)
        return JSONResponse(status_body(book_id, record, await books.store.cast(book_id)))

    async def portrait(request: Request) -> Response:
        book_id, _ = await known(request)
        drawn = {meta["index"]: png for meta, png in await books.store.cast(book_id)}
        png = drawn.get(request.path_params["index"])
        if png is None:
            return errors.not_found("this character has no portrait drawn (yet): it is a picture, or not described")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    async def pages(request: Request) -> Response:
        book_id, record = await known(request)
        try:
            since = ProgressQuery.model_validate({"since": request.query_params.get("since", "0")}).since
        except ValidationError as error:
            return errors.invalid_fields(error)
        listed = [page_body(book_id, page) for page in await books.store.pages(book_id, since)]
        return JSONResponse({"id": book_id, "pages_done": record.done, "pages_total": record.total, "pages": listed})

    async def picture(request: Request) -> Response:
        book_id, _ = await known(request)
        png = await books.store.png(book_id, request.path_params["index"])
        if png is None:
            return errors.not_found("this page is not drawn (yet)")
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=86400"})

    async def pdf(request: Request) -> Response:
        book_id, record = await known(request)
        if record.status not in FINAL:
            return errors.conflict(f"the book is {record.status}: its PDF is made once it is finished")
        pngs = await books.store.pngs(book_id)
        if not pngs:
            return errors.conflict("the book has no page drawn")
        job, portraits = await books.store.job(book_id), await books.store.cast(book_id)
        body = await asyncio.to_thread(book_pdf, record.info["title"], record.info["texts"], pngs, job, portraits)
        disposition = f'inline; filename="book-{book_id}.pdf"'
        return Response(body, media_type="application/pdf", headers={"Content-Disposition": disposition})

    async def events(request: Request) -> Response:
        book_id, _ = await known(request)
        last = request.headers.get("last-event-id", request.query_params.get("after", "0"))
        if not last.isdigit():
            return errors.bad_query("Last-Event-ID (or `after`) must be an event id this stream sent")

        async def stream():
            after = int(last)
            while True:
                batch = await books.store.events(book_id, after, EVENT_WAIT_S)
                if batch is None:  # expired meanwhile
                    return
                for event in batch:
                    data = page_body(book_id, event.data) if event.kind == "page" else event.data
                    yield f"id: {event.id}\nevent: {event.kind}\ndata: {json.dumps(data)}\n\n"
                    after = event.id
                    if event.kind == "end":
                        return
                if not batch:
                    record = await books.store.record(book_id)
                    if record is None or (record.status in FINAL and after > record.done):
                        return  # resumed after the end event
                    yield ": waiting for the next page\n\n"

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    return Starlette(
        routes=[
            Route("/books", answers(submit), methods=["POST"]),
            Route("/books/{book_id}", answers(status), methods=["GET"]),
            Route("/books/{book_id}/final", answers(final), methods=["POST"]),
            Route("/books/{book_id}", answers(cancel), methods=["DELETE"]),
            Route("/books/{book_id}/pages", answers(pages), methods=["GET"]),
            Route("/books/{book_id}/pages/{index:int}.png", answers(picture), methods=["GET"]),
            Route("/books/{book_id}/cast/{index:int}.png", answers(portrait), methods=["GET"]),
            Route("/books/{book_id}/events", answers(events), methods=["GET"]),
            Route("/books/{book_id}/pdf", answers(pdf), methods=["GET"]),
        ]
    )
