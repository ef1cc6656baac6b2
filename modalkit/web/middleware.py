"""The ASGI layers around the routes: request metrics (outermost), API-key auth, the body type check."""

from __future__ import annotations

import time

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalkit.web.auth import ApiKeyAuth
from modalkit.web.body import BodyTypeCheck
from modalkit.web.metrics import Metrics
from modalkit.web.served import Served


def add_middleware(
    app: FastAPI, served: Served, body_paths: frozenset[str], api_key: str | None, metrics: Metrics
) -> None:
    """Added innermost first: the body check runs after auth (a caller without the key learns nothing), and the
    metrics see every answer, 401s included."""
    auth = served.settings.auth_config
    app.add_middleware(BodyTypeCheck, paths=body_paths, problem=served.body_type_problem)
    if api_key is not None:
        app.add_middleware(ApiKeyAuth, key=api_key, header=auth.header, public_routes=auth.public_routes)
    app.add_middleware(RequestMetrics, metrics=metrics)


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
