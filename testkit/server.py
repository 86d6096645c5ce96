"""Start the real `bentoml serve` on loopback for a test, wait for /readyz, and stop it (bounded in time)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import psutil
import requests

REPO = Path(__file__).resolve().parent.parent
READY_TIMEOUT_S = 180


def request_bytes(path: str, headers: list[tuple[str, str]], body: bytes) -> bytes:
    """A raw HTTP/1.1 POST, for tests that send it (or part of it) over a socket of their own."""
    lines = [f"POST {path} HTTP/1.1", "Host: picturebook", *(f"{k}: {v}" for k, v in headers), "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def server_env(bentoml_home: Path, **extra: str) -> dict[str, str]:
    """The tiny profile, a private model store, and no hub: how every test and benchmark server runs."""
    return {
        **os.environ,
        "PICTUREBOOK_PROFILE": "tiny",
        "BENTOML_HOME": str(bentoml_home),
        "BENTOML_DO_NOT_TRACK": "true",
        "HF_HUB_OFFLINE": "1",
        **extra,
    }


def home_sharing_models(shared: Path, home: Path) -> Path:
    """A BentoML home of its own (`home`, created) that uses `shared`'s model store: the tiny weights are built into
    the store once, while BENTOML_HOME/prometheus_multiproc_dir, which BentoML empties at every start, stays this
    home's, so a server started later in `shared` cannot take away this one's /metrics values."""
    (shared / "models").mkdir(parents=True, exist_ok=True)
    home.mkdir(parents=True, exist_ok=True)
    (home / "models").symlink_to(shared / "models", target_is_directory=True)
    return home


@contextmanager
def bentoml_serve(
    log_path: Path,
    bentoml_home: Path,
    port: int | None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    host: str = "127.0.0.1",
    **env: str,
):
    """Yield (base_url, seconds from start to ready). `port=None` serves on the service's default port;
    `on_start` sees the process as soon as it exists (the benchmark samples its memory from there); `host` is what
    it binds (the URL is loopback's either way)."""
    environment = server_env(bentoml_home, **env)
    command = [sys.executable, "-m", "bentoml", "serve", "--host", host]
    if port is not None:
        command += ["--port", str(port)]
    base_url = f"http://127.0.0.1:{port or int(environment.get('PICTUREBOOK_PORT', 8000))}"
    log = open(log_path, "wb")
    started = time.monotonic()
    process = subprocess.Popen(
        command, cwd=REPO, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        if on_start is not None:
            on_start(process)
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"bentoml serve exited with {process.returncode}; see {log_path}")
            if time.monotonic() - started > READY_TIMEOUT_S:
                raise TimeoutError(f"not ready in {READY_TIMEOUT_S} s; see {log_path}")
            try:
                if requests.get(f"{base_url}/readyz", timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        yield base_url, time.monotonic() - started
    finally:
        stop(process)
        log.close()


class BackgroundServe:
    """`bentoml_serve` entered on a thread of its own, so a server starts while other work runs (this machine has
    two cores; a test session mostly uses one). `ready()` waits for it: (base_url, log). `close()` stops it."""

    def __init__(self, log_path: Path, bentoml_home: Path, port: int | None, **kwargs):
        self.log_path = log_path
        self.process: subprocess.Popen | None = None  # `bentoml serve` itself, once started
        self._serving = bentoml_serve(log_path, bentoml_home, port, on_start=self._started, **kwargs)
        self._url: str | None = None
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._start, name=f"serve {log_path}", daemon=True)
        self._thread.start()

    def _started(self, process: subprocess.Popen) -> None:
        self.process = process

    def _start(self) -> None:
        try:
            self._url, _ = self._serving.__enter__()
        except BaseException as error:  # raised again by ready(), on the test's own thread
            self._error = error

    def ready(self) -> tuple[str, Path]:
        self._thread.join()
        if self._error is not None:
            raise self._error
        return self._url, self.log_path

    def close(self) -> None:
        self._thread.join()
        if self._error is None:
            self._serving.__exit__(None, None, None)


def stop(process: subprocess.Popen, grace_s: float = 30) -> int:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    return process.returncode


# What BentoML logs when a model worker's start failed (its service's __init__ raised) and the worker exits.
FAILED_START = re.compile(r"\[service:picturebook-model:\d+\] Application startup failed\. Exiting\.")
POLLS_AFTER_FAILURE = 3


def assert_never_ready(
    model_dir: Path,
    bentoml_home: Path,
    log: Path,
    reported: str,
    within_s: float,
) -> None:
    """Serve a model set whose weights for one model are missing: the log names what is missing (`reported`, a
    regular expression) within `within_s` and the model worker's start fails (it exits), and `/readyz` answers
    anything but 200 (or nothing at all, while the front waits on a model worker that keeps failing) on every poll
    from the moment the server is started until POLLS_AFTER_FAILURE polls after that failure. Fail closed: ready
    means the model worker's __init__ returned, and it raised. It ends as soon as that is shown, not after a fixed
    wait."""
    port = free_port()
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "--host", "127.0.0.1", "--port", str(port)],
            cwd=REPO,
            env=server_env(bentoml_home, PICTUREBOOK_MODEL_DIR=str(model_dir)),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + within_s
        failed_at = None  # the poll count when the log had both named the weights and shown the failed start
        polls = 0
        while failed_at is None or polls < failed_at + POLLS_AFTER_FAILURE:
            text = log.read_text(errors="replace")
            if failed_at is None and re.search(reported, text) and FAILED_START.search(text):
                failed_at = polls
            assert failed_at is not None or time.monotonic() < deadline, (
                f"the missing weights ({reported}) and the failed start were never reported"
            )
            try:
                assert requests.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code != 200
            except requests.RequestException:
                pass  # no answer: not ready either
            polls += 1
            time.sleep(0.5)
    finally:
        kill_tree(process)


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a `bentoml serve` and every process under it, at once. For a broken server, whose shutdown is not
    what is tested: its model worker, restarting, finishes its next failed start before it heeds SIGTERM (20-30 s
    on a busy machine). The workers are not in the server's process group (circus starts each in a session of its
    own), so they are found as its descendants, before the server dies and they are orphaned."""
    try:
        family = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        family = []
    for member in family:
        with contextlib.suppress(psutil.NoSuchProcess):
            member.kill()
    process.wait()
    psutil.wait_procs(family, timeout=10)


def never_ready_all(starts: dict[str, tuple[Path, Path, str, float]], bentoml_home: Path) -> dict:
    """`assert_never_ready` for several model sets, each its own server, port and log, all started at once:
    {name: what it raised, or None}. `starts` maps a name to (model_dir, log, reported, within_s). At once rather
    than one after another: each start is mostly waiting (on its model worker, on /readyz), so the starts sharing
    this machine's two cores end sooner together than in turn."""
    with ThreadPoolExecutor(len(starts)) as pool:
        futures = {
            name: pool.submit(assert_never_ready, model_dir, bentoml_home, log, pattern, within_s)
            for name, (model_dir, log, pattern, within_s) in starts.items()
        }
    return {name: future.exception() for name, future in futures.items()}


