"""The studio page (/studio/) in a real browser: Debian's headless Chromium driven by Playwright, against the real
`bentoml serve` (tiny profile) with an API key set.

Screenshots of the finished book (desktop and phone width) go to test-artifacts/, for a person to look at.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
import socket
import time
from urllib.parse import urlparse

import numpy as np
import pytest
import requests
from PIL import Image
from playwright.sync_api import Page, expect, sync_playwright
from pypdf import PdfReader

from testkit.pictures import picture, png_from_b64, psnr
from testkit.server import REPO

API_KEY = "studio-key-0123456789"
KEY_HEADER = {"Authorization": f"Bearer {API_KEY}"}
OOM_MARKER = "GIGANTIC"  # a prompt with it fails as out of memory (test-only fault injection)
ARTIFACTS = REPO / "test-artifacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Offline and quiet: no sandbox (CI runs as root), no GPU, no background calls home.
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic",
]  # fmt: skip
# Tiny pages take about a second each on a free CPU; a busy shared machine can take far longer.
expect.set_options(timeout=60_000)
TEXTS = [
    "A fox finds a red kite in the tall grass.",
    "小狐狸和小熊一起放风筝。",
    "At night the kite sleeps by the window.",
]


SERVE = {  # this module's server (tests/conftest.py, module_server)
    "PICTUREBOOK_API_KEY": API_KEY,
    "PICTUREBOOK_MAX_CONCURRENCY": "1",  # one held connection is enough to show an overload
    "PICTUREBOOK_FAULT_OOM_PROMPT_MARKER": OOM_MARKER,
}


@pytest.fixture(scope="module")
def served(module_server):
    url, _ = module_server.ready()
    return url


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def studio(browser, served):
    """A fresh tab on /studio/ (its own session storage). Fails the test if the page fetched anything from
    elsewhere than the service, or threw a JavaScript error."""
    context = browser.new_context(accept_downloads=True, viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    elsewhere, errors = [], []
    page.on("request", lambda r: r.url.startswith((served, "data:", "blob:")) or elsewhere.append(r.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(f"{served}/studio/")
    yield page
    context.close()
    assert elsewhere == [] and errors == []


def generate_bodies(page: Page) -> list[dict]:
    """The body of every `POST /generate` the page sends from now on and the server answers with a picture."""
    bodies = []
    page.on("response", lambda r: r.url.endswith("/generate") and r.ok and bodies.append(r.request.post_data_json))
    return bodies


def book_bodies(page: Page) -> list[dict]:
    """The body of every `POST /books` the page sends from now on and the server takes (202)."""
    bodies = []
    taken = lambda r: r.url.endswith("/books") and r.status == 202  # noqa: E731
    page.on("response", lambda r: taken(r) and bodies.append(r.request.post_data_json))
    return bodies


def pictures_fetched(page: Page) -> list[str]:
    """The path of every book page picture the page fetches from now on, in the order it got them."""
    paths = []
    page.on("response", lambda r: "/pages/" in r.url and r.ok and paths.append(urlparse(r.url).path))
    return paths


def book_png(url: str, book_id: str, index: int) -> str:
    answer = requests.get(f"{url}/books/{book_id}/pages/{index}.png", headers=KEY_HEADER, timeout=30)
    answer.raise_for_status()
    return base64.b64encode(answer.content).decode()


def write_pages(page: Page, texts: list[str]) -> None:
    editors = page.locator("#page-list > li")
    for index, text in enumerate(texts):
        if index > 0:
            page.get_by_role("button", name="Add a page").click()
        editors.nth(index).get_by_label("Text the reader reads").fill(text)


def give_key_when_asked(page: Page, key: str = API_KEY) -> None:
    field = page.get_by_label("API key", exact=True)
    expect(field).to_be_focused()
    field.fill(key)
    page.get_by_role("button", name="Use this key").click()


def shown_png(card) -> Image.Image:
    source = card.locator("img.picture").get_attribute("src")
    return Image.open(io.BytesIO(base64.b64decode(source.split(",", 1)[1])), formats=["PNG"])


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


def test_static_files_are_open_and_self_contained(served):
    index = requests.get(f"{served}/studio/", timeout=10)  # no key: the files hold no data
    assert index.status_code == 200 and "text/html" in index.headers["content-type"]
    assert requests.get(f"{served}/studio", timeout=10).url == f"{served}/studio/"
    for name in ("studio.js", "studio.css"):
        asset = requests.get(f"{served}/studio/{name}", timeout=10)
        assert asset.status_code == 200
        # Nothing from the internet: the service runs offline.
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", asset.text), name
    assert not re.search(r"""(src|href)=["'](https?:)?//""", index.text)
    assert requests.post(f"{served}/generate", json={"prompt": "a fox"}, timeout=10).status_code == 401
    assert "swagger" in requests.get(f"{served}/", timeout=10).text.lower()  # / is still the API docs


