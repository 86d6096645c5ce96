"""Whole books: the request, the job that draws its pages in order through the same batcher as /generate, its
progress, and its result with the PDF.

Page k of a book is exactly the /generate request with page k-1's picture as `prev_frame`, the book's characters
and regions, and the page's own seed, so pages of different books (and /generate calls) batch together. BentoML
book is a job in a store (serving/book_store.py: Redis, or this process), drawn by a worker of any replica
(serving/book_jobs.py) and answered by every replica (serving/book_routes.py, and the old `/book/*` routes in
serving/book_gate.py).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
import time
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, Field, ValidationError

from pipeline.page import MAX_CHARACTERS, MAX_SEED, ErrorKind, Quality

from .book_store import StoreUnavailable
from .characters import CharacterDescription, PortraitRequest, draw_portraits, portrait_texts
from .drawing import Overloaded, PageDrawer, PagePictures, checked_pictures
from .errors import HTTP_STATUS, field_error
from .images import ImageInputError, decode_image, decode_trusted_png, own_page_as_prev_frame
from .pdf import BookPage as PdfPage
from .pdf import CastMember, render_book_pdf
from .schemas import EXAMPLE_PNG, MAX_PROMPT_CHARS, Cast, PageSettings, prompt_field, seed_field
from .settings import serving_settings

log = logging.getLogger(__name__)
MAX_BOOK_PAGES = serving_settings.max_book_pages
MAX_TITLE_CHARS = 200


class BookPageRequest(BaseModel):
    text: str = prompt_field("What the reader reads under the picture.", examples=["The fox finds a red kite."])
    prompt: str | None = Field(
        None,
        min_length=1,
        max_length=MAX_PROMPT_CHARS,
        description="What is drawn; the page's text when absent.",
    )
    seed: int | None = seed_field("For a reproducible page; drawn at random (and reported) when absent.")

    @property
    def drawing_prompt(self) -> str:
        return self.prompt or self.text


# A cast entry: a picture (base64, as in /generate) or a character in words, drawn by the book before its pages.
# (A plain union: BentoML rebuilds the task's input model, which a callable Discriminator does not survive.)
CastEntry = Annotated[str | CharacterDescription, Field(union_mode="left_to_right")]


class BookRequest(PageSettings, Cast):
    """A whole book: its cast, how its pages are drawn, and the pages in order."""

    characters: list[CastEntry] = Field(
        default_factory=list,
        max_length=MAX_CHARACTERS,
        description=f"The cast, 0 to {MAX_CHARACTERS}, in order: each a reference picture (base64, as in "
        "/generate) or a character in words, `{name, description, seed?, style?}`, whose portrait the book draws "
        "first (as `POST /character`, at the book's page size) and then uses as that character's picture on every "
        "page, in its place.",
        examples=[[EXAMPLE_PNG, {"name": "Pip", "description": "a small red fox with a blue scarf"}]],
    )

    title: str = Field("", max_length=MAX_TITLE_CHARS, description="The book's title, on its cover.")
    first_frame: str | None = Field(
        None,
        description="A picture the first page continues from (base64, as `prev_frame` in /generate); "
        "the first page starts afresh when absent.",
        examples=[EXAMPLE_PNG],
    )
    pages: list[BookPageRequest] = Field(
        ..., min_length=1, max_length=MAX_BOOK_PAGES, description=f"The pages, 1 to {MAX_BOOK_PAGES}."
    )
    quality: Quality = Field(
        Quality.final,
        description="How every page is drawn, as `quality` in /generate: `final` (default, as without this field) "
        "or `draft` (the few-step LoRA, a quick look at the whole book). To make a draft book final, submit it "
        "again with `quality: final` and the seeds its status reports (or `POST /books/{id}/final`).",
        examples=["final"],
    )

    def texts(self) -> list[tuple[str, str | None]]:
        """Everything the user wrote that the prompt filter reads, by field (negative_prompt is not filtered)."""
        fields = [("title", self.title)]
        for index, member in self.described():
            fields += portrait_texts(PortraitRequest.in_book(self, member), at=f"characters[{index}].")
        for index, page in enumerate(self.pages):
            fields += [(f"pages[{index}].text", page.text), (f"pages[{index}].prompt", page.prompt)]
        return fields

    def described(self) -> list[tuple[int, CharacterDescription]]:
        """The members described in words, with their places in the cast."""
        return [(i, c) for i, c in enumerate(self.characters) if isinstance(c, CharacterDescription)]


class CastPortrait(BaseModel):
    index: int = Field(..., description="The member's place in `characters`, from 0.")
    name: str | None
    description: str
    seed: int = Field(..., description="The seed its portrait was drawn with (fixed at submit when absent).")
    img: str = Field(..., description="The portrait, base64 PNG, as every page used it.")


class DrawnPage(BaseModel):
    index: int = Field(..., description="Position in the book, from 0.")
    text: str
    img: str = Field(..., description="The page's picture, base64 PNG.")
    seed: int = Field(..., description="The seed it was drawn with (send it back to redraw the same page).")
    batch_size: int = Field(..., description="Pages drawn in the same diffusion call (of any book or request).")
    timings_ms: dict[str, float] = Field(default_factory=dict)
    prompt_drawn: str | None = Field(
        None,
        description="What the text encoders read: the page's drawing prompt, its Chinese translated into English. "
        "`text` (what the reader reads, and the PDF) is never changed.",
    )


class PageFailure(BaseModel):
    index: int = Field(..., description="The page that could not be drawn, from 0.")
    kind: str = Field(..., description="timeout, out_of_memory, content_refused, invalid, overloaded or internal.")
    error: str


class BookResult(BaseModel):
    status: Literal["completed", "failed", "canceled"]
    title: str
    pages_total: int
    pages: list[DrawnPage] = Field(..., description="Every page drawn, in order (the finished ones when failed).")
    failure: PageFailure | None = Field(None, description="Why the book stopped, when it did.")
    pdf: str | None = Field(None, description="The book as a PDF (base64), with the pages drawn.")
    cast: list[CastPortrait] = Field(
        default_factory=list, description="The portraits of the members described in words, as drawn for this book."
    )


class BookProgress(BaseModel):
    """What a book job has drawn so far. `/book/status` stays the authority on when `/book/get` has the result:
    the last page can show here a moment before BentoML has stored it."""

    task_id: str
    status: Literal["running", "completed", "failed", "canceled"] = "running"
    pages_done: int = 0
    pages_total: int
    pages: list[DrawnPage] = Field(default_factory=list, description="The pages finished so far, in order.")
    failure: PageFailure | None = None


def book_pictures(book: BookRequest, limits: dict) -> PagePictures:
    """The book's `first_frame` and pictured characters decoded, checked and normalised once, for all its pages (a
    400 naming the field when one is bad): `prev_frame` of this is the first page's; a described member's place
    in `characters` is None (its portrait is drawn by the job)."""
    cast = [c if isinstance(c, str) else None for c in book.characters]
    return checked_pictures(book.first_frame, cast, limits, prev_field="first_frame", schema="BookRequest")


def _untagged(error: ValidationError) -> ValidationError:
    """The error of a cast entry named as the entry's own field: `characters[1].description`, not pydantic's
    `characters[1].CharacterDescription.description` beside `characters[1].str` (each branch of the union says why
    it did not match). A dict entry keeps the description's errors, anything else the picture's."""
    details = []
    for detail in error.errors(include_url=False):
        loc = detail["loc"]
        if len(loc) > 2 and loc[0] == "characters" and loc[2] in ("str", "CharacterDescription"):
            if loc[2] == "str" and isinstance(detail["input"], dict):
                continue  # a described member: not meant as a picture
            if loc[2] == "CharacterDescription" and detail["type"] == "model_type":
                continue  # not a dict: the picture's error says what it should be
            detail = {**detail, "loc": (*loc[:2], *loc[3:])}
        details.append(detail)
    return ValidationError.from_exception_data(error.title, details)


def check_book(body: bytes, limits: dict[str, int]) -> tuple[BookRequest, PagePictures]:
    """The parsed book and its pictures decoded, checked and normalised (kept for its pages), or a ValidationError
    naming the field."""
    try:
        book = BookRequest.model_validate_json(body)
    except ValidationError as error:
        raise _untagged(error) from None
    return book, book_pictures(book, limits)


def _with_seed(model):
    return model if model.seed is not None else model.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})


def fixed_seeds(book: BookRequest) -> BookRequest:
    """The book with every page's and every described member's seed fixed now, at submit: a page or portrait drawn
    again (after a takeover, or by `POST /books/{id}/final`) is the same one."""
    cast = [c if isinstance(c, str) else _with_seed(c) for c in book.characters]
    return book.model_copy(update={"pages": [_with_seed(page) for page in book.pages], "characters": cast})


def stored_job(book: BookRequest, pictures: PagePictures) -> str:
    """What a worker reads to draw the book: the request, its seeds fixed and its pictures as checked at submit (the
    normalised PNGs in place of what the client sent, so no worker decodes an untrusted picture again; described
    members as they are)."""
    cast = [c if p is None else p for c, p in zip(book.characters, pictures.characters)]
    return book.model_copy(update={"first_frame": pictures.prev_frame, "characters": cast}).model_dump_json()


def failure_status(failure: dict | None) -> int:
    """The HTTP status of a finished book's result (`/book/get`): 200, or its failed page's."""
    if failure is None:
        return 200
    if failure["kind"] == "overloaded":
        return 503
    try:
        return HTTP_STATUS[ErrorKind(failure["kind"])]
    except ValueError:
        return 500


def pdf_cast(job: str, portraits: list[tuple[dict, bytes]]) -> list[CastMember] | None:
    """The PDF's last page "The cast", for a book with members described in words (None otherwise, so a book of
    pictures alone has the PDF it always had): every member in order, its picture (portrait or upload) and its
    name ("Character 2" when it has none)."""
    book = BookRequest.model_validate_json(job)
    if not book.described():
        return None
    drawn = {meta["index"]: png for meta, png in portraits}
    cast = []
    for index, character in enumerate(book.characters):
        if isinstance(character, str):
            cast.append(CastMember(decode_trusted_png(character), f"Character {index + 1}"))
        elif index in drawn:
            picture = decode_trusted_png(base64.b64encode(drawn[index]).decode("ascii"))
            cast.append(CastMember(picture, character.name or f"Character {index + 1}"))
    return cast


def book_pdf_b64(title: str, pages: list[DrawnPage], cast: list[CastMember] | None = None) -> str:
    pdf = render_book_pdf(title, [PdfPage(decode_trusted_png(page.img), page.text) for page in pages], cast)
    return base64.b64encode(pdf).decode("ascii")


async def _patient_draw(drawer: PageDrawer, draw):
    """A page (or portraits); a full batch queue is waited out (a book is patient), up to the page's own timeout."""
    retry_after_s = drawer.settings.retry_after_s
    give_up_at = time.monotonic() + drawer.settings.request_timeout_s
    while True:
        try:
            return await draw()
        except Overloaded:
            if time.monotonic() + retry_after_s > give_up_at:
                raise
            await asyncio.sleep(retry_after_s)


