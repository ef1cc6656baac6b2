"""The access log: one INFO line per answered request on the `modalkit.access` logger.

`POST /predict 200 12.3ms`, with `method`, `route` (the route's template, e.g. `/predict_async/{job_id}`),
`status`, `duration_ms` and `request_id` as fields of its JSON line. Whether it is shown is the logger's level.
"""

from __future__ import annotations

import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from modalkit.web.request_ids import request_id

logger = logging.getLogger("modalkit.access")


class AccessLog:
    """Pure ASGI; costs nothing more than a level check while the `modalkit.access` logger is quiet."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not logger.isEnabledFor(logging.INFO):
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what it is when the app raised before answering (Starlette's 500 handler answers)

        async def send_and_note(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            log_request(scope, status, time.perf_counter() - started)


def log_request(scope: Scope, status: int, seconds: float) -> None:
    method, path, ms = scope["method"], scope["path"], round(seconds * 1000, 1)
    route = getattr(scope.get("route"), "path", None) or path  # a request no route took (401, 404): its path
    fields = {"method": method, "route": route, "status": status, "duration_ms": ms, "request_id": request_id(scope)}
    logger.info("%s %s %d %.1fms", method, path, status, ms, extra={"fields": fields})
