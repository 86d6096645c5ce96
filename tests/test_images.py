"""Untrusted request images: decoded safely, normalised to RGB, and refused with the field named."""

import base64
import io

import numpy as np
import pytest
from PIL import Image

from serving.images import ImageInputError, decode_image
from testkit.pictures import png_file

LIMITS = {"max_bytes": 1_000_000, "max_pixels": 4_000_000}


def encoded(image: Image.Image, fmt: str, **save) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **save)
    return base64.b64encode(buffer.getvalue()).decode()


def gradient(size=(64, 48)) -> Image.Image:
    x = np.linspace(0, 255, size[0], dtype=np.uint8)
    return Image.fromarray(np.stack([np.tile(x, (size[1], 1))] * 3, axis=-1))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_allowed_formats_decode_to_rgb(fmt):
    image = decode_image(encoded(gradient(), fmt), "prev_frame", **LIMITS)
    assert image.mode == "RGB" and image.size == (64, 48)


def test_data_url_prefix_is_accepted():
    image = decode_image("data:image/png;base64," + encoded(gradient(), "PNG"), "prev_frame", **LIMITS)
    assert image.size == (64, 48)


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    image = decode_image(encoded(gradient(), "JPEG", exif=exif), "prev_frame", **LIMITS)
    assert image.size == (48, 64)


@pytest.mark.parametrize(
    "make",
    [
        lambda: gradient().convert("P"),
        lambda: gradient().convert("RGBA"),
        lambda: gradient().convert("LA"),
        lambda: gradient().convert("L"),
        lambda: Image.fromarray(np.arange(64 * 48, dtype=np.uint16).reshape(48, 64) * 20),  # 16-bit grey
    ],
    ids=["palette", "rgba", "grey-alpha", "grey", "16-bit"],
)
def test_modes_are_converted_to_rgb(make):
    image = decode_image(encoded(make(), "PNG"), "characters[0]", **LIMITS)
    assert image.mode == "RGB" and image.size == (64, 48)


def test_cmyk_jpeg_is_converted_to_rgb():
    image = decode_image(encoded(gradient().convert("CMYK"), "JPEG"), "prev_frame", **LIMITS)
    assert image.mode == "RGB"


def test_first_frame_of_an_animation_is_used():
    frames = [Image.new("RGB", (32, 32), colour) for colour in ((255, 0, 0), (0, 0, 255))]
    buffer = io.BytesIO()
    frames[0].save(buffer, format="WEBP", save_all=True, append_images=frames[1:], lossless=True)
    image = decode_image(base64.b64encode(buffer.getvalue()).decode(), "prev_frame", **LIMITS)
    assert image.getpixel((5, 5)) == (255, 0, 0)


def refused(data: str, field="prev_frame", **limits):
    with pytest.raises(ImageInputError) as caught:
        decode_image(data, field, **{**LIMITS, **limits})
    assert caught.value.field == field
    return caught.value.message


def test_junk_is_refused():
    assert "base64" in refused("not base64 at all!")
    assert "base64" in refused("data:image/png;base64,@@@@")
    assert "base64" in refused("https://example.com/picture.png")  # a URL is never fetched