async def _draw_page(drawer: PageDrawer, book: BookRequest, page: BookPageRequest, pictures: PagePictures):
    return await _patient_draw(
        drawer, lambda: drawer.page(book, page.drawing_prompt, page.seed, pictures, book.quality)
    )


async def book_cast(store, book_id: str, drawer: PageDrawer, book: BookRequest, retry_s: float):
    """The book's characters as pictures for its pages: the pictured ones as checked at submit, each described one
    as its portrait — read from the book's checkpoint when it has one (a resumed book never redraws it), otherwise
    drawn now, every missing one in one gather (so they batch) with the seed fixed at submit, and checkpointed
    before any page. None (the book finished as failed) when a portrait could not be drawn."""
    stored = {meta["index"]: png for meta, png in await patiently(retry_s, store.cast, book_id)}
    missing = [(index, member) for index, member in book.described() if index not in stored]
    if missing:
        requests = [PortraitRequest.in_book(book, member) for _, member in missing]
        try:
            answers = await _patient_draw(drawer, lambda: draw_portraits(drawer, requests, book.quality))
        except Overloaded as error:
            failure = PageFailure(index=-1, kind="overloaded", error=f"the cast's portraits: {error}")
            await patiently(retry_s, store.finish, book_id, "failed", failure.model_dump())
            return None
        for (index, _), answer in zip(missing, answers):
            if answer.error_kind:
                message = f"characters[{index}]: its portrait could not be drawn: {answer.error}"
                failure = PageFailure(index=-1, kind=answer.error_kind.value, error=message)
                await patiently(retry_s, store.finish, book_id, "failed", failure.model_dump())
                return None
        portraits = [
            (
                {"index": index, "name": member.name, "description": member.description, "seed": answer.seed,
                 "batch_size": answer.batch_size, "prompt_drawn": answer.prompt_drawn},
                base64.b64decode(answer.img),
            )
            for (index, member), answer in zip(missing, answers)
        ]  # fmt: skip
        if not await patiently(retry_s, store.keep_cast, book_id, portraits):
            return None  # canceled meanwhile
        stored |= {meta["index"]: png for meta, png in portraits}
    limits = drawer.settings.image_limits
    cast = []
    for index, character in enumerate(book.characters):
        if isinstance(character, str):
            cast.append(character)
        else:
            png = base64.b64encode(stored[index]).decode("ascii")
            cast.append(await asyncio.to_thread(own_page_as_prev_frame, png, **limits))
    return cast


