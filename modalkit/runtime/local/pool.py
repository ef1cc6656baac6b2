"""The containers of one model entry, scaled as Modal scales them.

`min_containers` start at boot; another starts (up to `max_containers`) when queued work has waited
longer than a batch takes and it would add capacity on this machine: spare cores, or a free GPU (`scaling`,
measured by `cores`; a GPU model's containers get a GPU each here, as on Modal); a container idle for
`scaledown_window` stops (never below the minimum); a container that crashed or was recycled is replaced, and
one that cannot start or load is retried with backoff (`lifecycle`). The pool owns the batcher, the lives, the
autoscaler, the share of cores each batch may use, and `/health`'s view; every count lives in its `PoolStats`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from modalkit import telemetry
from modalkit.app_loader import ServiceRef
from modalkit.config import ModalConfig
from modalkit.outcome import Failure
from modalkit.runtime.capacity import container_limit
from modalkit.runtime.local.batcher import Batcher
from modalkit.runtime.local.container import Container
from modalkit.runtime.local.cores import CoreMeter, local_gpus
from modalkit.runtime.local.lifecycle import (
    SHUTTING_DOWN,
    ContainerFactory,
    ContainerLife,
    LifeTimings,
    load_failure,
)
from modalkit.runtime.local.pool_base import LifePool
from modalkit.runtime.local.scaling import ScalingInputs, should_start_container

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
    gpus: list[str] | None = None  # each container's CUDA_VISIBLE_DEVICES, one entry per container; None: CPU

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
            timings=LifeTimings(
                float(deploy.scaledown_window),
                float(deploy.timeout),
                health_interval_s=app.local_config.health_check_interval_seconds,
            ),
            gpus=local_gpus(config),
        )


class ContainerPool(LifePool[ContainerLife]):
    def __init__(
        self,
        ref: ServiceRef,
        model_name: str,
        settings: PoolSettings,
        container_factory: ContainerFactory = Container,
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
        self.batcher = Batcher(settings.max_batch_size, settings.wait_ms, settings.max_queued_requests)
        self._autoscaler: asyncio.Task[None] | None = None
        self._cores_meter = CoreMeter(self._cores)
        self._gpu_of: dict[int, str] = {}  # each container life's GPUs, by its key

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
        await self._stop_lives(self._autoscaler)
        self.batcher.fail_all(Failure("unavailable", SHUTTING_DOWN))

    def submit(self, item: Any, solo: bool = False, background: bool = False) -> asyncio.Future[Any]:
        if self.failed():
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(load_failure(self.model_name, str(self.stats.load_error)))
            return future
        return self.batcher.submit(item, solo, telemetry.current_span_context(), background)

    def health(self) -> dict[str, Any]:
        batch_sizes = {str(size): n for size, n in sorted(self.stats.batch_sizes.items())}
        return {**self._health(len(self.batcher)), "batch_sizes": batch_sizes}

    def scaling_inputs(self) -> ScalingInputs:
        """The pool now, as the scaling decisions see it."""
        stats, meter, gpus = self.stats, self._cores_meter, self.settings.gpus
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
            spare_cores=meter.spare_cores,
            cores_per_container=meter.cores_per_container,
            devices=None if gpus is None else len(gpus),
        )

    def _threads_per_batch(self) -> int:
        """Threads for the next batch: the cores shared by the containers running now, so one container
        alone uses the whole machine and two never oversubscribe it."""
        return self.settings.threads_per_container or max(1, self._cores // max(1, self.stats.live))

    def _start_life(self) -> None:
        self._launch(
            lambda key: ContainerLife(
                key,
                self.model_name,
                self.settings.timings,
                batcher=self.batcher,
                stats=self.stats,
                new_container=self._container_maker(key),
                threads=self._threads_per_batch,
                may_idle_out=self._may_idle_out,
            )
        )

    def _container_maker(self, key: int) -> Callable[[], Any]:
        """How life `key` starts its container: on a GPU no other life holds, when this machine has several."""
        gpus = self.settings.gpus
        if gpus is None or len(gpus) < 2:
            return self._new_container
        held = {self._gpu_of[k] for k in self._lives if k in self._gpu_of}
        self._gpu_of[key] = next((g for g in gpus if g not in held), gpus[key % len(gpus)])
        self._gpu_of = {k: g for k, g in self._gpu_of.items() if k in self._lives or k == key}
        return lambda: self._new_container({"CUDA_VISIBLE_DEVICES": self._gpu_of[key]})

    async def _autoscale(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(_SCALE_TICK_S)
            self._cores_meter.sample(loop.time(), self._pids(), self.stats.busy_seconds)
            if should_start_container(self.scaling_inputs()):
                live, queued = self.stats.live + 1, len(self.batcher)
                logger.info("scaling %r up to %d containers (%d queued)", self.model_name, live, queued)
                self._start_life()
