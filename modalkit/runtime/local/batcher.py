"""The dynamic batcher: items wait until `max_batch_size` are queued or `wait_ms` passed since the first."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanContext

from modalkit.outcome import Failure


@dataclass(slots=True)
class Pending:
    item: Any
    future: asyncio.Future[Any]
    arrival: float = field(default=0.0)
    solo: bool = False  # runs in a batch of its own (a job suspected of crashing its last container)
    trace: SpanContext | None = None  # the request's span, parent of the batch span


class Batcher:
    """A queue shared by a model's containers; each container pulls its next batch when it is free.

    A batch closes when it holds `max_batch_size` items or `wait_ms` after its first item arrived,
    as `@modal.batched` does. Items queued while every container is busy make the next batch larger.
    """

    def __init__(self, max_batch_size: int, wait_ms: int) -> None:
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000
        self._queue: deque[Pending] = deque()
        self._arrived = asyncio.Event()

    def __len__(self) -> int:
        return len(self._queue)

    def submit(self, item: Any, solo: bool = False, trace: SpanContext | None = None) -> asyncio.Future[Any]:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append(Pending(item, future, loop.time(), solo, trace))
        self._arrived.set()
        return future

    async def next_batch(self) -> list[Pending]:
        loop = asyncio.get_running_loop()
        while True:
            while not self._queue:
                self._arrived.clear()
                await self._arrived.wait()
            deadline = self._queue[0].arrival + self.wait_s
            while len(self._queue) < self.max_batch_size and self._queue and not self._queue[0].solo:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    break
                self._arrived.clear()
                try:
                    await asyncio.wait_for(self._arrived.wait(), remaining)
                except TimeoutError:
                    break
            batch = self._take()
            if batch:
                return batch

    def _take(self) -> list[Pending]:
        batch: list[Pending] = []
        while self._queue and len(batch) < self.max_batch_size:
            if self._queue[0].solo and batch:
                break
            pending = self._queue.popleft()
            if pending.future.done():  # a cancelled request (client gone) takes no slot
                continue
            batch.append(pending)
            if pending.solo:
                break
        return batch

    def fail_all(self, failure: Failure) -> None:
        while self._queue:
            resolve(self._queue.popleft(), failure)


def resolve(pending: Pending, result: Any) -> None:
    if not pending.future.done():
        pending.future.set_result(result)
