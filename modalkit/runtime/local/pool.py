"""The containers of one model entry, scaled as Modal scales them.

`min_containers` start at boot; another starts (up to `max_containers`) when queued work has waited
longer than a batch takes (`scaling`); a container idle for `scaledown_window` stops (never below the minimum);
a container that crashed or was recycled is replaced, and one that cannot start or load is retried with backoff
(`lifecycle`). The pool owns the batcher, the lives, the autoscaler, the share of cores each batch may use,
and `/health`'s view; every count lives in its `PoolStats`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
from dataclasses import dataclass
from typing import Any

from modalkit import telemetry
from modalkit.app_loader import ServiceRef
from modalkit.config import ModalConfig
from modalkit.observation import PoolStats
from modalkit.outcome import Failure
from modalkit.runtime.capacity import container_limit
from modalkit.runtime.local.batcher import Batcher
from modalkit.runtime.local.container import Container
from modalkit.runtime.local.lifecycle import (
    SHUTTING_DOWN,
    ContainerFactory,
    ContainerHandle,
    ContainerLife,
    LifeTimings,
    load_failure,
)
from modalkit.runtime.local.scaling import ScalingInputs, may_idle_out, should_start_container

logger = logging.getLogger("modalkit.pool")

_SCALE_TICK_S = 0.05


@dataclass(frozen=True, slots=True)
class PoolSettings:
    min_containers: int
    max_containers: int
    threads_per_container: int | None  # None: the machine's cores shared by the running containers
    max_batch_size: int
    wait_ms: int
    max_queued_requests: int | None
    timings: LifeTimings

    @classmethod
    def from_config(cls, config: ModalConfig) -> PoolSettings:
        app = config.app_settings
        deploy = app.deployment_config
        return cls(
            min_containers=deploy.min_containers,
            max_containers=container_limit(config),
            threads_per_container=app.local_config.threads_per_container,
            max_batch_size=app.batch_config.max_batch_size,
            wait_ms=app.batch_config.wait_ms,
            max_queued_requests=app.limits.max_queued_requests,
            timings=LifeTimings(float(deploy.scaledown_window), float(deploy.timeout)),
        )


class ContainerPool:
    def __init__(
        self,
        ref: ServiceRef,
        model_name: str,
        settings: PoolSettings,
        container_factory: ContainerFactory = Container,
    ) -> None:
        self.ref = ref
        self.model_name = model_name
        self.settings = settings
        self.min_containers = settings.min_containers
        self.max_containers = settings.max_containers
        self.batcher = Batcher(settings.max_batch_size, settings.wait_ms, settings.max_queued_requests)
        self.stats = PoolStats()
        self._cores = os.cpu_count() or 1
        start_threads = settings.threads_per_container or max(1, self._cores // max(1, self.min_containers))
        self._env = {"OMP_NUM_THREADS": str(start_threads), "MKL_NUM_THREADS": str(start_threads)}
        self._container_factory = container_factory
        self._lives: dict[int, tuple[ContainerLife, asyncio.Task[None]]] = {}
        self._keys = itertools.count()
        self._autoscaler: asyncio.Task[None] | None = None

    @classmethod
    def from_config(
        cls, ref: ServiceRef, model_name: str, config: ModalConfig, container_factory: ContainerFactory = Container
    ) -> ContainerPool:
        return cls(ref, model_name, PoolSettings.from_config(config), container_factory)

    async def start(self) -> None:
        for _ in range(self.min_containers):
            self._start_life()
        self._autoscaler = asyncio.create_task(self._autoscale())

    async def stop(self) -> None:
        tasks = [self._autoscaler, *(task for _, task in self._lives.values())]
        for task in tasks:
            if task is not None:
                task.cancel()
        for task in tasks:
            if task is not None:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self.batcher.fail_all(Failure("unavailable", SHUTTING_DOWN))

    def submit(self, item: Any, solo: bool = False, background: bool = False) -> asyncio.Future[Any]:
        if self.failed():
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(load_failure(self.model_name, str(self.stats.load_error)))
            return future
        return self.batcher.submit(item, solo, telemetry.current_span_context(), background)

    def failed(self) -> bool:
        """The model failed to load and no container serves it."""
        return self.stats.load_error is not None and self.stats.ready == 0

    def health(self) -> dict[str, Any]:
        stats = self.stats
        return {
            "containers": stats.live,
            "ready_containers": stats.ready,
            "min_containers": self.min_containers,
            "max_containers": self.max_containers,
            "queued": len(self.batcher),
            "load_error": stats.load_error,
            "pids": [life.container.pid for life, _ in self._lives.values() if life.container is not None],
            "container_starts": stats.container_starts,
            "restarts": dict(stats.restarts),
            "batch_sizes": {str(size): n for size, n in sorted(stats.batch_sizes.items())},
        }

    def scaling_inputs(self) -> ScalingInputs:
        """The pool now, as the scaling decisions see it."""
        stats = self.stats
        return ScalingInputs(
            queued=len(self.batcher),
            oldest_wait_s=self.batcher.oldest_wait(),
            batch_seconds=stats.batch_seconds,
            batch_wait_s=self.batcher.wait_s,
            live=stats.live,
            ready=stats.ready,
            busy=stats.busy,
            leaving=stats.leaving,
            min_containers=self.min_containers,
            max_containers=self.max_containers,
        )

    def _threads_per_batch(self) -> int:
        """Threads for the next batch: the cores shared by the containers running now, so one container
        alone uses the whole machine and two never oversubscribe it."""
        return self.settings.threads_per_container or max(1, self._cores // max(1, self.stats.live))

    def _may_idle_out(self) -> bool:
        return may_idle_out(self.scaling_inputs())

    def _new_container(self) -> ContainerHandle:
        return self._container_factory(self.ref, self.model_name, self._env)

    def _start_life(self) -> None:
        key = next(self._keys)
        life = ContainerLife(
            key,
            self.model_name,
            self.settings.timings,
            batcher=self.batcher,
            stats=self.stats,
            new_container=self._new_container,
            threads=self._threads_per_batch,
            may_idle_out=self._may_idle_out,
        )
        self.stats.enter(key, "starting")  # counted from now, so the next decision sees it
        self._lives[key] = (life, asyncio.create_task(self._run_life(life)))

    async def _run_life(self, life: ContainerLife) -> None:
        try:
            await life.run()
        finally:
            self.stats.end(life.key)
            del self._lives[life.key]

    async def _autoscale(self) -> None:
        while True:
            await asyncio.sleep(_SCALE_TICK_S)
            if should_start_container(self.scaling_inputs()):
                live, queued = self.stats.live + 1, len(self.batcher)
                logger.info("scaling %r up to %d containers (%d queued)", self.model_name, live, queued)
                self._start_life()