def test_make_a_book_redraw_a_page_and_download_it(studio: Page, served, tmp_path):
    page = studio
    bodies = generate_bodies(page)
    books = book_bodies(page)
    fetched = pictures_fetched(page)
    for seed in (11, 12):
        picture(seed, (96, 96)).save(tmp_path / f"character{seed}.png")
    page.get_by_label("Title").fill("The Fox and the Kite")
    page.get_by_label("Add character pictures").set_input_files(
        [tmp_path / "character11.png", tmp_path / "character12.png"]
    )
    cast = page.locator("#cast-list > li")
    expect(cast).to_have_count(2)
    cast.nth(0).get_by_label("Name of character 1").fill("Fox")
    cast.nth(1).get_by_label("Name of character 2").fill("Bear")
    cast.nth(1).get_by_role("button", name="Move Bear left").click()  # Bear stands on the left
    expect(cast.nth(0).locator(".place")).to_have_text("Left")
    expect(cast.nth(0).get_by_role("img")).to_have_attribute("alt", "Picture of Bear")
    write_pages(page, TEXTS)
    page.locator("#page-list > li").nth(0).get_by_label("Seed (optional)").fill("42")

    cards = page.locator("#book > li")
    expect(cards).to_have_count(3)
    sizes_before = [card.bounding_box()["height"] for card in cards.all()]
    draw = page.get_by_role("button", name="Draw the book")
    draw.focus()
    page.keyboard.press("Enter")
    give_key_when_asked(page)  # this server requires a key: asked once, then the drawing goes on
    expect(cards.nth(0).locator("img.picture")).to_be_visible()  # shown as its event arrives
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "studio-book-drawing.png", full_page=True)  # likely mid-book (not asserted)
    expect(page.locator("#progress-text")).to_have_text("3 of 3 pages drawn.")
    for card in cards.all():
        assert shown_png(card).size == (256, 256)
    assert [card.bounding_box()["height"] for card in cards.all()] == sizes_before  # no layout jump
    expect(cards.nth(0).locator(".card-seed")).to_have_text("· seed 42")

    # What the page sent: one book, its pages in order, the cast left to right; nothing through /generate.
    assert bodies == [] and len(books) == 1
    [book] = books
    assert book["title"] == "The Fox and the Kite" and "first_frame" not in book
    assert [p["text"] for p in book["pages"]] == TEXTS
    assert book["pages"][0]["seed"] == 42 and all("seed" not in p for p in book["pages"][1:])
    assert book["regions"] == [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]
    sent = [pixels(Image.open(io.BytesIO(base64.b64decode(c)))) for c in book["characters"]]
    assert len(sent) == 2
    assert np.array_equal(sent[0], pixels(picture(12, (96, 96))))  # Bear, moved to the left
    assert np.array_equal(sent[1], pixels(picture(11, (96, 96))))
    # What it showed: the book's pages, fetched in order, each the server's picture of that page.
    book_id = fetched[0].split("/")[2]
    assert fetched == [f"/books/{book_id}/pages/{k}.png" for k in range(3)]
    assert [shown_png_b64(card) for card in cards.all()] == [book_png(served, book_id, k) for k in range(3)]
    status = requests.get(f"{served}/books/{book_id}", headers=KEY_HEADER, timeout=10).json()
    assert status["status"] == "completed" and status["seeds"][0] == 42
    for card, seed in zip(cards.all(), status["seeds"]):
        expect(card.locator(".card-seed")).to_have_text(f"· seed {seed}")

    # Redraw page 2 alone with a new seed: page 3 is then out of date, and redrawn from there.
    before = [shown_png_b64(card) for card in cards.all()]
    old_seed = cards.nth(1).locator(".card-seed").inner_text()
    cards.nth(1).get_by_role("button", name="New seed for page 2").click()
    expect(page.locator("#progress-text")).to_have_text("2 of 3 pages drawn (1 out of date).")
    assert len(bodies) == 1 and bodies[0]["seed"] != int(old_seed.split()[-1])  # one page: a /generate call
    assert bodies[0]["prev_frame"] == before[0] and bodies[0]["prompt"] == TEXTS[1]
    after = [shown_png_b64(card) for card in cards.all()]
    assert after[0] == before[0] and after[1] != before[1] and after[2] == before[2]
    expect(cards.nth(2).locator(".card-stale")).to_have_text("Out of date: the page before it changed.")
    cards.nth(2).get_by_role("button", name="Redraw from here (page 3 to the end)").click()
    expect(page.locator("#progress-text")).to_have_text("3 of 3 pages drawn.")
    # "Redraw from here": a book of the pages from there, continuing from the page before it.
    assert len(bodies) == 1 and len(books) == 2
    assert books[1]["first_frame"] == after[1] and [p["text"] for p in books[1]["pages"]] == TEXTS[2:]
    assert shown_png_b64(cards.nth(2)) != before[2]
    expect(cards.nth(2).locator(".card-stale")).to_be_hidden()

    with page.expect_download() as download:
        cards.nth(0).get_by_role("link", name="PNG of page 1").click()
    assert download.value.suggested_filename == "The Fox and the Kite - page 1.png"
    png = Image.open(download.value.path(), formats=["PNG"])
    assert np.array_equal(pixels(png), pixels(shown_png(cards.nth(0))))

    assert_every_control_is_labelled(page)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "studio-book.png", full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # nothing wider than a phone
    page.screenshot(path=ARTIFACTS / "studio-phone.png", full_page=True)


