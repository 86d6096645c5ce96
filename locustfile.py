"""Load test of `POST /generate`: readers drawing picture books, page after page.

    PICTUREBOOK_PROFILE=tiny bentoml serve --host 127.0.0.1 --port 8000 &
    python -m locust -f locustfile.py --headless -u 4 -r 4 --run-time 60s --host http://127.0.0.1:8000

Each simulated user draws books of 3 to 6 pages: the first page has no `prev_frame`, the next ones carry one; a book
keeps its 1 to 3 characters; half of the pages send a seed. Pictures are real PNGs (smooth colour blobs, 256x256
pages and 96x96 characters) made once at start, so requests cost no client CPU beyond sending them.

A page passes when the answer is 200, its `img` decodes as an image and its `seed` is the one sent. At the end the
run fails (exit code 1) when any request failed, none completed, or the 95th percentile of the response time
exceeds `--max-p95-ms` (env `PICTUREBOOK_MAX_P95_MS`; default 15000 ms, measured on the tiny profile on a 2-core CPU
with 4 users, where p95 stays well below it). Headless runs without `--run-time` stop after 60 s.
"""

from __future__ import annotations

import base64
import binascii
import io
import random
import sys
from collections import Counter

from locust import HttpUser, between, events, task
from PIL import Image

from testkit.pictures import PROMPTS, picture, png_b64

DEFAULT_MAX_P95_MS = 15_000.0
DEFAULT_HEADLESS_RUN_TIME_S = 60
REQUEST_TIMEOUT_S = 130  # a little over the service's own 120 s request timeout
PAGE_SIZE = (256, 256)
CHARACTER_SIZE = (96, 96)
POOL_SIZE = 8

# Made once, when locust imports this file.
PAGES = [png_b64(picture(1000 + i, PAGE_SIZE)) for i in range(POOL_SIZE)]
CHARACTERS = [png_b64(picture(2000 + i, CHARACTER_SIZE)) for i in range(POOL_SIZE)]
BATCH_SIZES: Counter[int] = Counter()  # batch_size of every answered page, reported at the end


def check_page(body: dict, sent_seed: int | None) -> str | None:
    """Why an answer is not a good page, or None when it is."""
    img = body.get("img")
    if not isinstance(img, str):
        return f"no 'img' in the answer (keys: {sorted(body)})"
    try:
        image = Image.open(io.BytesIO(base64.b64decode(img, validate=True)))
        image.load()
    except (binascii.Error, ValueError, OSError) as error:
        return f"'img' does not decode as an image: {error}"
    if image.width < 1 or image.height < 1:
        return f"'img' is an empty image ({image.width}x{image.height})"
    if sent_seed is not None and body.get("seed") != sent_seed:
        return f"sent seed {sent_seed}, got {body.get('seed')!r}"
    return None


class Reader(HttpUser):
    """Draws books one page at a time; the next request leaves once the previous page is back."""

    wait_time = between(0.05, 0.5)

    def on_start(self) -> None:
        self.rng = random.Random()
        self.pages_left = 0
        self.book_characters: list[str] = []

    def next_payload(self) -> dict:
        first_page = self.pages_left == 0
        if first_page:
            self.pages_left = self.rng.randint(3, 6)
            self.book_characters = self.rng.sample(CHARACTERS, self.rng.randint(1, 3))
        self.pages_left -= 1
        payload = {"characters": self.book_characters, "prompt": self.rng.choice(PROMPTS)}
        if not first_page:
            payload["prev_frame"] = self.rng.choice(PAGES)
        if self.rng.random() < 0.5:
            payload["seed"] = self.rng.randrange(2**32)
        return payload

    @task
    def draw_page(self) -> None:
        payload = self.next_payload()
        with self.client.post(
            "/generate", json=payload, name="/generate", timeout=REQUEST_TIMEOUT_S, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"status {response.status_code}: {response.text[:200]}")
                return
            try:
                body = response.json()
            except ValueError:
                response.failure(f"answer is not JSON: {response.text[:200]}")
                return
            problem = check_page(body, payload.get("seed"))
            if problem:
                response.failure(problem)
                return
            BATCH_SIZES[body.get("batch_size", 0)] += 1
            response.success()


@events.init_command_line_parser.add_listener
def add_options(parser, **_kw) -> None:
    parser.add_argument(
        "--max-p95-ms",
        type=float,
        env_var="PICTUREBOOK_MAX_P95_MS",
        default=DEFAULT_MAX_P95_MS,
        help=f"Fail the run when the 95th percentile response time exceeds this (default {DEFAULT_MAX_P95_MS:.0f} ms)",
    )


@events.init.add_listener
def bound_headless_runs(environment, **_kw) -> None:
    options = environment.parsed_options
    if options is not None and options.headless and not options.run_time and not options.worker:
        print(f"locustfile: no --run-time given; stopping after {DEFAULT_HEADLESS_RUN_TIME_S} s", file=sys.stderr)
        options.run_time = DEFAULT_HEADLESS_RUN_TIME_S


def verdict(total, max_p95_ms: float) -> list[str]:
    """Why the run failed (empty when it passed). `total` is locust's aggregated StatsEntry."""
    reasons = []
    if total.num_requests == 0:
        reasons.append("no request completed")
    if total.fail_ratio > 0:
        reasons.append(f"{total.num_failures} of {total.num_requests} requests failed ({total.fail_ratio:.1%})")
    if total.num_requests:
        p95 = total.get_response_time_percentile(0.95)
        if p95 > max_p95_ms:
            reasons.append(f"p95 response time {p95:.0f} ms exceeds --max-p95-ms {max_p95_ms:.0f} ms")
    return reasons


@events.quitting.add_listener
def check_run(environment, **_kw) -> None:
    options = environment.parsed_options
    if options is not None and options.worker:
        return  # the master judges the aggregated numbers
    max_p95_ms = getattr(options, "max_p95_ms", DEFAULT_MAX_P95_MS)
    total = environment.stats.total
    p95 = total.get_response_time_percentile(0.95) if total.num_requests else 0
    sizes = ", ".join(f"{size}: {count}" for size, count in sorted(BATCH_SIZES.items())) or "none"
    print(
        f"locustfile: {total.num_requests} requests, {total.num_failures} failures, "
        f"p95 {p95:.0f} ms (limit {max_p95_ms:.0f} ms); pages by batch size: {sizes}",
        file=sys.stderr,
    )
    reasons = verdict(total, max_p95_ms)
    if reasons:
        print("locustfile: FAILED: " + "; ".join(reasons), file=sys.stderr)
        environment.process_exit_code = 1
