"""The HTTP schema: one definition of a page's fields, with bounds taken from pipeline.page and the settings.

`GenerateRequest` is the seed's request plus optional settings; `GenerateResponse` its answer. What the front hands
the model service for a page is not these but the wire's own types (serving/wire.py).
"""

from __future__ import annotations

from typing import Annotated, Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, ValidationInfo, field_validator

from pipeline.config import ModelSettings
from pipeline.page import (
    MAX_CHARACTERS,
    MAX_GUIDANCE_SCALE,
    MAX_SEED,
    MAX_STEPS,
    MIN_SIDE,
    SIDE_MULTIPLE,
    Quality,
    check_regions,
)
from pipeline.sources import PROFILES

from .settings import serving_settings

MAX_SIDE = PROFILES[ModelSettings().profile].max_side
MAX_PROMPT_CHARS = serving_settings.max_prompt_chars

EXAMPLE_PNG = (  # a 1x1 white PNG, so /docs "Try it out" works as shown
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAIAAACQd1PeAAAADElEQVR4nGP4//8/AAX+Av4N70a4AAAAAElFTkSuQmCC"
)


# Numbers only: "0.5" or true are refused rather than coerced. Bounds and count are checked by check_regions.
Box = Annotated[list[StrictFloat | StrictInt], Field(min_length=4, max_length=4)]


def _side(axis: str):
    return Field(
        None,
        ge=MIN_SIDE,
        le=MAX_SIDE,
        multiple_of=SIDE_MULTIPLE,
        description=f"Page {axis} in pixels; profile default when absent.",
    )


def nullable_in_openapi(schema: dict) -> None:
    """OpenAPI 3.0 (BentoML's) has no `null` type; BentoML drops it from `anyOf`, so mark the fields that take
    null as `nullable`."""
    for prop in schema.get("properties", {}).values():
        if {"type": "null"} in prop.get("anyOf", []):
            prop["nullable"] = True


class Cast(BaseModel):
    """The characters of a page or a book, and where each goes."""

    # Unknown fields are ignored, not refused: clients written against a later or earlier contract keep working.
    model_config = ConfigDict(extra="ignore", json_schema_extra=nullable_in_openapi)

    characters: list[str] = Field(
        default_factory=list,
        max_length=MAX_CHARACTERS,
        description=f"Reference pictures of the characters, base64 images, 0 to {MAX_CHARACTERS}.",
        examples=[[EXAMPLE_PNG]],
    )
    regions: list[Box] | None = Field(
        None,
        description="Where each character goes: one box `[x0, y0, x1, y1]` per character, in the order of "
        "`characters`, as fractions of the page (0 <= x0 < x1 <= 1, 0 <= y0 < y1 <= 1; boxes may overlap). "
        "Absent: characters left to right in equal vertical strips, character 1 leftmost; one character acts on "
        "the whole page.",
        examples=[[[0.0, 0.2, 0.5, 1.0], [0.5, 0.2, 1.0, 1.0]]],
    )

    @field_validator("regions")
    @classmethod
    def _one_box_per_character(cls, regions: list[list[float]] | None, info: ValidationInfo):
        if regions is not None and "characters" in info.data:  # absent when `characters` itself was refused
            try:
                check_regions(regions, len(info.data["characters"]))
            except ValueError as error:
                raise ValueError(str(error).removeprefix("regions: ")) from None
        return regions


class PageSettings(BaseModel):
    """How a page is drawn, each optional (the profile's default when absent)."""

    negative_prompt: str = Field("", max_length=MAX_PROMPT_CHARS, description="What the page should avoid.")
    width: int | None = _side("width")
    height: int | None = _side("height")
    steps: int | None = Field(None, ge=1, le=MAX_STEPS, description="Denoising steps; profile default when absent.")
    guidance_scale: float | None = Field(
        None, ge=0.0, le=MAX_GUIDANCE_SCALE, description="Classifier-free guidance scale."
    )

    def page_settings(self) -> dict:
        return self.model_dump(include=set(PageSettings.model_fields))


def prompt_field(description: str, **extra):
    return Field(..., min_length=1, max_length=MAX_PROMPT_CHARS, description=description, **extra)


def seed_field(description: str = "For a reproducible page; drawn at random when absent.", **extra):
    return Field(None, ge=0, le=MAX_SEED, description=description, **extra)


class GenerateRequest(PageSettings, Cast):
    """The seed's request, plus optional generation settings."""

    prev_frame: str | None = Field(
        None,
        description="The previous page, base64 PNG/JPEG/WEBP (a `data:image/...;base64,` prefix is accepted). "
        "Omit it for the first page of a book.",
        examples=[EXAMPLE_PNG],
    )
    prompt: str = prompt_field(
        "What happens on the page: scene, characters' places and actions.",
        examples=["Two friends talk in a garden, character 1 on the left, character 2 on the right"],
    )
    seed: int | None = seed_field(examples=[42])
    quality: Quality = Field(
        Quality.final,
        description="`final` (default): the profile's steps, as without this field. `draft`: the few-step "
        "Hyper-SD LoRA (8 steps at full size, guidance kept so the negative prompt still acts): a quick look at the "
        "page; send the same seed with `final` to draw it in full. Draft and final pages are never drawn in one "
        "diffusion call.",
        examples=["final"],
    )

    @field_validator("prev_frame")
    @classmethod
    def _empty_is_absent(cls, prev_frame: str | None):
        # The rule for every picture field: "" where a picture may be absent means absent (clients written against
        # the original contract send it for a first page); an empty entry of `characters` is a bad picture (400),
        # since a list entry cannot be absent without moving the characters after it.
        return prev_frame if prev_frame is None or prev_frame.strip() else None


class GenerateResponse(BaseModel):
    img: str = Field(..., description="The new page, base64 PNG.")
    seed: int = Field(..., description="The seed the page was drawn with (send it back to redraw the same page).")
    batch_size: int = Field(..., description="Pages drawn together in the diffusion call that drew this one.")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Where the time went, in milliseconds.")
    prompt_drawn: str | None = Field(
        None,
        description="The prompt the text encoders read: the request's, its Chinese translated into English "
        "(the same text when it has none, or when translation is off). Rewrite it and send it as `prompt` to "
        "change what is drawn.",
    )


Model = TypeVar("Model", bound=BaseModel)


def validated_by_bentoml(schema: type[Model], fields: dict[str, Any]) -> Model:
    """The request BentoML already validated, as `schema` again, without validating it a second time.

    An API declared with `input_spec=schema` gets its fields as keyword arguments: BentoML parses the body into
    its own subclass of `schema` (pydantic validation, its 400 naming the field) and passes that model's attribute
    values (`_bentoml_impl/server/app.py`, `api_endpoint`, BentoML 1.4). They are checked values of `schema`'s
    fields, so they are put back together as they are. Only for the fields of a served API: a Python caller of the
    service's method would get no validation here."""
    return schema.model_construct(**fields)