def test_describe_a_character_draw_try_another_keep_and_draw_the_book(studio: Page, tmp_path):
    page = studio
    bodies = generate_bodies(page)
    drawn = []  # every answered POST /character, read once the page has it
    page.on("response", lambda r: r.url.endswith("/character") and r.ok and drawn.append(r))
    picture(11, (96, 96)).save(tmp_path / "bear.png")
    page.get_by_label("Add character pictures").set_input_files([tmp_path / "bear.png"])
    cast = page.locator("#cast-list > li")
    cast.nth(0).get_by_label("Name of character 1").fill("Bear")

    page.get_by_label("Character's name").fill("Pip")
    page.get_by_label("What they look like").fill("a n.u.d.e fox")  # refused: said beside the description
    page.get_by_role("button", name="Draw", exact=True).click()
    give_key_when_asked(page)
    expect(page.locator("#describe-message")).to_contain_text("The server refused the character's description")
    page.get_by_label("What they look like").fill("a small red fox with a blue scarf")
    page.get_by_role("button", name="Draw", exact=True).click()
    portrait = page.locator("#portrait")
    # Only a bound on the wait: the server's first drawing (and moderation call) is its slowest, and a shared
    # machine under load has taken over 60 s for it.
    expect(portrait).to_be_visible(timeout=300_000)
    expect(page.locator("#portrait-seed")).to_have_text(re.compile(r"^Seed \d+$"))
    first_src = portrait.get_attribute("src")
    page.get_by_role("button", name="Try another").click()
    expect(portrait).not_to_have_attribute("src", first_src, timeout=300_000)
    assert len(drawn) == 2
    (first, another) = [(r.request.post_data_json, r.json()) for r in drawn]
    assert first[0] == {"description": "a small red fox with a blue scarf", "name": "Pip"}  # the server picks
    assert another[0]["seed"] != first[1]["seed"] and another[1]["seed"] == another[0]["seed"]
    expect(page.locator("#portrait-seed")).to_have_text(f"Seed {another[1]['seed']}")
    assert portrait.get_attribute("src").split(",", 1)[1] == another[1]["img"]
    ARTIFACTS.mkdir(exist_ok=True)
    cast_section = page.locator("section", has=page.locator("#cast-heading"))
    cast_section.screenshot(path=ARTIFACTS / "studio-describe.png")
    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    cast_section.screenshot(path=ARTIFACTS / "studio-describe-phone.png")
    page.set_viewport_size({"width": 1280, "height": 900})

    # Kept: the portrait joins the cast after Bear, like an uploaded picture, and moves like one.
    page.get_by_role("button", name="Keep").click()
    expect(cast).to_have_count(2)
    expect(cast.nth(1).get_by_role("img")).to_have_attribute("alt", "Picture of Pip")
    expect(cast.nth(1).locator(".place")).to_have_text("Right")
    expect(cast.nth(1).get_by_label("Name of character 2")).to_have_value("Pip")
    expect(portrait).to_be_hidden()
    expect(page.get_by_role("button", name="Keep")).to_be_hidden()
    expect(page.locator("#describe-message")).to_have_text("Pip joined the cast.")
    cast.nth(1).get_by_role("button", name="Move Pip left").click()
    expect(cast.nth(0).get_by_role("img")).to_have_attribute("alt", "Picture of Pip")
    expect(cast.nth(0).locator(".place")).to_have_text("Left")

    books = book_bodies(page)
    write_pages(page, TEXTS[:2])
    page.get_by_role("button", name="Draw the book").click()
    expect(page.locator("#progress-text")).to_have_text("2 of 2 pages drawn.", timeout=300_000)
    kept = pixels(png_from_b64(another[1]["img"]))
    assert bodies == [] and len(books) == 1
    [book] = books
    assert book["regions"] == [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]
    assert [p["text"] for p in book["pages"]] == TEXTS[:2]
    sent = [pixels(png_from_b64(c)) for c in book["characters"]]
    assert len(sent) == 2
    assert np.array_equal(sent[0], kept)  # Pip, the kept portrait, on the left
    assert np.array_equal(sent[1], pixels(picture(11, (96, 96))))

    assert_every_control_is_labelled(page)
    page.screenshot(path=ARTIFACTS / "studio-character.png", full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=ARTIFACTS / "studio-character-phone.png", full_page=True)


