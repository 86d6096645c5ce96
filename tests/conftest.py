import re
import subprocess
import sys

import pytest

from pipeline import ModelPaths, ModelSettings, Profile, load_page_generator
from pipeline.tiny import build_tiny_models
from testkit.server import REPO, server_env


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
def bentoml_home(tmp_path_factory):
    """A private BentoML home (model store, bentos) for the whole test session."""
    return tmp_path_factory.mktemp("bentoml_home")


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


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory):
    """A real `redis-server` (Debian's) on a free loopback port, no persistence, for one test module."""
    from testkit.redis import RedisServer

    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server
