"""The access log: one INFO line per answered request on the `modalkit.access` logger.

`POST /predict 200 12.3ms`, with `method`, `route` (the route's template, e.g. `/predict_async/{job_id}`),
`status`, `duration_ms` and `request_id` as fields of its JSON line. Whether it is shown is the logger's level.
Written by `middleware.RequestMetrics`, which already times each request and sees its status.
"""

from __future__ import annotations

import logging

from starlette.types import Scope

from modalkit.web.request_ids import request_id

logger = logging.getLogger("modalkit.access")


def log_request(scope: Scope, route: str, status: int, seconds: float) -> None:
    """The line of one answered request; `route` is its template, or "unmatched" (then its path is logged)."""
    if not logger.isEnabledFor(logging.INFO):
        return
    method, path, ms = scope["method"], scope["path"], round(seconds * 1000, 1)
    route = path if route == "unmatched" else route
    fields = {"method": method, "route": route, "status": status, "duration_ms": ms, "request_id": request_id(scope)}
    logger.info("%s %s %d %.1fms", method, path, status, ms, extra={"fields": fields})