def shown_png_b64(card) -> str:
    return card.locator("img.picture").get_attribute("src").split(",", 1)[1]


def assert_every_control_is_labelled(page: Page) -> None:
    unlabelled = page.evaluate(
        """() => [...document.querySelectorAll("input, textarea, button, a[href], progress")]
            .filter((el) => el.getClientRects().length > 0)
            .filter((el) => {
              const label = el.getAttribute("aria-label")
                || [...(el.labels || [])].map((l) => l.textContent).join(" ")
                || (el.matches("button, a") ? el.textContent : "");
              return !label.trim();
            })
            .map((el) => el.outerHTML.slice(0, 120))"""
    )
    assert unlabelled == []


def test_draft_the_book_then_final_pages_with_the_same_seeds(studio: Page, served):
    """The "Draft the book" button sends the book with `quality: draft`; "Final pages" asks the server for that book's
    `POST /books/{id}/final`: every page again in full, the same seeds, each the server's final page."""
    page = studio
    books = book_bodies(page)
    finals = []
    page.on("response", lambda r: r.url.endswith("/final") and r.status == 202 and finals.append(r.url))
    page.get_by_label("Title").fill("The Draft Fox")
    write_pages(page, TEXTS[:2])
    final_button = page.get_by_role("button", name="Final pages")
    expect(final_button).to_be_hidden()  # nothing drafted yet
    draw_button = page.get_by_role("button", name="Draw the book")
    page.get_by_role("button", name="Draft the book").click()
    give_key_when_asked(page)
    expect(page.locator("#progress-text")).to_have_text("2 of 2 pages drawn (2 drafts).")
    cards = page.locator("#book > li")
    for card in cards.all():
        expect(card.locator(".card-quality")).to_have_text("· draft")
    assert len(books) == 1 and books[0]["quality"] == "draft"
    expect(draw_button).to_be_hidden()  # "Final pages" in its place
    drafts = [pixels(shown_png(card)) for card in cards.all()]
    draft_seeds = [card.locator(".card-seed").inner_text() for card in cards.all()]
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "studio-draft.png", full_page=True)
    page.set_viewport_size({"width": 375, "height": 812})
    assert page.evaluate("document.documentElement.scrollWidth") <= 375  # the draft buttons fit a phone
    page.locator("section", has=page.locator("#draw-heading")).screenshot(path=ARTIFACTS / "studio-draft-phone.png")
    page.set_viewport_size({"width": 1280, "height": 900})

    fetched = pictures_fetched(page)
    final_button.click()
    expect(page.locator("#progress-text")).to_have_text("2 of 2 pages drawn.")
    expect(final_button).to_be_hidden()
    expect(draw_button).to_be_visible()
    assert len(books) == 1 and len(finals) == 1, "the final pages are the draft book's /final, not a new book"
    draft_id, final_id = urlparse(finals[0]).path.split("/")[2], fetched[0].split("/")[2]
    assert fetched == [f"/books/{final_id}/pages/{k}.png" for k in range(2)] and final_id != draft_id
    status = requests.get(f"{served}/books/{final_id}", headers=KEY_HEADER, timeout=10).json()
    assert status["status"] == "completed" and status["quality"] == "final"
    assert [f"· seed {seed}" for seed in status["seeds"]] == draft_seeds
    for index, card in enumerate(cards.all()):
        expect(card.locator(".card-quality")).to_have_text("")
        assert shown_png_b64(card) == book_png(served, final_id, index)
        assert psnr(pixels(shown_png(card)), drafts[index]) < 25, index  # a final page is not its draft
    page.screenshot(path=ARTIFACTS / "studio-final.png", full_page=True)


