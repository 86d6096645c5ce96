"""The wire between the two services: one page's job, as the front (`PictureBook`) hands it to the model service
(`PageModel`), and the model service's answer. The one contract between them.

Not the public schemas (serving/schemas.py, serving/books.py), and no subclasses of them: the public ones ignore
unknown fields so that clients written against other versions keep working, and they check what a person may send.
The wire is spoken only by this project's two services, built from the same code, so a field one side does not
know is a bug and is refused (`extra="forbid"`). Its pictures are PNG base64 that the front already decoded,
checked and normalised (serving/images.py), so the model side decodes them as trusted PNGs; its settings were
checked by the public schema, and the pipeline checks the page again once its defaults are filled in
(pipeline/page.py). Each message is validated once on each side: where it is built, and where BentoML parses it.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from pipeline.page import ErrorKind, PageRequest, Quality

from .images import decode_trusted_png, encode_png
from .metrics import count_picture_checks

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the page


class PageJob(BaseModel):
    """One page to draw: its text, its pictures (normalised PNG base64), its settings, who waits for it."""

    model_config = ConfigDict(extra="forbid")

    prompt: str
    negative_prompt: str = ""  # the child-safe one first, then the user's (serving/prompt_filter.py)
    prev_frame: str | None = None  # the previous page; None for a first page
    characters: list[str] = Field(default_factory=list)
    regions: list[Box] | None = None  # one box per character; the pipeline's default strips when None
    seed: int | None = None  # drawn by the pipeline when None
    width: int | None = None  # None: the profile's default, for these four
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    deadline: float | None = None  # wall-clock time (time.time()) after which the front no longer waits
    job_id: str | None = None  # what the front names when it tells the model service the client hung up
    quality: Quality = Quality.final  # draft: the few-step LoRA (a batch never mixes the two)

    def page_request(self) -> PageRequest:
        """The page as the pipeline takes it, its pictures decoded (trusted: the front normalised them)."""
        return PageRequest(
            prompt=self.prompt,
            negative_prompt=self.negative_prompt,
            prev_frame=decode_trusted_png(self.prev_frame) if self.prev_frame else None,
            characters=tuple(decode_trusted_png(c) for c in self.characters),
            regions=tuple(self.regions) if self.regions is not None else None,
            seed=self.seed,
            width=self.width,
            height=self.height,
            steps=self.steps,
            guidance_scale=self.guidance_scale,
            deadline=self.deadline,
            job_id=self.job_id,
            quality=self.quality,
        )


class PageAnswer(BaseModel):
    """One page's answer: the picture and how it was drawn, or why this page (not its batch-mates) failed."""

    model_config = ConfigDict(extra="forbid")

    img: str | None = None  # PNG base64; None when the page failed
    seed: int | None = None
    batch_size: int = 0
    timings_ms: dict[str, float] = Field(default_factory=dict)
    error_kind: ErrorKind | None = None
    error: str | None = None
    prompt_drawn: str | None = None  # the prompt the text encoders read: its Chinese translated (pipeline)

    @classmethod
    def from_result(cls, result) -> PageAnswer:
        """A pipeline.PageResult as it travels back to the front."""
        if not result.ok:
            return cls(seed=result.seed, error_kind=result.error.kind, error=result.error.message)
        return cls(
            img=encode_png(result.image),
            seed=result.seed,
            batch_size=result.batch_size,
            timings_ms=result.timings_ms,
            prompt_drawn=result.prompt_drawn,
        )


class TextVerdict(BaseModel):
    """The moderation model's judgement of one text (pipeline.moderation.Verdict), as it travels to the front."""

    model_config = ConfigDict(extra="forbid")

    safe: bool
    level: str  # Safe, Unsafe, Controversial, or unparseable
    category: str | None = None  # None when safe


def moderate_texts(moderator, texts: list[str], translate=None) -> list[TextVerdict]:
    """The model service's side of moderation: a batch of texts, one verdict each. With `translate` (the page
    generator's), a text with Chinese in it is judged as written and as the English it would be drawn from, in the
    same model call: the first unsafe one of the two is its verdict."""
    if moderator is None:
        raise RuntimeError("text moderation is off on the model service (PICTUREBOOK_MODERATION=false)")
    english = translate(texts) if translate is not None else list(texts)
    translated = [i for i, (text, drawn) in enumerate(zip(texts, english)) if drawn != text]
    verdicts = moderator.moderate([*texts, *(english[i] for i in translated)])
    as_written, as_drawn = verdicts[: len(texts)], dict(zip(translated, verdicts[len(texts) :]))
    judged = [v if not v.safe or i not in as_drawn else as_drawn[i] for i, v in enumerate(as_written)]
    return [TextVerdict(safe=v.safe, level=v.level, category=None if v.safe else v.category) for v in judged]


def draw_jobs(generator, jobs: list[PageJob]) -> list[PageAnswer]:
    """The model service's side of the wire: a batch of jobs drawn by a pipeline.PageGenerator, one answer each."""
    results = generator.generate([job.page_request() for job in jobs])
    count_picture_checks(results)
    return [PageAnswer.from_result(result) for result in results]
