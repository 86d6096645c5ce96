"""Where this project reaches into BentoML, uvicorn and Pillow past their public API: every patch, in one place.

`install(settings)` applies them all, once per process; service.py calls it near its top, so every `bentoml serve`
process (the front's workers, the model's, the arbiter) has them before any server starts. Importing this module, or
any other in serving/, changes nothing (tests/test_framework.py checks it in a fresh interpreter).

Each patch below names the version it was checked against and has a shape check, run by `install` (so a BentoML
or uvicorn upgrade that moved a private name stops the server at start, naming it) and by tests/test_framework.py.

- `quiet_client_errors`: BentoML's API-wrapper logger logs a client's 4xx as one WARNING (`check_api_error_logger`)
- `document_error_answers`: BentoML's OpenAPI `error_responses` dict lists our answers (`check_openapi_errors`)
- `name_fields_in_400s`: BentoML's own schema 400s carry `field` beside `loc` (`check_api_endpoint_wrapper`)
- `bound_batch_wait`: BentoML's batch dispatcher, `Optimizer.trigger_refresh` (`check_batch_optimizer`)
- `bound_connections`: uvicorn's `H11Protocol.connection_made` (`check_uvicorn_protocol`)
- `bound_pillow`: Pillow's `Image.MAX_IMAGE_PIXELS` and its block cache (`check_pillow`)
- no patch: BentoML's private `RemoteProxy`, used by serving/model_client.py (`check_remote_proxy`)

Checked against bentoml 1.4.40, uvicorn 0.54.0 (h11 0.16.0), pillow 13.0.0 (CHECKED_AGAINST; the test file also
fails when an installed version differs, so an upgrade is a deliberate look at this file).

The HTTP parser is h11 (httptools is not installed, and uvicorn picks h11 without it): the guards leave to h11 the
refusal of conflicting Content-Lengths and repeated Transfer-Encodings (serving/guards.py), and the connection bound
patches h11's protocol only. `check_uvicorn_protocol` refuses to start where uvicorn would pick another parser.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging

from .connections import OpenConnections
from .settings import ServingSettings

IMAGE_PIXEL_LIMIT = 40_000_000  # Pillow raises DecompressionBombError above twice this, from the header
PILLOW_BLOCKS = 8  # 16 MB blocks kept in Pillow's cache for the next decode: 128 MB at most
API_ERROR_LOGGER = "bentoml._internal.server.http_app"  # the logger of its log_exception, which the API wrapper calls


CHECKED_AGAINST = {"bentoml": "1.4.40", "uvicorn": "0.54.0", "h11": "0.16.0", "pillow": "13.0.0"}

_installed: OpenConnections | None = None


def install(settings: ServingSettings) -> OpenConnections:
    """Check every private shape, then apply every patch, in this process; once (later calls return the first).
    Returns uvicorn's open connections in this process, which the model service's draining waits on."""
    global _installed
    if _installed is not None:
        return _installed
    check_shapes()
    quiet_client_errors()
    document_error_answers()
    name_fields_in_400s()
    bound_batch_wait(settings.batch_wait_fraction)
    connections = OpenConnections(settings.header_timeout_s, settings.max_connections)
    bound_connections(connections)
    bound_pillow()
    _installed = connections
    return _installed


def check_shapes() -> None:
    """Raise, naming what moved, if a private name a patch (or serving/model_client.py) relies on changed shape."""
    check_api_error_logger()
    check_openapi_errors()
    check_api_endpoint_wrapper()
    check_batch_optimizer()
    check_uvicorn_protocol()
    check_pillow()
    check_remote_proxy()


def _changed(what: str) -> RuntimeError:
    return RuntimeError(f"{what} changed shape: see serving/framework.py")


# -- BentoML 1.4.40: a client's mistake is no ERROR in the log --------------------------------------------------------


class BadInputIsNoError(logging.Filter):
    """BentoML logs every exception its API wrapper answers, a malformed request's 400 included, as an ERROR with a
    full traceback: anyone could flood the logs. A client's mistake becomes one WARNING line; server faults keep
    their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        from bentoml.exceptions import BentoMLException
        from pydantic import ValidationError

        error = record.exc_info[1] if record.exc_info else None
        client_error = isinstance(error, ValidationError) or (
            isinstance(error, BentoMLException) and error.error_code.value < 500
        )
        if client_error:
            summary = " ".join(str(error).split())[:300]
            record.msg, record.args = f"{record.getMessage()}: bad input: {summary}", ()
            record.levelno, record.levelname = logging.WARNING, "WARNING"
            record.exc_info = record.exc_text = None
        return True


def check_api_error_logger() -> None:
    from bentoml._internal.server import http_app

    if getattr(http_app, "logger", None) is not logging.getLogger(API_ERROR_LOGGER):
        raise _changed("bentoml's log_exception logger (bentoml._internal.server.http_app.logger)")


