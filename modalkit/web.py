"""`create_web_endpoints`: the FastAPI app in front of a service, the same on Modal and locally."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, Response
from opentelemetry.instrumentation.fastapi import FastAPIInstrumentor
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, ValidationError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalkit.app_loader import user_class
from modalkit.async_routes import add_async_routes
from modalkit.auth import ApiKeyAuth, resolve_api_key
from modalkit.http_body import encode, located, parse_input, parse_json
from modalkit.metrics import Metrics, usage
from modalkit.outcome import Failure
from modalkit.runtime import Runtime, select_runtime
from modalkit.service import ModalService
from modalkit.telemetry import configure_tracing

logger = logging.getLogger("modalkit.web")


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

    metrics = Metrics(chosen.observe)
    auth = config.app_settings.auth_config
    api_key = resolve_api_key(auth)
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
        item = parse_input(input_model, await request.body())
        result = await within(chosen.submit(name, item), limits.request_timeout_seconds)
        if isinstance(result, Failure):
            if result.status_code >= 500:
                logger.warning("predict on %r failed (%d): %s", name, result.status_code, result.detail)
            raise HTTPException(result.status_code, result.detail)
        return Response(encode(result), media_type="application/json")

    for path in ("/predict", "/predict_sync"):
        app.add_api_route(
            path, predict, methods=["POST"], response_model=output_model, name=path[1:],
            openapi_extra=body_doc(input_ref),
            responses={422: {"description": "invalid input; detail[].loc names the field"}},
        )  # fmt: skip

    @app.post(
        "/predict_batch",
        response_model=list[output_model | BatchItemError],  # type: ignore[valid-type]
        openapi_extra=body_doc({"type": "array", "items": input_ref}),
    )
    async def predict_batch(request: Request) -> Response:
        name = pick_model(request)
        items = parse_json(await request.body())
        if not isinstance(items, list):
            raise HTTPException(422, [{"type": "list_type", "loc": ["body"], "msg": "expected a JSON array of inputs"}])
        if len(items) > limits.max_batch_items:
            raise HTTPException(413, f"{len(items)} items; at most {limits.max_batch_items} (limits.max_batch_items)")
        answers: list[bytes] = [b""] * len(items)
        valid: dict[int, Any] = {}
        for index, raw in enumerate(items):
            try:
                valid[index] = input_model.model_validate(raw)
            except ValidationError as exc:
                answers[index] = encode(_item_error(422, located(exc, ["body", index])))
        pending = asyncio.gather(*(chosen.submit(name, item) for item in valid.values()))
        results = await within(pending, limits.request_timeout_seconds)
        for index, result in zip(valid, results, strict=True):
            failed = isinstance(result, Failure)
            answers[index] = encode(_item_error(result.status_code, result.detail) if failed else result)
        return Response(b"[" + b",".join(answers) + b"]", media_type="application/json")

    add_async_routes(app, chosen, input_model, pick_model, body_doc)
    _document_input(app, input_model)

    @app.get("/health")
    async def health() -> JSONResponse:
        ready = chosen.ready()
        body = {"status": "ready" if ready else "not ready", **chosen.health()}
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


async def within(answer: Awaitable[Any], seconds: float) -> Any:
    """The answer, or 504 after `seconds`; a result that arrives later is dropped (its future is cancelled)."""
    try:
        return await asyncio.wait_for(answer, seconds)
    except TimeoutError:
        raise HTTPException(504, f"no result within {seconds:g} s (limits.request_timeout_seconds)") from None


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
