"""Hostile load and the service's life: hang-ups, a lone client after a burst, idle connections, a model-worker
restart, draining on SIGTERM. One real `bentoml serve` (tiny profile) for the whole module; the last test stops it.

One assertion here is about time, with a bound far from both sides of what issue 18 measured: connections that
never finish their headers (open past 60 s and 150 s before; the bound is 15 s, with a 3 s header timeout). A lone
request after a burst is measured by `python -m bench.after_burst`, which a test here runs at its fastest."""

from __future__ import annotations

import select
import signal
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from pipeline import PageRequest
from pipeline.generator import HUNG_UP
from testkit.pictures import picture, png_b64, png_from_b64
from testkit.server import model_worker, request_bytes

HEADER_TIMEOUT_S = 3
MAX_CONNECTIONS = 40
SERVE = {  # this module's server (tests/conftest.py, module_server)
    "PICTUREBOOK_HEADER_TIMEOUT_S": str(HEADER_TIMEOUT_S),
    "PICTUREBOOK_MAX_CONNECTIONS": str(MAX_CONNECTIONS),
    "PICTUREBOOK_RETRY_AFTER_S": "7",
    "PICTUREBOOK_BODY_READ_MIN_S": "3",  # a half-sent body holds its connection 3 s, then gets 408
}


def page(seed=3, **change):
    body = {"prev_frame": png_b64(picture(1)), "characters": [png_b64(picture(2, (96, 96)))], "prompt": "a fox"}
    return {**body, "seed": seed, **change}


@pytest.fixture(scope="module")
def served(module_server):
    """This module's server (tests/conftest.py, module_server): (url, log, the `bentoml serve` process)."""
    return *module_server.ready(), module_server.process


def post(url, body, timeout=120):
    return requests.post(f"{url}/generate", json=body, timeout=timeout)


def wait_for_log(log, text, within_s=30.0) -> None:
    deadline = time.monotonic() + within_s
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"not in the server log after {within_s} s: {text!r}"
        time.sleep(0.3)


# -- the pipeline: abandoned pages ---------------------------------------------------------------------------------


def request(job_id, steps=2, seed=1):
    return PageRequest(prompt="a fox", prev_frame=picture(1), seed=seed, steps=steps, job_id=job_id)


def test_an_abandoned_page_is_not_drawn_and_its_batch_mate_is_drawn_alone(generator):
    generator.abandon(["gone"])
    gone, kept = generator.generate([request("gone"), request("kept")])
    assert gone.error is not None and gone.error.message == HUNG_UP
    assert kept.ok and kept.batch_size == 1
    assert "gone" not in generator.abandoned  # forgotten once its call is over


def test_a_call_stops_between_steps_once_every_client_hung_up(generator):
    threading.Timer(0.5, generator.abandon, [["a", "b"]]).start()
    results = generator.generate([request("a", steps=100), request("b", steps=100, seed=2)])
    assert [r.error.message.split(";")[0] for r in results] == [HUNG_UP, HUNG_UP]
    assert "stopped after step" in results[0].error.message


def test_a_call_finishes_for_a_batch_mate_still_waiting(generator):
    threading.Timer(0.3, generator.abandon, [["left"]]).start()
    left, waiting = generator.generate([request("left", steps=6), request("waiting", steps=6, seed=2)])
    assert waiting.ok and waiting.batch_size == 2
    assert left.ok  # drawn anyway: it shared the call


def test_abandoned_ids_are_bounded():
    from pipeline.generator import AbandonedJobs

    jobs = AbandonedJobs(most=100)
    jobs.add(str(i) for i in range(1000))
    assert "999" in jobs and "0" not in jobs and len(jobs._since) == 100


# -- through the real server ----------------------------------------------------------------------------------------


def test_a_client_that_hangs_up_stops_its_page(served):
    """The issue: a client gone 3 s into a heavy page left the model drawing it to the end (40 s)."""
    url, log, _ = served
    with pytest.raises(requests.Timeout):
        post(url, page(steps=100, width=512, height=512), timeout=3)  # ~20 s on this CPU: far longer than 3 s
    wait_for_log(log, "the client hung up; request cancelled")
    wait_for_log(log, f"{HUNG_UP}; stopped after step")
    assert post(url, page()).status_code == 200