def test_not_an_image_and_unsupported_formats_are_refused():
    assert "allowed format" in refused(base64.b64encode(b"hello, world").decode())
    assert "allowed format" in refused(encoded(gradient(), "GIF"))
    assert "allowed format" in refused(encoded(gradient(), "BMP"))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_truncated_images_are_refused(fmt):
    raw = base64.b64decode(encoded(gradient((256, 256)), fmt))
    assert refused(base64.b64encode(raw[: len(raw) // 2]).decode())


def test_decompression_bomb_is_refused_from_its_header():
    bomb = Image.new("1", (20_000, 20_000))  # 400 Mpx in a few kB of PNG
    message = refused(encoded(bomb, "PNG"))
    assert "pixels" in message


def test_too_many_bytes_are_refused():
    noise = Image.fromarray(np.random.default_rng(0).integers(0, 255, (300, 300, 3), dtype=np.uint8))
    assert "bytes" in refused(encoded(noise, "PNG"), max_bytes=50_000)


def test_base64_with_line_breaks_and_url_safe_alphabet_is_accepted():
    raw = base64.b64decode(encoded(gradient(), "PNG"))
    for data in (
        base64.encodebytes(raw).decode(),  # a newline every 76 characters
        base64.encodebytes(raw).decode().replace("\n", "\r\n"),
        " ".join(base64.b64encode(raw).decode()[i : i + 10] for i in range(0, 4000, 10)),
        base64.urlsafe_b64encode(raw).decode(),
        base64.urlsafe_b64encode(raw).decode().rstrip("="),
    ):
        assert decode_image(data, "prev_frame", **LIMITS).size == (64, 48)


def test_anything_else_in_base64_is_still_refused():
    good = encoded(gradient(), "PNG")
    for junk in (good[:40] + "." + good[40:], good[:40] + "\x00" + good[40:], good + "=" * 3 + "A", good[:-3] + "é"):
        assert "base64" in refused(junk)


@pytest.mark.parametrize("size", [(2, 16000), (16000, 2), (16, 4096), (1, 4_000_000), (4000, 4000), (5000, 1100)])
def test_pictures_are_bounded_in_size_and_shape(size):
    """What reaches the model is at most 1024 on its longest side and at most 4:1, whatever was sent."""
    image = decode_image(
        encoded(Image.new("L", size, 128), "PNG"), "characters[0]", **{**LIMITS, "max_pixels": 16_000_000}
    )
    width, height = image.size
    assert max(width, height) <= 1024 and max(width, height) <= 4 * min(width, height), image.size
    assert max(width, height) == min(1024, max(size))
    assert image.getpixel((width // 2, height // 2)) == (128, 128, 128)


def test_ordinary_pictures_are_untouched():
    picture = gradient((640, 480))
    assert np.array_equal(
        np.asarray(decode_image(encoded(picture, "PNG"), "prev_frame", **LIMITS)), np.asarray(picture)
    )


PEAK_MEMORY_OF_SIXTEEN_DECODES = """
import base64, io, sys
from concurrent.futures import ThreadPoolExecutor
from PIL import Image
from serving import framework
from serving.images import decode_image
from serving.settings import serving_settings

framework.install(serving_settings)  # as service.py does: Pillow's block cache is one of its patches

def peak_kib():
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1])

buffer = io.BytesIO()
Image.new("RGB", (3999, 4000), (90, 140, 200)).save(buffer, format=sys.argv[1])
data = base64.b64encode(buffer.getvalue()).decode()
decode_image(data, "prev_frame", max_bytes=10**7, max_pixels=16_000_000)  # warm: allocator, codecs
before = peak_kib()
with ThreadPoolExecutor(16) as pool:
    list(pool.map(lambda _: decode_image(data, "prev_frame", max_bytes=10**7, max_pixels=16_000_000), range(16)))
print(len(buffer.getvalue()), peak_kib() - before)
"""


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_sixteen_small_files_claiming_16_mpx_do_not_take_gigabytes(fmt):
    """Before: a 600-byte JPEG claiming 3999x4000 decoded whole (48 MB), and sixteen at once took the front from 0.8
    to 3 GiB. JPEG now decodes at a reduced scale; every format waits for a share of a bounded decoding budget."""
    import subprocess
    import sys
    from pathlib import Path

    run = subprocess.run(
        [sys.executable, "-c", PEAK_MEMORY_OF_SIXTEEN_DECODES, fmt],
        capture_output=True, text=True, check=True, timeout=120, cwd=Path(__file__).parent.parent,
    )  # fmt: skip
    file_bytes, grown_kib = map(int, run.stdout.split())
    assert file_bytes < 300_000
    assert grown_kib < 400 * 1024, f"{fmt}: decoding 16 at once grew the peak memory by {grown_kib // 1024} MiB"


# --- pictures whose data stops early (issue 22: a PNG claiming 1x16000000 with a few rows was drawn as black) ---


def as_b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def test_a_png_claiming_16_mpx_whose_data_stops_after_a_few_rows_is_refused():
    short = png_file(np.full((5, 1), 128, np.uint8), colour=0, depth=8, claimed_height=16_000_000)
    assert len(short) < 100
    message = refused(as_b64(short), "characters[0]", max_pixels=16_000_000)
    assert "truncated" in message


@pytest.mark.parametrize(
    "colour, depth, channels", [(0, 8, 1), (2, 8, 3), (6, 8, 4), (4, 8, 2), (2, 16, 3), (0, 16, 1)]
)
@pytest.mark.parametrize("interlace", [False, True], ids=["plain", "adam7"])
def test_a_png_is_refused_when_one_row_is_missing_and_decoded_when_whole(colour, depth, channels, interlace):
    """The row count is exact for every colour type, bit depth and interlacing: a whole picture decodes as it was,
    the same picture without its last row of data is refused."""
    pixels = np.random.default_rng(colour + depth).integers(0, 2**depth - 1, (29, 37, channels), dtype=np.uint16)
    image = decode_image(as_b64(png_file(pixels, colour, depth, interlace)), "prev_frame", **LIMITS)
    assert image.size == (37, 29)
    if (colour, depth) == (2, 8):
        assert np.array_equal(np.asarray(image), pixels.astype(np.uint8))
    assert "truncated" in refused(as_b64(png_file(pixels, colour, depth, interlace, drop_rows=1)))


def test_a_jpeg_cut_after_a_few_rows_is_refused():
    tall = Image.fromarray(np.random.default_rng(1).integers(0, 255, (60_000, 16), dtype=np.uint8))
    raw = base64.b64decode(encoded(tall, "JPEG"))
    assert "truncated" in refused(base64.b64encode(raw[:3000]).decode(), "characters[0]", max_pixels=16_000_000)


def test_a_png_whose_first_chunk_is_not_its_header_is_refused():
    """The sizes the row count needs are read from IHDR, which the PNG spec puts first (libpng refuses others)."""
    import struct
    import zlib

    raw = png_file(np.full((4, 4), 9, np.uint8), 0, 8)
    text = b"tEXt" + b"a\x00b"
    odd = raw[:8] + struct.pack(">I", 3) + text + struct.pack(">I", zlib.crc32(text)) + raw[8:]
    assert "no PNG header" in refused(as_b64(odd))
