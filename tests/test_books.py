"""Whole books as BentoML tasks, against the real `bentoml serve` (tiny profile): progress, equality with
/generate, the PDF, batching across books, limits and failures."""

from __future__ import annotations

import asyncio
import base64
import io
import re
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import bentoml
import pytest
import requests
from conftest import MAX_BOOKS, OOM_MARKER
from pypdf import PdfReader

from testkit.pictures import picture, png_b64, png_from_b64, psnr

PAGES = [
    {"text": "A fox finds a red kite in the grass.", "seed": 1},
    {"text": "小狐狸和小熊一起放风筝。", "prompt": "a fox and a bear fly a kite together", "seed": 2},
    {"text": "The wind carries the kite over the hill."},  # no seed: drawn and reported
    {"text": "They sleep under the stars.", "seed": 4},
]


def book(pages=PAGES, **change):
    body = {
        "title": "The Fox and the Kite",
        "characters": [png_b64(picture(2, (96, 96))), png_b64(picture(3, (96, 96)))],
        "pages": pages,
    }
    return {**body, **change}


@pytest.fixture(scope="module")
def served(faults_server):
    """The session's server with MAX_BOOKS slots and the out-of-memory marker (tests/conftest.py)."""
    return faults_server[0]


def submit(url, body):
    # Submit moderates the whole book on the model service's one torch thread, so it can wait behind a batch of
    # pages already being drawn (docs/SECURITY.md, "Layer 2: the moderation model"): tens of seconds on 2 loaded cores.
    return requests.post(f"{url}/book/submit", json=body, timeout=120)


def wait_for(url, task_id, on_progress=None, timeout_s=300):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        progress = requests.get(f"{url}/book/progress", params={"task_id": task_id}, timeout=10).json()
        if on_progress:
            on_progress(progress)
        status = requests.get(f"{url}/book/status", params={"task_id": task_id}, timeout=10).json()["status"]
        # BentoML's status is the authority for /book/get; progress may finish a moment before it is stored.
        if status != "in_progress":
            assert progress["status"] == status, (progress["status"], status)
            return progress
        time.sleep(0.05)
    raise TimeoutError(task_id)


def result(url, task_id):
    return requests.get(f"{url}/book/get", params={"task_id": task_id}, timeout=30)


@pytest.fixture(scope="module")
def finished(served):
    """One 4-page book drawn to the end, with every progress answer seen on the way."""
    answer = submit(served, book())
    assert answer.status_code == 200, answer.text
    task_id = answer.json()["task_id"]
    seen = []
    final = wait_for(served, task_id, seen.append)
    return task_id, seen, final, result(served, task_id)


def test_progress_grows_page_by_page_and_shows_finished_pages(finished):
    _, seen, final, _ = finished
    done = [p["pages_done"] for p in seen]
    assert done == sorted(done), "progress went backwards"
    assert final["status"] == "completed" and final["pages_done"] == final["pages_total"] == 4
    mid_run = [p for p in seen if p["status"] == "running" and 0 < p["pages_done"] < 4]
    assert mid_run, f"no progress answer caught the book mid-run: {done}"
    assert all(len(p["pages"]) == p["pages_done"] for p in seen)
    assert all(png_from_b64(page["img"]).size == (256, 256) for page in mid_run[0]["pages"])


def test_the_result_has_every_page_and_its_seed(finished, served):
    task_id, _, _, answer = finished
    assert answer.status_code == 200
    body = answer.json()
    assert body["status"] == "completed" and body["failure"] is None
    assert [p["text"] for p in body["pages"]] == [p["text"] for p in PAGES]
    assert [p["seed"] for p in body["pages"]][:2] == [1, 2] and body["pages"][3]["seed"] == 4
    assert 0 <= body["pages"][2]["seed"] < 2**32  # drawn, and reported
    status = requests.get(f"{served}/book/status", params={"task_id": task_id}, timeout=10).json()
    assert status["status"] == "completed"


