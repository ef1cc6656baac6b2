"""`POST /predict_stream`: a streaming service's chunks as server-sent events.

One `data:` line of JSON per chunk, as the model yields it; `event: done` at the end; `event: error` with
`{"detail", "request_id"}` when the generation fails midway. A failure before the first chunk is an ordinary
HTTP error.
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.

from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from modalkit.outcome import Failure, encode
from modalkit.web.body import parse_input_async
from modalkit.web.metrics import Metrics
from modalkit.web.openapi import body_errors, input_ref, openapi_body
from modalkit.web.served import Served
from modalkit.web.streams import SSE_HEADERS, failure_event, open_stream, sse_event

STREAM_PATH = "/predict_stream"
DONE_EVENT = sse_event(b"{}", "done")


def add_stream_routes(app: FastAPI, served: Served, metrics: Metrics) -> None:
    async def predict_stream(request: Request) -> StreamingResponse:
        name = served.requested_model(request)
        item = await parse_input_async(served.input_model, await request.body(), served.limits)
        chunks = await open_stream(request, served, name, item, metrics)
        return StreamingResponse(server_sent_events(chunks), media_type="text/event-stream", headers=SSE_HEADERS)

    chunk_schema: dict[str, Any] = {"type": "string", "description": "one `data:` line of JSON per chunk"}
    app.add_api_route(
        STREAM_PATH,
        predict_stream,
        methods=["POST"],
        name="predict_stream",
        openapi_extra=openapi_body(served, input_ref(served.input_model)),
        responses={
            200: {"content": {"text/event-stream": {"schema": chunk_schema}}, "description": "the chunks"},
            **body_errors(served),
        },
    )


async def server_sent_events(chunks: AsyncIterator[Any]) -> AsyncIterator[bytes]:
    async for chunk in chunks:
        if isinstance(chunk, Failure):
            yield failure_event(chunk)
            return
        yield sse_event(encode(chunk))
    yield DONE_EVENT
