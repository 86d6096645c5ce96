"""How failures are answered: one HTTP status per error kind, and 400s that name the field, as BentoML's are."""

from __future__ import annotations

import logging
import re

from bentoml.exceptions import BentoMLException
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


def page_error(kind: ErrorKind, message: str) -> JSONResponse:
    return JSONResponse({"error": message, "kind": kind.value}, HTTP_STATUS[kind])


def overloaded(reason: str, retry_after_s: int) -> JSONResponse:
    return JSONResponse(
        {"error": f"overloaded, retry later ({reason})"}, 503, headers={"Retry-After": str(retry_after_s)}
    )


def validation_error_body(error: ValidationError) -> dict:
    """BentoML's own 400 body for a schema error (`detail[].loc` names the field), for checks made outside it."""
    return {
        "error": f"{error.error_count()} validation error for {error.title}",
        "detail": error.errors(include_context=False, include_input=False, include_url=False),
    }


def field_error(error: ImageInputError, schema: str = "GenerateRequest") -> ValidationError:
    """An image problem as the same 400 body BentoML gives for schema errors: `detail[].loc` names the field."""
    # "pages[2].img" -> ("pages", 2, "img"), as pydantic locates nested fields
    location = tuple(int(part) if part.isdigit() else part for part in re.findall(r"[^\[\].]+", error.field))
    return ValidationError.from_exception_data(
        schema,
        [{"type": "value_error", "loc": location, "input": "<image>", "ctx": {"error": error.message}}],
    )


class BadInputIsNoError(logging.Filter):
    """BentoML logs every exception its API wrapper answers, a malformed request's 400 included, as an ERROR with a
    full traceback: anyone could flood the logs. A client's mistake becomes one WARNING line; server faults keep
    their traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
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


# The logger of bentoml._internal.server.http_app.log_exception, which the API wrapper calls.
logging.getLogger("bentoml._internal.server.http_app").addFilter(BadInputIsNoError())


def document_error_answers() -> None:
    """Make BentoML's OpenAPI document list the answers these services really give.

    BentoML 1.4 lists 400, 404 and 500 for every API from a module-level dict (`error_responses`), its 400 with a
    string `detail` where BentoML itself answers a list of field errors, and has no option to add others. This
    replaces that dict's contents, once per process. What it cannot say: response headers (`Retry-After` on
    429/503, `WWW-Authenticate` on 401), which BentoML's `Response` does not support, so the descriptions say it.
    tests/test_hardening.py checks the served document, so a BentoML upgrade that moves the dict fails there."""
    from _bentoml_sdk.service import openapi
    from bentoml._internal.service.openapi.specification import MediaType, Response, Schema

    message = {"type": "string", "description": "What went wrong, for a person."}
    field = {
        "type": "object",
        "properties": {
            "loc": {"type": "array", "items": {"anyOf": [{"type": "string"}, {"type": "integer"}]}},
            "msg": {"type": "string"},
            "type": {"type": "string"},
        },
        "description": "`loc` is the path of the offending field (`header` first for a header).",
    }
    kind = {"type": "string", "enum": [kind.value for kind in ErrorKind], "description": "Why the page failed."}

    def answer(description: str, **properties) -> Response:
        schema = Schema(type="object", required=["error"], properties={"error": message, **properties})
        return Response(description=description, content={"application/json": MediaType(schema=schema)})

    answers = {
        400: answer("Invalid request: `detail` names each bad field.", detail={"type": "array", "items": field}),
        401: answer(
            "Missing or wrong API key (when one is configured); sent with `WWW-Authenticate: Bearer`.",
            detail={"type": "array", "items": field},
        ),
        404: answer("No such route."),
        408: answer("The body did not arrive in time (see PICTUREBOOK_BODY_READ_MIN_S)."),
        413: answer("The body is larger than PICTUREBOOK_MAX_BODY_BYTES."),
        415: answer("The body is not `application/json`.", detail={"type": "array", "items": field}),
        422: answer(
            "The page cannot be drawn as asked (`invalid`), or its content was refused (`content_refused`: "
            "`field` names the text, or the picture still flagged after its redraws).",
            kind=kind,
            field={"type": "string", "description": "The refused field, e.g. `prompt` or `pages[2].text`."},
        ),
        429: answer("Too many requests in flight; sent with `Retry-After` (seconds)."),
        500: answer("The page could not be drawn (a fault of the service, logged).", kind=kind),
        503: answer("Overloaded or not ready; sent with `Retry-After` (seconds)."),
        504: answer("The page was not drawn within PICTUREBOOK_REQUEST_TIMEOUT_S.", kind=kind),
        507: answer("The page does not fit in the accelerator's memory, even alone.", kind=kind),
    }
    openapi.error_responses.clear()
    openapi.error_responses.update(answers)


document_error_answers()
