"""The wire between the front and the model service (serving/wire.py), and books that check their pictures once:
in-process, with the real tiny pipeline behind the wire."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from pydantic import BaseModel, ValidationError

import serving.images
from serving.book_store import MemoryStore, Record
from serving.books import BookRequest, DrawnPage, check_book, draw_book, fixed_seeds, stored_job
from serving.content_safety import PromptGate
from serving.drawing import PageDrawer
from serving.images import decode_image, own_page_as_prev_frame
from serving.schemas import Cast, GenerateRequest, GenerateResponse, PageSettings
from serving.settings import ServingSettings
from serving.wire import PageAnswer, PageJob, draw_jobs
from testkit.pictures import picture, png_b64, png_from_b64, psnr

PUBLIC_SCHEMAS = (GenerateRequest, GenerateResponse, Cast, PageSettings, BookRequest, DrawnPage)


@pytest.mark.parametrize("wire_type", [PageJob, PageAnswer])
def test_the_wire_types_are_their_own_not_the_public_ones(wire_type):
    assert not issubclass(wire_type, PUBLIC_SCHEMAS)
    assert all(base in (BaseModel, object) for base in wire_type.__mro__[1:])


def test_a_misspelt_field_on_the_wire_is_refused():
    with pytest.raises(ValidationError) as job:
        PageJob.model_validate_json(json.dumps({"prompt": "a fox", "stpes": 4}))
    assert job.value.errors()[0]["loc"] == ("stpes",) and job.value.errors()[0]["type"] == "extra_forbidden"
    with pytest.raises(ValidationError) as answer:
        PageAnswer.model_validate({"img": None, "batchsize": 2})
    assert answer.value.errors()[0]["loc"] == ("batchsize",)


class InProcessModel:
    """The model service's side of the wire in this process: every job and answer crosses as JSON, as between the
    two services, and the pages are drawn by the real tiny pipeline (`draw_jobs`, what PageModel.draw runs)."""

    def __init__(self, generator):
        self.generator = generator
        self.calls = self  # what ModelClient.calls is: the model service's APIs

    async def draw(self, jobs: list[PageJob]) -> list[PageAnswer]:
        crossed = [PageJob.model_validate_json(job.model_dump_json()) for job in jobs]
        answers = await asyncio.to_thread(draw_jobs, self.generator, crossed)
        return [PageAnswer.model_validate_json(answer.model_dump_json()) for answer in answers]

    async def abandon(self, job_ids: list[str]) -> None:
        self.generator.abandon(job_ids)


@pytest.fixture
def untrusted_decodes(monkeypatch):
    """The field of every picture that went through the untrusted decoder (the real one, counted)."""
    fields = []

    def counted(data, field, **limits):
        fields.append(field)
        return decode_image(data, field, **limits)

    monkeypatch.setattr(serving.images, "decode_image", counted)
    return fields


def test_a_book_decodes_each_of_its_pictures_once(generator, untrusted_decodes):
    settings = ServingSettings()
    drawer = PageDrawer(InProcessModel(generator), settings, PromptGate(settings))
    pages = 3
    body = {
        "title": "Once",
        "first_frame": png_b64(picture(1, (64, 64))),
        "characters": [png_b64(picture(2, (48, 48))), png_b64(picture(3, (48, 48)))],
        "pages": [{"text": f"page {i}", "seed": i} for i in range(pages)],
        "width": 64,
        "height": 64,
        "steps": 1,
    }
    book, pictures = check_book(json.dumps(body).encode(), settings.image_limits)  # what BookGate does at submit
    store = MemoryStore(capacity=1, retention_s=60)  # the embedded store; the job reads what submit stored
    record = Record(status="queued", done=0, total=pages, created=time.time(), info={})

    async def draw():
        assert await store.reserve("book-1", record, stored_job(fixed_seeds(book), pictures))
        await draw_book(store, "book-1", drawer, "here")
        return await store.record("book-1")

    drawn = asyncio.run(draw())
    assert drawn.status == "completed" and drawn.done == pages, drawn.failure
    assert sorted(untrusted_decodes) == ["characters[0]", "characters[1]", "first_frame"]


@pytest.mark.parametrize("size", [(64, 64), (1024, 256), (64, 512), (1536, 1536)])
def test_a_page_goes_on_as_the_prev_frame_that_generate_would_make_of_it(size, untrusted_decodes):
    limits = ServingSettings().image_limits
    page = png_b64(picture(4, size))
    own = own_page_as_prev_frame(page, **limits)
    assert not untrusted_decodes
    assert own == page or size in ((64, 512), (1536, 1536))  # in bounds: unchanged; else bounded as /generate does
    untrusted = decode_image(page, "prev_frame", **limits)
    assert psnr(png_from_b64(own), untrusted) == float("inf")
