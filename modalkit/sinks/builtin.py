"""The built-in sinks that need no other queue system's client: memory, Redis and `modal.Queue`."""

from __future__ import annotations

import json
from collections import defaultdict
from typing import Any, Protocol

from modalkit.sinks.failures import json_message


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
