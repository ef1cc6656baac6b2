"""How the web edge says "failed": the engines' errors and failures become HTTP answers here, and only here.

An item's `Failure` carries its cause; `modalkit.outcome.STATUS_OF` is the table from cause to status. The
engines' refusals (`ServiceUnavailable`, `QueueFull`, `StoreFull`, `JobExpired`) map to a status by `STATUS_OF_ERROR`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from modalkit.exceptions import JobExpired, ModalkitError, QueueFull, ServiceUnavailable, StoreFull
from modalkit.outcome import Failure, http_status
from modalkit.web.request_ids import id_headers, request_id

logger = logging.getLogger("modalkit.web")

# An engine's refusal -> the status of its answer. StoreFull is not 429: the client's rate is not the cause,
# and waiting a second will not help (its Retry-After says when the next stored result expires).
STATUS_OF_ERROR: dict[type[ModalkitError], int] = {
    ServiceUnavailable: 503,
    QueueFull: 429,
    StoreFull: 507,
    JobExpired: 410,
}
CLIENT_CLOSED_REQUEST = 499  # nginx's status for a client that left before its answer; /metrics counts it
OPENAI_PREFIX = "/v1/"  # routes that answer errors in OpenAI's shape
_OPENAI_TYPES = {401: "authentication_error", 404: "not_found_error", 429: "rate_limit_error"}
_OPENAI_CODES = {401: "invalid_api_key", 404: "not_found", 429: "rate_limit_exceeded", 413: "request_too_large"}


def error_body(path: str, status: int, detail: Any, request_id: str | None) -> dict[str, Any]:
    """The body of an error answer: `{"detail": ..., "request_id": ...}` (FastAPI's shape), or on the
    OpenAI-compatible routes OpenAI's `{"error": {"message", "type", "code", "request_id"}}`, so the `openai`
    package raises its own error classes. `openapi.ErrorBody` and `openapi.OpenAIErrorBody` document both."""
    if not path.startswith(OPENAI_PREFIX):
        return {"detail": detail, "request_id": request_id}
    kind = _OPENAI_TYPES.get(status, "server_error" if status >= 500 else "invalid_request_error")
    code = _OPENAI_CODES.get(status)
    return {"error": {"message": _message(detail), "type": kind, "code": code, "request_id": request_id}}


def error_answer(request: Request, status: int, detail: Any, headers: Mapping[str, str] | None = None) -> JSONResponse:
    body = error_body(request.url.path, status, detail, request_id(request.scope))
    return JSONResponse(body, status_code=status, headers=headers)


def _message(detail: Any) -> str:
    """One line for a detail that may be FastAPI's list of validation problems."""
    if isinstance(detail, list) and all(isinstance(p, dict) for p in detail):
        return "; ".join(f"{'.'.join(map(str, p.get('loc', [])))}: {p.get('msg', '')}" for p in detail)
    return str(detail)


def failure_exception(failure: Failure, model_name: str) -> HTTPException:
    """The HTTP error of a request whose item failed; server-side causes are logged."""
    status = http_status(failure)
    if status >= 500:
        logger.warning("predict on %r failed (%d, %s): %s", model_name, status, failure.cause, failure.detail)
    return HTTPException(status, failure.detail)


def add_error_handlers(app: FastAPI) -> None:
    for error in STATUS_OF_ERROR:
        app.add_exception_handler(error, refusal_answer)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, client_left)
    app.add_exception_handler(Exception, internal_error)


async def refusal_answer(request: Request, exc: ModalkitError) -> JSONResponse:
    status = next(code for kind, code in STATUS_OF_ERROR.items() if isinstance(exc, kind))
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after is not None else None
    return error_answer(request, status, str(exc), headers)


async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code in (204, 304):
        return Response(status_code=exc.status_code, headers=exc.headers)
    return error_answer(request, exc.status_code, exc.detail, exc.headers)


async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    return error_answer(request, 422, jsonable_encoder(exc.errors()))


async def client_left(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The stack trace goes to the log (with the trace and request ids), never into the response. Starlette runs
    # this handler outside every middleware of the app, so the request-id headers are added here.
    given = request_id(request.scope)
    logger.exception("unhandled error on %s %s", request.method, request.url.path, extra={"request_id": given})
    detail = "internal server error; the server log has the details (find them by this request_id)"
    return error_answer(request, 500, detail, id_headers(request.scope))
