"""The containers of one model entry: started at boot, replaced when they crash or are recycled."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from modalkit import telemetry
from modalkit.app_loader import ServiceRef
from modalkit.config import ModalConfig
from modalkit.metrics import PoolStats
from modalkit.outcome import Failure
from modalkit.runtime.local.batcher import Batcher, Pending, resolve
from modalkit.runtime.local.container import Container, ContainerDied, ContainerLoadFailed

logger = logging.getLogger("modalkit.pool")

_MAX_LOAD_BACKOFF_S = 30.0


class ContainerPool:
    def __init__(self, ref: ServiceRef, model_name: str, config: ModalConfig) -> None:
        batch = config.app_settings.batch_config
        deploy = config.app_settings.deployment_config
        self.ref = ref
        self.model_name = model_name
        self.batcher = Batcher(batch.max_batch_size, batch.wait_ms)
        self.size = max(1, deploy.min_containers)
        if deploy.max_containers is not None:
            self.size = min(self.size, deploy.max_containers)
        self.stats = PoolStats()
        self.ready = 0
        self.load_error: str | None = None
        self.containers: dict[int, Container] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks = [asyncio.create_task(self._supervise(i)) for i in range(self.size)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.batcher.fail_all(Failure(503, "the server is shutting down", "unavailable"))

    def submit(self, item: Any, solo: bool = False) -> asyncio.Future[Any]:
        if self.load_error is not None and self.ready == 0:
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            future.set_result(self._load_failure())
            return future
        return self.batcher.submit(item, solo, telemetry.current_span_context())

    def health(self) -> dict[str, Any]:
        return {
            "containers": self.size,
            "ready_containers": self.ready,
            "queued": len(self.batcher),
            "load_error": self.load_error,
            "pids": [c.pid for c in self.containers.values()],
            "container_starts": self.stats.container_starts,
            "restarts": dict(self.stats.restarts),
            "batch_sizes": {str(size): n for size, n in sorted(self.stats.batch_sizes.items())},
        }

    def _load_failure(self) -> Failure:
        return Failure(503, f"model {self.model_name!r} failed to load: {self.load_error}", "load")

    async def _supervise(self, index: int) -> None:
        failed_loads = 0
        while True:
            container = Container(self.ref, self.model_name)
            self.stats.container_up(id(container))
            try:
                await container.start()
            except ContainerLoadFailed as exc:
                self.stats.container_down(id(container))
                failed_loads += 1
                self.load_error = str(exc)
                logger.error("model %r failed to load (attempt %d): %s", self.model_name, failed_loads, exc)
                self.batcher.fail_all(self._load_failure())
                await asyncio.sleep(min(_MAX_LOAD_BACKOFF_S, 0.5 * 2**failed_loads))
                continue
            except asyncio.CancelledError:
                self.stats.container_down(id(container))
                await container.stop()
                raise
            failed_loads = 0
            self.load_error = None
            self.containers[index] = container
            self.ready += 1
            logger.info("container %d of %r ready (pid %s)", index, self.model_name, container.pid)
            try:
                cause = await self._serve(container)
            finally:
                self.ready -= 1
                del self.containers[index]
                self.stats.container_down(id(container))
                await container.stop()
            self.stats.restarts[cause] += 1
            logger.warning("container %d of %r replaced after %s", index, self.model_name, cause)

    async def _serve(self, container: Container) -> str:
        """Feed batches to one container until it dies or asks to be recycled; returns the cause."""
        loop = asyncio.get_running_loop()
        cold = True  # the first batch of a container pays for its start
        while True:
            batch = await self.batcher.next_batch()
            sent_ns = time.time_ns()
            try:
                results, inference_ns = await container.run([p.item for p in batch])
            except ContainerDied as exc:
                _fail(batch, Failure(503, f"container crashed ({exc}) while running this batch; retry", "crash"))
                return "crash"
            except asyncio.CancelledError:
                _fail(batch, Failure(503, "the server is shutting down", "unavailable"))
                raise
            for pending, result in zip(batch, results, strict=True):
                resolve(pending, result)
            done = loop.time()
            self.stats.record_batch(len(batch), cold, [done - p.arrival for p in batch])
            telemetry.record_batch(
                self.model_name, [p.trace for p in batch], str(container.pid), cold, (sent_ns, time.time_ns()),
                inference_ns,
            )  # fmt: skip
            cold = False
            if any(isinstance(r, Failure) and r.recycles_container for r in results):
                await container.wait()
                return "cuda"


def _fail(batch: list[Pending], failure: Failure) -> None:
    for pending in batch:
        resolve(pending, failure)
