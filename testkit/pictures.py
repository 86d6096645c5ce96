"""The inputs every test, benchmark and load test uses: deterministic pictures, story prompts, and how close two
pages are."""

from __future__ import annotations

import base64
import io
import struct
import zlib

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


def png_file(pixels: np.ndarray, colour: int, depth: int, interlace=False, claimed_height=None, drop_rows=0) -> bytes:
    """A PNG written by hand (Pillow writes no interlaced ones): unfiltered rows in one complete zlib stream, then
    IEND. A header claiming more rows than `pixels` has, or `drop_rows` rows left out: short but well-formed."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    height, width = pixels.shape[:2]
    dtype = ">u2" if depth == 16 else np.uint8
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    rows = [
        b"\x00" + np.ascontiguousarray(row, dtype=dtype).tobytes()
        for x0, y0, dx, dy in (passes if interlace else ((0, 0, 1, 1),))
        for row in pixels[y0::dy, x0::dx]
        if row.size
    ]
    ihdr = struct.pack(">IIBBBBB", width, claimed_height or height, depth, colour, 0, 0, int(interlace))
    stream = zlib.compress(b"".join(rows[: len(rows) - drop_rows]))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", stream) + chunk(b"IEND", b"")
