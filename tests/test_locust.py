"""The load test (locustfile.py) against the real `bentoml serve` on loopback: it passes, and its p95 gate bites.

locust runs as a subprocess (it monkey-patches the standard library with gevent, which must not reach pytest).
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from testkit.server import REPO

RUN_TIME_S = 8


@pytest.fixture(scope="module")
def served(tiny_server):
    """The readers' traffic against the default settings: the session's shared server (tests/conftest.py)."""
    return tiny_server[0]


def locust(url: str, prefix, run_time_s: int, *extra: str) -> subprocess.CompletedProcess:
    command = [
        sys.executable, "-m", "locust", "-f", str(REPO / "locustfile.py"), "--headless",
        "-u", "4", "-r", "4", "--run-time", f"{run_time_s}s", "--stop-timeout", "20",
        "--host", url, "--csv", str(prefix), "--json-file", str(prefix), "--only-summary", *extra,
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=run_time_s + 90)


def generate_row(prefix) -> dict:
    with open(f"{prefix}_stats.csv", newline="") as file:
        rows = {row["Name"]: row for row in csv.DictReader(file)}
    assert "/generate" in rows, rows.keys()
    return rows["/generate"]


def test_load_run_passes(served, tmp_path):
    prefix = tmp_path / "run"
    run = locust(served, prefix, RUN_TIME_S)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    row = generate_row(prefix)
    assert int(row["Request Count"]) > 0
    assert int(row["Failure Count"]) == 0
    # --json-file writes PREFIX.json: the final numbers, after in-flight requests finished.
    [final] = [entry for entry in json.loads(prefix.with_suffix(".json").read_text()) if entry["name"] == "/generate"]
    assert final["num_requests"] >= int(row["Request Count"]) and final["num_failures"] == 0
    assert "FAILED" not in run.stderr


def test_p95_gate_fails_the_run(served, tmp_path):
    run = locust(served, tmp_path / "strict", 3, "--max-p95-ms", "1")
    assert run.returncode != 0, run.stderr[-3000:]
    assert "FAILED: p95 response time" in run.stderr, run.stderr[-3000:]
