"""The front's client to the model service, speaking JSON. The one place that uses BentoML's private client API.

Why: `bentoml.depends` gives the front a proxy that speaks BentoML's pickle media type between services, and the
model service refuses pickled bodies (a pickle is code; see serving/guards.py). BentoML 1.4 has no public option
for the media type, so this builds the same class `bentoml.depends` builds — `_bentoml_impl.client.RemoteProxy` —
with `media_type="application/json"`, and adds the API key to its sessions through `_async.default_headers` (the
dict its HTTP sessions are created with; there is no public setter).

When upgrading BentoML, check that `RemoteProxy(url, service=..., media_type=...)` still exists with that
signature, that it still has `_async.default_headers` (a dict) and `to_async`, and that `__aenter__`/`close` still
open and close its sessions. tests/test_model_client.py fails loudly if any of these changes shape.
"""

from __future__ import annotations

import inspect

from _bentoml_impl.client import RemoteProxy


def check_private_api() -> None:
    """Raise if the private API this module relies on changed shape."""
    parameters = inspect.signature(RemoteProxy.__init__).parameters
    missing = {"url", "service", "media_type"} - set(parameters)
    if missing:
        raise RuntimeError(f"bentoml's RemoteProxy lost the parameters {missing}: see serving/model_client.py")
    for name in ("__aenter__", "close", "to_async"):
        if not hasattr(RemoteProxy, name):
            raise RuntimeError(f"bentoml's RemoteProxy has no {name}: see serving/model_client.py")


class ModelClient:
    """JSON calls to the model service's APIs, or BentoML's in-process proxy when both run in one process."""

    def __init__(self, dependency, resolved, api_key: str | None):
        """`dependency` is the `bentoml.depends(...)` class attribute, `resolved` what it gave the instance (its
        resolution sets `dependency.url` when the model service runs in its own process)."""
        self._proxy = None
        self.calls = resolved.to_async
        if dependency.url:
            check_private_api()
            self._proxy = RemoteProxy(dependency.url, service=dependency.on, media_type="application/json")
            headers = self._proxy._async.default_headers
            if not isinstance(headers, dict):
                raise RuntimeError("bentoml's client default_headers is no longer a dict: see serving/model_client.py")
            if api_key is not None:
                headers["Authorization"] = f"Bearer {api_key}"

    async def open(self) -> None:
        if self._proxy is not None:
            await self._proxy.__aenter__()
            self.calls = self._proxy.to_async

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()