def quiet_client_errors() -> None:
    logger = logging.getLogger(API_ERROR_LOGGER)
    if not any(isinstance(f, BadInputIsNoError) for f in logger.filters):
        logger.addFilter(BadInputIsNoError())


# -- BentoML 1.4.40: the OpenAPI document lists the answers these services give ----------------------------------------


def check_openapi_errors() -> None:
    from _bentoml_sdk.service import openapi
    from bentoml._internal.service.openapi.specification import Response

    responses = getattr(openapi, "error_responses", None)
    if not isinstance(responses, dict) or not all(isinstance(r, Response) for r in responses.values()):
        raise _changed("bentoml's OpenAPI error answers (_bentoml_sdk.service.openapi.error_responses)")


def document_error_answers() -> None:
    """BentoML 1.4 lists 400, 404 and 500 for every API from a module-level dict (`error_responses`), its 400 with a
    string `detail` where BentoML itself answers a list of field errors, and has no option to add others. This
    replaces that dict's contents with serving/errors.py's answers. What it cannot say: response headers
    (`Retry-After`, `WWW-Authenticate`), which BentoML's `Response` does not support, so the descriptions say it."""
    from _bentoml_sdk.service import openapi
    from bentoml._internal.service.openapi.specification import MediaType, Response, Schema

    from .errors import documented_answers

    message = {"type": "string", "description": "What went wrong, for a person."}

    def answer(description: str, properties: dict) -> Response:
        schema = Schema(type="object", required=["error"], properties={"error": message, **properties})
        return Response(description=description, content={"application/json": MediaType(schema=schema)})

    answers = {status: answer(*described) for status, described in documented_answers().items()}
    openapi.error_responses.clear()
    openapi.error_responses.update(answers)


# -- BentoML 1.4.40: its own 400s name each field as `field` too -------------------------------------------------------


def check_api_endpoint_wrapper() -> None:
    from _bentoml_impl.server.app import ServiceAppFactory

    wrapper = getattr(ServiceAppFactory, "_unpatched_api_endpoint_wrapper", None) or getattr(
        ServiceAppFactory, "api_endpoint_wrapper", None
    )
    if not inspect.iscoroutinefunction(wrapper) or list(inspect.signature(wrapper).parameters) != [
        "self",
        "name",
        "request",
    ]:
        raise _changed("bentoml's ServiceAppFactory.api_endpoint_wrapper(self, name, request)")


def name_fields_in_400s() -> None:
    """BentoML answers a schema error itself (`ServiceAppFactory.api_endpoint_wrapper` catches the ValidationError
    and builds `{"error", "detail": [{"loc", ...}]}` inline, no hook). This wraps that method: a 400 it made with a
    `detail` list gets serving/errors.py's `field` on each entry, the one field string every 400 carries."""
    from _bentoml_impl.server.app import ServiceAppFactory
    from starlette.responses import JSONResponse

    from .errors import with_field

    if hasattr(ServiceAppFactory, "_unpatched_api_endpoint_wrapper"):
        return
    original = ServiceAppFactory.api_endpoint_wrapper

    @functools.wraps(original)
    async def api_endpoint_wrapper(self, name, request):
        response = await original(self, name, request)
        if response.status_code == 400 and isinstance(response, JSONResponse):
            body = json.loads(response.body)
            if isinstance(body, dict) and isinstance(body.get("detail"), list):
                body["detail"] = [with_field(entry) if isinstance(entry, dict) else entry for entry in body["detail"]]
                response.body = response.render(body)
                response.headers["content-length"] = str(len(response.body))
        return response

    ServiceAppFactory._unpatched_api_endpoint_wrapper = original
    ServiceAppFactory.api_endpoint_wrapper = api_endpoint_wrapper


# -- BentoML 1.4.40: how long the adaptive batcher holds a lone request ---------------------------------------------


def check_batch_optimizer():
    from bentoml._internal.marshal.dispatcher import Optimizer

    optimizer = Optimizer(1.0)
    if not callable(getattr(Optimizer, "trigger_refresh", None)) or not all(
        isinstance(getattr(optimizer, name, None), (int, float)) for name in ("wait", "o_a", "o_b")
    ):
        raise _changed("bentoml's batching Optimizer (trigger_refresh, wait, o_a, o_b)")
    return Optimizer


def bound_batch_wait(fraction: float) -> None:
    """A lone request waits for batch-mates at most `fraction` of the dispatcher's own estimate of a one-page call
    (`o_a + o_b`), whatever the learned `wait` (docs/DESIGN.md, "Batching")."""
    optimizer_class = check_batch_optimizer()
    original = getattr(optimizer_class, "_unbounded_trigger_refresh", optimizer_class.trigger_refresh)

    def trigger_refresh(optimizer) -> None:
        original(optimizer)
        optimizer.wait = min(optimizer.wait, fraction * (optimizer.o_a + optimizer.o_b))

    optimizer_class._unbounded_trigger_refresh = original
    optimizer_class.trigger_refresh = trigger_refresh


