"""The busiest routes answered directly: past FastAPI's router, exit stack and dependency solving.

`POST /predict` answers in well under a millisecond, so what FastAPI does around a route (matching every route,
again; an exit stack; solving dependencies; validating a returned model against the response model) is much of its
cost. `DirectRoutes` is the innermost middleware of the app: every layer around it (server span, request ids,
metrics and access log, auth, body type check) is the same as for any route, and it hands the requests of the
direct routes to their endpoints itself, errors answered by the app's own exception handlers. Everything else goes
on to the router. The routes stay registered with FastAPI: OpenAPI documents them, and they answer the same.

A direct route takes only the request (`async def endpoint(request: Request) -> Response | BaseModel`).
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.middleware import Middleware
from starlette.middleware.exceptions import ExceptionMiddleware
from starlette.types import ASGIApp, ExceptionHandler, Receive, Scope, Send


def add_direct_routes(app: FastAPI, routes: Iterable[tuple[str, str]]) -> None:
    """Answer these `(method, path)` routes directly; each must be registered already and take only the request."""
    endpoints = {(method, path): endpoint_app(registered(app, method, path)) for method, path in routes}
    # Appended, not `add_middleware` (which puts it outermost): it must run after auth and the body check.
    app.user_middleware.append(Middleware(DirectRoutes, endpoints=endpoints, handlers=app.exception_handlers))


def registered(app: FastAPI, method: str, path: str) -> APIRoute:
    for route in app.router.routes:
        if isinstance(route, APIRoute) and route.path == path and method in (route.methods or ()):
            parameters = inspect.signature(route.endpoint).parameters
            if len(parameters) != 1 or route.dependant.request_param_name is None or route.dependencies:
                raise TypeError(f"{method} {path} cannot be answered directly: its endpoint must take only the request")
            return route
    raise LookupError(f"no route {method} {path}")


def endpoint_app(route: APIRoute) -> ASGIApp:
    """The route's endpoint as an ASGI app: a returned model is written as JSON with the route's status code."""
    endpoint, status = route.endpoint, route.status_code or 200

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        answer = await endpoint(Request(scope, receive, send))
        if isinstance(answer, BaseModel):
            answer = Response(answer.model_dump_json(by_alias=True), status, media_type="application/json")
        await answer(scope, receive, send)

    return app


class DirectRoutes:
    def __init__(
        self, app: ASGIApp, endpoints: Mapping[tuple[str, str], ASGIApp], handlers: Mapping[Any, ExceptionHandler]
    ) -> None:
        self.app = app
        # Read when the stack is built (the first request), so every handler is registered by then. The 500
        # handler stays with Starlette's outermost `ServerErrorMiddleware`, as for every other route.
        routed = {key: handler for key, handler in handlers.items() if key not in (500, Exception)}
        self.endpoints = {key: ExceptionMiddleware(endpoint, handlers=routed) for key, endpoint in endpoints.items()}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        endpoint = self.endpoints.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        await endpoint(scope, receive, send)
