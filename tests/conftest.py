import os

# One OpenMP thread in every torch process of the session (this one, each server, each benchmark child): on two
# cores a second thread gains 1.2-1.5x on a lone tiny page, but a team whose threads spin on a core that a server's
# start or another process is using loses far more (docs/DESIGN.md, "Tests: what the suite's time goes to").
os.environ.setdefault("OMP_NUM_THREADS", "1")

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline import ModelPaths, ModelSettings, Profile, load_page_generator
from pipeline.sources import MODEL_REPOS
from pipeline.tiny import build_tiny_models
from testkit.lanes import LaneScheduling, lane_of
from testkit.server import (
    REPO,
    BackgroundServe,
    free_port,
    home_sharing_models,
    never_ready_all,
    port_is_free,
    server_env,
)


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def tiny_settings(tiny_dir):
    return ModelSettings(profile=Profile.tiny, model_dir=tiny_dir, device="cpu")


@pytest.fixture(scope="session")
def generator(tiny_dir, tiny_settings):
    return load_page_generator(ModelPaths.under(tiny_dir), tiny_settings)


@pytest.fixture(scope="session")
def bentoml_home(tmp_path_factory, tiny_dir):
    """A private BentoML home (model store, bentos) for the whole test session. Its store holds the session's tiny
    set from the start (`python -m serving.bento_models import --from`), so no server builds it again, and servers
    started at the same time cannot both build it."""
    home = tmp_path_factory.mktemp("bentoml_home")
    subprocess.run(
        [sys.executable, "-m", "serving.bento_models", "import", "--profile", "tiny", "--from", str(tiny_dir)],
        cwd=REPO, env=server_env(home), check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    return home


def bentoml_cli(bentoml_home, *args, timeout=300):
    run = subprocess.run(
        [sys.executable, "-m", "bentoml", *args],
        cwd=REPO, env=server_env(bentoml_home), capture_output=True, text=True, timeout=timeout,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return run.stdout


@pytest.fixture(scope="session")
def built_bento(bentoml_home):
    """`PICTUREBOOK_PROFILE=tiny bentoml build`, offline: (tag, bento folder)."""
    tag = re.search(r"picturebook:\w+", bentoml_cli(bentoml_home, "build", "--output", "tag")).group(0)
    return tag, bentoml_home / "bentos" / "picturebook" / tag.split(":")[1]


# The fault-injection server's settings, which tests/test_books.py and tests/test_safety.py read back.
MAX_BOOKS = 2  # a full house is two books
OOM_MARKER = "GIGANTIC"  # a diffusion call with this in a prompt raises out-of-memory
FLAG_MARKER = "FLAGGED-BY-TEST"  # the picture check flags a page with this in its prompt, every time
FLAG_SEED = 777  # ... and a page drawn with this seed (its redraw passes)

DEFAULT_PORT = 8000  # the service's own port, which the seed's client calls
# The shared servers: what each is started with (bentoml_serve's keywords; a missing "port" is a free one), and why
# it exists in its fixture below.
SHARED_SERVERS = {
    "tiny_server": {},
    "open_server": {
        "host": "0.0.0.0",
        "port": None,
        "PICTUREBOOK_MAX_BATCH_SIZE": "1",
        "PICTUREBOOK_SAFETY_CHECKER": "false",
        "PICTUREBOOK_MODERATION": "false",
    },
    "faults_server": {
        "PICTUREBOOK_MAX_BOOKS": str(MAX_BOOKS),
        "PICTUREBOOK_FAULT_OOM_PROMPT_MARKER": OOM_MARKER,
        "PICTUREBOOK_FAULT_FLAG_PROMPT_MARKER": FLAG_MARKER,
        "PICTUREBOOK_FAULT_FLAG_SEED": str(FLAG_SEED),
    },
}


START_AHEAD = 2  # a module's servers start in the background when the module this many before it begins


def pytest_xdist_make_scheduler(config, log):
    """The suite's two lanes of modules, one per xdist worker (testkit/lanes.py)."""
    return LaneScheduling(config, log)


def lane(module) -> str:
    return lane_of(module.__name__)


# Started by one lane only: port 8000 has room for one server, and the others would be started twice.
ONE_LANE = ("open_server", "faults_server", "fail_closed_starts")


def pytest_collection_modifyitems(config, items):
    """A module added to the wrong lane fails the collection, naming the fixture and where it is used."""
    for fixture in ONE_LANE:
        users = {item.module.__name__ for item in items if fixture in item.fixturenames}
        if len({lane_of(name) for name in users}) > 1:
            raise pytest.UsageError(f"{fixture} is used in both lanes ({sorted(users)}): see testkit/lanes.py")


@pytest.fixture(scope="session", autouse=True)
def shared_servers(request, tmp_path_factory):
    """The servers of the session (the shared ones above, each module's own `SERVE`), each started in the
    background when the module START_AHEAD before the first that uses it begins, so that its start
    (~15 s of imports and loading) runs on this machine's second core while earlier tests run, and never more than
    a few start at once. Each server has its own BentoML home over the session's model store
    (home_sharing_models): BentoML empties BENTOML_HOME/prometheus_multiproc_dir at every start, so a server
    started meanwhile in `bentoml_home` would otherwise empty its /metrics."""
    servers = SharedServers(request, tmp_path_factory)
    yield servers
    servers.close()


@pytest.fixture(scope="module", autouse=True)
def start_ahead(request, shared_servers):
    shared_servers.start_ahead_of(request.module)


@pytest.fixture(scope="module")
def module_server(request, shared_servers):
    """The module's own server, from its `SERVE` settings (bentoml_serve's keywords), started ahead of it and
    stopped when the module ends: the testkit.server.BackgroundServe (its .process is `bentoml serve`)."""
    name = request.module.__name__
    server = shared_servers.start(name, request.module.SERVE)
    server.ready()
    yield server
    shared_servers.stop(name)


class SharedServers:
    """The servers started so far, by name, and which fixtures each module of this process uses. `start` is
    idempotent; a fixture that asks for one not started ahead starts it then. Under xdist every worker collects
    every test but runs one lane, learnt when its first module begins; without xdist one process runs both."""

    def __init__(self, request, tmp_path_factory):
        self.request, self.tmp_path_factory = request, tmp_path_factory
        self.started: dict[str, BackgroundServe] = {}
        self.items = request.session.items
        self.modules: list | None = None  # this process's modules in their order, once known
        self.uses: dict = {}
        if not hasattr(request.config, "workerinput"):
            self._runs(None)

    def _runs(self, only_lane: str | None) -> None:
        items = [item for item in self.items if only_lane is None or lane(item.module) == only_lane]
        self.modules = list(dict.fromkeys(item.module for item in items))
        self.uses = {module: set() for module in self.modules}
        for item in items:
            self.uses[item.module].update(item.fixturenames)
        if self.modules:
            self.start_ahead_of(self.modules[0])

    def uses_of(self, module) -> set[str]:
        """The fixtures `module`'s tests use (none when none of its tests run here)."""
        if self.modules is None:  # a worker's first module
            self._runs(lane(module))
        return self.uses.get(module, set())

    def start_ahead_of(self, module) -> None:
        if not self.uses_of(module):  # a module none of whose tests were selected
            return
        at = self.modules.index(module)
        for later in self.modules[at : at + 1 + START_AHEAD]:
            for name in sorted(self.uses[later] & SHARED_SERVERS.keys()):
                self.start(name)
            if "module_server" in self.uses[later]:
                self.start(later.__name__, later.SERVE)

    def start(self, name: str, serve: dict | None = None) -> BackgroundServe:
        if name not in self.started:
            shared_home = self.request.getfixturevalue("bentoml_home")
            home = home_sharing_models(shared_home, self.tmp_path_factory.mktemp(name) / "home")
            settings = dict(SHARED_SERVERS[name] if serve is None else serve)
            port = settings.pop("port", free_port())
            if port is None:
                assert port_is_free(DEFAULT_PORT), f"{name} serves on port {DEFAULT_PORT}, which something else holds"
            self.started[name] = BackgroundServe(home.parent / "serve.log", home, port, **settings)
        return self.started[name]

    def ready(self, name: str) -> tuple[str, Path]:
        return self.start(name).ready()

    def stop(self, name: str) -> None:
        self.started.pop(name).close()

    def close(self) -> None:
        for server in self.started.values():
            server.close()


@pytest.fixture(scope="session")
def tiny_server(shared_servers):
    """The one shared `bentoml serve` with every setting at its default (tiny profile, loopback): (url, log). Every
    module that needs no special setting uses it, rather than starting a server of its own (a start is ~15 s of
    this machine's two cores); servers with special settings are started only where the setting is what is tested,
    or where the test stops the server. Tests that use it read metrics as differences (before and after) and
    search its log for what only they cause."""
    return shared_servers.ready("tiny_server")


@pytest.fixture(scope="session")
def open_server(shared_servers):
    """`bentoml serve` as the seed's users ran it: no --host (every interface), no --port (port 8000), no API key;
    and batching off (PICTUREBOOK_MAX_BATCH_SIZE=1, which BentoML's batcher cannot express), the picture checker
    off and the moderation model off: (url, log). Each setting is what one test reads back: the seed's client
    verbatim on port 8000 and pages drawn one per call (tests/test_service.py), the warning for 0.0.0.0 without a
    key and the checker-off metric (tests/test_listening.py), moderation off (tests/test_moderation.py). One start
    instead of three."""
    return shared_servers.ready("open_server")


@pytest.fixture(scope="session")
def faults_server(shared_servers):
    """One server with the test-only faults injected (pipeline/faults.py) and a house of MAX_BOOKS books: (url,
    log). The books (tests/test_books.py: a full house, a page out of memory) and the picture check (tests/
    test_safety.py: a flagged page, redrawn or refused) each read back only what their own marker, seed or limit
    causes, so they share one start instead of two. Neither's marker or seed occurs in the other's requests."""
    return shared_servers.ready("faults_server")


@pytest.fixture(scope="session")
def fail_closed_starts(tmp_path_factory, tiny_dir, bentoml_home):
    """The two fail-closed starts, run at once (testkit.server.never_ready_all) when the first test asks:
    {name: what its `assert_never_ready` raised, or None}. Not started ahead (shared_servers): two failing starts
    at once load both cores for ~30 s, which must not land beside a timed test (docs/DESIGN.md)."""
    return never_ready_all(fail_closed_sets(tmp_path_factory, tiny_dir), bentoml_home)


def fail_closed_sets(tmp_path_factory, tiny_dir) -> dict:
    """never_ready_all's starts: each server misses one model's weights and nothing else, so what its log must name
    stays specific:
    - "safety_checker": the picture checker's folder is absent (tests/test_safety.py);
    - "moderation": only the moderation model's `model.safetensors` is gone (tests/test_moderation.py)."""
    root = tmp_path_factory.mktemp("fail_closed")
    checker = MODEL_REPOS["safety_checker"].folder
    no_checker = root / "models-without-the-checker"
    shutil.copytree(tiny_dir, no_checker, ignore=shutil.ignore_patterns(checker))
    moderation = MODEL_REPOS["moderation"].folder
    no_moderation = root / "models-without-the-moderator"
    shutil.copytree(tiny_dir, no_moderation)
    (no_moderation / moderation / "model.safetensors").unlink()
    return {
        "safety_checker": (no_checker, root / "checker.log", r"safety-checker|stable-diffusion-safety-checker", 120),
        "moderation": (no_moderation, root / "moderation.log", re.escape(moderation), 120),
    }


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real `redis-server` (Debian's) on a free loopback port, no persistence, for one test module."""
    from testkit.redis import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