# -- uvicorn 0.54.0 (h11 0.16.0): connections that send no headers, and too many connections -------------------------


def check_uvicorn_protocol():
    """h11 as the parser uvicorn picks, and its protocol with the attributes serving/connections.py reads."""
    import asyncio

    import uvicorn
    from uvicorn.protocols.http.h11_impl import H11Protocol, RequestResponseCycle
    from uvicorn.server import ServerState

    async def no_app(scope, receive, send) -> None:
        pass

    config = uvicorn.Config(app=no_app, log_config=None)  # BentoML passes no `http`: uvicorn's default, "auto"
    config.load()
    if config.http_protocol_class is not H11Protocol:
        raise RuntimeError(
            f"uvicorn would parse HTTP with {config.http_protocol_class.__name__}, not h11 (httptools installed?): "
            "the guards rely on h11 refusing ambiguous framing, and the connection bound patches h11 only; "
            "see serving/framework.py"
        )
    loop = asyncio.new_event_loop()
    try:
        protocol = H11Protocol(config, ServerState(), app_state={}, _loop=loop)
    finally:
        loop.close()
    if not callable(getattr(H11Protocol, "connection_made", None)) or not all(
        hasattr(protocol, name) for name in ("loop", "transport", "cycle", "connections")
    ):
        raise _changed("uvicorn's H11Protocol (connection_made, loop, transport, cycle, connections)")
    if not isinstance(protocol.connections, set) or "self.response_complete" not in inspect.getsource(
        RequestResponseCycle.__init__
    ):
        raise _changed("uvicorn's ServerState.connections / RequestResponseCycle.response_complete")
    return H11Protocol


def bound_connections(connections: OpenConnections) -> None:
    """uvicorn closes a connection only after a response (keep-alive), and BentoML builds uvicorn's Config itself,
    passing neither `limit_concurrency` nor a header timeout: every new connection is handed to `connections`,
    which closes it past the limit or when its headers do not come in time."""
    protocol_class = check_uvicorn_protocol()
    original = getattr(protocol_class, "_unbounded_connection_made", protocol_class.connection_made)

    def connection_made(protocol, transport) -> None:
        original(protocol, transport)
        connections.opened(protocol, transport)

    protocol_class._unbounded_connection_made = original
    protocol_class.connection_made = connection_made


# -- Pillow 13.0.0: decompression bombs, and where freed picture memory goes ------------------------------------------


def check_pillow() -> None:
    from PIL import Image

    if not isinstance(getattr(Image, "MAX_IMAGE_PIXELS", None), int) or not callable(
        getattr(Image.core, "set_blocks_max", None)
    ):
        raise _changed("Pillow's Image.MAX_IMAGE_PIXELS / Image.core.set_blocks_max")


def bound_pillow() -> None:
    """A picture's pixel count is refused from its header (serving/images.py checks the configured cap itself, and
    this is Pillow's own backstop at twice IMAGE_PIXEL_LIMIT). Pillow frees a large image's 16 MB blocks to the
    allocator of the thread that decoded it, and glibc keeps them in that thread's arena: sixteen decoding threads
    kept sixteen pictures' worth (2 GB for 16 Mpx PNGs). In Pillow's own block cache instead, whichever thread
    decodes next reuses them."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = IMAGE_PIXEL_LIMIT
    Image.core.set_blocks_max(PILLOW_BLOCKS)


# -- BentoML 1.4.40: its private client, used (not patched) by serving/model_client.py --------------------------------
# Its use stays in model_client.py: it patches nothing process-wide, it only builds a client object the way
# `bentoml.depends` does but speaking JSON, and that code belongs with the client it makes. Its shape is checked here,
# with every other private name, so an upgrade has one place to look.


def check_remote_proxy() -> None:
    """`_bentoml_impl.client.RemoteProxy(url, service=..., media_type=...)` with `__aenter__`, `close`, `to_async`
    (its `_async.default_headers` dict is checked where it is used, on the instance)."""
    from _bentoml_impl.client import RemoteProxy

    parameters = inspect.signature(RemoteProxy.__init__).parameters
    missing = {"url", "service", "media_type"} - set(parameters)
    if missing:
        raise RuntimeError(f"bentoml's RemoteProxy lost the parameters {missing}: see serving/framework.py")
    for name in ("__aenter__", "close", "to_async"):
        if not hasattr(RemoteProxy, name):
            raise RuntimeError(f"bentoml's RemoteProxy has no {name}: see serving/framework.py")
