"""The front's client to the model service, speaking JSON: the same client `bentoml.depends` builds, with JSON bodies.

`bentoml.depends` gives the front a proxy that speaks BentoML's pickle media type between services, and the model
service refuses pickled bodies (a pickle is code; serving/guards.py). BentoML 1.4 has no public option for the
media type, so this builds its private `_bentoml_impl.client.RemoteProxy` with `media_type="application/json"`, and
adds the API key through `_async.default_headers` (no public setter). The private names it uses are checked with
every other one in serving/framework.py (`check_remote_proxy`).
"""

from __future__ import annotations

from _bentoml_impl.client import RemoteProxy

from .framework import check_remote_proxy


class ModelClient:
    """JSON calls to the model service's APIs, or BentoML's in-process proxy when both run in one process."""

    def __init__(self, dependency, resolved, api_key: str | None):
        """`dependency` is the `bentoml.depends(...)` class attribute, `resolved` what it gave the instance (its
        resolution sets `dependency.url` when the model service runs in its own process)."""
        self._proxy = None
        self.calls = resolved.to_async
        if dependency.url:
            check_remote_proxy()
            self._proxy = RemoteProxy(dependency.url, service=dependency.on, media_type="application/json")
            headers = self._proxy._async.default_headers
            if not isinstance(headers, dict):
                raise RuntimeError("bentoml's client default_headers is no longer a dict: see serving/framework.py")
            if api_key is not None:
                headers["Authorization"] = f"Bearer {api_key}"

    async def open(self) -> None:
        if self._proxy is not None:
            await self._proxy.__aenter__()
            self.calls = self._proxy.to_async

    async def close(self) -> None:
        if self._proxy is not None:
            await self._proxy.close()
