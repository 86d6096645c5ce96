"""How failures are answered: one HTTP status per error kind, and 400s that name the field, as BentoML's are."""

from __future__ import annotations

import re

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