class StoreLost(Exception):
    """The book store stayed unreachable past PICTUREBOOK_BOOK_STORE_RETRY_S."""


async def patiently(retry_s: float, call, *args):
    """A store call, retried with backoff while the store is unreachable, for up to `retry_s` seconds."""
    give_up_at = time.monotonic() + retry_s
    delay = 0.2
    while True:
        try:
            return await call(*args)
        except StoreUnavailable as error:
            if time.monotonic() + delay > give_up_at:
                raise StoreLost(str(error)) from error
            log.warning("book store unreachable, retrying in %.1f s: %s", delay, error)
            await asyncio.sleep(delay)
            delay = min(2 * delay, 5.0)


async def draw_book(store, book_id: str, drawer: PageDrawer, replica: str) -> None:
    """Draw a stored book from its first unfinished page on, checkpointing every page before the next starts.

    Page k continues page k-1 as the model service drew it (a trusted PNG), with the book's characters and page k's
    seed, fixed at submit, so a page drawn again after a takeover is the same page. A failed page ends the book,
    keeping what was drawn. A canceled book (`DELETE`) takes no further page: the checkpoint refuses it and the
    loop stops. Cancelling this coroutine (the replica stops, or the book is canceled) leaves the book as it is, for
    another worker to continue."""
    retry_s = drawer.settings.book_store_retry_s
    try:
        if not await patiently(retry_s, store.claim, book_id, replica):
            return  # finished or canceled meanwhile, or expired
        record = await patiently(retry_s, store.record, book_id)
        book = BookRequest.model_validate_json(await patiently(retry_s, store.job, book_id))
        limits = drawer.settings.image_limits
        prev_frame = book.first_frame
        cast = await book_cast(store, book_id, drawer, book, retry_s)
        if cast is None:
            return
        if record.done:
            last = await patiently(retry_s, store.png, book_id, record.done - 1)
            prev_frame = await asyncio.to_thread(own_page_as_prev_frame, base64.b64encode(last).decode(), **limits)
        for index in range(record.done, len(book.pages)):
            page = book.pages[index]
            try:
                output = await _draw_page(drawer, book, page, PagePictures(prev_frame, cast))
            except Overloaded as error:
                failure = PageFailure(index=index, kind="overloaded", error=str(error))
                await patiently(retry_s, store.finish, book_id, "failed", failure.model_dump())
                return
            if output.error_kind:
                failure = PageFailure(index=index, kind=output.error_kind.value, error=output.error)
                await patiently(retry_s, store.finish, book_id, "failed", failure.model_dump())
                return
            meta = {
                "index": index,
                "text": page.text,
                "seed": output.seed,
                "batch_size": output.batch_size,
                "timings_ms": output.timings_ms,
                "prompt_drawn": output.prompt_drawn,
                "replica": replica,
            }
            png = base64.b64decode(output.img)
            if not await patiently(retry_s, store.checkpoint, book_id, index, png, meta):
                return  # canceled, or another worker is ahead: nothing more for this one to draw
            prev_frame = await asyncio.to_thread(own_page_as_prev_frame, output.img, **limits)
        await patiently(retry_s, store.finish, book_id, "completed", None)
    except StoreLost as error:
        message = f"the book store (Redis) was unreachable for {retry_s:.0f} s: {error}"
        log.error("book %s failed: %s", book_id, message)
        failure = {"index": -1, "kind": "internal", "error": message}
        # Written once Redis takes writes again, even if this job is aborted meanwhile (SAQ sweeps a job whose
        # heartbeat stopped, as it did while Redis was away): a later takeover then finds the book failed.
        try:
            await asyncio.shield(patiently(max(60.0, 4 * retry_s), store.finish, book_id, "failed", failure))
        except StoreLost:
            log.error("book %s: its failure could not be written either", book_id)


