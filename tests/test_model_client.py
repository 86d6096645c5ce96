"""The one private BentoML API the service relies on (serving/model_client.py) still has the shape it needs."""

import subprocess
import sys

import pytest
from _bentoml_impl.client import RemoteProxy

from serving.model_client import check_private_api
from testkit.server import REPO


def test_bentoml_private_client_api_has_the_shape_we_use():
    check_private_api()  # raises, naming what changed, after a BentoML upgrade that moved it
    proxy = RemoteProxy("http://127.0.0.1:9", media_type="application/json")  # builds clients, connects to nothing
    assert isinstance(proxy._async.default_headers, dict)
    assert proxy._async.media_type == "application/json"


def test_check_fails_loudly_when_the_private_api_changes(monkeypatch):
    def without_media_type(self, url, *, service=None, app=None):
        pass

    monkeypatch.setattr(RemoteProxy, "__init__", without_media_type)
    with pytest.raises(RuntimeError, match="media_type"):
        check_private_api()


def test_serving_package_imports_without_torch():
    modules = ", ".join(path.stem for path in (REPO / "serving").glob("*.py") if path.stem != "__init__")
    code = f"import sys; from serving import {modules}; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