def test_page_k_is_what_generate_draws_from_page_k_minus_1(finished, served):
    body = finished[3].json()
    pages = body["pages"]
    for k, request_page in enumerate(PAGES):
        single = {
            "prev_frame": pages[k - 1]["img"] if k else None,
            "characters": book()["characters"],
            "prompt": request_page.get("prompt", request_page["text"]),
            "seed": pages[k]["seed"],
        }
        drawn = requests.post(f"{served}/generate", json=single, timeout=120)
        assert drawn.status_code == 200, drawn.text
        assert psnr(png_from_b64(drawn.json()["img"]), png_from_b64(pages[k]["img"])) >= 60, k


def test_the_pdf_has_a_cover_and_every_page_with_its_text(finished, served):
    body = finished[3].json()
    reader = PdfReader(io.BytesIO(base64.b64decode(body["pdf"])))
    assert len(reader.pages) == 1 + len(PAGES)
    assert "The Fox and the Kite" in reader.pages[0].extract_text()
    for page, request_page in zip(reader.pages[1:], PAGES):
        assert request_page["text"] in page.extract_text().replace("\n", " ")
        assert page.images, "a page without its picture"
    sizes = {(round(float(p.mediabox.width)), round(float(p.mediabox.height))) for p in reader.pages}
    assert sizes == {(595, 595)}, "every page is the same 210 mm square"
    # Pictures are not re-compressed into blur: the embedded picture is the page itself.
    embedded = reader.pages[1].images[0].image.convert("RGB")
    assert psnr(embedded, png_from_b64(body["pages"][0]["img"])) == float("inf")


def test_book_pdf_route_renders_a_clients_own_pages(served):
    pages = [
        {"img": png_b64(picture(i)), "text": text} for i, text in enumerate(["Once upon a time", "从前有一只狐狸"])
    ]
    answer = requests.post(f"{served}/book/pdf", json={"title": "My book", "pages": pages}, timeout=60)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(answer.content))
    assert len(reader.pages) == 3
    assert "从前有一只狐狸" in reader.pages[2].extract_text()
    bad = requests.post(f"{served}/book/pdf", json={"pages": [{"img": "not a picture"}]}, timeout=30)
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"][:3] == ["pages", 0, "img"]


@pytest.mark.parametrize(
    "change, location",
    [
        ({"pages": PAGES[:3] + [{"text": "fine", "prompt": ""}]}, ["pages", 3, "prompt"]),
        ({"pages": [{"text": "x", "seed": -1}]}, ["pages", 0, "seed"]),
        ({"pages": []}, ["pages"]),
        ({"pages": [{"text": "x"}] * 25}, ["pages"]),
        ({"regions": [[0, 0, 1, 1]]}, ["regions"]),
        ({"first_frame": "not base64 at all"}, ["first_frame"]),
        ({"characters": ["aGVsbG8="]}, ["characters", 0]),
    ],
)
def test_a_bad_book_is_refused_at_submit_naming_the_field(served, change, location):
    answer = submit(served, book(**change))
    assert answer.status_code == 400, answer.text
    assert any(d["loc"][: len(location)] == location for d in answer.json()["detail"]), answer.json()


def test_a_bad_and_a_refused_book_name_the_field_the_same_way(served):
    """A 400's `detail[].field` and a 422's `field` are one string form: `pages[3].prompt`, `pages[2].text`."""
    bad = submit(served, book(pages=PAGES[:3] + [{"text": "fine", "prompt": ""}]))
    assert bad.status_code == 400, bad.text
    [detail] = bad.json()["detail"]
    assert detail["loc"] == ["pages", 3, "prompt"] and detail["field"] == "pages[3].prompt", detail
    refused = submit(served, book(pages=PAGES[:2] + [{"text": "a nude fox"}]))
    assert refused.status_code == 422, refused.text
    assert refused.json()["field"] == "pages[2].text" and refused.json()["kind"] == "content_refused"