def test_the_after_burst_benchmark_runs_against_this_server(served):
    """`python -m bench.after_burst` (docs/PERFORMANCE.md) at its fastest, on this module's server: lone pages, a
    burst of clients, lone pages again. Whether a lone page recovers after a burst is that benchmark's ratio (issue
    18: 6-14x its page before the fix, ~0.8x after), not a timed assertion here; the cap that gives it is checked by
    tests/test_framework.py::test_the_bounded_batch_wait_caps_the_learned_wait."""
    from bench.after_burst import main

    url, _, _ = served
    result = main(["--url", url, "--clients", "4", "--burst-s", "2", "--singles", "1", "--training", "1"])
    assert result["url"] == url and result["burst_statuses"].get(200, 0) >= 4, result["burst_statuses"]
    for key in ("lone_before_s", "lone_after_s", "lone_later_s"):
        assert len(result[key]) == 1 and all(seconds > 0 for seconds in result[key]), key
    assert result["ratio_after"] > 0 and result["ratio_later"] > 0


def open_idle(url) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def closed_within(socks: list[socket.socket], seconds: float) -> list[socket.socket]:
    """The sockets the server closed within `seconds` from now (readable with nothing to read, or reset)."""
    deadline, closed, waiting = time.monotonic() + seconds, [], list(socks)
    while waiting and time.monotonic() < deadline:
        readable, _, _ = select.select(waiting, [], [], max(0.0, deadline - time.monotonic()))
        for sock in readable:
            try:
                data = sock.recv(1)
            except ConnectionResetError:
                data = b""
            if data == b"":
                closed.append(sock)
                waiting.remove(sock)
    return closed


def test_connections_without_headers_are_closed(served):
    """The issue: 2,000 silent connections stayed open 60 s; one sending its headers slowly stayed past 150 s."""
    url, _, _ = served
    silent = [open_idle(url) for _ in range(20)]
    slow = open_idle(url)
    started = time.monotonic()
    header = b"GET /livez HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200
    for byte in header:  # one byte every 0.2 s: never a complete request within the header timeout
        try:
            slow.send(bytes([byte]))
        except OSError:
            break
        time.sleep(0.2)
    socks = [*silent, slow]
    assert len(closed_within(socks, 15 - (time.monotonic() - started))) == len(socks)
    assert requests.get(f"{url}/livez", timeout=5).status_code == 200
    for sock in socks:
        sock.close()


def test_past_max_connections_new_ones_are_closed_at_once(served):
    url, _, _ = served
    held = [open_idle(url) for _ in range(MAX_CONNECTIONS + 10)]
    refused = closed_within(held, HEADER_TIMEOUT_S / 3)  # before the header timeout strikes
    assert len(refused) >= 10
    for sock in held:
        sock.close()


def test_readyz_answers_503_quickly_while_the_model_worker_restarts(served):
    """The issue: during a model-worker restart /readyz timed out (the probe gives up after 5 s)."""
    url, _, _ = served
    model_worker(url).kill()
    answers = []
    deadline = time.monotonic() + 90
    while not answers or answers[-1] != 200:
        assert time.monotonic() < deadline, answers
        answers.append(requests.get(f"{url}/readyz", timeout=4.5).status_code)  # raises if it hangs
        time.sleep(0.2)
    assert 503 in answers
    assert post(url, page()).status_code == 200


def test_sigterm_refuses_new_work_finishes_what_is_in_flight_and_stops_while_bodies_are_half_sent(served):
    """Kubernetes sends SIGTERM to the main process and waits terminationGracePeriodSeconds (30 s by default): the
    page being drawn finishes, a request arriving after the signal gets 503 (it used to get a dropped connection),
    and the server stops. Clients that sent the headers of a POST /generate and then left, or went silent, used to
    keep `bentoml serve` from stopping at all; the body's read deadline (3 s here) now ends them with 408. One server
    start for all of it, each with its own assertion. Stops the module's server."""
    url, log, process = served
    head = request_bytes("/generate", [("Content-Type", "application/json"), ("Content-Length", "100")], b"{")
    gone, silent = (socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1]))) for _ in range(2))
    with silent, ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(post, url, page(steps=100))
        for sock in (gone, silent):
            sock.sendall(head)
        time.sleep(0.5)
        gone.close()
        time.sleep(1.5)  # the page is being drawn (100 tiny steps: several seconds even on a quiet machine)
        process.send_signal(signal.SIGTERM)
        time.sleep(1)  # the signal reaches the workers
        refused = post(url, page(), timeout=10)
        ready = requests.get(f"{url}/readyz", timeout=5)
        drawn = in_flight.result()
        assert refused.status_code == 503 and refused.headers["Retry-After"] == "7", refused.text
        assert ready.status_code == 503
        assert drawn.status_code == 200, drawn.text
        png_from_b64(drawn.json()["img"])
        assert process.wait(30) == 0
    assert "SIGTERM: draining 1 request(s) in flight" in log.read_text(errors="replace")
