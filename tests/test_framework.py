"""serving/framework.py: every private shape a patch relies on is still there, the versions are the ones it was
checked against, nothing is patched before `install()`, and HTTP is parsed by h11."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import inspect
import subprocess
import sys

import pytest
from _bentoml_impl.client import RemoteProxy

from serving import framework
from testkit.server import REPO

SERVING_MODULES = sorted(path.stem for path in (REPO / "serving").glob("*.py") if path.stem != "__init__")


def run_python(code: str) -> None:
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True, timeout=120)


def test_the_installed_versions_are_the_ones_the_patches_were_checked_against():
    """An upgrade fails here first: read serving/framework.py, rerun its shape checks, then update CHECKED_AGAINST."""
    installed = {name: importlib.metadata.version(name) for name in framework.CHECKED_AGAINST}
    assert installed == framework.CHECKED_AGAINST


SHAPE_CHECKS = [
    framework.check_api_error_logger,
    framework.check_openapi_errors,
    framework.check_api_endpoint_wrapper,
    framework.check_batch_optimizer,
    framework.check_uvicorn_protocol,
    framework.check_pillow,
    framework.check_remote_proxy,
]


@pytest.mark.parametrize("check", SHAPE_CHECKS, ids=[check.__name__ for check in SHAPE_CHECKS])
def test_each_private_shape_is_as_its_patch_expects(check):
    check()  # raises, naming what moved


def test_install_runs_every_shape_check():
    source = inspect.getsource(framework.check_shapes)
    assert all(f"{check.__name__}()" in source for check in SHAPE_CHECKS)


# What install() changes, read in a fresh interpreter before and after: (description, expression).
TOUCHED = """
import logging
from PIL import Image
from _bentoml_sdk.service import openapi
from _bentoml_impl.server.app import ServiceAppFactory
from bentoml._internal.marshal.dispatcher import Optimizer
from uvicorn.protocols.http.h11_impl import H11Protocol

def state():
    return {
        "openapi error answers": sorted(openapi.error_responses),
        "API error logger filters": len(logging.getLogger("bentoml._internal.server.http_app").filters),
        "Pillow MAX_IMAGE_PIXELS": Image.MAX_IMAGE_PIXELS,
        "Pillow blocks_max": Image.core.get_blocks_max(),
        "uvicorn connection_made": H11Protocol.connection_made,
        "batch Optimizer.trigger_refresh": Optimizer.trigger_refresh,
        "BentoML api_endpoint_wrapper": ServiceAppFactory.api_endpoint_wrapper,
    }
"""


def test_importing_serving_modules_patches_nothing_until_install():
    run_python(
        TOUCHED
        + f"""
import importlib
before = state()
for name in {SERVING_MODULES!r}:
    importlib.import_module("serving." + name)
    after_import = state()
    assert after_import == before, (name, {{k: v for k, v in after_import.items() if v != before[k]}})
from serving import framework
from serving.settings import serving_settings
framework.install(serving_settings)
installed = state()
unchanged = [name for name in before if installed[name] == before[name]]
assert not unchanged, f"install() did not change {{unchanged}}"
assert framework.install(serving_settings) is framework.install(serving_settings)  # once per process
assert state() == installed
"""
    )


def test_the_serving_package_imports_without_torch():
    modules = ", ".join(SERVING_MODULES)
    run_python(f"import sys; from serving import {modules}; assert 'torch' not in sys.modules, 'torch was imported'")


def test_the_model_client_builds_bentomls_private_client_as_it_expects():
    framework.check_remote_proxy()
    proxy = RemoteProxy("http://127.0.0.1:9", media_type="application/json")  # builds clients, connects to nothing
    assert isinstance(proxy._async.default_headers, dict)
    assert proxy._async.media_type == "application/json"


def test_a_check_fails_loudly_when_the_private_api_changes(monkeypatch):
    def without_media_type(self, url, *, service=None, app=None):
        pass

    monkeypatch.setattr(RemoteProxy, "__init__", without_media_type)
    with pytest.raises(RuntimeError, match="media_type"):
        framework.check_remote_proxy()


def test_the_bounded_batch_wait_caps_the_learned_wait():
    """The patched Optimizer, run for real: a learned wait of a whole batch is cut to a fraction of one call."""
    run_python(
        """
from bentoml._internal.marshal.dispatcher import Optimizer
from serving import framework
framework.bound_batch_wait(0.1)
optimizer = Optimizer(10.0)
optimizer.o_a, optimizer.o_b = 1.0, 1.0
optimizer.wait = 5.0
Optimizer._unbounded_trigger_refresh = lambda self: None  # keep the values set above: only the cap runs
optimizer.trigger_refresh()
assert abs(optimizer.wait - 0.2) < 1e-9, optimizer.wait
"""
    )


def test_pillow_refuses_a_bomb_from_its_header_once_installed():
    run_python(
        """
import io
from PIL import Image
from serving import framework
picture = io.BytesIO()
Image.new("1", (10_000, 10_000)).save(picture, "PNG")  # 100 Mpx: a warning at Pillow's default, an error here
framework.bound_pillow()
assert Image.core.get_blocks_max() == framework.PILLOW_BLOCKS
try:
    Image.open(io.BytesIO(picture.getvalue()))
except Image.DecompressionBombError:
    pass
else:
    raise AssertionError("not refused")
"""
    )


def test_http_is_parsed_by_h11_and_httptools_is_not_installed():
    """The guards leave conflicting Content-Lengths and repeated Transfer-Encodings to h11 (serving/guards.py);
    httptools, which uvicorn would pick when installed, parses them otherwise. Keep it out of requirements*.txt."""
    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol

    assert importlib.util.find_spec("httptools") is None
    for requirements in REPO.glob("requirements*.txt"):
        assert "httptools" not in requirements.read_text() and "uvicorn[" not in requirements.read_text()

    async def app(scope, receive, send):
        pass

    config = uvicorn.Config(app=app, log_config=None)  # as BentoML builds it: no `http`, so "auto"
    config.load()
    assert config.http_protocol_class is H11Protocol
