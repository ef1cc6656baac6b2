"""Request ids: every answer says which request it was (`x-request-id`) and where its trace is (`traceparent`).

A client's own `x-request-id` is kept when it is sane (1 to 128 of `A-Z a-z 0-9 . _ : -`), so one id can follow
a call through a proxy or a caller's logs; otherwise the server makes one. The id is on every log line written
while the request is answered (`modalkit.logs.REQUEST_ID`) and in every error body (`errors.error_body`).
"""

from __future__ import annotations

import os
import re

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalkit.logs import REQUEST_ID

REQUEST_ID_HEADER = "x-request-id"
_HEADER = REQUEST_ID_HEADER.encode()
_SANE_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
_ID_KEY = "modalkit.request_id"
_HEADERS_KEY = "modalkit.request_id_headers"


def request_id(scope: Scope) -> str | None:
    """The id of the request being answered (None for a request that did not pass `RequestIds`)."""
    return scope.get(_ID_KEY)


def id_headers(scope: Scope) -> dict[str, str]:
    """`x-request-id` and `traceparent`, for an answer sent outside `RequestIds` (Starlette's 500 handler)."""
    return {name.decode(): value.decode() for name, value in scope.get(_HEADERS_KEY, ())}


def given_or_new(scope: Scope) -> str:
    """The client's `x-request-id` when it is sane (it is echoed into headers and logs), else a new one."""
    for name, value in scope["headers"]:
        if name == _HEADER:
            if _SANE_ID.fullmatch(value):
                return bytes(value).decode()
            break
    return os.urandom(16).hex()  # as random as a UUID4's hex, without making a UUID


def traceparent() -> bytes | None:
    """The W3C `traceparent` of the current span: the request's server span, inside OpenTelemetry's middleware."""
    context = trace.get_current_span().get_span_context()
    if not context.is_valid:
        return None  # an excluded route (/metrics) has no span
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}".encode()


class RequestIds:
    """Gives each HTTP request its id and adds `x-request-id` and `traceparent` to its answer (pure ASGI).

    It must run inside OpenTelemetry's middleware (which wraps all of an app's middleware), so that the current
    span is the request's server span, and outside auth and the body check, so that their 401 and 415 carry ids.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = given_or_new(scope)
        headers = [(_HEADER, given.encode())]
        parent = traceparent()
        if parent is not None:
            headers.append((b"traceparent", parent))
        scope[_ID_KEY] = given
        scope[_HEADERS_KEY] = headers

        async def send_with_ids(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *headers]}
            await send(message)

        token = REQUEST_ID.set(given)
        await self.app(scope, receive, send_with_ids)
        REQUEST_ID.reset(token)  # not when it raised: the 500 handler and the server's error log still need it
