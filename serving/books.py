"""Whole books: the request, the job that draws its pages in order through the same batcher as /generate, its
progress, and its result with the PDF.

Page k of a book is exactly the /generate request with page k-1's picture as `prev_frame`, the book's characters
and regions, and the page's own seed, so pages of different books (and /generate calls) batch together. BentoML
tasks have no progress of their own (bentoml issue #5434): `BookJobs` keeps it in this process, which is also the
process that runs the task, so `/book/progress` answers from the replica that took the job.
"""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections import OrderedDict
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field

from pipeline.page import ErrorKind

from .drawing import Overloaded, PageDrawer, PagePictures, checked_pictures
from .errors import HTTP_STATUS, field_error
from .images import ImageInputError, decode_image, decode_trusted_png, own_page_as_prev_frame
from .pdf import BookPage as PdfPage
from .pdf import render_book_pdf
from .schemas import EXAMPLE_PNG, MAX_PROMPT_CHARS, Cast, PageSettings, prompt_field, seed_field
from .settings import serving_settings

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


class BookRequest(PageSettings, Cast):
    """A whole book: its cast, how its pages are drawn, and the pages in order."""

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

    def texts(self) -> list[tuple[str, str | None]]:
        """Everything the user wrote that the prompt filter reads, by field (negative_prompt is not filtered)."""
        fields = [("title", self.title)]
        for index, page in enumerate(self.pages):
            fields += [(f"pages[{index}].text", page.text), (f"pages[{index}].prompt", page.prompt)]
        return fields


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
    status: Literal["completed", "failed"]
    title: str
    pages_total: int
    pages: list[DrawnPage] = Field(..., description="Every page drawn, in order (the finished ones when failed).")
    failure: PageFailure | None = Field(None, description="Why the book stopped, when it did.")
    pdf: str | None = Field(None, description="The book as a PDF (base64), with the pages drawn.")


class BookProgress(BaseModel):
    """What a book job has drawn so far. `/book/status` stays the authority on when `/book/get` has the result:
    the last page can show here a moment before BentoML has stored it."""

    task_id: str
    status: Literal["running", "completed", "failed"] = "running"
    pages_done: int = 0
    pages_total: int
    pages: list[DrawnPage] = Field(default_factory=list, description="The pages finished so far, in order.")
    failure: PageFailure | None = None


def book_pictures(book: BookRequest, limits: dict) -> PagePictures:
    """The book's `first_frame` and characters decoded, checked and normalised once, for all its pages (a 400
    naming the field when one is bad): `prev_frame` of this is the first page's."""
    return checked_pictures(book.first_frame, book.characters, limits, prev_field="first_frame", schema="BookRequest")


class BookJobs:
    """Book jobs of this process: how many may draw at once, each one's progress (the last `keep` kept), and the
    pictures checked at submit, held until the job takes them."""

    def __init__(self, max_running: int, keep: int = 256):
        self.max_running = max_running
        self.keep = keep
        self.running = 0
        self._progress: OrderedDict[str, BookProgress] = OrderedDict()
        self._pictures: OrderedDict[str, PagePictures] = OrderedDict()

    def reserve(self) -> bool:
        """Take a slot for a book about to be submitted; False when `max_running` books already hold one."""
        if self.running >= self.max_running:
            return False
        self.running += 1
        return True

    def release(self) -> None:
        self.running = max(0, self.running - 1)

    def start(self, task_id: str, pages_total: int, pictures: PagePictures | None = None) -> BookProgress:
        """The progress of a book from its submission on (pages_done 0); the same object when already started.
        `pictures` (checked at submit) wait here for the job, which runs after BentoML has answered the submit."""
        if pictures is not None:
            self._pictures[task_id] = pictures
            while len(self._pictures) > self.keep:
                self._pictures.popitem(last=False)
        if task_id not in self._progress:
            self._progress[task_id] = BookProgress(task_id=task_id, pages_total=pages_total)
            while len(self._progress) > self.keep:
                self._progress.popitem(last=False)
        return self._progress[task_id]

    def progress(self, task_id: str) -> BookProgress | None:
        return self._progress.get(task_id)

    async def run(self, book: BookRequest, drawer: PageDrawer, ctx) -> BookResult:
        """The book task's body: draw it with its progress, set the task's HTTP status, free the slot BookGate
        reserved at submit."""
        task_id = getattr(ctx.request.state, "task_id", None) or uuid.uuid4().hex  # BentoML sets it for a task
        try:
            progress = self.start(task_id, len(book.pages))
            pictures = self._pictures.pop(task_id, None)
            if pictures is None:  # not submitted through BookGate: checked here instead, still once for the book
                pictures = await asyncio.to_thread(book_pictures, book, drawer.settings.image_limits)
            result, ctx.response.status_code = await draw_book(book, pictures, drawer, progress)
            return result
        finally:
            self.release()


def book_pdf_b64(title: str, pages: list[DrawnPage]) -> str:
    pdf = render_book_pdf(title, [PdfPage(decode_trusted_png(page.img), page.text) for page in pages])
    return base64.b64encode(pdf).decode("ascii")


async def _draw_page(drawer: PageDrawer, book: BookRequest, page: BookPageRequest, pictures: PagePictures):
    """One page; a full batch queue is waited out (a book is patient), up to the page's own timeout."""
    retry_after_s = drawer.settings.retry_after_s
    give_up_at = time.monotonic() + drawer.settings.request_timeout_s
    while True:
        try:
            return await drawer.page(book, page.drawing_prompt, page.seed, pictures)
        except Overloaded:
            if time.monotonic() + retry_after_s > give_up_at:
                raise
            await asyncio.sleep(retry_after_s)


async def draw_book(
    book: BookRequest, pictures: PagePictures, drawer: PageDrawer, progress: BookProgress
) -> tuple[BookResult, int]:
    """Every page in order, each continuing the one before, and the HTTP status of the result. A failed page ends
    the book, keeping what was drawn; its status (>= 400) makes the BentoML task a failed one.

    `pictures` are the book's, checked once (`book_pictures`): the characters of every page, and the first page's
    `prev_frame`. Each next page's `prev_frame` is the page before as the model service drew it, a trusted PNG."""
    limits = drawer.settings.image_limits
    prev_frame = pictures.prev_frame
    failure, status = None, 200
    for index, page in enumerate(book.pages):
        try:
            output = await _draw_page(drawer, book, page, PagePictures(prev_frame, pictures.characters))
        except Overloaded as error:
            failure, status = PageFailure(index=index, kind="overloaded", error=str(error)), 503
            break
        if output.error_kind:
            failure = PageFailure(index=index, kind=output.error_kind.value, error=output.error)
            status = HTTP_STATUS[ErrorKind(output.error_kind)]
            break
        drawn = DrawnPage(
            index=index,
            text=page.text,
            img=output.img,
            seed=output.seed,
            batch_size=output.batch_size,
            timings_ms=output.timings_ms,
            prompt_drawn=output.prompt_drawn,
        )
        progress.pages.append(drawn)
        progress.pages_done = len(progress.pages)
        prev_frame = await asyncio.to_thread(own_page_as_prev_frame, output.img, **limits)
    progress.failure = failure
    progress.status = "failed" if failure else "completed"
    pdf = await asyncio.to_thread(book_pdf_b64, book.title, progress.pages) if progress.pages else None
    result = BookResult(
        status=progress.status,
        title=book.title,
        pages_total=len(book.pages),
        pages=progress.pages,
        failure=failure,
        pdf=pdf,
    )
    return result, status


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
