"""ModalKit's `modalkit.task_queue`: queue backends (`async send_message(queue, message: str) -> bool`).

A backend registered here is chosen by name in YAML (`queue_config.backend: my-backend`):

    class Webhook:
        async def send_message(self, queue_name: str, message: str) -> bool:
            ...  # message is the result's JSON; return True once it is accepted

    register_backend("webhook", Webhook)
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import defaultdict
from typing import Any

from modalkit.config import ModalConfig
from modalkit.exceptions import BackendError, TypeValidationError
from modalkit.sinks.backend import QueueBackend
from modalkit.sinks.delivery import deliver
from modalkit.sinks.registry import construct, make_sink, register_backend, registered_backend, registered_names
from modalkit.sinks.sqs import SQSSink
from modalkit.sinks.taskiq import TaskiqBackend

logger = logging.getLogger("modalkit.sinks")

__all__ = [
    "InMemoryBackend",
    "QueueBackend",
    "SQSBackend",
    "TaskiqBackend",
    "create_backend",
    "register_backend",
    "registered_backend",
    "send_response_queue",
]


class InMemoryBackend:
    """Keeps each message in `messages[queue]` and logs it: for development and tests."""

    def __init__(self) -> None:
        self.messages: defaultdict[str, list[str]] = defaultdict(list)

    async def send_message(self, queue_name: str, message: str) -> bool:
        _check_str(message)
        logger.info("[in-memory queue] %s: %s", queue_name, message)
        self.messages[queue_name].append(message)
        return True


class SQSBackend:
    """AWS SQS (`pip install 'modalkit[aws]'`); a queue name is created if missing, a queue URL is used as is."""

    def __init__(self, **_: Any) -> None:
        self.sqs = SQSSink()

    async def send_message(self, queue_name: str, message: str) -> bool:
        _check_str(message)
        try:
            message_id = await asyncio.to_thread(self.sqs.send, queue_name, message)
        except Exception as exc:
            logger.error("sending to SQS queue %r failed: %s", queue_name, exc)
            return False
        logger.info("message %s sent to SQS queue %r", message_id, queue_name)
        return True


_DEFAULTS: dict[str, type[Any]] = {"memory": InMemoryBackend, "sqs": SQSBackend, "taskiq": TaskiqBackend}


def create_backend(backend_type: str, **kwargs: Any) -> Any:
    """A backend instance: registered classes first, then memory, sqs and taskiq.

    The class gets the keyword arguments its `__init__` accepts (all of them if it takes `**kwargs`), so
    `create_backend(name, **queue_config.model_dump())` works for a class that takes none.
    """
    backend_class = registered_backend(backend_type) or _DEFAULTS.get(backend_type)
    if backend_class is None:
        known = ", ".join(sorted({*_DEFAULTS, *registered_names()}))
        raise BackendError(
            f"unknown queue backend {backend_type!r}; known: {known}. "
            "Register your own with modalkit.task_queue.register_backend(name, cls)"
        )
    return construct(backend_class, kwargs)


def send_response_queue(queue_name: str, queue_message: str) -> bool:
    """Send one JSON message with the backend of the app's config (`ModalConfig()`); False if it failed.

    Each call builds the backend anew: in a service, prefer the queues of `/predict_async` requests.
    """
    _check_str(queue_message)
    try:
        message = json.loads(queue_message)
    except ValueError:
        message = None
    if not isinstance(message, dict):
        raise TypeValidationError("queue_message must be the JSON of an object")
    try:
        sink = make_sink(ModalConfig().app_settings.queue_config)
    except Exception as exc:
        logger.error("cannot create the queue backend: %s", exc)
        return False
    try:
        return deliver(sink, queue_name, message)
    finally:
        close = getattr(sink, "close", None)
        if callable(close):
            close()


def _check_str(message: object) -> None:
    if not isinstance(message, str):
        raise TypeValidationError(f"a queue message must be a str (JSON), not {type(message).__name__}")
