"""Books as jobs on Redis, against real servers: two `bentoml serve` replicas sharing one Debian `redis-server`
(started here on a loopback port, nothing saved), and the embedded default with one replica (the session's shared
server). The routes of `/books`, a book read on another replica than the one that took it, a replica SIGKILLed
mid-book and the other finishing it with the same pages, restarts, cancel, the per-replica limit, and Redis
stopped."""

from __future__ import annotations

import asyncio
import base64
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import requests
from pypdf import PdfReader

from serving.settings import ServingSettings
from testkit.pictures import picture, png_b64, png_from_b64, psnr
from testkit.server import bentoml_serve, free_port, home_sharing_models, metric

HEARTBEAT_S = 2
TINY = {"width": 64, "height": 64, "steps": 2}
CLUSTER_ENV = {
    "PICTUREBOOK_MAX_BOOKS": "1",
    "PICTUREBOOK_BOOK_HEARTBEAT_S": str(HEARTBEAT_S),
    "PICTUREBOOK_BOOK_STORE_RETRY_S": "5",
}


def book(pages: int = 6, title: str = "Six pages", **change) -> dict:
    body = {
        "title": title,
        "characters": [png_b64(picture(2, (64, 64)))],
        "pages": [{"text": f"The fox, page {i}.", "seed": 10 + i} for i in range(pages)],
        **TINY,
    }
    return {**body, **change}


def from_png(data: bytes):
    from PIL import Image

    return Image.open(io.BytesIO(data), formats=("PNG",)).convert("RGB")


