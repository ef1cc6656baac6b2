"""ModalKit's `modalkit.task_queue`: queue backends (`async send_message(queue, message: str) -> bool`).

A backend registered here is chosen by name in YAML (`queue_config.backend: my-backend`):

    class Webhook:
        async def send_message(self, queue_name: str, message: str) -> bool:
            ...  # message is the result's JSON; return True once it is accepted

    register_backend("webhook", Webhook)
"""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
from collections import defaultdict
from typing import Any

from modalkit.exceptions import BackendError, TypeValidationError
from modalkit.sinks.backend import QueueBackend
from modalkit.sinks.sqs import SQSSink
from modalkit.sinks.taskiq import TaskiqBackend

logger = logging.getLogger("modalkit.queues")

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
_REGISTERED: dict[str, type[Any]] = {}


def register_backend(name: str, backend_class: type[Any]) -> None:
    """Make `backend_class` the backend of `queue_config.backend: <name>`; it wins over a built-in of that name."""
    if not callable(getattr(backend_class, "send_message", None)):
        raise TypeValidationError(f"{backend_class!r} has no send_message(queue_name, message) method")
    _REGISTERED[name] = backend_class
    logger.debug("registered queue backend %r: %s", name, backend_class.__qualname__)


def registered_backend(name: str) -> type[Any] | None:
    """The class given to `register_backend` under `name`, if any."""
    return _REGISTERED.get(name)


def registered_names() -> list[str]:
    return sorted(_REGISTERED)


def create_backend(backend_type: str, **kwargs: Any) -> Any:
    """A backend instance: registered classes first, then memory, sqs and taskiq.

    The class gets the keyword arguments its `__init__` accepts (all of them if it takes `**kwargs`), so
    `create_backend(name, **queue_config.model_dump())` works for a class that takes none.
    """
    backend_class = _REGISTERED.get(backend_type) or _DEFAULTS.get(backend_type)
    if backend_class is None:
        known = ", ".join(sorted({*_DEFAULTS, *_REGISTERED}))
        raise BackendError(
            f"unknown queue backend {backend_type!r}; known: {known}. "
            "Register your own with modalkit.task_queue.register_backend(name, cls)"
        )
    return construct(backend_class, kwargs)


def construct(backend_class: type[Any], kwargs: dict[str, Any]) -> Any:
    """`backend_class(**kwargs)`, leaving out the keywords its `__init__` does not take."""
    try:
        parameters = inspect.signature(backend_class).parameters.values()
    except (TypeError, ValueError):  # no signature to read (a C type): try it as given
        return backend_class(**kwargs)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters):
        return backend_class(**kwargs)
    named = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return backend_class(**{k: v for k, v in kwargs.items() if k in named})


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

    from modalkit.config import ModalConfig
    from modalkit.queues import deliver, make_sink

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
