"""The containers of one streaming model entry, and the streams waiting for a slot in them.

Each container has `deployment_config.max_concurrent_inputs` slots. A new stream takes a free slot (in the least
busy container), or waits, first come first served; at most `limits.max_queued_requests` streams wait, and one
more is refused (`ServiceUnavailable`). Streams waiting start another container, up to `max_containers` (the
local limit, `capacity.container_limit`). As in the batched pool (`lifecycle.Life`): `min_containers` start at
boot, a container that cannot load is retried with backoff (the waiting streams get `Failure("load")`), one that
crashed or was recycled is replaced, and one without streams for `scaledown_window` stops, never below the minimum.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from modalkit.app_loader import ServiceRef
from modalkit.config import ModalConfig
from modalkit.exceptions import ServiceUnavailable
from modalkit.observation import PoolStats, StreamStats
from modalkit.outcome import Encoded, Failure
from modalkit.runtime.capacity import container_limit
from modalkit.runtime.local.lifecycle import SHUTTING_DOWN, Ended, Life, LifeTimings, load_failure
from modalkit.runtime.local.pool_base import LifePool
from modalkit.runtime.local.scaling import should_start_stream_container
from modalkit.runtime.local.stream_container import StreamContainer, StreamSlot

logger = logging.getLogger("modalkit.pool")

StreamContainerFactory = Callable[[ServiceRef, str, dict[str, str]], StreamContainer]
Claimed = tuple[StreamContainer, StreamSlot]  # a container and the slot taken in it
_RECYCLE_WAIT_S = 5.0  # how long a recycled container may take to report its streams' failures and exit


@dataclass(frozen=True, slots=True)
class StreamSettings:
    min_containers: int
    max_containers: int
    slots: int  # streams one container runs at once: max_concurrent_inputs
    max_waiting: int | None  # streams that may wait for a slot: limits.max_queued_requests
    threads_per_container: int | None
    timings: LifeTimings

    @classmethod
    def from_config(cls, config: ModalConfig) -> StreamSettings:
        app = config.app_settings
        deploy = app.deployment_config
        return cls(
            min_containers=deploy.min_containers,
            max_containers=container_limit(config),
            slots=max(1, deploy.max_concurrent_inputs),
            max_waiting=app.limits.max_queued_requests,
            threads_per_container=app.local_config.threads_per_container,
            timings=LifeTimings(float(deploy.scaledown_window), float(deploy.timeout)),
        )


class Slots:
    """The serving containers' slots and the streams waiting for one, first come first served."""

    def __init__(self, per_container: int, max_waiting: int | None) -> None:
        self.per_container = per_container
        self.max_waiting = max_waiting
        self.containers: list[StreamContainer] = []
        self.closed = False
        self.on_wait: Callable[[], None] = lambda: None  # a stream began to wait: the pool may scale up
        self._waiting: deque[asyncio.Future[Claimed | Failure]] = deque()

    def __len__(self) -> int:
        """Streams waiting for a slot."""
        return len(self._waiting)

    async def take(self) -> Claimed | Failure:
        """A slot; or the Failure that ended the wait (the model cannot load, the server is stopping)."""
        if self.closed:
            raise ServiceUnavailable(SHUTTING_DOWN)
        free = self._free()
        if free is not None and not self._waiting:
            return free, free.claim()
        if self.max_waiting is not None and len(self._waiting) >= self.max_waiting:
            raise ServiceUnavailable(f"{len(self._waiting)} streams already wait (limits.max_queued_requests)")
        waiter: asyncio.Future[Claimed | Failure] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        self.dispatch()  # a no-op while the slots stay given out as they free up
        if not waiter.done():
            self.on_wait()
        try:
            return await waiter
        except asyncio.CancelledError:
            result = waiter.result() if waiter.done() and not waiter.cancelled() else None
            if isinstance(result, tuple):  # given a slot as it left
                container, slot = result
                container.release(slot)
            raise
        finally:
            with contextlib.suppress(ValueError):
                self._waiting.remove(waiter)

    def dispatch(self) -> None:
        """Give free slots to the streams waiting longest."""
        while self._waiting:
            free = self._free()
            if free is None:
                return
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result((free, free.claim()))

    def fail_waiting(self, failure: Failure) -> None:
        waiting, self._waiting = self._waiting, deque()
        for waiter in waiting:
            if not waiter.done():
                waiter.set_result(failure)

    def _free(self) -> StreamContainer | None:
        """The serving container with the most free slots, if any has one."""
        open_ = [c for c in self.containers if c.accepting and c.open_streams < self.per_container]
        return min(open_, key=lambda c: c.open_streams, default=None)