class Replica:
    """One `bentoml serve`, started and stopped at will; `kill()` SIGKILLs every process of it, as a lost node.
    Each replica has a BentoML home of its own over the session's model store: BentoML empties
    BENTOML_HOME/prometheus_multiproc_dir at every start, so a replica restarted in a shared home would take away
    the other one's /metrics."""

    def __init__(self, name: str, folder, bentoml_home, **env: str):
        self.name, self.folder, self.env = name, folder, env
        self.home = home_sharing_models(bentoml_home, folder / f"{name}-home")
        self.process = None
        self._serving = None
        self.starts = 0

    def start(self) -> Replica:
        """Serve (again), on a port of its own: a restarted pod is a new address too."""

        def seen(process):
            self.process = process

        self.starts += 1
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        self.log = log = self.folder / f"{self.name}-{self.starts}.log"
        self._serving = bentoml_serve(log, self.home, port, seen, **self.env)
        try:
            self._serving.__enter__()
        except (RuntimeError, TimeoutError) as error:  # the log may be gone with its temporary folder later
            raise RuntimeError(f"{error}\n{log.read_text(errors='replace')[-3000:]}") from None
        return self

    def runs(self, replica: str) -> bool:
        """Whether a book's `replica` ("host:pid") is a process of this server."""
        pid = int(replica.rsplit(":", 1)[1])
        return any(p.pid == pid for p in psutil.Process(self.process.pid).children(recursive=True))

    def kill(self) -> float:
        """SIGKILL the whole tree (BentoML's workers run in process groups of their own); when it was sent."""
        tree = [psutil.Process(self.process.pid), *psutil.Process(self.process.pid).children(recursive=True)]
        killed_at = time.monotonic()
        for process in tree:
            try:
                os.kill(process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(30)
        self.stop()
        return killed_at

    @property
    def serving(self) -> bool:
        return self._serving is not None

    def stop(self) -> None:
        if self._serving is not None:
            serving, self._serving = self._serving, None
            serving.__exit__(None, None, None)


def start_all(replicas: list[Replica]) -> None:
    if not replicas:
        return
    with ThreadPoolExecutor(len(replicas)) as pool:
        list(pool.map(Replica.start, replicas))


def submit(url: str, body: dict) -> requests.Response:
    return requests.post(f"{url}/books", json=body, timeout=120)  # moderation may wait behind pages (test_books.py)


def status(url: str, book_id: str) -> dict:
    answer = requests.get(f"{url}/books/{book_id}", timeout=30)
    assert answer.status_code == 200, answer.text
    return answer.json()


def wait_until(url: str, book_id: str, done, timeout_s: float = 300) -> dict:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        state = status(url, book_id)
        if done(state):
            return state
        time.sleep(0.05)
    raise TimeoutError(f"book {book_id}: {state}")


def finished(state: dict) -> bool:
    return state["status"] in ("completed", "failed", "canceled")


def events(url: str, book_id: str, last_event_id: str | None = None) -> list[tuple[int, str, dict]]:
    """Every event of the stream until its end: (id, kind, data)."""
    headers = {"Last-Event-ID": last_event_id} if last_event_id else {}
    seen, fields = [], {}
    with requests.get(f"{url}/books/{book_id}/events", headers=headers, stream=True, timeout=120) as answer:
        assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
        for line in answer.iter_lines(decode_unicode=True):
            if line == "" and fields:
                seen.append((int(fields["id"]), fields["event"], json.loads(fields["data"])))
                fields = {}
            elif line and not line.startswith(":"):
                name, _, value = line.partition(": ")
                fields[name] = value
    return seen


def check_the_routes(submit_on: str, read_on: str, body: dict | None = None) -> tuple[str, list[bytes]]:
    """A 6-page book submitted on one replica, read on another (or the same): every route; its pages' PNGs."""
    body = body or book()
    described = sum(isinstance(member, dict) for member in body["characters"])
    answer = submit(submit_on, body)
    assert answer.status_code == 202, answer.text
    book_id, url = answer.json()["id"], answer.json()["url"]
    assert url == f"/books/{book_id}" and answer.headers["location"] == url
    stream = events(read_on, book_id)
    assert [e[0] for e in stream] == list(range(1, 8)), "every event, in order, none twice"
    assert [e[1] for e in stream] == ["page"] * 6 + ["end"]
    assert [e[2]["index"] for e in stream[:6]] == list(range(6))
    assert stream[-1][2]["status"] == "completed" and stream[-1][2]["pages_done"] == 6
    state = status(read_on, book_id)
    assert state["status"] == "completed" and state["pages_done"] == state["pages_total"] == 6
    assert state["seeds"] == [10 + i for i in range(6)] and state["failure"] is None
    assert "img" not in json.dumps(state)  # no pictures in the status
    later = requests.get(f"{read_on}/books/{book_id}/pages", params={"since": 4}, timeout=30).json()
    assert [p["index"] for p in later["pages"]] == [4, 5] and later["pages_done"] == 6
    pngs = []
    for index in range(6):
        page = requests.get(f"{read_on}/books/{book_id}/pages/{index}.png", timeout=30)
        assert page.status_code == 200 and page.headers["content-type"] == "image/png"
        assert from_png(page.content).size == (64, 64)
        pngs.append(page.content)
    assert stream[0][2]["url"] == f"/books/{book_id}/pages/0.png"
    pdf = requests.get(f"{read_on}/books/{book_id}/pdf", timeout=60)
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    reader = PdfReader(io.BytesIO(pdf.content))
    assert len(reader.pages) == 7 + (described > 0) and "Six pages" in reader.pages[0].extract_text()
    resumed = events(read_on, book_id, last_event_id="4")
    assert [e[0] for e in resumed] == [5, 6, 7], "Last-Event-ID resumes after the last event seen"
    assert requests.get(f"{read_on}/books/nope", timeout=10).status_code == 404
    assert requests.get(f"{read_on}/books/nope/events", timeout=10).status_code == 404
    assert requests.get(f"{read_on}/books/{book_id}/pages/9.png", timeout=10).status_code == 404
    bad = requests.get(f"{read_on}/books/{book_id}/pages", params={"since": "two"}, timeout=10)
    assert bad.status_code == 400 and bad.json()["detail"][0]["loc"] == ["since"]
    refused = submit(submit_on, book(pages=2, steps=0))
    assert refused.status_code == 400 and refused.json()["detail"][0]["field"] == "steps"
    return book_id, pngs


# -- the embedded default: one replica, no Redis --------------------------------------------------------------------


@pytest.fixture(scope="module")
def embedded(tiny_server) -> str:
    """The embedded default: the session's shared server, every setting at its default (no Redis, one replica)."""
    url, _ = tiny_server
    return url


def test_the_embedded_default_answers_the_same_routes(embedded):
    check_the_routes(embedded, embedded)
    ready = requests.get(f"{embedded}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.headers["x-picturebook-books"] == "embedded (one replica)"


def book_pngs(url: str, book_id: str, pages: int) -> list[bytes]:
    return [requests.get(f"{url}/books/{book_id}/pages/{k}.png", timeout=30).content for k in range(pages)]


def same_as_generate(url: str, body: dict, state: dict, pngs: list[bytes], **extra) -> None:
    """Each page of a finished book equals /generate with its seed, the book's settings and cast, and the page
    before as `prev_frame` (>= 60 dB)."""
    for index, png in enumerate(pngs):
        request = {
            "prompt": body["pages"][index]["text"],
            "seed": state["seeds"][index],
            "characters": body["characters"],
            "prev_frame": base64.b64encode(pngs[index - 1]).decode() if index else None,
            "quality": state["quality"],
            **TINY,
            **extra,
        }
        single = requests.post(f"{url}/generate", json=request, timeout=120)
        assert single.status_code == 200, single.text
        assert psnr(from_png(png), png_from_b64(single.json()["img"])) >= 60, index


def test_a_draft_book_made_final_keeps_its_seeds_and_each_page_is_generate(embedded):
    body = book(pages=2, title="Draft first", quality="draft")
    del body["pages"][1]["seed"]  # drawn at submit, reported by the status, kept by the final book
    answer = submit(embedded, body)
    assert answer.status_code == 202, answer.text
    draft_id = answer.json()["id"]
    draft = wait_until(embedded, draft_id, finished)
    assert draft["status"] == "completed" and draft["quality"] == "draft", draft
    made_final = requests.post(f"{embedded}/books/{draft_id}/final", json={}, timeout=120)
    assert made_final.status_code == 202, made_final.text
    final_id = made_final.json()["id"]
    assert final_id != draft_id and made_final.headers["location"] == f"/books/{final_id}"
    final = wait_until(embedded, final_id, finished)
    assert final["status"] == "completed" and final["quality"] == "final", final
    assert final["seeds"] == draft["seeds"] and final["title"] == "Draft first"
    drafted, finished_pngs = book_pngs(embedded, draft_id, 2), book_pngs(embedded, final_id, 2)
    for sketch, page in zip(drafted, finished_pngs):
        assert psnr(from_png(sketch), from_png(page)) < 25, "a draft page is not its final page"
    same_as_generate(embedded, body, draft, drafted)
    same_as_generate(embedded, body, final, finished_pngs)
    assert requests.post(f"{embedded}/books/nope/final", json={}, timeout=10).status_code == 404


PIP = {"name": "Pip", "description": "a small red fox with a blue scarf"}


def test_a_book_draws_its_described_character_once_and_uses_it_on_every_page(embedded):
    pictured = png_b64(picture(2, (64, 64)))
    body = book(pages=2, title="Pip and the kite", characters=[PIP, pictured])  # Pip's seed: fixed at submit
    drawn_before = metric(embedded, "bentoml_service_adaptive_batch_size_sum", method_name="draw")
    answer = submit(embedded, body)
    assert answer.status_code == 202, answer.text
    book_id = answer.json()["id"]
    state = wait_until(embedded, book_id, finished)
    assert state["status"] == "completed", state
    drawn = metric(embedded, "bentoml_service_adaptive_batch_size_sum", method_name="draw") - drawn_before
    assert drawn == 3, "one portrait, then two pages: the portrait is drawn once"
    [member] = state["cast"]
    assert {k: member[k] for k in ("index", "name", "description")} == {"index": 0, **PIP}
    assert member["url"] == f"/books/{book_id}/cast/0.png" and isinstance(member["seed"], int)
    portrait_png = requests.get(f"{embedded}{member['url']}", timeout=30)
    assert portrait_png.status_code == 200 and portrait_png.headers["content-type"] == "image/png"
    assert requests.get(f"{embedded}/books/{book_id}/cast/1.png", timeout=10).status_code == 404  # a picture
    # The portrait is POST /character's with that seed at the book's settings, and every page is /generate with it
    # as character 1 (the uploaded picture as character 2).
    alone = requests.post(f"{embedded}/character", json={**PIP, "seed": member["seed"], **TINY}, timeout=120)
    assert alone.status_code == 200, alone.text
    assert psnr(from_png(portrait_png.content), png_from_b64(alone.json()["img"])) >= 60
    as_pictures = {**body, "characters": [base64.b64encode(portrait_png.content).decode(), pictured]}
    same_as_generate(embedded, as_pictures, state, book_pngs(embedded, book_id, 2))
    # The PDF ends with the cast; the first routes give the portrait in the result.
    pdf = PdfReader(io.BytesIO(requests.get(f"{embedded}/books/{book_id}/pdf", timeout=60).content))
    assert len(pdf.pages) == 4, "cover, two pages, the cast"
    last = pdf.pages[-1].extract_text()
    assert "The cast" in last and "Pip" in last and "Character 2" in last, last
    old = requests.get(f"{embedded}/book/get", params={"task_id": book_id}, timeout=60).json()
    assert [c["name"] for c in old["cast"]] == ["Pip"] and base64.b64decode(
        old["cast"][0]["img"]
    ) == portrait_png.content
    assert len(PdfReader(io.BytesIO(base64.b64decode(old["pdf"]))).pages) == 4


def test_a_refused_or_bad_description_in_a_book_names_its_field(embedded):
    refused = submit(
        embedded, book(pages=1, characters=[png_b64(picture(2, (64, 64))), {"description": "a n.u.d.e princess"}])
    )
    assert refused.status_code == 422, refused.text
    assert refused.json()["kind"] == "content_refused" and refused.json()["field"] == "characters[1].description"
    bad = submit(embedded, book(pages=1, characters=[{"name": "Pip", "description": "  "}]))
    assert bad.status_code == 400 and bad.json()["detail"][0]["field"] == "characters[0].description", bad.text


def test_the_readme_books_commands_run_as_written(embedded, tmp_path):
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    script = re.search(r"```bash\n(.+?)\n```", readme.split("#### `/books`", 1)[1], re.S).group(1)
    assert "localhost:8000/books" in script
    script = script.replace("localhost:8000", embedded.removeprefix("http://"))
    run = subprocess.run(["bash", "-ec", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.count("event: page") == 2 and "event: end" in run.stdout
    assert run.stdout.strip().endswith("completed"), run.stdout
    assert from_png((tmp_path / "page0.png").read_bytes()).size == (256, 256)
    assert len(PdfReader(tmp_path / "book.pdf").pages) == 3


def test_the_readme_book_from_words_alone_runs_as_written(embedded, tmp_path):
    """README, "A book from words alone": the curl commands and the Python, each against the embedded server."""
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("#### A book from words alone", 1)[1].split("\n### ", 1)[0]
    script = re.search(r"```bash\n(.+?)\n```", section, re.S).group(1)
    assert "base64" not in script and "description" in script, "a cast in words, no picture sent"
    script = script.replace("localhost:8000", embedded.removeprefix("http://"))
    run = subprocess.run(["bash", "-ec", script], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    summary = json.loads(run.stdout.strip().splitlines()[-1])
    assert summary["status"] == "completed" and [c["name"] for c in summary["cast"]] == ["Pip"]
    assert summary["cast"][0]["seed"] == 7 and from_png((tmp_path / "pip.png").read_bytes()).size == (256, 256)
    pdf = PdfReader(tmp_path / "pip-and-the-kite.pdf")
    assert len(pdf.pages) == 4 and "The cast" in pdf.pages[-1].extract_text()
    python = re.search(r"```python\n(.+?)\n```", section, re.S).group(1)
    python = python.replace("http://localhost:8000", embedded)
    run = subprocess.run([sys.executable, "-c", python], cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("completed ") and len(PdfReader(tmp_path / "pip-and-the-kite.pdf").pages) == 4


def test_the_embedded_default_cancels_and_holds_its_limit(embedded):
    """Every slot taken (PICTUREBOOK_MAX_BOOKS at its default) is a 429; a canceled book gives its slot back.
    Last of the embedded tests: it leaves nothing drawing on the shared server."""
    slots = ServingSettings().max_books
    taken = [submit(embedded, book(title=f"slow {n}", steps=8)) for n in range(slots)]
    assert [answer.status_code for answer in taken] == [202] * slots, [answer.text for answer in taken]
    ids = [answer.json()["id"] for answer in taken]
    full = submit(embedded, book(pages=1))
    assert full.status_code == 429 and int(full.headers["retry-after"]) > 0
    wait_until(embedded, ids[0], lambda s: s["pages_done"] >= 1)
    canceled = requests.delete(f"{embedded}/books/{ids[0]}", timeout=30)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    again = submit(embedded, book(pages=1))
    assert again.status_code == 202  # the slot came back
    for book_id in ids[1:]:
        requests.delete(f"{embedded}/books/{book_id}", timeout=30)
    assert wait_until(embedded, again.json()["id"], finished)["status"] == "completed"
    for book_id in ids:
        assert status(embedded, book_id)["status"] == "canceled"
    settled(embedded)


def settled(url: str, quiet_s: float = 1.0) -> None:
    """Wait until the server has drawn nothing for `quiet_s` (a canceled book's page in flight is done)."""
    last = None
    while (now := metric(url, "bentoml_service_adaptive_batch_size_sum", method_name="draw")) != last:
        last = now
        time.sleep(quiet_s)


# -- two replicas on one Redis --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def starting_replicas(tmp_path_factory, bentoml_home, redis_server):
    """The two replicas on one Redis, starting on a thread of their own: (replicas, the start's future)."""
    folder = tmp_path_factory.mktemp("cluster")
    env = {**CLUSTER_ENV, "PICTUREBOOK_REDIS_URL": redis_server.url}
    replicas = [Replica(name, folder, bentoml_home, **env) for name in ("a", "b")]
    with ThreadPoolExecutor(1) as pool:
        yield replicas, pool.submit(start_all, replicas)
    for replica in replicas:
        replica.stop()


@pytest.fixture(scope="module", autouse=True)
def replicas_start_as_the_module_begins(request, shared_servers):
    """When this run has cluster tests, the replicas start (~20 s) while the embedded tests before them run."""
    if "replicas" in shared_servers.uses_of(request.module):
        request.getfixturevalue("starting_replicas")


@pytest.fixture(scope="module")
def replicas(starting_replicas):
    replicas, started = starting_replicas
    started.result()
    return replicas


@pytest.fixture
def cluster(replicas):
    """Both replicas, serving: one a test killed (or left down when it failed) is started again first."""
    start_all([replica for replica in replicas if not replica.serving])
    return replicas


def cast_book(**change) -> dict:
    """The cluster's 6-page book: a described member (its seed fixed, so that the same book is the same book) and
    a picture."""
    return book(characters=[{**PIP, "seed": 7}, png_b64(picture(2, (64, 64)))], **change)


@pytest.fixture(scope="module")
def uninterrupted(replicas):
    """The cluster's book submitted on A and read on B, drawn without interruption: (id, its pages)."""
    a, b = replicas
    return check_the_routes(a.url, b.url, cast_book())


def test_a_book_submitted_on_one_replica_is_read_on_the_other(uninterrupted, cluster):
    ready = requests.get(f"{cluster[1].url}/readyz", timeout=10)
    assert ready.status_code == 200 and ready.headers["x-picturebook-books"] == "redis"


def drawing_replica(cluster: list[Replica], state: dict) -> Replica:
    [replica] = [r for r in cluster if r.runs(state["replica"])]
    return replica


def test_a_replica_killed_mid_book_and_the_other_finishes_it_with_the_same_pages(uninterrupted, cluster):
    """SIGKILL every process of the replica drawing the book, two pages in: the other takes the job over from its
    last checkpoint, reuses the stored portrait (its draws are the pages left, no portrait), and every page equals
    the same book drawn without interruption. Leaves the victim down: the restart test below starts both."""
    reference_id, reference = uninterrupted
    answer = submit(cluster[0].url, cast_book())
    assert answer.status_code == 202, answer.text
    book_id = answer.json()["id"]
    state = wait_until(cluster[0].url, book_id, lambda s: s["pages_done"] >= 2)
    victim = drawing_replica(cluster, state)
    survivor = next(r for r in cluster if r is not victim)
    drawn_before = metric(survivor.url, "bentoml_service_adaptive_batch_size_sum", method_name="draw")
    killed_at = victim.kill()
    done_at_kill = status(survivor.url, book_id)["pages_done"]  # read after the kill: no page can come in since
    after = wait_until(survivor.url, book_id, lambda s: s["pages_done"] > done_at_kill or finished(s))
    next_page_s = time.monotonic() - killed_at
    final = wait_until(survivor.url, book_id, finished)
    total_s = time.monotonic() - killed_at
    print(
        f"\nresume: SIGKILL at page {done_at_kill}/6 -> the other replica's next page after {next_page_s:.1f} s, "
        f"the book finished {total_s:.1f} s after the kill (heartbeat {HEARTBEAT_S} s)"
    )
    assert after["pages_done"] > done_at_kill and final["status"] == "completed", final
    assert survivor.runs(final["replica"])
    drawn = metric(survivor.url, "bentoml_service_adaptive_batch_size_sum", method_name="draw") - drawn_before
    assert drawn == 6 - done_at_kill, "the pages left, and no portrait"
    pages = requests.get(f"{survivor.url}/books/{book_id}/pages", timeout=30).json()["pages"]
    assert [p["index"] for p in pages] == list(range(6)), "each page once, in order"
    assert {p["replica"] for p in pages[done_at_kill:]} == {final["replica"]}
    for index, png in enumerate(book_pngs(survivor.url, book_id, 6)):
        assert psnr(from_png(png), from_png(reference[index])) >= 60, index
    assert final["cast"] == state["cast"] and len(final["cast"]) == 1
    portrait = requests.get(f"{survivor.url}/books/{book_id}/cast/0.png", timeout=30).content
    assert portrait == requests.get(f"{survivor.url}/books/{reference_id}/cast/0.png", timeout=30).content


def test_a_finished_book_and_its_pdf_outlive_a_restart_of_every_replica(uninterrupted, replicas):
    book_id, _ = uninterrupted
    for replica in replicas:
        replica.stop()
    start_all(replicas)
    for replica in replicas:
        state = status(replica.url, book_id)
        assert state["status"] == "completed" and state["pages_done"] == 6
        pdf = requests.get(f"{replica.url}/books/{book_id}/pdf", timeout=60)
        assert pdf.status_code == 200 and len(PdfReader(io.BytesIO(pdf.content)).pages) == 8
    old = requests.get(f"{replicas[0].url}/book/get", params={"task_id": book_id}, timeout=60)
    assert old.status_code == 200 and len(old.json()["pages"]) == 6  # the first routes answer from the store too


def test_cancel_stops_the_drawing(cluster):
    a, b = cluster
    answer = submit(a.url, book(title="canceled", steps=12))
    assert answer.status_code == 202, answer.text
    book_id = answer.json()["id"]
    state = wait_until(b.url, book_id, lambda s: s["pages_done"] >= 1)
    drawer = drawing_replica(cluster, state)
    canceled = requests.delete(f"{b.url}/books/{book_id}", timeout=30)
    assert canceled.status_code == 200 and canceled.json()["status"] == "canceled"
    pages_at_cancel = canceled.json()["pages_done"]
    drawn = metric(drawer.url, "bentoml_service_adaptive_batch_size_sum", method_name="draw")
    time.sleep(3 * HEARTBEAT_S)
    assert metric(drawer.url, "bentoml_service_adaptive_batch_size_sum", method_name="draw") == drawn
    after = status(a.url, book_id)
    assert after["status"] == "canceled" and after["pages_done"] == pages_at_cancel
    assert requests.delete(f"{a.url}/books/nope", timeout=10).status_code == 404


def test_each_replica_draws_at_most_max_books(cluster):
    a, b = cluster
    answers = [submit(a.url, book(title=f"limit {n}", steps=6)) for n in range(2)]
    assert [r.status_code for r in answers] == [202, 202], [r.text for r in answers]
    refused = submit(b.url, book(pages=1))
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) > 0
    ids = [r.json()["id"] for r in answers]
    both = [wait_until(a.url, i, lambda s: s["status"] == "drawing" and s["pages_done"] >= 1) for i in ids]
    assert len({s["replica"] for s in both}) == 2, "one book on each replica (PICTUREBOOK_MAX_BOOKS=1)"
    for book_id in ids:  # done with them: the slots go back for the tests after this one
        assert requests.delete(f"{b.url}/books/{book_id}", timeout=30).json()["status"] == "canceled"


def test_redis_lost_mid_book_fails_the_book_clearly(cluster, redis_server):
    """Redis stops taking writes mid-book (`CLIENT PAUSE … WRITE`: writes block, as on a lost connection, and reads
    still answer), for longer than a page: the job's next checkpoint times out, is retried for
    PICTUREBOOK_BOOK_STORE_RETRY_S (5 s here), then the book fails with its reason, written once Redis takes writes
    again (here: as soon as the drawing replica's log says it gave up)."""
    a, b = cluster
    answer = submit(a.url, book(title="Redis lost"))
    assert answer.status_code == 202, answer.text
    book_id = answer.json()["id"]
    drawer = drawing_replica(cluster, wait_until(b.url, book_id, lambda s: s["pages_done"] >= 1))
    gave_up = f"book {book_id} failed: the book store (Redis) was unreachable for 5 s"
    redis_server.client().execute_command("CLIENT", "PAUSE", 120_000, "WRITE")
    try:
        deadline = time.monotonic() + 110
        while gave_up not in drawer.log.read_text(errors="replace"):
            assert time.monotonic() < deadline, "the drawing replica never gave up on Redis"
            time.sleep(0.2)
    finally:
        redis_server.client().execute_command("CLIENT", "UNPAUSE")
    failed = wait_until(b.url, book_id, finished, timeout_s=90)
    assert failed["status"] == "failed" and failed["pages_done"] < 6, failed
    assert failed["failure"]["kind"] == "internal" and "unreachable for 5 s" in failed["failure"]["error"]


def test_redis_stopped_submit_is_503_and_generate_still_draws(cluster, redis_server):
    a, _ = cluster
    redis_server.stop()
    try:
        refused = submit(a.url, book(pages=1))
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) > 0, refused.text
        assert "book store" in refused.json()["error"] and "/generate still works" in refused.json()["error"]
        old = requests.post(f"{a.url}/book/submit", json=book(pages=1), timeout=120)
        assert old.status_code == 503, old.text
        single = requests.post(f"{a.url}/generate", json={"prompt": "still here", "seed": 1, **TINY}, timeout=120)
        assert single.status_code == 200, single.text
        ready = requests.get(f"{a.url}/readyz", timeout=10)
        assert ready.status_code == 200 and ready.headers["x-picturebook-books"].startswith("unavailable")
    finally:
        redis_server.start()


# -- the stores themselves ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["memory", "redis"])
def test_a_store_says_it_is_full_before_a_book_is_read_and_reserves_atomically(kind, redis_server):
    """`has_room` (asked before the moderation model reads a book) and `reserve` agree: one slot, one book; a
    finished book gives its slot back; in Redis the slots are those of the replicas announced and alive."""
    from serving.book_store import MemoryStore, Record, RedisStore

    async def check():
        own_database = redis_server.url.rsplit("/", 1)[0] + "/3"  # not the replicas' database 0
        store = MemoryStore(capacity=1, retention_s=60) if kind == "memory" else RedisStore(own_database, 60)
        if kind == "redis":
            await store.redis.flushdb()
            assert not await store.has_room(), "no replica announced: no slot"
            await store.announce("replica-1", slots=1, alive_s=60)
        record = Record(status="queued", done=0, total=1, created=time.time(), info={})
        assert await store.has_room() and await store.reserve("one", record, "{}")
        assert not await store.has_room() and not await store.reserve("two", record, "{}")
        await store.finish("one", "canceled", None)
        assert await store.has_room() and await store.reserve("two", record, "{}")
        await store.close()

    asyncio.run(check())


# -- the benchmark --------------------------------------------------------------------------------------------------


def test_the_books_benchmark_compares_the_embedded_store_and_redis(tmp_path, bentoml_home):
    """At its fastest: one round of one-page books, its servers over the session's model store."""
    from bench.books import main

    result = main(["--rounds", "1", "--pages", "1", "--out", str(tmp_path), "--models-home", str(bentoml_home)])
    assert json.loads((tmp_path / "books.json").read_text()) == result
    for name in ("embedded_alone", "embedded_together", "redis_alone", "redis_together"):
        assert result[name]["pages_per_s"] > 0, name
    memory = result["redis_one_finished_book"]
    assert memory["pages"] == 1 and memory["memory_usage_bytes"] > memory["png_bytes"] > 0
