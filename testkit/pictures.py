"""The inputs every test, benchmark and load test uses: deterministic pictures, story prompts, and how close two
pages are."""

from __future__ import annotations

import base64
import io

import numpy as np
from PIL import Image

PROMPTS = [
    "a fox and a bear have a picnic by the river, character 1 on the left, character 2 on the right",
    "两个角色在花园中交谈，左边是角色1，右边是角色2",
    "the little owl flies over the sleeping village under a big yellow moon",
    "a girl and her dog find a door in an old oak tree",
    "two friends build a boat out of leaves and sail across the pond",
    "the dragon shares a cup of tea with the knight in a cosy kitchen",
    "a rainy afternoon: everyone hides under a giant mushroom",
    "the end: the friends wave goodbye as the sun goes down",
]


def picture(seed: int, size: tuple[int, int] = (256, 256)) -> Image.Image:
    """A deterministic picture of smooth colour blobs: structure for the depth model and the image encoder, not pure
    noise."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(coarse).resize(size, Image.BICUBIC)


def png_b64(image: Image.Image) -> str:
    """An image as a client sends it: PNG, base64."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def png_from_b64(data: str) -> Image.Image:
    """A page as the service answers it (`img`: base64 PNG), decoded; PNG only, so a wrong format fails here."""
    image = Image.open(io.BytesIO(base64.b64decode(data)), formats=["PNG"])
    image.load()
    return image


def psnr(a: Image.Image, b: Image.Image) -> float:
    """Peak signal-to-noise ratio in dB between two pages of the same size (inf when identical)."""
    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    mse = float(((x - y) ** 2).mean())
    return float("inf") if mse == 0 else 10 * np.log10(255.0**2 / mse)
