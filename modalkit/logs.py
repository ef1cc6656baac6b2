"""Logging for `modalkit serve`: JSON lines when stderr is not a terminal, each with its trace id."""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from contextvars import ContextVar

from opentelemetry import trace

# The id of the HTTP request being answered (the client's `x-request-id`, or a new one): set by the web app's
# request-id middleware, put on every log line written while the request is answered.
REQUEST_ID: ContextVar[str | None] = ContextVar("modalkit_request_id", default=None)
# The level `configure_logging` chose, for the local containers it starts (they inherit the environment).
LEVEL_ENV = "MODALKIT_LOG_LEVEL"
# One INFO line per answered request, written by the web app; `modalkit serve --access-log` turns it on.
ACCESS_LOGGER = "modalkit.access"


class TraceContext(logging.Filter):
    """Adds `trace_id`, `span_id` and `request_id` to a record, unless it already carries them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None:
            context = trace.get_current_span().get_span_context()
            record.trace_id = format(context.trace_id, "032x") if context.is_valid else None
            record.span_id = format(context.span_id, "016x") if context.is_valid else None
        if getattr(record, "request_id", None) is None:
            record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
            "trace_id": getattr(record, "trace_id", None),
            "span_id": getattr(record, "span_id", None),
            "request_id": getattr(record, "request_id", None),
        }
        fields = getattr(record, "fields", None)  # logger.info(..., extra={"fields": {...}}): more keys on the line
        if isinstance(fields, dict):
            line.update(fields)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line)


def stderr_handler(
    json_lines: bool | None = None,
    text: str = "%(asctime)s %(levelname)s %(name)s [%(trace_id)s] %(message)s",
    *filters: logging.Filter,
) -> logging.Handler:
    """A handler on stderr: JSON lines, unless stderr is a terminal (or `json_lines` says otherwise), else `text`;
    `filters` run first, then the trace and request ids are added to every record."""
    handler = logging.StreamHandler(sys.stderr)
    for extra in (*filters, TraceContext()):
        handler.addFilter(extra)
    if json_lines is None:
        json_lines = not sys.stderr.isatty()
    handler.setFormatter(JsonFormatter() if json_lines else logging.Formatter(text))
    return handler


def configure_logging(level: str = "info", json_lines: bool | None = None, access_log: bool = False) -> None:
    """Route every logger (uvicorn's too) to one stderr handler; called by the CLI, never on import.

    The access log (one INFO line per request on `modalkit.access`) is written only with `access_log`, and then
    whatever `level` is.
    """
    handler = stderr_handler(json_lines)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    os.environ[LEVEL_ENV] = level.upper()  # local containers log at the same level
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger(ACCESS_LOGGER).setLevel(logging.INFO if access_log else logging.WARNING)
