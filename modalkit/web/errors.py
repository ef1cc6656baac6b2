"""How the web edge says "failed": the engines' errors and failures become HTTP answers here, and only here.

An item's `Failure` carries its cause; `modalkit.outcome.STATUS_OF` is the table from cause to status. The
engines' refusals (`ServiceUnavailable`, `QueueFull`, `StoreFull`, `JobExpired`) map to a status by `STATUS_OF_ERROR`.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from starlette.requests import ClientDisconnect

from modalkit.exceptions import JobExpired, ModalkitError, QueueFull, ServiceUnavailable, StoreFull
from modalkit.outcome import Failure, http_status

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


def failure_exception(failure: Failure, model_name: str) -> HTTPException:
    """The HTTP error of a request whose item failed; server-side causes are logged."""
    status = http_status(failure)
    if status >= 500:
        logger.warning("predict on %r failed (%d, %s): %s", model_name, status, failure.cause, failure.detail)
    return HTTPException(status, failure.detail)


def add_error_handlers(app: FastAPI) -> None:
    for error in STATUS_OF_ERROR:
        app.add_exception_handler(error, refusal_answer)  # type: ignore[arg-type]
    app.add_exception_handler(ClientDisconnect, client_left)
    app.add_exception_handler(Exception, internal_error)


async def refusal_answer(request: Request, exc: ModalkitError) -> JSONResponse:
    status = next(code for kind, code in STATUS_OF_ERROR.items() if isinstance(exc, kind))
    retry_after = getattr(exc, "retry_after", None)
    headers = {"Retry-After": str(math.ceil(retry_after))} if retry_after is not None else None
    return JSONResponse({"detail": str(exc)}, status_code=status, headers=headers)


async def client_left(request: Request, exc: Exception) -> Response:
    return Response(status_code=CLIENT_CLOSED_REQUEST)  # nobody reads it


async def internal_error(request: Request, exc: Exception) -> JSONResponse:
    # The stack trace goes to the log (with the trace id), never into the response.
    logger.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": "internal server error; the server log has the details"}, status_code=500)
