"""How failures are answered: one HTTP status per error kind, and one function per kind of answer.

Every answer is a Starlette response, so an API returns it and an ASGI middleware sends it the same way:
`await answer(scope, receive, send)`. Every body has `error`, for a person. A 400 about fields has `detail`, one
entry per field, with `loc` (the path as pydantic gives it: `["pages", 3, "prompt"]`) and `field` (the same path
as one string: `"pages[3].prompt"`); a refused text's 422 has `kind` and the same `field`.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError
from starlette.responses import JSONResponse

from pipeline.page import ErrorKind

from .images import ImageInputError

HTTP_STATUS: dict[ErrorKind, int] = {
    ErrorKind.invalid: 422,
    ErrorKind.timeout: 504,
    ErrorKind.out_of_memory: 507,
    ErrorKind.internal: 500,
    ErrorKind.content_refused: 422,
}
# A kind without a status would become a KeyError at the edge: refuse to start instead.
if set(HTTP_STATUS) != set(ErrorKind):
    raise RuntimeError(f"error kinds without an HTTP status: {set(ErrorKind) - set(HTTP_STATUS)}")


class ErrorAnswer(JSONResponse):
    """A JSON error, written as `json.dumps` writes it (the bytes the guards have always sent)."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=False).encode("utf-8")


def _answer(status: int, error: str, *, retry_after_s: int | None = None, close: bool = False, **more) -> ErrorAnswer:
    headers = {}
    if retry_after_s is not None:
        headers["Retry-After"] = str(retry_after_s)
    if close:  # the connection's framing or its sender cannot be trusted any further
        headers["Connection"] = "close"
    return ErrorAnswer({"error": error, **more}, status, headers=headers)


# -- the request's fields ------------------------------------------------------------------------------------------


def field_path(loc: tuple | list) -> str:
    """A pydantic location as one string: ("pages", 3, "prompt") -> "pages[3].prompt"."""
    path = ""
    for part in loc:
        path += f"[{part}]" if isinstance(part, int) else f".{part}" if path else str(part)
    return path


def with_field(entry: dict) -> dict:
    """A `detail` entry with `field`, the string form of its `loc`."""
    return {**entry, "field": field_path(entry["loc"])} if "loc" in entry else entry


def validation_error_body(error: ValidationError) -> dict:
    """BentoML's own 400 body for a schema error, each `detail` entry with its `field` as well."""
    details = error.errors(include_context=False, include_input=False, include_url=False)
    return {
        "error": f"{error.error_count()} validation error for {error.title}",
        "detail": list(map(with_field, details)),
    }


def field_error(error: ImageInputError, schema: str = "GenerateRequest") -> ValidationError:
    """An image problem as a schema error on its field, so it is answered as BentoML answers schema errors."""
    # "pages[2].img" -> ("pages", 2, "img"), as pydantic locates nested fields
    location = tuple(int(part) if part.isdigit() else part for part in re.findall(r"[^\[\].]+", error.field))
    return ValidationError.from_exception_data(
        schema,
        [{"type": "value_error", "loc": location, "input": "<image>", "ctx": {"error": error.message}}],
    )


def invalid_fields(error: ValidationError) -> ErrorAnswer:
    """400: the request's schema or pictures are wrong; `detail` names each field."""
    return ErrorAnswer(validation_error_body(error), 400)


def content_refused(field: str, message: str, category: str | None = None) -> ErrorAnswer:
    """422: a text the user wrote was refused by the content filter; `field` names it (`pages[2].text`), and
    `category` says why when the moderation model refused it."""
    more = {"category": category} if category is not None else {}
    return _answer(
        HTTP_STATUS[ErrorKind.content_refused], message, kind=ErrorKind.content_refused.value, field=field, **more
    )


def moderation_unavailable(retry_after_s: int) -> ErrorAnswer:
    """503 with Retry-After: the moderation model could not judge the texts, so nothing is drawn (fail closed)."""
    message = "the text moderation is unavailable; nothing was drawn, retry later"
    return _answer(503, message, retry_after_s=retry_after_s)


# -- headers and bodies ----------------------------------------------------------------------------------------------


def _header(name: str) -> list[dict]:
    return [with_field({"loc": ["header", name]})]


def ambiguous_header(name: str) -> ErrorAnswer:
    """400: a header some guard or BentoML decides on was sent twice (or the body framed two ways)."""
    message = f"the {name} header is ambiguous: sent twice, or with Transfer-Encoding"
    return _answer(400, message, close=True, detail=_header(name))


def missing_api_key() -> ErrorAnswer:
    answer = _answer(401, "missing or wrong API key", detail=_header("Authorization"))
    answer.headers["WWW-Authenticate"] = "Bearer"
    return answer


def not_json() -> ErrorAnswer:
    return _answer(415, "the body must be application/json", detail=_header("Content-Type"))


