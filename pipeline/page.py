"""What a valid page is: its fields, their bounds, and how a page can fail. No torch here.

The HTTP schema (serving/schemas.py) takes its bounds from these constants and the pipeline checks resolved pages
with `check_request`, so the two can never disagree.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

    from .sources import ProfileSpec

MAX_SEED = 2**32 - 1
MAX_CHARACTERS = 4
MAX_STEPS = 100
MIN_SIDE = 64
SIDE_MULTIPLE = 8  # the VAE downsamples 8x
MAX_GUIDANCE_SCALE = 30.0

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 as fractions of the page


def default_regions(n_characters: int) -> tuple[Box, ...]:
    """Where characters go when the request does not say: left to right in the order given, in equal vertical
    strips (the original backend's "character 1 on the left, character 2 on the right"); one character: the whole
    page."""
    return tuple((i / n_characters, 0.0, (i + 1) / n_characters, 1.0) for i in range(n_characters))


def check_regions(regions, n_characters: int) -> None:
    """Raise ValueError (starting with `regions:`) unless there is one box per character, inside the page."""
    if len(regions) != n_characters:
        raise ValueError(f"regions: one box per character is needed, got {len(regions)} for {n_characters}")
    for index, box in enumerate(regions):
        if len(box) != 4:
            raise ValueError(f"regions: box {index} must be [x0, y0, x1, y1], got {len(box)} numbers")
        x0, y0, x1, y1 = box
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ValueError(f"regions: box {index} must have 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1, got {list(box)}")


class Quality(StrEnum):
    """How a page is drawn. `final`: the profile's steps and scheduler, as every page was before drafts. `draft`: the
    few-step LoRA (sources.DRAFT_LORA), its own step count, scheduler and guidance, the negative prompt still read."""

    final = "final"
    draft = "draft"


class ErrorKind(StrEnum):
    """Why one page could not be drawn (its batch-mates are not affected). Closed: serving maps each to a status."""

    invalid = "invalid"
    timeout = "timeout"
    out_of_memory = "out_of_memory"
    internal = "internal"
    content_refused = "content_refused"  # a prompt refused, or a picture still flagged after its redraws


@dataclass(frozen=True)
class PageRequest:
    """A page as asked: every setting optional (the profile's default when None, a seed drawn when None)."""

    prompt: str
    prev_frame: Image.Image | None = None
    characters: tuple[Image.Image, ...] = ()
    seed: int | None = None
    negative_prompt: str = ""
    width: int | None = None
    height: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    regions: tuple[Box, ...] | None = None  # one box per character; default_regions when absent
    deadline: float | None = None  # wall-clock time (time.time()) after which nobody waits for this page
    job_id: str | None = None  # names the page to PageGenerator.abandon when its client hangs up
    quality: Quality = Quality.final  # draft: the few-step LoRA's steps, scheduler and guidance as defaults


@dataclass(frozen=True)
class ResolvedPage:
    """A page as it is drawn: a PageRequest with every default filled in and checked (`PageGenerator.resolve`).
    Its own type, so that code that draws cannot be handed a page whose settings are still open."""

    prompt: str
    prev_frame: Image.Image | None
    characters: tuple[Image.Image, ...]
    seed: int
    negative_prompt: str
    width: int
    height: int
    steps: int
    guidance_scale: float
    regions: tuple[Box, ...]
    deadline: float | None
    job_id: str | None
    quality: Quality = Quality.final

    def group_key(self) -> tuple:
        """Requests with the same key run in one diffusion call (the pipeline takes these per call, not per item).

        The number of characters is not in it: each character acts through its own mask, and a page with fewer
        characters than its batch-mates is padded with all-zero masks. First and continuation pages stay apart:
        the ControlNet's conditioning scale is one number per call. Draft and final pages stay apart: the LoRA is
        switched on or off and the scheduler chosen for a whole call."""
        return (self.width, self.height, self.steps, self.guidance_scale, self.prev_frame is not None, self.quality)


def check_request(request: ResolvedPage, spec: ProfileSpec) -> None:
    """Raise ValueError naming the field when a resolved request cannot be drawn."""
    for name in ("width", "height"):
        value = getattr(request, name)
        if value % SIDE_MULTIPLE or not MIN_SIDE <= value <= spec.max_side:
            raise ValueError(
                f"{name}: must be a multiple of {SIDE_MULTIPLE} between {MIN_SIDE} and {spec.max_side}, got {value}"
            )
    if not 1 <= request.steps <= MAX_STEPS:
        raise ValueError(f"steps: must be between 1 and {MAX_STEPS}, got {request.steps}")
    if not 0 <= request.guidance_scale <= MAX_GUIDANCE_SCALE:
        raise ValueError(f"guidance_scale: must be between 0 and {MAX_GUIDANCE_SCALE}, got {request.guidance_scale}")
    if not 0 <= request.seed <= MAX_SEED:
        raise ValueError(f"seed: must be between 0 and {MAX_SEED}, got {request.seed}")
    if len(request.characters) > MAX_CHARACTERS:
        raise ValueError(f"characters: at most {MAX_CHARACTERS} pictures, got {len(request.characters)}")
    check_regions(request.regions, len(request.characters))
