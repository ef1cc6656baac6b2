"""The web edge: `create_web_endpoints`, the FastAPI app in front of a service, the same on Modal and locally.

`create_web_endpoints` is the composition root: it builds one `Served` (runtime, config, models, input and
output types) and hands it to the route modules: `predict_routes` (sync and batch) and `async_routes` (jobs) for a
batched service, `stream_routes` for a streaming one, `openai_routes` (/v1) and `ops_routes` (health, metrics,
stats) for both. `errors` turns the engines' failures into HTTP answers.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from fastapi.telemetry import TelemetryConfig
from pydantic import BaseModel

from modalkit.runtime import Runtime
from modalkit.telemetry import configure_tracing
from modalkit.web.async_routes import add_async_routes
from modalkit.web.auth import resolve_clients
from modalkit.web.direct_routes import add_direct_routes
from modalkit.web.errors import add_error_handlers
from modalkit.web.metrics import Metrics
from modalkit.web.middleware import add_middleware
from modalkit.web.openai_routes import OPENAI_BODY_PATHS, add_openai_routes
from modalkit.web.openapi import document_api
from modalkit.web.ops_routes import add_ops_routes
from modalkit.web.predict_routes import PREDICT_PATHS, add_predict_routes
from modalkit.web.served import Served, served_by
from modalkit.web.stream_routes import STREAM_PATH, add_stream_routes

# Each request's server span is `middleware.ServerSpans`'s; FastAPI's own telemetry would make a second one.
_OWN_SPANS: TelemetryConfig = {"tracing": False, "metrics": False, "logs": False}
DIRECT_ROUTES = [("POST", path) for path in (*PREDICT_PATHS, "/predict_async")]
BODY_PATHS = frozenset({*PREDICT_PATHS, "/predict_batch", "/predict_async", STREAM_PATH, *OPENAI_BODY_PATHS})


def create_web_endpoints(
    app_cls: Any,
    input_model: type[BaseModel],
    output_model: type[BaseModel],
    runtime: Runtime | None = None,
) -> FastAPI:
    """The web app of a `ModalService` subclass: `/predict` (and ModalKit's `/predict_sync`), `/predict_batch`,
    `/predict_async` with `GET /predict_async/{job_id}`, `/health`, `/metrics`, `/stats` and OpenAPI docs.

    Inside Modal it calls the service class remotely; elsewhere it starts local containers (`runtime` overrides).
    """
    served = Served.build(app_cls, input_model, output_model, runtime)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await served.runtime.start()
        try:
            yield
        finally:
            await served.runtime.stop()

    app = FastAPI(
        title=served.config.app_name,
        lifespan=lifespan,
        max_body_size=served.limits.max_body_bytes,
        telemetry=_OWN_SPANS,
    )
    app.state.served = served  # read back, typed, with `served_by(app)`
    add_error_handlers(app)
    metrics = Metrics(served.runtime.observe)
    api_keys = resolve_clients(served.settings.auth_config)
    add_middleware(app, served, BODY_PATHS, api_keys, metrics)
    configure_tracing(served.config.app_name)
    if served.streaming:
        add_stream_routes(app, served, metrics)
    else:
        add_predict_routes(app, served)
        add_async_routes(app, served)
        if not served.uploads.enabled:  # an upload's form parsing and its larger body limit stay with FastAPI
            add_direct_routes(app, DIRECT_ROUTES)
    add_openai_routes(app, served, metrics)
    add_ops_routes(app, served, metrics, details_need_key=bool(api_keys))
    document_api(app, input_model, served.settings.auth_config if api_keys else None)
    return app


__all__ = ["Served", "create_web_endpoints", "served_by"]
