"""Result sinks: where an async job's result (or failure) is pushed, by queue name."""

from __future__ import annotations

import json
import logging
import time
from collections import defaultdict
from typing import Any, Protocol

from modalkit.config.schema import QueueConfig

logger = logging.getLogger("modalkit.queues")


class ResultSink(Protocol):
    """Pushes are blocking calls; async callers run them in a thread."""

    def push(self, queue: str, message: dict[str, Any]) -> None: ...


class MemorySink:
    """Keeps messages in this process: for development and tests, lost on restart."""

    def __init__(self) -> None:
        self.queues: defaultdict[str, list[dict[str, Any]]] = defaultdict(list)

    def push(self, queue: str, message: dict[str, Any]) -> None:
        self.queues[queue].append(message)


class RedisSink:
    """A Redis list per queue name; consumers `BLPOP` it. Messages are JSON."""

    def __init__(self, url: str) -> None:
        import redis

        self._client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)

    def push(self, queue: str, message: dict[str, Any]) -> None:
        self._client.rpush(queue, json.dumps(message))


class ModalQueueSink:
    """A `modal.Queue` per queue name, created on first use."""

    def push(self, queue: str, message: dict[str, Any]) -> None:
        import modal

        modal.Queue.from_name(queue, create_if_missing=True).put(message)


def make_sink(config: QueueConfig) -> ResultSink:
    if config.backend == "redis":
        return RedisSink(config.redis_url)
    if config.backend == "modal":
        return ModalQueueSink()
    return MemorySink()


def deliver(sink: ResultSink, queue: str, message: dict[str, Any], attempts: int = 5, first_delay: float = 0.2) -> bool:
    """Push with exponential backoff; False (and logged) if every attempt failed. Never raises."""
    delay = first_delay
    for attempt in range(1, attempts + 1):
        try:
            sink.push(queue, message)
            return True
        except Exception as exc:
            logger.warning("push to queue %r failed (attempt %d/%d): %s", queue, attempt, attempts, exc)
            if attempt < attempts:
                time.sleep(delay)
                delay *= 2
    return False