def test_book_downloads_as_pdf_with_its_pages(studio: Page, served):
    page = studio
    pdf_requests = []
    page.on("request", lambda r: r.url.endswith(("/book/pdf", "/pdf")) and pdf_requests.append(r))
    fetched = pictures_fetched(page)
    page.set_viewport_size({"width": 375, "height": 812})  # drawn on a phone
    page.get_by_label("Title").fill("Three Small Pages")
    write_pages(page, TEXTS)
    page.get_by_role("button", name="Draw the book").click()
    give_key_when_asked(page)
    cards = page.locator("#book > li")
    expect(cards.nth(0).locator("img.picture")).to_be_visible()
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=ARTIFACTS / "studio-book-drawing-phone.png", full_page=True)  # likely mid-book
    expect(page.locator("#progress-text")).to_have_text("3 of 3 pages drawn.")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.set_viewport_size({"width": 1280, "height": 900})

    message = page.locator("#pdf-message")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download PDF").click()
        expect(message).to_have_text(re.compile("PDF downloaded|No PDF"))
        assert message.inner_text() == "PDF downloaded.", message.inner_text()
    assert download.value.suggested_filename == "Three Small Pages.pdf"
    reader = PdfReader(download.value.path())
    assert len(reader.pages) == 1 + 3  # the cover, then the pages
    assert all(text in reader.pages[i + 1].extract_text() for i, text in enumerate(TEXTS))
    # The PDF is the server's own book: the pages shown are exactly its pages.
    [sent] = pdf_requests
    book_id = fetched[0].split("/")[2]
    assert sent.method == "GET" and urlparse(sent.url).path == f"/books/{book_id}/pdf"
    assert [shown_png_b64(card) for card in cards.all()] == [book_png(served, book_id, k) for k in range(3)]

    # One page redrawn alone: the PDF is then made from the pages shown (`POST /book/pdf`).
    cards.nth(2).get_by_role("button", name="New seed for page 3").click()
    expect(page.locator("#progress-text")).to_have_text("3 of 3 pages drawn.")
    expect(page.get_by_role("button", name="Download PDF")).to_be_enabled()
    with page.expect_download() as download:
        page.get_by_role("button", name="Download PDF").click()
    assert len(pdf_requests) == 2 and pdf_requests[1].url.endswith("/book/pdf")
    own = pdf_requests[1].post_data_json
    assert own["title"] == "Three Small Pages" and [p["text"] for p in own["pages"]] == TEXTS
    assert [p["img"] for p in own["pages"]] == [shown_png_b64(card) for card in cards.all()]
    assert len(PdfReader(download.value.path()).pages) == 1 + 3


