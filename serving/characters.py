"""A character drawn from words: `POST /character` turns a description into a reference picture of that one
character, for the face adapter to keep the same on every page, when nobody has a picture of them.

A portrait is a first page with no characters (no `prev_frame`, both adapters off), at the page size, through the
same model service, batcher and checks as every page: its texts pass the prompt filter and the moderation model
(serving/content_safety.py) before any model work, and the picture passes the picture check the model service
runs on every page. Its prompt is `PORTRAIT_TEMPLATE` filled with the description; `PORTRAIT_NEGATIVE` goes before
the request's own negative prompt (and the child-safe one before both, as on every page). Same request and seed,
same picture: the page's seed is the portrait's.

For books (docs/DESIGN.md, "A cast from words"): a cast entry `{name, description, seed?}` is a `PortraitRequest`
with the book's drawing settings; `portrait_texts(entry, at="characters[1].")` gives its texts for the book's one
check at submit, and `draw_portraits` draws all of a book's portraits at once, so the batcher can merge them.
"""

from __future__ import annotations

import asyncio

from pydantic import BaseModel, ConfigDict, Field, field_validator
from starlette.responses import JSONResponse

from pipeline.page import Quality

from .drawing import Overloaded, PageDrawer, PagePictures
from .errors import overloaded, page_error
from .schemas import GenerateRequest, PageSettings, nullable_in_openapi, seed_field
from .wire import PageAnswer

# What the picture must be, and why (README, "Characters from words"): the whole figure, so the face adapter and
# the style of the pages both have the character's look; facing the viewer, as the face adapter's training faces
# are; alone, centred, on a plain light background, so the picture's embedding is the character's and no scenery
# or second figure leaks from it into every page. The description comes first: the text encoders read 77 tokens
# and weigh the first ones most. The name is not drawn: a model draws a name as lettering, if at all.
PORTRAIT_TEMPLATE = (
    "A full-length character reference picture of {description}, {style}. One character alone, the whole figure "
    "from head to feet, standing and facing the viewer, centred on a plain light background, nothing else in the "
    "frame."
)
DEFAULT_STYLE = "drawn as a children's picture-book illustration"
PORTRAIT_NEGATIVE = (
    "two characters, crowd, scenery, furniture, props, text, letters, frame, border, cropped, close-up, "
    "back view, dark background, busy background"
)
MAX_DESCRIPTION_CHARS = 400  # about the 77 tokens the text encoders read, with the template's own
MAX_NAME_CHARS = 80
MAX_STYLE_CHARS = 200
NO_PICTURES = PagePictures(prev_frame=None, characters=[])


class CharacterDescription(BaseModel):
    """One character in words: what `POST /character` draws, and a book's `characters` entry `{name, description,
    seed?}` (drawn by the book, at its page size, before its pages)."""

    # As the page schemas: unknown fields ignored; fields that take null marked `nullable` in the OpenAPI document.
    model_config = ConfigDict(extra="ignore", json_schema_extra=nullable_in_openapi)

    description: str = Field(
        ...,
        min_length=1,
        max_length=MAX_DESCRIPTION_CHARS,
        description="Who the character is and what they look like, a sentence or two (any language; Chinese is "
        "translated before drawing, as prompts are). It fills the portrait template (README).",
        examples=["a small red fox with a blue scarf and a green backpack"],
    )
    name: str | None = Field(
        None,
        max_length=MAX_NAME_CHARS,
        description="What the story calls the character. Checked like every user text, not drawn.",
        examples=["Pip"],
    )
    seed: int | None = seed_field("For the same portrait again; drawn at random when absent.", examples=[7])
    style: str | None = Field(
        None,
        max_length=MAX_STYLE_CHARS,
        description=f'How it is drawn, in words ("watercolour, soft pencil lines"); "{DEFAULT_STYLE}" when absent.',
        examples=["watercolour, soft pencil lines"],
    )

    @field_validator("description")
    @classmethod
    def _written(cls, description: str) -> str:
        if not description.strip():
            raise ValueError("the description is empty: say who the character is")
        return description.strip()

    @field_validator("name", "style")
    @classmethod
    def _blank_is_absent(cls, text: str | None) -> str | None:
        return text.strip() if text is not None and text.strip() else None


class PortraitRequest(PageSettings, CharacterDescription):
    """One character described in words; drawn at the page size unless `width`/`height` say otherwise."""

    model_config = ConfigDict(extra="ignore", json_schema_extra=nullable_in_openapi)

    @classmethod
    def in_book(cls, settings: PageSettings, member: CharacterDescription) -> PortraitRequest:
        """A book's described member as the portrait it is, with the book's drawing settings (both checked)."""
        return cls.model_construct(**settings.page_settings(), **member.model_dump())


class PortraitResponse(BaseModel):
    img: str = Field(..., description="The portrait, base64 PNG at the page size: send it as a character picture.")
    seed: int = Field(..., description="The seed it was drawn with (send it back to draw the same portrait again).")
    batch_size: int = Field(..., description="Pages and portraits drawn together in the diffusion call that drew it.")
    timings_ms: dict[str, float] = Field(default_factory=dict, description="Where the time went, in milliseconds.")
    prompt_drawn: str | None = Field(
        None, description="The prompt the text encoders read: the template filled with the description (translated)."
    )


def portrait_prompt(request: PortraitRequest) -> str:
    return PORTRAIT_TEMPLATE.format(description=request.description, style=request.style or DEFAULT_STYLE)


def portrait_page(request: PortraitRequest) -> GenerateRequest:
    """The portrait as the page it is: a first page with no characters, with the portrait's negative prompt."""
    negative = ", ".join(part for part in (PORTRAIT_NEGATIVE, request.negative_prompt) if part)
    return GenerateRequest.model_construct(
        **{**request.page_settings(), "negative_prompt": negative},
        prompt=portrait_prompt(request),
        seed=request.seed,
        prev_frame=None,
        characters=[],
        regions=None,
    )


def portrait_texts(request: PortraitRequest, at: str = "") -> list[tuple[str, str | None]]:
    """The user texts to check, each named by its field (`description`, or `characters[1].description` in a book)."""
    return [(f"{at}description", request.description), (f"{at}name", request.name), (f"{at}style", request.style)]


async def draw_portraits(
    drawer: PageDrawer, requests: list[PortraitRequest], quality: Quality = Quality.final
) -> list[PageAnswer]:
    """Checked portraits, all at once through the batcher (one diffusion call when they fit in a batch). Raises
    Overloaded as PageDrawer.draw does; a portrait that failed has its `error_kind` set."""
    pages = [portrait_page(request) for request in requests]
    drawn = (drawer.page(page, page.prompt, page.seed, NO_PICTURES, quality) for page in pages)
    return list(await asyncio.gather(*drawn))


async def character_portrait(drawer: PageDrawer, request: PortraitRequest) -> PortraitResponse | JSONResponse:
    """`POST /character`: the texts checked before any model work, then the portrait, or the page's error."""
    refused = await drawer.prompts.refusal(portrait_texts(request))
    if refused is not None:
        return refused
    try:
        [answer] = await draw_portraits(drawer, [request])
    except Overloaded as error:
        return overloaded(str(error), drawer.settings.retry_after_s)
    if answer.error_kind:
        return page_error(answer.error_kind, answer.error)
    return PortraitResponse.model_construct(**answer.model_dump(include=set(PortraitResponse.model_fields)))
