"""The ASGI layers around the routes: request ids (outermost), request metrics and the access log, API-key
auth, the body type check."""

from __future__ import annotations

import time

from fastapi import FastAPI
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalkit.web.access_log import log_request
from modalkit.web.auth import ApiKeyAuth
from modalkit.web.body import BodyTypeCheck
from modalkit.web.metrics import Metrics
from modalkit.web.request_ids import RequestIds
from modalkit.web.served import Served


def add_middleware(
    app: FastAPI, served: Served, body_paths: frozenset[str], api_key: str | None, metrics: Metrics
) -> None:
    """Added innermost first: the body check runs after auth (a caller without the key learns nothing), and the
    metrics, the access log and the request ids see every answer, 401s included. OpenTelemetry's middleware wraps
    them all, so `RequestIds` finds the request's server span for `traceparent`."""
    auth = served.settings.auth_config
    app.add_middleware(BodyTypeCheck, paths=body_paths, problem=served.body_type_problem)
    if api_key is not None:
        app.add_middleware(ApiKeyAuth, key=api_key, header=auth.header, public_routes=auth.open_routes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(RequestIds)


class RequestMetrics:
    """Counts requests by route template and status, times them, counts those in flight, and writes the access
    log line of each (pure ASGI: no per-request task; one timing and one status for both)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        path = route_template(scope)
        in_flight = self.metrics.in_flight.labels(path)
        in_flight.inc()

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            seconds = time.perf_counter() - started
            in_flight.dec()
            self.metrics.requests.labels(path, scope["method"], str(status)).inc()
            self.metrics.latency.labels(path).observe(seconds)
            log_request(scope, path, status, seconds)


def route_template(scope: Scope) -> str:
    """The path template of the route that will answer (`/predict_async/{job_id}`), found before the request
    runs (the router sets `scope["route"]` only once inside, and auth may answer before it); "unmatched" for none.
    As the router does: the first full match, else the first route with the path but not the method (a 405)."""
    router = getattr(scope.get("app"), "router", None)
    partial: str | None = None
    for route in getattr(router, "routes", ()):
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "unmatched"))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", "unmatched"))
    return partial or "unmatched"
