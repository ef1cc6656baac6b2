"""The dynamic batcher: items wait until `max_batch_size` are queued or `wait_ms` passed since the first, or until
every item lately seen at once is here already (waiting longer could not add one)."""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from opentelemetry.trace import SpanContext

from modalkit.exceptions import ServiceUnavailable
from modalkit.outcome import Failure

# How long the batcher remembers how many items were in at once: a window, and the one before it.
PEAK_WINDOW_S = 1.0


@dataclass(slots=True)
class Pending:
    item: Any
    future: asyncio.Future[Any]
    arrival: float = field(default=0.0)
    solo: bool = False  # runs in a batch of its own (a job suspected of crashing its last container)
    trace: SpanContext | None = None  # the request's span, parent of the batch span
    background: bool = False  # an async job's item: queued behind requests


class Batcher:
    """A queue shared by a model's containers; each container pulls its next batch when it is free.

    A batch closes when it holds `max_batch_size` items or `wait_ms` after its first item arrived,
    as `@modal.batched` does. Items queued while every container is busy make the next batch larger.
    Requests go before async jobs (`background`), which fill whatever room a batch has left.
    At most `max_queued` requests wait; a request whose future is cancelled (its client left) never runs.
    A busy container may take a full batch ahead (`next_full_batch`), so that it runs as soon as the one before
    ends, but only while no free container waits for it.

    `wait_ms` is an upper bound, as on Modal: a batch closes early when the items in the system now (queued,
    in this batch, or running) are as many as were ever in it at once in the last one to two `PEAK_WINDOW_S`,
    because then no other client is expected. Closed-loop clients are the case this is for: one client's request
    runs at once instead of waiting `wait_ms` for a batch mate that cannot come, and eight clients' batch closes
    when the eighth arrives. Under open arrivals the peak runs ahead of the current count, so batches wait the
    full `wait_ms` as before.
    """

    def __init__(self, max_batch_size: int, wait_ms: int, max_queued: int | None = None) -> None:
        self.max_batch_size = max_batch_size
        self.wait_s = wait_ms / 1000
        self.max_queued = max_queued  # sync requests that may wait; None: no bound
        self._requests: deque[Pending] = deque()
        self._jobs: deque[Pending] = deque()
        self._waiters: list[asyncio.Future[bool]] = []  # one per container waiting for items
        self._free_waiting = 0  # free containers waiting in `next_batch`: they go before a batch taken ahead
        self.in_system = 0  # items submitted and not yet answered: queued, in a batch, or running
        self._peak = 0  # the most items in the system at once in this window
        self._peak_before = 0  # ... and in the window before it
        self._window_ends = 0.0

    def __len__(self) -> int:
        return len(self._requests) + len(self._jobs)

    def oldest_wait(self) -> float:
        """Seconds the oldest queued item has waited (0 when the queue is empty)."""
        first = self._first()
        return asyncio.get_running_loop().time() - first.arrival if first else 0.0

    def submit(
        self, item: Any, solo: bool = False, trace: SpanContext | None = None, background: bool = False
    ) -> asyncio.Future[Any]:
        """The item's future; raises `ServiceUnavailable` when `max_queued` requests already wait."""
        if not background and self.max_queued is not None and len(self._requests) >= self.max_queued:
            self._drop_cancelled()
            if len(self._requests) >= self.max_queued:
                raise ServiceUnavailable(
                    f"{len(self._requests)} requests already wait for this model (limits.max_queued_requests); "
                    "retry later"
                )
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        pending = Pending(item, future, loop.time(), solo, trace, background)
        (self._jobs if background else self._requests).append(pending)
        self.in_system += 1
        future.add_done_callback(self._answered)
        self._note_peak(pending.arrival)
        self._wake()
        return future

    def _answered(self, _: asyncio.Future[Any]) -> None:
        self.in_system -= 1

    def _note_peak(self, now: float) -> None:
        if now >= self._window_ends:  # a new window; the last one is forgotten too if it passed unseen
            self._peak_before = self._peak if now < self._window_ends + PEAK_WINDOW_S else self.in_system
            self._peak = self.in_system
            self._window_ends = now + PEAK_WINDOW_S
        else:
            self._peak = max(self._peak, self.in_system)

    def everyone_is_here(self) -> bool:
        """No other item is expected soon: as many are in the system now as were at once lately."""
        self._note_peak(asyncio.get_running_loop().time())
        return self.in_system >= max(self._peak, self._peak_before)

    def requeue(self, batch: list[Pending]) -> None:
        """Put a batch that never ran back at the head of the queue, in its order (its container went)."""
        for pending in reversed(batch):
            (self._jobs if pending.background else self._requests).appendleft(pending)
        self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(True)

    async def next_batch(self, idle_timeout: float | None = None) -> list[Pending]:
        """The next batch; an empty list if nothing arrived within `idle_timeout` seconds."""
        loop = asyncio.get_running_loop()
        self._free_waiting += 1
        try:
            while True:
                if not len(self) and not await self._arrival(idle_timeout):
                    return []
                while (first := self._first()) and len(self) < self.max_batch_size and not self._solo_next():
                    if self.everyone_is_here():
                        break
                    remaining = first.arrival + self.wait_s - loop.time()
                    if remaining <= 0 or not await self._arrival(remaining):
                        break
                batch = self._take()
                if batch:
                    return batch
        finally:
            self._free_waiting -= 1
            if len(self) >= self.max_batch_size:
                self._wake()  # a busy container may take the full batch left behind

    async def next_full_batch(self) -> list[Pending]:
        """A full batch, for a busy container to run next, once `max_batch_size` items wait and no free container
        waits for them (a partial batch keeps filling while every container is busy, as it would on Modal)."""
        while True:
            if not self._free_waiting and len(self) >= self.max_batch_size and not self._solo_next():
                batch = self._take()
                if batch:
                    return batch
            await self._arrival(None)

    def _drop_cancelled(self) -> None:
        """Forget the requests whose clients left; only when the queue is full, so submit stays O(1)."""
        live = [p for p in self._requests if not p.future.done()]
        self._requests.clear()
        self._requests.extend(live)

    def _first(self) -> Pending | None:
        for queue in (self._requests, self._jobs):
            while queue and queue[0].future.done():  # a request whose client left: no batch waits for it
                queue.popleft()
        heads = [q[0] for q in (self._requests, self._jobs) if q]
        return min(heads, key=lambda p: p.arrival) if heads else None

    def _solo_next(self) -> bool:
        return not self._requests and bool(self._jobs) and self._jobs[0].solo

    async def _arrival(self, timeout: float | None) -> bool:
        """Wait for the next submitted item; False if `timeout` seconds pass first (no task is created)."""
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        timer = loop.call_later(timeout, _settle, waiter, False) if timeout is not None else None
        self._waiters.append(waiter)
        try:
            return await waiter
        finally:
            self._waiters.remove(waiter)
            if timer is not None:
                timer.cancel()

    def _take(self) -> list[Pending]:
        batch: list[Pending] = []
        for queue in (self._requests, self._jobs):
            while queue and len(batch) < self.max_batch_size:
                if queue[0].solo and batch:
                    return batch
                pending = queue.popleft()
                if pending.future.done():  # a cancelled request (client gone) takes no slot
                    continue
                batch.append(pending)
                if pending.solo:
                    return batch
        return batch

    def fail_all(self, failure: Failure) -> None:
        for queue in (self._requests, self._jobs):
            while queue:
                resolve(queue.popleft(), failure)


def resolve(pending: Pending, result: Any) -> None:
    if not pending.future.done():
        pending.future.set_result(result)


def _settle(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)
