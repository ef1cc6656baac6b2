"""`LocalRuntime`: Modal's semantics on one machine, with worker processes as containers."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable
from typing import Any

from pydantic import BaseModel

from modalkit.app_loader import service_ref, user_class
from modalkit.config import ModalConfig
from modalkit.jobs import AsyncRequest, Job
from modalkit.observation import Observation
from modalkit.runtime.capacity import in_flight_window
from modalkit.runtime.local.dispatcher import JobDispatcher
from modalkit.runtime.local.job_store import JobStore
from modalkit.runtime.local.pool import ContainerPool
from modalkit.sinks import ResultSink, make_sink


class LocalRuntime:
    def __init__(
        self,
        service: Any,
        config: ModalConfig,
        model_names: list[str],
        input_model: type[BaseModel],
        sink: ResultSink | None = None,
    ) -> None:
        ref = service_ref(service)
        self.config = config
        self.pools = {name: ContainerPool.from_config(ref, name, config) for name in model_names}
        self._input_model = input_model
        self._queue_backend = getattr(user_class(service), "queue_backend", None)
        self.sink = sink
        self.jobs: JobDispatcher | None = None

    async def start(self) -> None:
        queue_config = self.config.app_settings.queue_config
        self.sink = self.sink or make_sink(queue_config, self._queue_backend)
        store = JobStore(queue_config.job_store)
        in_flight = in_flight_window(self.config, len(self.pools))
        self.jobs = JobDispatcher(store, self.pools, self._input_model, queue_config, self.sink, in_flight)
        for pool in self.pools.values():
            await pool.start()
        await self.jobs.start()

    async def stop(self) -> None:
        if self.jobs is not None:  # first, so no job sees the shutdown as a failure
            await self.jobs.stop(grace_seconds=self.config.app_settings.local_config.shutdown_grace_seconds)
        await asyncio.gather(*(pool.stop() for pool in self.pools.values()))
        if self.jobs is not None:
            self.jobs.store.close()

    def submit(self, model_name: str, item: Any) -> Awaitable[Any]:
        return self.pools[model_name].submit(item)  # the batcher's future itself: no task per request

    async def spawn(self, model_name: str, request: AsyncRequest) -> str:
        assert self.jobs is not None, "the runtime is not started"
        return self.jobs.accept(model_name, request)

    async def job(self, job_id: str) -> Job | None:
        assert self.jobs is not None, "the runtime is not started"
        return self.jobs.store.view(job_id)

    def ready(self) -> bool:
        """Ready to answer: no model is failing to load (a model with no container yet starts one on demand)."""
        return not any(pool.failed() for pool in self.pools.values())

    def observe(self) -> Observation:
        return Observation(
            pools={name: pool.stats for name, pool in self.pools.items()},
            queue_depth={name: len(pool.batcher) for name, pool in self.pools.items()},
            jobs=self.jobs.store.counts() if self.jobs else {},
            job_store=self._store_usage(),
        )

    def health(self) -> dict[str, Any]:
        models = {name: pool.health() for name, pool in self.pools.items()}
        body: dict[str, Any] = {"runtime": "local", "models": models}
        if self.jobs is not None:
            body["jobs"] = {"pending": self.jobs.pending, **self.jobs.store.counts()}
            body["deliveries"] = self.jobs.store.delivery_counts()
            body["job_store"] = self._store_usage()
        return body

    def _store_usage(self) -> dict[str, int]:
        """The job store's disk use and its budget (`queue_config.max_store_rows`, `max_store_bytes`)."""
        if self.jobs is None:
            return {}
        used, budget = self.jobs.store.usage(), self.config.app_settings.queue_config
        return {
            **dataclasses.asdict(used),
            "max_rows": budget.max_store_rows,
            "max_bytes": budget.max_store_bytes,
        }