class StreamLife(Life[StreamContainer]):
    """A life whose container serves streams: it offers the container's slots while it runs, and stops it when it
    dies (crash), reports a CUDA failure (recycled), or has no stream for `scaledown_window` (idle)."""

    def __init__(
        self,
        key: int,
        model_name: str,
        timings: LifeTimings,
        *,
        slots: Slots,
        stats: PoolStats,
        new_container: Callable[[], StreamContainer],
        may_idle_out: Callable[[], bool],
    ) -> None:
        super().__init__(key, model_name, timings, stats=stats, new_container=new_container, may_idle_out=may_idle_out)
        self._slots = slots
        self._changed = asyncio.Event()

    def _fail_waiting(self, failure: Failure) -> None:
        self._slots.fail_waiting(failure)

    def _on_change(self) -> None:
        self._changed.set()
        self._slots.dispatch()

    async def _serve(self, container: StreamContainer) -> Ended:
        container.on_change = self._on_change
        self._slots.containers.append(container)
        self._slots.dispatch()
        try:
            while True:
                self._stats.enter(self.key, "busy" if container.open_streams else "idle")
                if container.recycling:  # the worker fails its other streams too, then exits
                    await asyncio.wait((container.closed,), timeout=_RECYCLE_WAIT_S)
                    return "cuda"
                if container.closed.done():
                    return "crash"
                idle = container.open_streams == 0 and self._may_idle_out()
                waited_idle = not await self._changed_within(
                    container, self._timings.scaledown_window if idle else None
                )
                if waited_idle and container.open_streams == 0 and self._may_idle_out():
                    return "idle"
        finally:
            self._slots.containers.remove(container)

    async def _changed_within(self, container: StreamContainer, timeout: float | None) -> bool:
        """Wait until a slot changes or the container ends; False if `timeout` s passed first."""
        self._changed.clear()
        changed = asyncio.ensure_future(self._changed.wait())
        try:
            done, _ = await asyncio.wait(
                (changed, container.closed), timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
        finally:
            changed.cancel()
        return bool(done)


class StreamPool(LifePool[StreamLife]):
    def __init__(
        self,
        ref: ServiceRef,
        model_name: str,
        settings: StreamSettings,
        container_factory: StreamContainerFactory = StreamContainer,
    ) -> None:
        super().__init__(
            ref,
            model_name,
            settings.min_containers,
            settings.max_containers,
            settings.threads_per_container,
            container_factory,
        )
        self.settings = settings
        self.slots = Slots(settings.slots, settings.max_waiting)
        self.slots.on_wait = self._scale_up
        self.streams = StreamStats()

    @classmethod
    def from_config(cls, ref: ServiceRef, model_name: str, config: ModalConfig) -> StreamPool:
        return cls(ref, model_name, StreamSettings.from_config(config))

    async def start(self) -> None:
        for _ in range(self.settings.min_containers):
            self._start_life()

    async def stop(self) -> None:
        self.slots.closed = True
        self.slots.fail_waiting(Failure("unavailable", SHUTTING_DOWN))
        for container in self.slots.containers:
            container.fail_open(Failure("unavailable", SHUTTING_DOWN))
        await self._stop_lives()

    async def stream(self, item: Any) -> AsyncIterator[Encoded | Failure]:
        """One input's chunks; see `modalkit.runtime.Runtime.stream`."""
        claimed = await self._take_slot()
        if isinstance(claimed, Failure):
            self.streams.failed += 1
            yield claimed
            return
        container, slot = claimed
        self.streams.started += 1
        ended = "cancelled"
        try:
            async with contextlib.aclosing(container.open_stream(item, slot)) as pieces:
                async for piece in pieces:
                    ended = "failed" if isinstance(piece, Failure) else ended
                    yield piece
            ended = "finished" if ended != "failed" else ended
        finally:
            self._count(ended)

    async def _take_slot(self) -> Claimed | Failure:
        if self.failed():
            return load_failure(self.model_name, str(self.stats.load_error))
        try:
            return await self.slots.take()
        except ServiceUnavailable:
            self.streams.refused += 1
            raise

    def health(self) -> dict[str, Any]:
        return {
            **self._health(len(self.slots)),
            "slots_per_container": self.settings.slots,
            "active_streams": sum(c.open_streams for c in self.slots.containers),
            "streams": self.streams.counts(),
        }

    def _count(self, ended: str) -> None:
        if ended == "finished":
            self.streams.finished += 1
        elif ended == "failed":
            self.streams.failed += 1
        else:
            self.streams.cancelled += 1

    def _scale_up(self) -> None:
        stats, settings, waiting = self.stats, self.settings, len(self.slots)
        if should_start_stream_container(waiting, stats.live, stats.ready, settings.slots, settings.max_containers):
            logger.info("scaling %r up to %d containers (%d streams wait)", self.model_name, stats.live + 1, waiting)
            self._start_life()

    def _start_life(self) -> None:
        self._launch(
            lambda key: StreamLife(
                key,
                self.model_name,
                self.settings.timings,
                slots=self.slots,
                stats=self.stats,
                new_container=self._new_container,
                may_idle_out=self._may_idle_out,
            )
        )
