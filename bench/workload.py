"""The one request shape every measurement uses, so in-process and served numbers compare.

A continuation page (with `prev_frame`) with one character at 256x256 and the profile's steps and guidance; requests
differ by prompt, seed and pictures (drawn from small pools, as a book reuses its characters).
"""

from __future__ import annotations

import base64
import io
from functools import lru_cache

import numpy as np
from PIL import Image

SIZE = 256
CHARACTERS = 1
CHARACTER_SIZE = 96
POOL = 8

PROMPTS = [
    "a fox and a bear have a picnic by the river, character 1 on the left, character 2 on the right",
    "the little owl flies over the sleeping village under a big yellow moon",
    "a girl and her dog find a door in an old oak tree",
    "two friends build a boat out of leaves and sail across the pond",
    "the dragon shares a cup of tea with the knight in a cosy kitchen",
    "a rainy afternoon: everyone hides under a giant mushroom",
    "the friends climb a hill to watch the kites",
    "the end: the friends wave goodbye as the sun goes down",
]


def picture(seed: int, size: tuple[int, int] = (SIZE, SIZE)) -> Image.Image:
    """A deterministic picture of smooth colour blobs: structure for the depth model and the image encoder, not pure
    noise. The tests, the load test and the benchmark all draw their inputs with it."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.BICUBIC)


def png_b64(image: Image.Image) -> str:
    """An image as a client sends it: PNG, base64."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


@lru_cache(maxsize=None)
def page_picture(index: int, size: int) -> Image.Image:
    return picture(1000 + index % POOL, (size, size))


@lru_cache(maxsize=None)
def character_picture(index: int) -> Image.Image:
    return picture(2000 + index % POOL, (CHARACTER_SIZE, CHARACTER_SIZE))


@lru_cache(maxsize=None)
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