class PdfPageRequest(BaseModel):
    img: str = Field(..., description="The page's picture, base64 PNG/JPEG/WEBP.", examples=[EXAMPLE_PNG])
    text: str = Field("", max_length=MAX_PROMPT_CHARS, description="What the reader reads under the picture.")


class PdfRequest(BaseModel):
    """Any book as pages of pictures and text: a job's result, or pages a client drew itself."""

    title: str = Field("", max_length=MAX_TITLE_CHARS, description="The book's title, on its cover.")
    pages: list[PdfPageRequest] = Field(..., min_length=1, max_length=MAX_BOOK_PAGES)


async def pdf_file(request: PdfRequest, limits: dict, ctx) -> Path:
    """The PDF written into the request's temporary folder, which BentoML sends and then removes."""
    path = Path(ctx.temp_dir) / "book.pdf"
    path.write_bytes(await asyncio.to_thread(pdf_of, request, limits))
    return path


def pdf_of(request: PdfRequest, limits: dict) -> bytes:
    """The PDF of a client's book; a bad picture is a 400 naming `pages[i].img`."""
    pages = []
    for index, page in enumerate(request.pages):
        try:
            picture = decode_image(page.img, f"pages[{index}].img", **limits)
        except ImageInputError as error:
            raise field_error(error, "PdfRequest") from None
        pages.append(PdfPage(picture, page.text))
    return render_book_pdf(request.title, pages)