def test_two_books_share_diffusion_calls(served):
    """Pages of different books go through the one batcher. On a CPU a batch costs what its pages cost one by one,
    so the batcher rightly sends a page on at once when the model is free: two books' first pages share a call only
    if they reach the model while another page is drawing. Their texts are read first, by the moderation model on
    the model's one torch thread, behind any page being drawn; so the order is set by three long pages, each step
    a whole page apart: `first` and `second` are posted together (one draws, the other's draw waits); `third`'s
    moderation then holds the moderation batcher, so both books' texts queue there and are read in one call while
    `second` draws; `third`'s draw waits behind `second`, and is drawing when both books' first pages arrive."""
    pages = [{"text": f"page {i}", "seed": i} for i in range(3)]

    def draw(steps):
        return requests.post(f"{served}/generate", json={"prompt": "a long page", "steps": steps}, timeout=120)

    with ThreadPoolExecutor(5) as pool:
        long_pages = [pool.submit(draw, 30), pool.submit(draw, 30)]
        time.sleep(0.5)  # one of them is drawing
        long_pages.append(pool.submit(draw, 10))
        time.sleep(0.5)  # its moderation waits behind that page
        submitted = list(pool.map(lambda n: submit(served, book(pages=pages, title=f"book {n}")), range(2)))
        assert [page.result().status_code for page in long_pages] == [200] * 3
    results = [wait_for(served, answer.json()["task_id"]) for answer in submitted]
    assert all(r["status"] == "completed" for r in results)
    assert [r["pages"][0]["batch_size"] for r in results] == [2, 2]


def test_max_books_gives_429_while_generate_still_answers(served):
    slow = [{"text": f"a slow page {i}", "seed": i} for i in range(6)]
    running = [submit(served, book(pages=slow, steps=12)) for _ in range(MAX_BOOKS)]
    assert [r.status_code for r in running] == [200] * MAX_BOOKS
    refused = submit(served, book())
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    ids = [answer.json()["task_id"] for answer in running]
    states = [requests.get(f"{served}/book/progress", params={"task_id": i}, timeout=10).json() for i in ids]
    assert all(state["status"] == "running" for state in states), states  # the house is full now
    single = requests.post(f"{served}/generate", json={"prompt": "still here", "seed": 1}, timeout=120)
    assert single.status_code == 200, single.text  # book slots are not the page queue
    # A canceled book gives its slot back (each is canceled, or had finished by now: either way it is done).
    for task_id in ids:
        canceled = requests.delete(f"{served}/books/{task_id}", timeout=30)
        assert canceled.status_code == 200 and canceled.json()["status"] in ("canceled", "completed"), canceled.text
    # A finished book gives its slot back: fill the house with short books, let them finish, and submit again.
    short = [submit(served, book(pages=PAGES[:1])) for _ in range(MAX_BOOKS)]
    assert [r.status_code for r in short] == [200] * MAX_BOOKS, [r.text for r in short]
    for answer in short:
        assert wait_for(served, answer.json()["task_id"])["status"] == "completed"
    last = submit(served, book(pages=PAGES[:1]))
    assert last.status_code == 200, last.text
    assert wait_for(served, last.json()["task_id"])["status"] == "completed"


def test_a_failed_page_keeps_the_pages_before_it(served):
    oom = {"text": f"a {OOM_MARKER} page"}
    pages = [{"text": "fine", "seed": 1}, {"text": "also fine", "seed": 2}, oom, {"text": "x"}]
    task_id = submit(served, book(pages=pages)).json()["task_id"]
    progress = wait_for(served, task_id)
    assert progress["status"] == "failed" and progress["pages_done"] == 2
    assert progress["failure"]["index"] == 2 and progress["failure"]["kind"] == "out_of_memory"
    answer = result(served, task_id)
    body = answer.json()
    assert [p["text"] for p in body["pages"]] == ["fine", "also fine"]
    assert body["failure"]["index"] == 2 and body["pdf"]
    status = requests.get(f"{served}/book/status", params={"task_id": task_id}, timeout=10).json()
    assert status["status"] == "failed"


def test_typed_client_submits_a_book(served):
    """BentoML's AsyncHTTPClient: `client.book.submit(...)`. (SyncHTTPClient's submit raises AttributeError
    '_opened_files' in bentoml 1.4.40, after the request was sent; the README says so.)"""

    async def draw_one_page_book():
        async with bentoml.AsyncHTTPClient(served) as client:
            task = await client.book.submit(**book(pages=PAGES[:1]))
            deadline = time.monotonic() + 120
            while (await task.get_status()).value != "completed":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.2)
            return await task.get()

    body = asyncio.run(draw_one_page_book())
    assert body["pages"][0]["text"] == PAGES[0]["text"]


