"""Which sink serves `queue_config.backend`: the backends registered by name, then the built-in ones.

`modalkit.task_queue.register_backend` (ModalKit's import path) registers here.
"""

from __future__ import annotations

import inspect
import logging
from typing import Any, cast

from modalkit.config.schema import BUILTIN_QUEUE_BACKENDS, QueueConfig
from modalkit.exceptions import ConfigError, TypeValidationError
from modalkit.sinks.backend import BackendSink, QueueBackend
from modalkit.sinks.builtin import MemorySink, ModalQueueSink, RedisSink, ResultSink
from modalkit.sinks.sqs import SQSSink
from modalkit.sinks.taskiq import TaskiqBackend

logger = logging.getLogger("modalkit.sinks")

BACKEND_PATH = "app_settings.queue_config.backend"

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


def make_sink(config: QueueConfig, backend: object | None = None) -> ResultSink:
    """The sink of `queue_config.backend`; `backend`, a ModalKit-style `QueueBackend` instance, wins over it.

    A name given to `register_backend` is built with the keys of the queue config that its class accepts,
    and wins over a built-in of the same name.
    """
    if backend is not None:
        if not callable(getattr(backend, "send_message", None)):
            raise TypeValidationError(
                f"{backend!r} is not a queue backend: it has no send_message(queue_name, message)"
            )
        return BackendSink(cast(QueueBackend, backend))
    registered = registered_backend(config.backend)
    if registered is not None:
        return BackendSink(_build_registered(config.backend, registered, config))
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
    names = ", ".join(registered_names()) or "none"
    raise ConfigError(
        [
            f"{BACKEND_PATH}: unknown backend {config.backend!r}; built-in: {', '.join(BUILTIN_QUEUE_BACKENDS)}; "
            f"registered: {names}. Register a custom one before the first job, in the app file: "
            "modalkit.task_queue.register_backend(name, cls)"
        ]
    )


def _build_registered(name: str, backend_class: type[Any], config: QueueConfig) -> QueueBackend:
    try:
        return cast(QueueBackend, construct(backend_class, config.model_dump()))
    except Exception as exc:
        raise ConfigError(
            [
                f"{BACKEND_PATH}: cannot create the registered backend {name!r} "
                f"({backend_class.__qualname__}): {type(exc).__name__}: {exc}"
            ]
        ) from exc
