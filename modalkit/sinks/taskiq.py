"""`TaskiqBackend`: results published as taskiq tasks, one broker per queue name (`queue_config.broker_url`)."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from typing import Any

from modalkit.exceptions import ConfigError

logger = logging.getLogger("modalkit.sinks")

BROKER_PATH = "app_settings.queue_config.broker_url"
REDIS_SCHEMES = ("redis", "rediss", "unix")


class TaskiqBackend:
    """A queue is a taskiq task named after it, kicked with the message (a JSON string) as its one argument.

    `redis://...` uses taskiq-redis' `ListQueueBroker` with the queue name as its Redis list, so the
    consumer of queue `q` is `ListQueueBroker(url, queue_name="q")` with a task named `"q"`, run by
    `taskiq worker`. `memory://` uses taskiq's `InMemoryBroker` in this process: its task keeps the
    messages in `received` (register another on `broker("q")` to handle them yourself).
    """

    def __init__(self, broker_url: str) -> None:
        scheme = broker_url.partition("://")[0]
        if scheme not in (*REDIS_SCHEMES, "memory"):
            raise ConfigError([f"{BROKER_PATH}: {broker_url!r} is not a taskiq broker: use redis://... or memory://"])
        _require("taskiq_redis" if scheme in REDIS_SCHEMES else "taskiq")
        self.broker_url = broker_url
        self.received: defaultdict[str, list[str]] = defaultdict(list)
        self._brokers: dict[str, Any] = {}
        self._started: set[str] = set()
        self._lock = asyncio.Lock()

    def broker(self, queue: str) -> Any:
        """The broker of `queue` (an `AsyncBroker`), made on first use and kept."""
        broker = self._brokers.get(queue)
        if broker is None:
            broker = self._brokers[queue] = self._new_broker(queue)
        return broker

    async def send_message(self, queue_name: str, message: str) -> bool:
        from taskiq.kicker import AsyncKicker

        broker = self.broker(queue_name)
        async with self._lock:
            if queue_name not in self._started:
                await broker.startup()
                self._started.add(queue_name)
        kicker: AsyncKicker[[str], None] = AsyncKicker(task_name=queue_name, broker=broker, labels={})
        await kicker.kiq(message)
        return True

    async def shutdown(self) -> None:
        async with self._lock:
            started, self._started = self._started, set()
            for queue in started:
                await self._brokers[queue].shutdown()
            self._brokers.clear()

    def _new_broker(self, queue: str) -> Any:
        if self.broker_url.startswith("memory://"):
            from taskiq import InMemoryBroker

            broker = InMemoryBroker(await_inplace=True)

            async def record_message(message: str) -> None:
                logger.info("[taskiq memory://] %s: %s", queue, message)
                self.received[queue].append(message)

            broker.register_task(record_message, task_name=queue)
            return broker
        from taskiq_redis import ListQueueBroker

        return ListQueueBroker(self.broker_url, queue_name=queue, socket_timeout=5, socket_connect_timeout=5)


def _require(module: str) -> None:
    try:
        __import__(module)
    except ImportError:
        raise ConfigError(
            [
                f"app_settings.queue_config.backend: taskiq needs {module}, which is not installed: "
                "pip install 'modalkit[taskiq]'"
            ]
        ) from None
