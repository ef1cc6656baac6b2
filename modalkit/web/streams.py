"""One open stream as the web edge sees it: the first chunk awaited before the answer starts, every chunk
metered (time to first chunk, chunks, outcome) and the generation traced as a child span of the request.

`/predict_stream` and the OpenAI generation routes both read a stream through `open_stream`.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import Request
from opentelemetry.trace import Span

from modalkit import telemetry
from modalkit.logs import REQUEST_ID
from modalkit.outcome import Failure
from modalkit.web.errors import failure_exception
from modalkit.web.metrics import Metrics
from modalkit.web.predict_routes import answered
from modalkit.web.served import Served

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}  # no proxy may hold chunks back
_NOTHING = object()


async def open_stream(request: Request, served: Served, name: str, item: Any, metrics: Metrics) -> AsyncIterator[Any]:
    """The stream's chunks, its first one already come; a stream that fails before its first chunk is an HTTP
    error (its status from the failure's cause), one that fails later ends with the `Failure`.

    The first chunk must come within `limits.request_timeout_seconds` (504); a client that leaves first cancels it.
    """
    route = request.url.path
    started = time.perf_counter()
    span = telemetry.tracer().start_span("modalkit.stream", attributes={"modalkit.model_name": name})
    chunks = served.runtime.stream(name, item)
    try:
        first = await answered(request, anext(chunks, _NOTHING), served.limits.request_timeout_seconds)
        if isinstance(first, Failure):
            raise failure_exception(first, name)
    except BaseException:
        await _close(chunks, span, metrics, route, "failed", 0)
        raise
    metrics.first_chunk.labels(route).observe(time.perf_counter() - started)
    return _metered(first, chunks, span, metrics, route)


async def _metered(
    first: Any, chunks: AsyncIterator[Any], span: Span, metrics: Metrics, route: str
) -> AsyncIterator[Any]:
    outcome, count = "cancelled", 0  # what it is unless it runs to its end: the client left, or the route stopped
    try:
        rest = chunks if first is _NOTHING else _after(first, chunks)
        async for chunk in rest:
            if isinstance(chunk, Failure):
                outcome = "failed"
                span.set_attribute("modalkit.failure_cause", chunk.cause)
                yield chunk
                return
            count += 1
            yield chunk
        outcome = "completed"
    finally:
        await _close(chunks, span, metrics, route, outcome, count)


async def _after(first: Any, chunks: AsyncIterator[Any]) -> AsyncIterator[Any]:
    yield first
    async for chunk in chunks:
        yield chunk


async def _close(chunks: AsyncIterator[Any], span: Span, metrics: Metrics, route: str, outcome: str, n: int) -> None:
    """Stop the generation (a no-op once it ended) and record how the stream went."""
    try:
        await chunks.aclose()  # type: ignore[attr-defined]
    finally:
        metrics.count_stream(route, outcome, n)
        span.set_attribute("modalkit.chunks", n)
        span.set_attribute("modalkit.stream_outcome", outcome)
        span.end()


def sse_event(data: bytes, event: str | None = None) -> bytes:
    """One server-sent event. `data` is one line of JSON (JSON escapes newlines, so it never breaks the frame)."""
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + data + b"\n\n"


def failure_event(failure: Failure) -> bytes:
    """`event: error` with `{"detail", "request_id"}`: the status line went out with the first chunk, so the id
    that finds the failure in the server's logs travels in the event too (`x-request-id` is only a header)."""
    return sse_event(json.dumps({"detail": failure.detail, "request_id": REQUEST_ID.get()}).encode(), "error")
