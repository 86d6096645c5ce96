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

from testkit.pictures import picture, png_from_b64
from testkit.server import REPO, bentoml_serve, free_port

API_KEY = "studio-key-0123456789"
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


@pytest.fixture(scope="module")
def served(tmp_path_factory, bentoml_home):
    log = tmp_path_factory.mktemp("studio") / "serve.log"
    env = {
        "PICTUREBOOK_API_KEY": API_KEY,
        "PICTUREBOOK_MAX_CONCURRENCY": "1",  # one held connection is enough to show an overload
        "PICTUREBOOK_FAULT_OOM_PROMPT_MARKER": OOM_MARKER,
    }
    with bentoml_serve(log, bentoml_home, free_port(), **env) as (url, _):
        yield url


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


def test_make_a_book_redraw_a_page_and_download_it(studio: Page, tmp_path):
    page = studio
    bodies = generate_bodies(page)
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
    expect(page.locator("#progress-text")).to_have_text("3 of 3 pages drawn.")
    for card in cards.all():
        assert shown_png(card).size == (256, 256)
    assert [card.bounding_box()["height"] for card in cards.all()] == sizes_before  # no layout jump
    expect(cards.nth(0).locator(".card-seed")).to_have_text("· seed 42")

    # What the page sent: the pages in order, each continuing the one before, the cast left to right.
    assert [b["prompt"] for b in bodies] == TEXTS
    assert "prev_frame" not in bodies[0] and bodies[0]["seed"] == 42
    assert bodies[1]["prev_frame"] == shown_png_b64(cards.nth(0))
    assert bodies[2]["prev_frame"] == shown_png_b64(cards.nth(1))
    for body in bodies:
        assert body["regions"] == [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]
        sent = [pixels(Image.open(io.BytesIO(base64.b64decode(c)))) for c in body["characters"]]
        assert np.array_equal(sent[0], pixels(picture(12, (96, 96))))  # Bear, moved to the left
        assert np.array_equal(sent[1], pixels(picture(11, (96, 96))))

    # Redraw page 2 alone with a new seed: page 3 is then out of date, and redrawn from there.
    before = [shown_png_b64(card) for card in cards.all()]
    old_seed = cards.nth(1).locator(".card-seed").inner_text()
    cards.nth(1).get_by_role("button", name="New seed for page 2").click()
    expect(page.locator("#progress-text")).to_have_text("2 of 3 pages drawn (1 out of date).")
    assert len(bodies) == 4 and bodies[3]["seed"] != int(old_seed.split()[-1])
    assert bodies[3]["prev_frame"] == before[0]
    after = [shown_png_b64(card) for card in cards.all()]
    assert after[0] == before[0] and after[1] != before[1] and after[2] == before[2]
    expect(cards.nth(2).locator(".card-stale")).to_have_text("Out of date: the page before it changed.")
    cards.nth(2).get_by_role("button", name="Redraw from here (page 3 to the end)").click()
    expect(page.locator("#progress-text")).to_have_text("3 of 3 pages drawn.")
    assert len(bodies) == 5 and bodies[4]["prev_frame"] == after[1]
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

    write_pages(page, TEXTS[:2])
    page.get_by_role("button", name="Draw the book").click()
    expect(page.locator("#progress-text")).to_have_text("2 of 2 pages drawn.", timeout=300_000)
    kept = pixels(png_from_b64(another[1]["img"]))
    assert len(bodies) == 2
    for body in bodies:
        assert body["regions"] == [[0, 0, 0.5, 1], [0.5, 0, 1, 1]]
        sent = [pixels(png_from_b64(c)) for c in body["characters"]]
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


def test_book_downloads_as_pdf_with_its_pages(studio: Page):
    page = studio
    pdf_requests = []
    page.on("request", lambda r: r.url.endswith("/book/pdf") and pdf_requests.append(r.post_data_json))
    page.get_by_label("Title").fill("Three Small Pages")
    write_pages(page, TEXTS)
    page.get_by_role("button", name="Draw the book").click()
    give_key_when_asked(page)
    expect(page.locator("#progress-text")).to_have_text("3 of 3 pages drawn.")

    message = page.locator("#pdf-message")
    with page.expect_download() as download:
        page.get_by_role("button", name="Download PDF").click()
        expect(message).to_have_text(re.compile("PDF downloaded|No PDF"))
        assert message.inner_text() == "PDF downloaded.", message.inner_text()
    assert download.value.suggested_filename == "Three Small Pages.pdf"
    reader = PdfReader(download.value.path())
    assert len(reader.pages) == 1 + 3  # the cover, then the pages
    assert all(text in reader.pages[i + 1].extract_text() for i, text in enumerate(TEXTS))
    [sent] = pdf_requests
    assert sent["title"] == "Three Small Pages" and [p["text"] for p in sent["pages"]] == TEXTS
    cards = page.locator("#book > li")
    assert [p["img"] for p in sent["pages"]] == [shown_png_b64(card) for card in cards.all()]


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
    expect(cards.nth(1).locator(".card-error")).to_contain_text("The server refused")
    expect(cards.nth(1).locator(".card-error")).to_contain_text("refused by the content filter")

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
