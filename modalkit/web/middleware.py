"""The ASGI layers around the routes: request ids (outermost), request metrics and the access log, API-key
auth, the body type check."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, StatusCode
from prometheus_client import Gauge, Histogram
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalkit.telemetry import caller_context, tracer
from modalkit.web.access_log import log_request
from modalkit.web.auth import ApiKeyAuth, client_name
from modalkit.web.body import BodyTypeCheck
from modalkit.web.metrics import Metrics
from modalkit.web.request_ids import RequestIds
from modalkit.web.served import Served

_ROUTE_KEY = "modalkit.route"
_UNTRACED = "/metrics"  # scraped every few seconds: its spans would only bury the requests' own


def add_middleware(
    app: FastAPI, served: Served, body_paths: frozenset[str], api_keys: Mapping[str, str], metrics: Metrics
) -> None:
    """Added innermost first: the body check runs after auth (a caller without the key learns nothing), and the
    metrics, the access log and the request ids see every answer, 401s included. `ServerSpans` wraps them all,
    so `RequestIds` finds the request's server span for `traceparent`."""
    auth = served.settings.auth_config
    app.add_middleware(BodyTypeCheck, paths=body_paths, problem=served.body_type_problem)
    if api_keys:  # client name -> key (`auth.resolve_clients`); none: auth is off
        app.add_middleware(ApiKeyAuth, clients=api_keys, header=auth.header, public_routes=auth.open_routes)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(RequestIds)
    app.add_middleware(ServerSpans)


class RequestMetrics:
    """Counts requests by route template and status, times them, counts those in flight, and writes the access
    log line of each (pure ASGI: no per-request task; one timing and one status for both)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        self._per_route: dict[str, tuple[Gauge, Histogram]] = {}  # one per route template: a bounded set

    def _add_route(self, route: str) -> tuple[Gauge, Histogram]:
        self._per_route[route] = found = (self.metrics.in_flight.labels(route), self.metrics.latency.labels(route))
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        path = route_template(scope)
        in_flight, latency = self._per_route.get(path) or self._add_route(path)
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
            self.metrics.count_request(path, scope["method"], status, client_name(scope))
            latency.observe(seconds)
            log_request(scope, path, status, seconds)


def route_template(scope: Scope) -> str:
    """The path template of the route that will answer (`/predict_async/{job_id}`), found before the request
    runs (the router sets `scope["route"]` only once inside, and auth may answer before it); "unmatched" for none.
    As the router does: the first full match, else the first route with the path but not the method (a 405)."""
    known = scope.get(_ROUTE_KEY)  # found once already, by `RouteIndex`
    if known is not None:
        return str(known)
    return _scan_routes(scope, getattr(getattr(scope.get("app"), "router", None), "routes", ()))


class RouteIndex:
    """`route_template`, remembered for the paths of routes without parameters (a bounded set): the busy routes
    are matched once, not once per request."""

    def __init__(self) -> None:
        self._routes = -1  # how many routes the app had when the index was made: a route added later remakes it
        self._paths: set[str] = set()
        self._templates: dict[tuple[str, str], str] = {}

    def template(self, scope: Scope) -> str:
        routes = getattr(getattr(scope.get("app"), "router", None), "routes", ())
        if len(routes) != self._routes:
            self._routes, self._templates = len(routes), {}
            self._paths = {path for route in routes if "{" not in (path := str(getattr(route, "path", "{")))}
        key = (scope["method"], scope["path"])
        found = self._templates.get(key)
        if found is None:
            found = route_template(scope)
            if scope["path"] in self._paths:
                self._templates[key] = found
        scope[_ROUTE_KEY] = found
        return found


def _scan_routes(scope: Scope, routes: Sequence[Any]) -> str:
    partial: str | None = None
    for route in routes:
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "unmatched"))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", "unmatched"))
    return partial or "unmatched"


class ServerSpans:
    """The server span of each HTTP request (`POST /predict`, kind SERVER), child of the caller's `traceparent`
    when it sends one, and current while the request is answered (pure ASGI: what OpenTelemetry's ASGI
    middleware does for us, at a fraction of its cost per request). `/metrics` is not traced.

    With no exporter the span is not recorded (`telemetry.configure_tracing`), yet it has its ids: the answer's
    `traceparent`, the log lines and the batch spans still name it.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.routes = RouteIndex()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] == _UNTRACED:
            await self.app(scope, receive, send)
            return
        method, route = scope["method"], self.routes.template(scope)
        name = method if route == "unmatched" else f"{method} {route}"
        span = tracer().start_span(name, caller_context(scope), kind=SpanKind.SERVER)
        status = 500
        if span.is_recording():
            span.set_attributes({"http.request.method": method, "url.path": scope["path"], "http.route": route})

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, send_and_record)
        except BaseException as exc:
            span.record_exception(exc)
            span.set_status(StatusCode.ERROR)
            span.end()
            raise  # still current: Starlette's 500 handler, outside every middleware, logs under this trace
        if span.is_recording():
            span.set_attribute("http.response.status_code", status)
            if status >= 500:
                span.set_status(StatusCode.ERROR)
        span.end()
        otel_context.detach(token)
