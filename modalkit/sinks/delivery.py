"""Pushing one result: which queue names a client may give, and a push retried with backoff."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable
from typing import Any

from modalkit.sinks.builtin import ResultSink
from modalkit.sinks.failures import permanent_reason

logger = logging.getLogger("modalkit.sinks")


def queue_allowed(name: str, allowed: Iterable[str]) -> bool:
    """Whether `queue_config.allowed_queues` lets a client name this queue: exact names, or prefixes ending in "*"."""
    return any(name == pattern or (pattern.endswith("*") and name.startswith(pattern[:-1])) for pattern in allowed)


def deliver(sink: ResultSink, queue: str, message: dict[str, Any], attempts: int = 5, first_delay: float = 0.2) -> bool:
    """Push with exponential backoff; False (and logged) once every try failed or one failed for good. Never raises."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            sink.push(queue, message)
            return True
        except Exception as exc:
            reason = permanent_reason(exc)
            if reason is not None:
                logger.error("push to queue %r failed for good, not retried: %s", queue, reason)
                return False
            logger.warning("push to queue %r failed (attempt %d/%d): %s", queue, attempt, attempts, exc)
            if attempt < attempts:
                time.sleep(delay)
                delay *= 2
    return False