def test_cancel_deletes_the_book(studio: Page, served):
    page = studio
    deleted = []
    page.on("request", lambda r: r.method == "DELETE" and deleted.append(urlparse(r.url).path))
    write_pages(page, TEXTS + ["The end."])
    with page.expect_response(lambda r: r.url.endswith("/books") and r.status == 202) as submitted:
        page.get_by_role("button", name="Draw the book").click()
        give_key_when_asked(page)
    book_id = submitted.value.json()["id"]
    cards = page.locator("#book > li")
    # Four pages: on this machine the book is far from done this soon after its 202.
    expect(cards.nth(3).locator(".slot-note")).to_have_text("Waiting for its turn")
    page.get_by_role("button", name="Cancel the book").click()
    expect(page.locator("#progress-text")).to_contain_text("Canceled.")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()
    assert deleted == [f"/books/{book_id}"]
    expect(cards.nth(3).locator(".slot-note")).to_have_text("Not drawn yet")
    for _ in range(100):  # the DELETE is sent as the studio lets go of the stream: until the server has it
        status = requests.get(f"{served}/books/{book_id}", headers=KEY_HEADER, timeout=10).json()
        if status["status"] in ("canceled", "completed", "failed"):
            break
        time.sleep(0.1)
    assert status["status"] == "canceled" and status["pages_done"] < 4


def test_api_key_is_asked_once_and_kept_only_in_the_tab(studio: Page):
    page = studio
    write_pages(page, ["A quiet morning."])
    page.get_by_role("button", name="Draw the book").click()
    key_field = page.get_by_label("API key", exact=True)
    expect(page.locator("#key-reason")).to_contain_text("This server needs an API key")
    expect(key_field).to_be_focused()
    page.keyboard.type("not-the-key")
    page.keyboard.press("Enter")
    expect(page.locator("#key-reason")).to_contain_text("did not accept that API key")
    expect(key_field).to_be_focused()
    page.keyboard.type(API_KEY)
    page.keyboard.press("Enter")
    expect(page.locator("#progress-text")).to_have_text("1 of 1 pages drawn.")
    expect(page.locator("#key-form")).to_be_hidden()
    assert page.evaluate("sessionStorage.getItem('picturebook.apiKey')") == API_KEY
    assert page.evaluate("localStorage.length") == 0 and page.context.cookies() == []

    page.reload()  # the same tab keeps its session storage: no second question
    write_pages(page, ["A quiet evening."])
    page.get_by_role("button", name="Draw the book").click()
    expect(page.locator("#progress-text")).to_have_text("1 of 1 pages drawn.")
    expect(page.locator("#key-form")).to_be_hidden()


