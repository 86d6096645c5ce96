"""Untrusted images in, RGB pictures out; pictures out as PNG. Every error names the request field it came from."""

from __future__ import annotations

import base64
import binascii
import io
import math
import re
import struct
import threading
import warnings
import zlib
from contextlib import contextmanager

from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,")
NO_WHITESPACE = str.maketrans("", "", " \t\n\r\f\v")
URL_SAFE = str.maketrans("-_", "+/")


class ImageInputError(ValueError):
    """A request image that cannot be used; `field` is the JSON path of the offending value."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def decode_image(
    data: str, field: str, *, max_bytes: int, max_pixels: int, max_side: int = 1024, max_aspect_ratio: float = 4.0
) -> Image.Image:
    """base64 (optionally a `data:image/...;base64,` URL) -> RGB picture of bounded size and shape, ready for the
    model service. Never fetches a URL.

    Whatever the picture, what the model is handed is at most `max_side` on its longest side and at most
    `max_aspect_ratio` long: the image encoder and the depth detector scale the *short* side up to their input
    size, so a 2x16000 picture would otherwise cost gigabytes there. Longer pictures are stretched to the ratio
    rather than refused: a page's own width and height may be further apart than that, its depth map is stretched
    back to the page, and the image encoder crops a square from the middle anyway."""
    raw = base64_bytes(data, field, max_bytes)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageInputError(field, f"image has {width}x{height} pixels, more than {max_pixels} allowed")
            if image.format == "PNG":
                require_every_png_row(raw, field)
            image.seek(0)  # first frame of an animation
            # JPEG decodes at 1/2, 1/4 or 1/8 scale when that still covers the bounded size (other formats: no-op).
            scale = max_side / max(width, height)
            if scale < 1:
                image.draft(None, (math.ceil(width * scale), math.ceil(height * scale)))
            with decoding.hold(image.size[0] * image.size[1]):
                image.load()
                ImageOps.exif_transpose(image, in_place=True)  # a copy only when it rotates
                image = bounded(to_rgb(image), max_side, max_aspect_ratio)
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError(field, f"not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(field, f"image has more than {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(field, f"image could not be decoded ({error})") from None
    return image


PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}  # by colour type: grey, RGB, palette, grey+alpha, RGBA
# Adam7's seven passes: first column and row, then the step between columns and between rows.
ADAM7 = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))


def require_every_png_row(raw: bytes, field: str) -> None:
    """Refuse a PNG whose pixel data ends before its last row. Pillow (13) decodes one whose compressed stream is
    complete but short as if it were whole, the missing rows black: a few hundred bytes claiming 1x16000000 were
    drawn as a black page. Counts the bytes the IDAT stream inflates to (1 MiB at a time, never held) against what
    the header's size, bit depth, colour type and interlacing need."""
    if raw[12:16] != b"IHDR" or len(raw) < 29:  # the spec's first chunk, which the sizes below are read from
        raise ImageInputError(field, "image could not be decoded (no PNG header)")
    width, height, depth, colour, _, _, interlace = struct.unpack(">IIBBBBB", raw[16:29])
    bits = depth * PNG_CHANNELS.get(colour, 4)
    needed = 0
    for x0, y0, dx, dy in ADAM7 if interlace else ((0, 0, 1, 1),):
        columns, rows = -(-(width - x0) // dx), -(-(height - y0) // dy)
        if columns > 0 and rows > 0:
            needed += rows * (1 + (columns * bits + 7) // 8)  # each row: a filter byte, then its pixels
    inflate, got, at = zlib.decompressobj(), 0, 8
    while got < needed and at + 8 <= len(raw):
        length, kind = struct.unpack(">I4s", raw[at : at + 8])
        data, at = raw[at + 8 : at + 8 + length], at + 12 + length
        while kind == b"IDAT" and data and got < needed:
            try:
                got += len(inflate.decompress(data, 2**20))
            except zlib.error:
                raise ImageInputError(field, "image could not be decoded (corrupt PNG data)") from None
            data = inflate.unconsumed_tail
    if got < needed:
        raise ImageInputError(field, "image could not be decoded (its data ends before the last row: truncated)")


def base64_bytes(data: str, field: str, max_bytes: int) -> bytes:
    """Standard or URL-safe base64, padded or not, with ASCII whitespace anywhere (the line breaks every 76
    characters that `base64`, `base64.encodebytes` and MIME encoders write); any other character is refused."""
    data = DATA_URL.sub("", data.strip(), count=1).translate(NO_WHITESPACE).translate(URL_SAFE)
    if len(data) > (max_bytes * 4) // 3 + 4:
        raise ImageInputError(field, f"image is larger than {max_bytes} bytes")
    if len(data) % 4 == 1:
        raise ImageInputError(field, "not valid base64")
    try:
        raw = base64.b64decode(data + "=" * (-len(data) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "not valid base64") from None
    if not raw:
        raise ImageInputError(field, "empty image")
    return raw


def bounded(image: Image.Image, max_side: int, max_aspect_ratio: float) -> Image.Image:
    """Scaled down to `max_side` (keeping the shape), then the short side stretched up to `max_aspect_ratio`."""
    width, height = image.size
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        width, height = max(1, round(width * scale)), max(1, round(height * scale))
        # Downscale first and alone: stretching a 1x16000000 picture before shrinking it would make 4 Gpx.
        image = image.resize((width, height), Image.LANCZOS, reducing_gap=2.0)
    if width > height * max_aspect_ratio:
        image = image.resize((width, math.ceil(width / max_aspect_ratio)), Image.BICUBIC)
    elif height > width * max_aspect_ratio:
        image = image.resize((math.ceil(height / max_aspect_ratio), height), Image.BICUBIC)
    return image


class PixelBudget:
    """Bounds the pixels being decoded at once across concurrent requests: a few hundred bytes of PNG can claim
    16 Mpx (48 MB once decoded), and sixteen such requests at once would otherwise hold them all together."""

    def __init__(self, pixels: int):
        self.limit = pixels
        self.used = 0
        self.freed = threading.Condition()

    @contextmanager
    def hold(self, pixels: int):
        pixels = min(pixels, self.limit)  # one picture larger than the budget runs alone
        with self.freed:
            self.freed.wait_for(lambda: self.used + pixels <= self.limit)
            self.used += pixels
        try:
            yield
        finally:
            with self.freed:
                self.used -= pixels
                self.freed.notify_all()


# Three pictures at the default pixel cap decode at once, the others wait: about 150 MB of RGB at most.
decoding = PixelBudget(48_000_000)


def to_rgb(image: Image.Image) -> Image.Image:
    """Palette, alpha, CMYK, greyscale and 16-bit pictures as 8-bit RGB (alpha composited on white)."""
    if image.mode == "RGB":
        return image
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        image = image.point(lambda v: v * (1 / 256)).convert("L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        background = Image.new("RGB", image.size, (255, 255, 255))
        background.paste(image.convert("RGBA"), mask=image.convert("RGBA").getchannel("A"))
        return background
    return image.convert("RGB")


def encode_png(image: Image.Image, compress_level: int = 6) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=compress_level)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def normalised_png(data: str, field: str, limits: dict) -> str:
    """An untrusted picture as the model service takes it: through `decode_image` (checked, bounded, RGB), then
    PNG, lossless and fast, so the model service only decodes what the front already checked."""
    return encode_png(decode_image(data, field, **limits), compress_level=1)


def own_page_as_prev_frame(data: str, max_side: int, max_aspect_ratio: float, **_other_limits) -> str:
    """A page this service drew (PNG base64) as the next page's `prev_frame`: the picture `decode_image` would
    make of it, without the untrusted decoder. Already in bounds (a page of at most `max_side`, the usual case), it
    goes on as it is; otherwise it is decoded as the trusted PNG it is, bounded as an untrusted one would be, and
    encoded again."""
    with Image.open(io.BytesIO(base64.b64decode(data)), formats=("PNG",)) as header:  # the size, no pixels yet
        width, height = header.size
    if max(width, height) <= max_side and max(width, height) <= min(width, height) * max_aspect_ratio:
        return data
    return encode_png(bounded(decode_trusted_png(data), max_side, max_aspect_ratio), compress_level=1)


def decode_trusted_png(data: str) -> Image.Image:
    """For images this project encoded itself (between its own services)."""
    image = Image.open(io.BytesIO(base64.b64decode(data)), formats=("PNG",))
    image.load()
    return image.convert("RGB")
