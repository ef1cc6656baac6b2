"""The containers of one model entry, scaled as Modal scales them.

`min_containers` start at boot; another starts (up to `max_containers`) when queued work has waited
longer than a batch takes; a container idle for `scaledown_window` stops (never below the minimum);
a container that crashed (noticed when its process ends, busy or idle) or was recycled is replaced at once,
and one that cannot start or load is retried with capped exponential backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import time
from typing import Any

from modalkit import telemetry
from modalkit.app_loader import ServiceRef
from modalkit.config import ModalConfig
from modalkit.observation import PoolStats
from modalkit.outcome import Failure
from modalkit.runtime.local.batcher import Batcher, Pending, resolve
from modalkit.runtime.local.container import Container, ContainerDied, ContainerLoadFailed, exit_reason

logger = logging.getLogger("modalkit.pool")

_MAX_BACKOFF_S = 30.0
_QUICK_CRASH_S = 10.0  # a container that crashes this soon after loading, twice running, is replaced after a backoff
_SCALE_TICK_S = 0.05


class ContainerPool:
    def __init__(self, ref: ServiceRef, model_name: str, config: ModalConfig) -> None:
        app = config.app_settings
        deploy = app.deployment_config
        self.ref = ref
        self.model_name = model_name
        self.batcher = Batcher(
            app.batch_config.max_batch_size, app.batch_config.wait_ms, app.limits.max_queued_requests
        )
        self.min_containers = deploy.min_containers
        # Unbounded on Modal; here one machine's worth: at least one, at least the minimum.
        self.max_containers = deploy.max_containers or max(1, deploy.min_containers)
        self.scaledown_window = float(deploy.scaledown_window)
        self.batch_timeout = float(deploy.timeout)  # Modal's per-input timeout: a batch past it is killed
        self.cores = os.cpu_count() or 1
        self.fixed_threads = app.local_config.threads_per_container
        start_threads = self.fixed_threads or max(1, self.cores // max(1, self.min_containers))
        self.env = {"OMP_NUM_THREADS": str(start_threads), "MKL_NUM_THREADS": str(start_threads)}
        self.stats = PoolStats()
        self.ready = 0
        self.load_error: str | None = None
        self.containers: dict[int, Container] = {}
        self._slots: dict[int, asyncio.Task[None]] = {}
        self._ids = itertools.count()
        self._busy = 0
        self._leaving = 0  # containers that decided to idle out but have not stopped yet
        self._batch_seconds = 0.0  # moving average: how long a batch takes
        self._autoscaler: asyncio.Task[None] | None = None

    async def start(self) -> None:
        for _ in range(self.min_containers):
            self._start_container()
        self._autoscaler = asyncio.create_task(self._autoscale())

    async def stop(self) -> None:
        tasks = [t for t in (self._autoscaler, *self._slots.values()) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.batcher.fail_all(Failure(503, "the server is shutting down", "unavailable"))

    def submit(self, item: Any, solo: bool = False, background: bool = False) -> asyncio.Future[Any]:
        if self.load_error is not None and self.ready == 0:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(self._load_failure())
            return future
        return self.batcher.submit(item, solo, telemetry.current_span_context(), background)

    def failed(self) -> bool:
        return self.load_error is not None and self.ready == 0

    def health(self) -> dict[str, Any]:
        return {
            "containers": len(self._slots),
            "ready_containers": self.ready,
            "min_containers": self.min_containers,
            "max_containers": self.max_containers,
            "queued": len(self.batcher),
            "load_error": self.load_error,
            "pids": [c.pid for c in self.containers.values()],
            "container_starts": self.stats.container_starts,
            "restarts": dict(self.stats.restarts),
            "batch_sizes": {str(size): n for size, n in sorted(self.stats.batch_sizes.items())},
        }

    def _threads(self) -> int:
        """Threads for the next batch: the cores shared by the containers running now, so one container
        alone uses the whole machine and two never oversubscribe it."""
        return self.fixed_threads or max(1, self.cores // max(1, len(self._slots)))

    def _load_failure(self) -> Failure:
        return Failure(503, f"model {self.model_name!r} failed to load: {self.load_error}", "load")

    def _start_container(self) -> None:
        slot = next(self._ids)
        self._slots[slot] = asyncio.create_task(self._run_slot(slot))

    async def _autoscale(self) -> None:
        while True:
            await asyncio.sleep(_SCALE_TICK_S)
            live = len(self._slots)
            if live >= self.max_containers or not len(self.batcher):
                continue
            starting = live - self.ready
            idle = self.ready - self._busy
            waited_a_batch = self.batcher.oldest_wait() > max(self._batch_seconds, self.batcher.wait_s)
            if live == 0 or (starting == 0 and idle <= 0 and waited_a_batch):
                logger.info("scaling %r up to %d containers (%d queued)", self.model_name, live + 1, len(self.batcher))
                self._start_container()

    async def _run_slot(self, slot: int) -> None:
        """One container's life: start (retrying a failed start with backoff), serve, then stop or be replaced."""
        loop = asyncio.get_running_loop()
        quick_crashes = 0
        try:
            while True:
                container = await self._start_loaded()
                self.containers[slot] = container
                self.ready += 1
                ready_at = loop.time()
                logger.info("container of %r ready (pid %s)", self.model_name, container.pid)
                try:
                    ended = await self._serve(container)
                finally:
                    self.ready -= 1
                    del self.containers[slot]
                    self.stats.container_down(id(container))
                    await container.stop()
                if ended == "idle":
                    self._leaving -= 1
                    logger.info("container of %r idle for %ss: stopped", self.model_name, self.scaledown_window)
                    return
                self.stats.restarts[ended] += 1
                quick = ended == "crash" and loop.time() - ready_at < _QUICK_CRASH_S
                quick_crashes = quick_crashes + 1 if quick else 0
                delay = _backoff_s(quick_crashes - 1) if quick_crashes > 1 else 0.0
                logger.warning(
                    "container of %r (pid %s) replaced after %s, in %gs", self.model_name, container.pid, ended, delay
                )
                await asyncio.sleep(delay)
        finally:
            del self._slots[slot]

    async def _start_loaded(self) -> Container:
        """A container that has loaded; a failed spawn or load is retried with capped exponential backoff."""
        failures = 0
        while True:
            container = Container(self.ref, self.model_name, self.env)
            self.stats.container_up(id(container))
            try:
                await container.start()
            except BaseException as exc:
                self.stats.container_down(id(container))
                await container.stop()
                if not isinstance(exc, ContainerLoadFailed):
                    raise
                failures += 1
                self.load_error = str(exc)
                delay = _backoff_s(failures)
                logger.error(
                    "model %r failed to load (attempt %d, next in %gs): %s", self.model_name, failures, delay, exc
                )
                if self.ready == 0:  # no other container will serve the queue meanwhile
                    self.batcher.fail_all(self._load_failure())
                await asyncio.sleep(delay)
                continue
            self.load_error = None
            return container

    async def _serve(self, container: Container) -> str:
        """Feed batches to one container until it dies, is recycled, or idles out; returns why it ended."""
        cold = True  # the first batch of a container pays for its start
        while True:
            can_idle_out = len(self._slots) - self._leaving > self.min_containers
            batch = await self._next_batch(container, self.scaledown_window if can_idle_out else None)
            if batch is None:
                reason = exit_reason(container.exited.result())
                logger.warning("container of %r (pid %s) died while idle (%s)", self.model_name, container.pid, reason)
                return "crash"
            if not batch:
                if len(self._slots) - self._leaving > self.min_containers:
                    self._leaving += 1
                    return "idle"
                continue
            ended = await self._run_batch(container, batch, cold)
            if ended is not None:
                return ended
            cold = False

    async def _next_batch(self, container: Container, idle_timeout: float | None) -> list[Pending] | None:
        """The next batch (empty after `idle_timeout` s with nothing queued), or None if the container died first."""
        waiting = asyncio.ensure_future(self.batcher.next_batch(idle_timeout))
        try:
            await asyncio.wait((waiting, container.exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()  # takes nothing from the queue unless it is done already
        if waiting.done() and not waiting.cancelled():
            return waiting.result()  # taken as the container died: the run fails it as a crash, and jobs retry
        return None

    async def _run_batch(self, container: Container, batch: list[Pending], cold: bool) -> str | None:
        """Run one batch and answer every item in it; why the container must go, or None if it serves on."""
        loop = asyncio.get_running_loop()
        self._busy += 1
        sent_ns, started = time.time_ns(), loop.time()
        try:
            async with asyncio.timeout(self.batch_timeout):
                results, inference_ns = await container.run([p.item for p in batch], self._threads())
        except TimeoutError:
            container.kill()
            detail = f"the batch ran past deployment_config.timeout ({self.batch_timeout:g} s); container replaced"
            _fail(batch, Failure(504, detail, "timeout"))
            return "timeout"
        except ContainerDied as exc:
            _fail(batch, Failure(503, f"container crashed ({exc}) while running this batch; retry", "crash"))
            return "crash"
        except asyncio.CancelledError:
            _fail(batch, Failure(503, "the server is shutting down", "unavailable"))
            raise
        except Exception as exc:  # a batch is never dropped: whatever went wrong, its items are answered
            logger.exception("container of %r (pid %s) could not run a batch", self.model_name, container.pid)
            container.kill()
            _fail(batch, Failure(503, f"the batch could not be run ({type(exc).__name__}: {exc}); retry", "crash"))
            return "error"
        finally:
            self._busy -= 1
        for pending, result in zip(batch, results, strict=True):
            resolve(pending, result)
        done = loop.time()
        self._batch_seconds = 0.8 * self._batch_seconds + 0.2 * (done - started) if not cold else done - started
        self.stats.record_batch(len(batch), cold, [done - p.arrival for p in batch])
        telemetry.record_batch(
            self.model_name, [p.trace for p in batch], str(container.pid), cold, (sent_ns, time.time_ns()),
            inference_ns,
        )  # fmt: skip
        if any(isinstance(r, Failure) and r.recycles_container for r in results):
            await container.wait()
            return "cuda"
        return None


def _backoff_s(attempt: int) -> float:
    return min(_MAX_BACKOFF_S, 0.5 * 2.0**attempt)


def _fail(batch: list[Pending], failure: Failure) -> None:
    for pending in batch:
        resolve(pending, failure)