def test_a_book_is_only_a_job(served):
    answer = requests.post(f"{served}/book", json=book(pages=PAGES[:1]), timeout=30)
    assert answer.status_code == 405 and "/book/submit" in answer.json()["error"]


def test_unknown_task_progress_is_404(served):
    assert requests.get(f"{served}/book/progress", params={"task_id": "nope"}, timeout=10).status_code == 404
    assert requests.get(f"{served}/book/progress", timeout=10).status_code == 400


def test_concurrent_submissions_never_exceed_the_limit(served):
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda _: submit(served, book(pages=PAGES[:2])), range(4)))
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) <= MAX_BOOKS and set(codes) <= {200, 429}
    for answer in answers:
        if answer.status_code == 200:
            wait_for(served, answer.json()["task_id"])


# --- the README's shell example, run as written (issue 22: it wrote a 3-byte "book.pdf" when the book was not done)


def readme_book_commands(base_url: str) -> str:
    """The README's curl example for books, pointed at this server instead of localhost:8000."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Whole books", 1)[1]
    script = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1)
    assert "localhost:8000/book/submit" in script and "book.pdf" in script
    return script.replace("localhost:8000", base_url.removeprefix("http://"))


def run_readme_book_commands(served, tmp_path, script):
    png_from_b64(png_b64(picture(2, (96, 96)))).save(tmp_path / "fox.png")
    return subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)


def test_the_readme_book_commands_write_the_book_pdf(served, tmp_path):
    run = run_readme_book_commands(served, tmp_path, readme_book_commands(served))
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.strip().endswith("completed"), run.stdout
    reader = PdfReader(tmp_path / "book.pdf")
    assert len(reader.pages) == 1 + 2 and "The Fox and the Kite" in reader.pages[0].extract_text()


def test_the_readme_book_commands_fail_loudly_and_write_no_pdf_when_the_book_fails(served, tmp_path):
    script = readme_book_commands(served)
    assert '"prompt": "a fox and a bear fly a kite"' in script
    oom = f'"prompt": "a {OOM_MARKER} kite"'  # out of memory
    script = script.replace('"prompt": "a fox and a bear fly a kite"', oom)
    run = run_readme_book_commands(served, tmp_path, script)
    assert run.returncode == 22, run.stdout + run.stderr  # curl -f: the HTTP error answer
    assert run.stdout.strip().endswith("failed") and "returned error: 507" in run.stderr, run.stdout + run.stderr
    assert not (tmp_path / "book.pdf").exists()


def test_progress_since_sends_only_the_later_pages_pictures(finished, served):
    task_id, _, final, _ = finished
    progress = f"{served}/book/progress"
    everything = requests.get(progress, params={"task_id": task_id}, timeout=10).json()
    assert everything == final  # without `since`: the answer existing clients know
    assert requests.get(progress, params={"task_id": task_id, "since": 0}, timeout=10).json() == everything
    later = requests.get(progress, params={"task_id": task_id, "since": 2}, timeout=10).json()
    assert [page["index"] for page in later["pages"]] == [2, 3] and later["pages"] == everything["pages"][2:]
    assert {k: v for k, v in later.items() if k != "pages"} == {k: v for k, v in everything.items() if k != "pages"}
    beyond = requests.get(progress, params={"task_id": task_id, "since": 9}, timeout=10).json()
    assert beyond["pages"] == [] and beyond["pages_done"] == 4


@pytest.mark.parametrize("since", ["-1", "two", "1.5", ""])
def test_a_bad_since_is_a_400_naming_it(finished, served, since):
    answer = requests.get(f"{served}/book/progress", params={"task_id": finished[0], "since": since}, timeout=10)
    assert answer.status_code == 400, answer.text
    assert [d["loc"] for d in answer.json()["detail"]] == [["since"]]
