"""`/health`, `/metrics` and `/stats`: what operators and load balancers read."""

# No `from __future__ import annotations`: FastAPI reads the route signatures' types at run time.

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from modalkit.web.auth import authenticated
from modalkit.web.metrics import Metrics, usage
from modalkit.web.openapi import error_responses
from modalkit.web.served import Served


def add_ops_routes(app: FastAPI, served: Served, metrics: Metrics, details_need_key: bool) -> None:
    runtime = served.runtime

    @app.get("/health", responses={503: {"description": "not ready: a model is failing to load"}})
    async def health(request: Request) -> JSONResponse:
        """Readiness; the containers' details (pids, load errors) only with the API key when auth is on."""
        ready = runtime.ready()
        body = {"status": "ready" if ready else "not ready"}
        if not details_need_key or authenticated(request.scope):
            body.update(runtime.health())
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        """Liveness: the server process answers (it says nothing of the models: that is `/readyz`)."""
        return {"status": "alive"}

    @app.get("/readyz", responses={503: {"description": "not ready: a model has no loaded, healthy container"}})
    async def readyz(request: Request) -> JSONResponse:
        """Readiness: 200 when the service can answer now. With the API key (or with auth off), the reasons."""
        reasons = runtime.not_ready()
        body: dict[str, Any] = {"status": "not ready" if reasons else "ready"}
        if reasons and (not details_need_key or authenticated(request.scope)):
            body["reasons"] = reasons
        return JSONResponse(body, status_code=503 if reasons else 200)

    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}, **error_responses(())},
    )
    async def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/stats", responses=error_responses(()))
    async def stats() -> dict[str, Any]:
        """Invocations, cold vs warm starts and latencies, mean batch size, estimated Modal cost; streams by how
        they ended (`completed`, `failed`, `cancelled`) and the chunks they sent; requests by client name."""
        found = usage(runtime.observe(), served.settings)
        outcomes = metrics.stream_outcomes
        found["streams"] = {key: outcomes[key] for key in ("completed", "failed", "cancelled", "chunks")}
        found["clients"] = dict(metrics.clients)  # requests by client (API key) name
        return found
