"""`create_web_endpoints`: the FastAPI app in front of a service, the same on Modal and locally."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Iterable
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalkit.app_loader import user_class
from modalkit.async_routes import add_async_routes
from modalkit.auth import ApiKeyAuth, authenticated, resolve_api_key
from modalkit.exceptions import ServiceUnavailable
from modalkit.http_body import BodyTypeCheck, encode, parse_async, parse_input_async, parse_inputs
from modalkit.metrics import Metrics, usage
from modalkit.outcome import Failure, http_status
from modalkit.runtime import Runtime, select_runtime
from modalkit.service import ModalService
from modalkit.telemetry import configure_tracing

logger = logging.getLogger("modalkit.web")

_BODY_ERRORS: dict[int | str, dict[str, Any]] = {
    415: {"description": "the body is not JSON (application/json or */*+json)"},
    503: {"description": "limits.max_queued_requests requests already wait; retry after Retry-After seconds"},
}
_WATCH_AFTER_S = 0.05  # an answer quicker than this is not worth a task watching for the client to leave


class ItemError(BaseModel):
    status_code: int
    detail: Any


class BatchItemError(BaseModel):
    """Stands in `/predict_batch`'s answer for an item that failed; the other items are unaffected."""

    error: ItemError


def create_web_endpoints(
    app_cls: Any,
    input_model: type[BaseModel],
    output_model: type[BaseModel],
    runtime: Runtime | None = None,
) -> FastAPI:
    """The web app of a `ModalService` subclass: `/predict` (and ModalKit's `/predict_sync`), `/predict_batch`,
    `/predict_async` with `GET /predict_async/{job_id}`, `/health`, `/metrics`, `/stats` and OpenAPI docs.

    Inside Modal it calls the service class remotely; elsewhere it starts local containers.
    """
    service_cls = app_cls
    service: type[ModalService] = user_class(service_cls)
    config = service.modal_config
    default_model = service.default_model_name()
    model_names = config.model_names() or [default_model]
    chosen = runtime or select_runtime(service_cls, config, model_names, input_model)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await chosen.start()
        try:
            yield
        finally:
            await chosen.stop()

    limits = config.app_settings.limits
    app = FastAPI(title=config.app_name, lifespan=lifespan, max_body_size=limits.max_body_bytes)
    app.state.runtime = chosen
    app.state.config = config
    app.state.input_model = input_model
    app.state.default_model = default_model
    app.state.service = service_cls

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        # The stack trace goes to the log (with the trace id), never into the response.
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": "internal server error; the server log has the details"}, status_code=500)

    @app.exception_handler(ServiceUnavailable)
    async def unavailable(request: Request, exc: ServiceUnavailable) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=503, headers={"Retry-After": "1"})

    @app.exception_handler(ClientDisconnect)
    async def client_left(request: Request, exc: ClientDisconnect) -> Response:
        return Response(status_code=499)  # nobody reads it; /metrics counts it as nginx's "client closed request"

    metrics = Metrics(chosen.observe)
    auth = config.app_settings.auth_config
    api_key = resolve_api_key(auth)
    body_routes = frozenset({"/predict", "/predict_sync", "/predict_batch", "/predict_async"})
    app.add_middleware(BodyTypeCheck, paths=body_routes)  # inside auth: a caller without the key learns nothing
    if api_key is not None:
        app.add_middleware(ApiKeyAuth, key=api_key, header=auth.header, public_routes=auth.public_routes)
    app.add_middleware(RequestMetrics, metrics=metrics)  # outermost: 401s are counted too
    configure_tracing(config.app_name)
    FastAPIInstrumentor.instrument_app(app, excluded_urls="metrics", exclude_spans=["receive", "send"])

    known = frozenset(model_names)
    model_query = {
        "name": "model_name", "in": "query", "required": False,
        "schema": {"type": "string", "enum": model_names, "default": default_model},
        "description": "the model entry to run",
    }  # fmt: skip

    def body_doc(schema: dict[str, Any]) -> dict[str, Any]:
        content = {"application/json": {"schema": schema}}
        return {"parameters": [model_query], "requestBody": {"required": True, "content": content}}

    def pick_model(request: Request) -> str:
        name = request.query_params.get("model_name") or default_model
        if name not in known:
            raise HTTPException(404, f"unknown model_name {name!r}; known: {', '.join(model_names)}")
        return name

    input_ref = {"$ref": f"#/components/schemas/{input_model.__name__}"}

    # The routes read the body themselves: one JSON parse and one validation, in pydantic-core, and the
    # answer goes out as the JSON the container already made (FastAPI would validate it again).
    async def predict(request: Request) -> Response:
        name = pick_model(request)
        item = await parse_input_async(input_model, await request.body(), limits)
        result = await answered(request, chosen.submit(name, item), limits.request_timeout_seconds)
        if isinstance(result, Failure):
            status = http_status(result)
            if status >= 500:
                logger.warning("predict on %r failed (%d): %s", name, status, result.detail)
            raise HTTPException(status, result.detail)
        return Response(encode(result), media_type="application/json")

    for path in ("/predict", "/predict_sync"):
        app.add_api_route(
            path, predict, methods=["POST"], response_model=output_model, name=path[1:],
            openapi_extra=body_doc(input_ref),
            responses={**_BODY_ERRORS, 422: {"description": "invalid input; detail[].loc names the field"}},
        )  # fmt: skip

    @app.post(
        "/predict_batch",
        response_model=list[output_model | BatchItemError],  # type: ignore[valid-type]
        openapi_extra=body_doc({"type": "array", "items": input_ref}),
        responses=_BODY_ERRORS,
    )
    async def predict_batch(request: Request) -> Response:
        name = pick_model(request)
        parse = partial(parse_inputs, input_model, max_items=limits.max_batch_items)
        items = await parse_async(await request.body(), limits, parse)
        answers: list[bytes] = [b""] * len(items)
        valid: dict[int, BaseModel] = {}
        for index, item in enumerate(items):
            if isinstance(item, BaseModel):
                valid[index] = item
            else:
                answers[index] = encode(_item_error(422, item))
        pending = _submit_all(chosen, name, valid.values())
        results = await answered(request, pending, limits.request_timeout_seconds)
        for index, result in zip(valid, results, strict=True):
            failed = isinstance(result, Failure)
            answers[index] = encode(_item_error(http_status(result), result.detail) if failed else result)
        return Response(b"[" + b",".join(answers) + b"]", media_type="application/json")

    add_async_routes(app, chosen, input_model, pick_model, body_doc, settings=config.app_settings)
    _document_input(app, input_model)

    @app.get("/health")
    async def health(request: Request) -> JSONResponse:
        """Readiness; the containers' details (pids, load errors) only with the API key when auth is on."""
        ready = chosen.ready()
        body = {"status": "ready" if ready else "not ready"}
        if api_key is None or authenticated(request.scope):
            body.update(chosen.health())
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        """Invocations, cold vs warm starts and latencies, mean batch size, estimated Modal cost."""
        return usage(chosen.observe(), config.app_settings)

    return app