def _front_worker(url: str) -> tuple[int, dict]:
    """(pid, environment) of the front worker serving this URL: BentoML hands it the model's address."""
    port = url.rsplit(":", 1)[1]
    for environ in Path("/proc").glob("[0-9]*/environ"):
        try:
            variables = dict(
                item.split("=", 1) for item in environ.read_bytes().decode(errors="replace").split("\0") if "=" in item
            )
        except OSError:
            continue
        mapping = json.loads(variables.get("BENTOML_RUNNER_MAP", "{}"))
        if mapping.get("picturebook", "").endswith(f":{port}"):
            return int(environ.parent.name), mapping
    raise AssertionError("no front worker found for this server")


def model_service_socket(url: str) -> str:
    """The model service's address, as BentoML hands it to the front worker (a Unix socket)."""
    return _front_worker(url)[1]["picturebook-model"].removeprefix("file://")


def model_worker(url: str) -> psutil.Process:
    """The model worker of this server: the front worker's sibling under the same `bentoml serve`."""
    for sibling in psutil.Process(_front_worker(url)[0]).parent().children():
        if "picturebook-model" in " ".join(sibling.cmdline()):
            return sibling
    raise AssertionError("no model worker found for this server")


def minor_page_faults(process: psutil.Process) -> int:
    """Minor page faults of a process so far, all its threads (proc(5): /proc/<pid>/stat, field 10)."""
    return int(Path(f"/proc/{process.pid}/stat").read_text().rsplit(")", 1)[1].split()[7])


def metric(url: str, name: str, **labels: str) -> float:
    """The sum of a Prometheus series on the server's /metrics over the lines with these labels (0 when absent)."""
    total = 0.0
    for line in requests.get(f"{url}/metrics", timeout=10).text.splitlines():
        if line.startswith((name + "{", name + " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total
