"""A picture book as a printable PDF, with reportlab: a cover, then one page per picture with its text beneath,
and, for a book with characters described in words, a last page "The cast" (each member's picture and name).

Square pages of 210 mm (a common picture-book format; 8.27 in). Pictures are embedded losslessly (reportlab
compresses their pixels with Flate, never JPEG), so the print is as sharp as the PNG. Text is set in a large font:
Helvetica for Latin text, and reportlab's built-in CID font STSong-Light for text with CJK characters — no font
file is needed, the text stays selectable and searchable, and readers draw the glyphs from their own CJK fonts.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass
from xml.sax.saxutils import escape

from PIL import Image
from reportlab.lib.enums import TA_CENTER
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import mm
from reportlab.lib.utils import ImageReader
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.cidfonts import UnicodeCIDFont
from reportlab.pdfgen.canvas import Canvas
from reportlab.platypus import Paragraph

PAGE_SIDE = 210 * mm
MARGIN = 14 * mm
PICTURE_SIDE = 150 * mm  # leaves the lower part of each page for its text
TEXT_SIZE = 20
TITLE_SIZE = 30
CJK_FONT = "STSong-Light"
LATIN_FONT = "Helvetica"
CJK = re.compile(r"[\u2e80-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef]")

pdfmetrics.registerFont(UnicodeCIDFont(CJK_FONT))


@dataclass(frozen=True)
class BookPage:
    picture: Image.Image
    text: str


def _style(text: str, size: int) -> ParagraphStyle:
    cjk = bool(CJK.search(text))
    return ParagraphStyle(
        "page",
        fontName=CJK_FONT if cjk else LATIN_FONT,
        fontSize=size,
        leading=size * 1.3,
        alignment=TA_CENTER,
        wordWrap="CJK" if cjk else None,  # CJK text breaks between characters, not only at spaces
    )


def _text(canvas: Canvas, text: str, size: int, top: float) -> None:
    """`text` centred below `top`, wrapped to the page, shrunk until it fits above the bottom margin."""
    width, room = PAGE_SIDE - 2 * MARGIN, top - MARGIN
    markup = escape(text).replace("\n", "<br/>")
    while True:
        paragraph = Paragraph(markup, _style(text, size))
        _, height = paragraph.wrap(width, room)
        if height <= room or size <= 8:
            paragraph.drawOn(canvas, MARGIN, top - height)
            return
        size -= 2


def _picture(canvas: Canvas, picture: Image.Image, side: float, top: float) -> None:
    """The picture fitted in a `side` square, centred horizontally, its top edge at `top`."""
    scale = side / max(picture.size)
    width, height = picture.width * scale, picture.height * scale
    canvas.drawImage(ImageReader(picture), (PAGE_SIDE - width) / 2, top - height, width, height)


@dataclass(frozen=True)
class CastMember:
    picture: Image.Image
    name: str


CAST_TITLE = "The cast"


def _cast_page(canvas: Canvas, cast: list[CastMember]) -> None:
    """The last page: "The cast", then each member's picture with its name beneath, in a grid of up to 2 columns."""
    _text(canvas, CAST_TITLE, TITLE_SIZE, PAGE_SIDE - MARGIN)
    top = PAGE_SIDE - MARGIN - 2.2 * TITLE_SIZE
    columns = 1 if len(cast) == 1 else 2
    rows = (len(cast) + columns - 1) // columns
    cell_width = (PAGE_SIDE - 2 * MARGIN) / columns
    cell_height = (top - MARGIN) / rows
    side = min(cell_width - 6 * mm, cell_height - 1.6 * TEXT_SIZE - 4 * mm)
    for number, member in enumerate(cast):
        row, column = divmod(number, columns)
        centre = MARGIN + cell_width * (column + 0.5)
        cell_top = top - row * cell_height
        scale = side / max(member.picture.size)
        width, height = member.picture.width * scale, member.picture.height * scale
        canvas.drawImage(ImageReader(member.picture), centre - width / 2, cell_top - height, width, height)
        style = _style(member.name, TEXT_SIZE)
        paragraph = Paragraph(escape(member.name), style)
        _, text_height = paragraph.wrap(cell_width, 2 * TEXT_SIZE)
        paragraph.drawOn(canvas, centre - cell_width / 2, cell_top - height - 2 * mm - text_height)
    canvas.showPage()


def render_book_pdf(title: str, pages: list[BookPage], cast: list[CastMember] | None = None) -> bytes:
    """The book as PDF bytes: a cover (title and the first picture), then each picture with its text, then (when
    `cast` is given) a last page "The cast" with each member's picture and name."""
    buffer = io.BytesIO()
    canvas = Canvas(buffer, pagesize=(PAGE_SIDE, PAGE_SIDE), pageCompression=1)
    canvas.setTitle(title or "Picture book")
    canvas.setCreator("Picture Book")

    cover_title = title or "Picture book"
    _text(canvas, cover_title, TITLE_SIZE, PAGE_SIDE - MARGIN)
    _picture(canvas, pages[0].picture, PICTURE_SIDE - 20 * mm, PAGE_SIDE - MARGIN - 2.2 * TITLE_SIZE)
    canvas.showPage()

    for page in pages:
        _picture(canvas, page.picture, PICTURE_SIDE, PAGE_SIDE - MARGIN)
        if page.text:
            _text(canvas, page.text, TEXT_SIZE, PAGE_SIDE - MARGIN - PICTURE_SIDE - 6 * mm)
        canvas.showPage()
    if cast:
        _cast_page(canvas, cast)
    canvas.save()
    return buffer.getvalue()