def pickle_refused() -> ErrorAnswer:
    return _answer(415, "request bodies must be application/json (pickles are refused)")


def body_too_large(max_bytes: int) -> ErrorAnswer:
    return _answer(413, f"the body is larger than {max_bytes} bytes", close=True)


def body_too_slow(received: int, allowed_s: float) -> ErrorAnswer:
    return _answer(408, f"the body did not arrive in time ({received} bytes in {allowed_s:.0f} s)", close=True)


def client_left_mid_body() -> ErrorAnswer:
    return _answer(400, "the client left before sending the whole body")


def client_closed() -> ErrorAnswer:
    """499 (nginx's "client closed request"): nobody reads it, but the request must end with an answer."""
    return _answer(499, "the client closed the connection")


# -- load and the server's life ------------------------------------------------------------------------------------


def too_many(message: str, retry_after_s: int, *, close: bool = False) -> ErrorAnswer:
    """429 with Retry-After: requests in flight, bodies arriving, or books drawing, past their limit."""
    return _answer(429, message, retry_after_s=retry_after_s, close=close)


def overloaded(reason: str, retry_after_s: int) -> ErrorAnswer:
    """503 with Retry-After: the model service's batch queue is full."""
    return _answer(503, f"overloaded, retry later ({reason})", retry_after_s=retry_after_s)


def shutting_down(retry_after_s: int) -> ErrorAnswer:
    """503 for new work while draining: another replica can take it."""
    return _answer(503, "shutting down; retry on another replica", retry_after_s=retry_after_s, close=True)


def store_unavailable(reason: str, retry_after_s: int) -> ErrorAnswer:
    """503 with Retry-After: the book store (Redis) did not answer at submit; nothing was stored."""
    message = f"books are unavailable: the book store did not answer ({reason}); /generate still works, retry later"
    return _answer(503, message, retry_after_s=retry_after_s)


def not_ready(reason: str) -> ErrorAnswer:
    """503 from /readyz."""
    return _answer(503, reason)


# -- pages and books -----------------------------------------------------------------------------------------------


def page_error(kind: ErrorKind, message: str) -> ErrorAnswer:
    """The page could not be drawn: the status of its error kind."""
    return _answer(HTTP_STATUS[kind], message, kind=kind.value)


def not_a_job() -> ErrorAnswer:
    return _answer(405, "a book is a job: POST /book/submit, then poll /book/status")


def bad_query(message: str) -> ErrorAnswer:
    return _answer(400, message)


def not_found(message: str) -> ErrorAnswer:
    return _answer(404, message)


def conflict(message: str) -> ErrorAnswer:
    """409: what was asked does not exist yet in the book's state (a PDF of a book still drawing)."""
    return _answer(409, message)


# -- what the API document says about them (serving/framework.py puts it in BentoML's document) -----------------------


def documented_answers() -> dict[int, tuple[str, dict[str, dict]]]:
    """Every status these services answer with: its description and its body's properties besides `error`."""
    field = {
        "type": "object",
        "properties": {
            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "field": {"type": "string", "description": "`loc` as one string, e.g. `pages[3].prompt`."},
            "msg": {"type": "string"},
            "type": {"type": "string"},
        },
        "description": "`loc` is the path of the offending field (`header` first for a header).",
    }
    details = {"detail": {"type": "array", "items": field}}
    kind = {
        "kind": {"type": "string", "enum": [kind.value for kind in ErrorKind], "description": "Why the page failed."}
    }
    refused = {
        "field": {"type": "string", "description": "The refused field, e.g. `prompt` or `pages[2].text`."},
        "category": {"type": "string", "description": "Why the moderation model refused it, e.g. `Violent`."},
    }
    return {
        400: ("Invalid request: `detail` names each bad field.", details),
        401: ("Missing or wrong API key (when one is configured); sent with `WWW-Authenticate: Bearer`.", details),
        404: ("No such route, or no such book (unknown, or expired).", {}),
        408: ("The body did not arrive in time (see PICTUREBOOK_BODY_READ_MIN_S).", {}),
        413: ("The body is larger than PICTUREBOOK_MAX_BODY_BYTES.", {}),
        415: ("The body is not `application/json`.", details),
        422: (
            "The page cannot be drawn as asked (`invalid`), or its content was refused (`content_refused`: "
            "`field` names the text, or the picture still flagged after its redraws).",
            {**kind, **refused},
        ),
        429: ("Too many requests in flight; sent with `Retry-After` (seconds).", {}),
        500: ("The page could not be drawn (a fault of the service, logged).", kind),
        503: ("Overloaded, not ready, or the text moderation unavailable; sent with `Retry-After` (seconds).", {}),
        504: ("The page was not drawn within PICTUREBOOK_REQUEST_TIMEOUT_S.", kind),
        507: ("The page does not fit in the accelerator's memory, even alone.", kind),
    }
