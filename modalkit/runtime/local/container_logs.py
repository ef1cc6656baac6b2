"""Logging inside a local container: the server's format, on the server's stream (a container's stderr is the
server's), at the level the server logs at; each line names the container and the trace of the batch it was
written in (the batch span is a child of its first request, so that is the batch's trace)."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator

from modalkit.logs import LEVEL_ENV, stderr_handler

_batch_trace: str | None = None  # a container runs one batch at a time: the trace of the one running now


class ContainerContext(logging.Filter):
    def __init__(self, model_name: str) -> None:
        super().__init__()
        self._fields = {"container_id": str(os.getpid()), "model": model_name}

    def filter(self, record: logging.LogRecord) -> bool:
        if getattr(record, "trace_id", None) is None and _batch_trace is not None:
            record.trace_id = _batch_trace
        record.fields = {**self._fields, **(getattr(record, "fields", None) or {})}
        return True


def configure(model_name: str) -> None:
    """Every logger of the container (the model's, modalkit's) to stderr, as `modalkit serve` logs."""
    text = "%(asctime)s %(levelname)s %(name)s [%(trace_id)s] container %(process)d: %(message)s"
    root = logging.getLogger()
    root.handlers[:] = [stderr_handler(None, text, ContainerContext(model_name))]
    level = os.environ.get(LEVEL_ENV, "INFO").upper()
    root.setLevel(level if level in logging.getLevelNamesMapping() else "INFO")


@contextlib.contextmanager
def batch_trace(trace_id: str | None) -> Iterator[None]:
    """Lines logged meanwhile, on any thread of the container, carry `trace_id`."""
    global _batch_trace
    _batch_trace = trace_id
    try:
        yield
    finally:
        _batch_trace = None
