"""`POST /predict` (and ModalKit's `/predict_sync`) and `POST /predict_batch`: dynamically batched inference.

The routes read the body themselves: one JSON parse and one validation, in pydantic-core, and the answer goes out
as the JSON the container already made (FastAPI would validate it again).
"""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.

import asyncio
from collections.abc import Awaitable, Iterable
from functools import partial
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import Response
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import Receive

from modalkit.exceptions import ServiceUnavailable
from modalkit.outcome import Failure, encode, failure_body
from modalkit.runtime import Runtime
from modalkit.web.body import parse_async, parse_input_async, parse_inputs
from modalkit.web.errors import failure_exception
from modalkit.web.openapi import body_errors, input_ref, openapi_body
from modalkit.web.served import Served
from modalkit.web.uploads import is_upload, read_limited, read_upload, read_upload_batch, refuse_oversized

PREDICT_PATHS = ("/predict", "/predict_sync")
_WATCH_AFTER_S = 0.05  # an answer quicker than this is not worth a task watching for the client to leave


class ItemError(BaseModel):
    status_code: int
    detail: Any


class BatchItemError(BaseModel):
    """Stands in `/predict_batch`'s answer for an item that failed; the other items are unaffected."""

    error: ItemError


def add_predict_routes(app: FastAPI, served: Served) -> None:
    async def predict(request: Request) -> Response:
        name = served.requested_model(request)
        item = await read_input(request, served)
        result = await answered(request, served.runtime.submit(name, item), served.limits.request_timeout_seconds)
        if isinstance(result, Failure):
            raise failure_exception(result, name)
        return Response(encode(result), media_type="application/json")

    async def predict_batch(request: Request) -> Response:
        name = served.requested_model(request)
        if served.uploads.enabled and is_upload(request):
            items = await read_upload_batch(request, served.uploads)
        else:
            parse = partial(parse_inputs, served.input_model, max_items=served.limits.max_batch_items)
            items = await parse_async(await json_body(request, served), served.limits, parse)
        answers: list[bytes] = [b""] * len(items)
        valid: dict[int, BaseModel] = {}
        for index, item in enumerate(items):
            if isinstance(item, BaseModel):
                valid[index] = item
            else:
                answers[index] = encode({"error": {"status_code": 422, "detail": item}})
        pending = submit_all(served.runtime, name, valid.values())
        results = await answered(request, pending, served.limits.request_timeout_seconds)
        for index, result in zip(valid, results, strict=True):
            answers[index] = encode({"error": failure_body(result)} if isinstance(result, Failure) else result)
        return Response(b"[" + b",".join(answers) + b"]", media_type="application/json")

    single = input_ref(served.input_model)
    batch_said = {422: "the body is not a JSON array (an invalid item stands in the answer as its 422)"}
    for path in PREDICT_PATHS:
        app.add_api_route(
            path,
            predict,
            methods=["POST"],
            response_model=served.output_model,
            name=path[1:],
            openapi_extra=openapi_body(served, single),
            responses=body_errors(served),
            max_body_size=served.max_body_bytes,
        )
    app.add_api_route(
        "/predict_batch",
        predict_batch,
        methods=["POST"],
        response_model=list[served.output_model | BatchItemError],  # type: ignore[name-defined]
        openapi_extra=openapi_body(served, {"type": "array", "items": single}, batch=True),
        responses=body_errors(served, said=batch_said),
        max_body_size=served.max_body_bytes,
    )


async def read_input(request: Request, served: Served) -> BaseModel:
    """One input: from JSON, or from a multipart or raw upload when the input model has file fields."""
    if served.uploads.enabled and is_upload(request):
        item, _ = await read_upload(request, served.uploads)
        return item
    return await parse_input_async(served.input_model, await json_body(request, served), served.limits)


async def json_body(request: Request, served: Served) -> bytes:
    """A JSON body, within `limits.max_body_bytes` (a route that takes uploads allows larger bodies): refused
    from its `Content-Length`, or as soon as what arrives passes the limit."""
    most = served.limits.max_body_bytes
    refuse_oversized(request, most, "limits.max_body_bytes")
    return await read_limited(request, most, f"the body is over {most} bytes (limits.max_body_bytes)")


async def answered(request: Request, answer: Awaitable[Any], seconds: float) -> Any:
    """The answer, or 504 after `seconds`, or `ClientDisconnect` once the client has left.

    Either way the answer is cancelled: a queued item never reaches the model, a running one's result is dropped.
    """
    pending = asyncio.ensure_future(answer)
    watch = ClientWatch(request.receive, pending, seconds)
    try:
        return await pending
    except asyncio.CancelledError:
        if watch.gone:
            raise ClientDisconnect from None
        if watch.timed_out:
            raise HTTPException(504, f"no result within {seconds:g} s (limits.request_timeout_seconds)") from None
        raise
    finally:
        watch.close()


class ClientWatch:
    """Cancels `pending` when the client disconnects, or when `seconds` have passed. Watching the client takes a
    task, so it starts only once the answer is slow to come (`_WATCH_AFTER_S`): a quick answer costs one timer,
    the same that then waits for the deadline, and what waits in a queue is still dropped.

    The route has read the whole body, so what `receive` says next is `http.disconnect` (uvicorn says nothing
    else; a server that did would only lose the early cancel).
    """

    def __init__(self, receive: Receive, pending: asyncio.Future[Any], seconds: float) -> None:
        self._receive = receive
        self._pending = pending
        self._task: asyncio.Task[bool] | None = None
        self.timed_out = False
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + seconds
        self._timer = loop.call_later(min(_WATCH_AFTER_S, seconds), self._start)

    @property
    def gone(self) -> bool:
        task = self._task
        return task is not None and task.done() and not task.cancelled() and task.exception() is None and task.result()

    def close(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(_until_disconnect(self._receive))
        self._task.add_done_callback(self._cancel_if_gone)
        self._timer = loop.call_at(self._deadline, self._time_out)

    def _time_out(self) -> None:
        self.timed_out = True
        self._pending.cancel()

    def _cancel_if_gone(self, task: asyncio.Task[bool]) -> None:
        if self.gone:
            self._pending.cancel()


async def _until_disconnect(receive: Receive) -> bool:
    message = await receive()
    return bool(message["type"] == "http.disconnect")


def submit_all(runtime: Runtime, name: str, items: Iterable[BaseModel]) -> asyncio.Future[list[Any]]:
    """Every item's answer, or none: when the queue fills part-way, the items already queued are withdrawn."""
    submitted: list[Awaitable[Any]] = []
    try:
        for item in items:
            submitted.append(runtime.submit(name, item))
    except ServiceUnavailable:
        asyncio.gather(*submitted).cancel()
        raise
    return asyncio.gather(*submitted)
