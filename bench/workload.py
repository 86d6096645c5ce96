"""The one request shape every measurement uses, so in-process and served numbers compare.

A continuation page (with `prev_frame`) with one character at 256x256 and the profile's steps and guidance; requests
differ by prompt, seed and pictures (drawn from small pools, as a book reuses its characters).
"""

from __future__ import annotations

from functools import cache

from PIL import Image

from testkit.pictures import PROMPTS, picture, png_b64

SIZE = 256
CHARACTERS = 1
CHARACTER_SIZE = 96
POOL = 8


@cache
def page_picture(index: int, size: int) -> Image.Image:
    return picture(1000 + index % POOL, (size, size))


@cache
def character_picture(index: int) -> Image.Image:
    return picture(2000 + index % POOL, (CHARACTER_SIZE, CHARACTER_SIZE))


@cache
def b64png(kind: str, index: int, size: int = SIZE) -> str:
    return png_b64(page_picture(index, size) if kind == "page" else character_picture(index))


def page_request(i: int, size: int = SIZE, characters: int = CHARACTERS, continuation: bool = True):
    """Request number `i` as a pipeline.PageRequest (all of one shape batch together)."""
    from pipeline import PageRequest

    return PageRequest(
        prompt=PROMPTS[i % len(PROMPTS)],
        prev_frame=page_picture(i, size) if continuation else None,
        characters=tuple(character_picture(i + k) for k in range(characters)),
        seed=i,
        width=size,
        height=size,
    )


def payload(i: int, size: int = SIZE, characters: int = CHARACTERS) -> dict:
    """The same request as `page_request(i)`, as the JSON body of POST /generate."""
    return {
        "prev_frame": b64png("page", i % POOL, size),
        "characters": [b64png("character", (i + k) % POOL) for k in range(characters)],
        "prompt": PROMPTS[i % len(PROMPTS)],
        "seed": i,
        "width": size,
        "height": size,
    }