class RequestMetrics:
    """Counts requests by route template and status, and times them (pure ASGI: no per-request task)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            route = scope.get("route")
            path = getattr(route, "path", "unmatched")
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - started)


async def answered(request: Request, answer: Awaitable[Any], seconds: float) -> Any:
    """The answer, or 504 after `seconds`, or `ClientDisconnect` once the client has left.

    Either way the answer is cancelled: a queued item never reaches the model, a running one's result is dropped.
    """
    pending = asyncio.ensure_future(answer)
    watch = ClientWatch(request.receive, pending)
    try:
        return await asyncio.wait_for(pending, seconds)
    except TimeoutError:
        raise HTTPException(504, f"no result within {seconds:g} s (limits.request_timeout_seconds)") from None
    except asyncio.CancelledError:
        if watch.gone:
            raise ClientDisconnect from None
        raise
    finally:
        watch.close()


class ClientWatch:
    """Cancels `pending` when the client disconnects. Watching takes a task, so it starts only once the answer
    is slow to come (`_WATCH_AFTER_S`): a quick answer costs a timer, and what waits in a queue is still dropped.

    The route has read the whole body, so what `receive` says next is `http.disconnect` (uvicorn says nothing
    else; a server that did would only lose the early cancel).
    """

    def __init__(self, receive: Receive, pending: asyncio.Future[Any]) -> None:
        self._receive = receive
        self._pending = pending
        self._task: asyncio.Task[bool] | None = None
        self._timer = asyncio.get_running_loop().call_later(_WATCH_AFTER_S, self._start)

    @property
    def gone(self) -> bool:
        task = self._task
        return task is not None and task.done() and not task.cancelled() and task.exception() is None and task.result()

    def close(self) -> None:
        self._timer.cancel()
        if self._task is not None:
            self._task.cancel()

    def _start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(_until_disconnect(self._receive))
        self._task.add_done_callback(self._cancel_if_gone)

    def _cancel_if_gone(self, task: asyncio.Task[bool]) -> None:
        if self.gone:
            self._pending.cancel()


async def _until_disconnect(receive: Receive) -> bool:
    message = await receive()
    return bool(message["type"] == "http.disconnect")


def _submit_all(runtime: Runtime, name: str, items: Iterable[BaseModel]) -> asyncio.Future[list[Any]]:
    """Every item's answer, or none: when the queue fills part-way, the items already queued are withdrawn."""
    submitted: list[Awaitable[Any]] = []
    try:
        for item in items:
            submitted.append(runtime.submit(name, item))
    except ServiceUnavailable:
        asyncio.gather(*submitted).cancel()
        raise
    return asyncio.gather(*submitted)


def _document_input(app: FastAPI, input_model: type[BaseModel]) -> None:
    """The routes read their bodies themselves, so put the input model's schema into the OpenAPI components."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = build()
            schemas = spec.setdefault("components", {}).setdefault("schemas", {})
            schema = input_model.model_json_schema(ref_template="#/components/schemas/{model}")
            schemas.update(schema.pop("$defs", {}))
            schemas[input_model.__name__] = schema
        return app.openapi_schema or spec

    app.openapi = openapi  # type: ignore[method-assign]


def _item_error(status_code: int, detail: Any) -> BatchItemError:
    return BatchItemError(error=ItemError(status_code=status_code, detail=detail))
