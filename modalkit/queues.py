"""Result sinks: where an async job's result (or failure) is pushed, by queue name."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from collections.abc import Iterable
from typing import Any, Protocol, cast

from modalkit import task_queue
from modalkit.config.schema import BUILTIN_QUEUE_BACKENDS, QueueConfig
from modalkit.exceptions import ConfigError, TypeValidationError
from modalkit.sinks.backend import BackendSink, QueueBackend
from modalkit.sinks.failures import json_message, permanent_reason
from modalkit.sinks.sqs import SQSSink
from modalkit.sinks.taskiq import TaskiqBackend

logger = logging.getLogger("modalkit.queues")

BACKEND_PATH = "app_settings.queue_config.backend"


class ResultSink(Protocol):
    """Pushes are blocking calls; async callers run them in a thread. A push that can never succeed raises
    `DeliveryRefused` (or an error `permanent_reason` knows); any other exception is worth retrying."""

    def push(self, queue: str, message: dict[str, Any]) -> None: ...


class MemorySink:
    """Keeps messages in this process: for development and tests, lost on restart."""

    def __init__(self) -> None:
        self.queues: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)

    def push(self, queue: str, message: dict[str, Any]) -> None:
        self.queues[queue].append(json.loads(json_message(message)))


class RedisSink:
    """A Redis list per queue name; consumers `BLPOP` it. Messages are JSON."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def push(self, queue: str, message: dict[str, Any]) -> None:
        self._client.rpush(queue, json_message(message))


class ModalQueueSink:
    """A `modal.Queue` per queue name, created on first use."""

    def push(self, queue: str, message: dict[str, Any]) -> None:
        import modal

        json_message(message)  # what every other sink would send: no NaN, nothing that is not JSON
        modal.Queue.from_name(queue, create_if_missing=True).put(message)


def make_sink(config: QueueConfig, backend: object | None = None) -> ResultSink:
    """The sink of `queue_config.backend`; `backend`, a ModalKit-style `QueueBackend` instance, wins over it.

    A name given to `modalkit.task_queue.register_backend` is built with the keys of the queue config that
    its class accepts, and wins over a built-in of the same name.
    """
    if backend is not None:
        if not callable(getattr(backend, "send_message", None)):
            raise TypeValidationError(
                f"{backend!r} is not a queue backend: it has no send_message(queue_name, message)"
            )
        return BackendSink(cast(QueueBackend, backend))
    registered = task_queue.registered_backend(config.backend)
    if registered is not None:
        return BackendSink(_registered(config.backend, registered, config))
    if config.backend == "memory":
        return MemorySink()
    if config.backend == "redis":
        return RedisSink(config.redis_url)
    if config.backend == "modal":
        return ModalQueueSink()
    if config.backend == "sqs":
        return SQSSink()
    if config.backend == "taskiq" and config.broker_url is not None:  # the schema requires broker_url for taskiq
        return BackendSink(TaskiqBackend(config.broker_url))
    names = ", ".join(task_queue.registered_names()) or "none"
    raise ConfigError(
        [
            f"{BACKEND_PATH}: unknown backend {config.backend!r}; built-in: {', '.join(BUILTIN_QUEUE_BACKENDS)}; "
            f"registered: {names}. Register a custom one before the first job, in the app file: "
            "modalkit.task_queue.register_backend(name, cls)"
        ]
    )


def _registered(name: str, backend_class: type[Any], config: QueueConfig) -> QueueBackend:
    try:
        return cast(QueueBackend, task_queue.construct(backend_class, config.model_dump()))
    except Exception as exc:
        raise ConfigError(
            [
                f"{BACKEND_PATH}: cannot create the registered backend {name!r} "
                f"({backend_class.__qualname__}): {type(exc).__name__}: {exc}"
            ]
        ) from exc


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
