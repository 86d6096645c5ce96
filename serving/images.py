"""Untrusted images in, RGB pictures out; pictures out as PNG. Every error names the request field it came from."""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

ALLOWED_FORMATS = ("PNG", "JPEG", "WEBP")
DATA_URL = re.compile(r"^data:image/[a-zA-Z0-9.+-]+;base64,")
# Pillow raises DecompressionBombError above twice this; checked from the header, before any pixel is decoded.
Image.MAX_IMAGE_PIXELS = 40_000_000


class ImageInputError(ValueError):
    """A request image that cannot be used; `field` is the JSON path of the offending value."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def decode_image(data: str, field: str, *, max_bytes: int, max_pixels: int) -> Image.Image:
    """base64 (optionally a `data:image/...;base64,` URL) -> normalised RGB picture. Never fetches a URL."""
    data = DATA_URL.sub("", data.strip(), count=1)
    if len(data) > (max_bytes * 4) // 3 + 4:
        raise ImageInputError(field, f"image is larger than {max_bytes} bytes")
    try:
        raw = base64.b64decode(data, validate=True)
    except (binascii.Error, ValueError):
        raise ImageInputError(field, "not valid base64") from None
    if not raw:
        raise ImageInputError(field, "empty image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(raw), formats=ALLOWED_FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise ImageInputError(field, f"image has {width}x{height} pixels, more than {max_pixels} allowed")
            image.seek(0)  # first frame of an animation
            image.load()
            image = ImageOps.exif_transpose(image)
    except ImageInputError:
        raise
    except UnidentifiedImageError:
        raise ImageInputError(field, f"not an image in an allowed format ({', '.join(ALLOWED_FORMATS)})") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageInputError(field, f"image has more than {max_pixels} pixels") from None
    except (OSError, SyntaxError, ValueError) as error:
        raise ImageInputError(field, f"image could not be decoded ({error})") from None
    return to_rgb(image)


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


def decode_trusted_png(data: str) -> Image.Image:
    """For images this project encoded itself (between its own services)."""
    image = Image.open(io.BytesIO(base64.b64decode(data)), formats=("PNG",))
    image.load()
    return image.convert("RGB")