def test_refusals_and_failures_are_shown_next_to_their_page(studio: Page, served):
    page = studio
    write_pages(page, ["A fox by the river.", f"A {OOM_MARKER} castle in the clouds."])
    editors = page.locator("#page-list > li")
    cards = page.locator("#book > li")
    editors.nth(0).get_by_label("Seed (optional)").fill(str(2**32))  # one more than the largest seed
    page.get_by_role("button", name="Draw the book").click()
    give_key_when_asked(page)
    expect(cards.nth(0).locator(".card-error")).to_contain_text("The server refused the request: the seed:")
    expect(cards.nth(0).locator(".card-error")).to_contain_text("4294967295")
    expect(page.locator("#progress-text")).to_contain_text("Stopped at page 1 of 2")
    expect(cards.nth(1).locator(".slot-note")).to_have_text("Not drawn yet")  # the next page waits for it

    editors.nth(0).get_by_label("Seed (optional)").fill("7")
    page.get_by_role("button", name="Draw the book").click()
    expect(cards.nth(1).locator(".card-error")).to_contain_text("The server ran out of memory drawing this page")
    expect(cards.nth(0).locator(".card-error")).to_be_hidden()
    expect(cards.nth(0).locator(".card-seed")).to_have_text("· seed 7")

    # A refused text: the content filter's words, next to the page (nothing is drawn for it).
    editors.nth(1).get_by_label("Text the reader reads").fill("A n.u.d.e giant in the castle.")
    page.get_by_role("button", name="Draw from here (page 2 to the end)").click()
    # (The book sent holds page 2 alone, as its `pages[0]`: the studio names it back as page 2's text.)
    expect(cards.nth(1).locator(".card-error")).to_contain_text("The server refused the page's text")
    expect(cards.nth(1).locator(".card-error")).to_contain_text("refused by the content filter")
    expect(cards.nth(0).locator(".card-error")).to_be_hidden()

    # An overloaded server: its one admission slot is held by a slow page.
    editors.nth(1).get_by_label("Text the reader reads").fill("A small castle in the clouds.")
    with held_admission_slot(served):
        page.get_by_role("button", name="Draw the rest").click()
        expect(cards.nth(1).locator(".card-error")).to_contain_text("The server is busy; try again in 5 seconds")
    ARTIFACTS.mkdir(exist_ok=True)
    page.locator("section", has=page.locator("#draw-heading")).screenshot(path=ARTIFACTS / "studio-errors.png")
    page.get_by_role("button", name="Draw from here (page 2 to the end)").click()
    expect(page.locator("#progress-text")).to_have_text("2 of 2 pages drawn.")
    expect(cards.nth(1).locator(".card-error")).to_be_hidden()


class held_admission_slot:
    """A slow `POST /generate` whose body has arrived (admission counts a request once its body is here): it holds
    the admission slot until its client hangs up, which also stops the page (serving/hangups.py)."""

    def __init__(self, url: str):
        self.address = urlparse(url)

    def __enter__(self):
        body = b'{"prompt": "a page that takes its time", "steps": 100, "seed": 1}'
        self.socket = socket.create_connection((self.address.hostname, self.address.port))
        self.socket.sendall(
            b"POST /generate HTTP/1.1\r\nHost: studio\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\nAuthorization: Bearer %s\r\n\r\n%s" % (len(body), API_KEY.encode(), body)
        )
        self.wait_until(full=True)
        return self

    def __exit__(self, *_):
        self.socket.close()
        self.wait_until(full=False)

    def wait_until(self, full: bool) -> None:
        """Until the server has seen the held request arrive (or leave): an empty body gets 429 while the slot is
        held and 400 once it is free."""
        probe = f"{self.address.scheme}://{self.address.netloc}/generate"
        for _ in range(600):
            status = requests.post(
                probe, json={}, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=10
            ).status_code
            if (status == 429) == full:
                return
            time.sleep(0.05)
        raise AssertionError(f"the admission slot is still {'free' if full else 'held'}")
