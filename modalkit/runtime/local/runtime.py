"""`LocalRuntime`: Modal's semantics on one machine, with worker processes as containers.

A batched service gets a `ContainerPool` per model entry, and the job store and dispatcher; a streaming service
(`StreamingService`) gets a `StreamPool` per model entry, and no jobs.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Awaitable
from functools import partial
from typing import Any

from pydantic import BaseModel

from modalkit.app_loader import service_ref, user_class
from modalkit.config import ModalConfig
from modalkit.exceptions import ModalkitError
from modalkit.jobs import AsyncRequest, Job, JobState, PageKey
from modalkit.observation import Observation
from modalkit.runtime.capacity import in_flight_window
from modalkit.runtime.local.container import Container
from modalkit.runtime.local.dispatcher import JobDispatcher
from modalkit.runtime.local.job_store import JobStore
from modalkit.runtime.local.pool import ContainerPool
from modalkit.runtime.local.stream_container import StreamContainer
from modalkit.runtime.local.stream_pool import StreamPool, StreamSettings
from modalkit.runtime.local.stream_worker import is_streaming
from modalkit.runtime.local.template import ContainerTemplate
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
        self.streaming = is_streaming(user_class(service))
        # A streaming service has stream pools (its containers serve streams), any other container pools.
        self.pools: dict[str, ContainerPool] = {}
        self.stream_pools: dict[str, StreamPool] = {}
        # Containers fork from one template process that has imported the app (else they are spawned).
        self.template = ContainerTemplate.for_app(ref.app_path)
        if self.streaming:
            streams, settings = partial(StreamContainer, template=self.template), StreamSettings.from_config(config)
            self.stream_pools = {name: StreamPool(ref, name, settings, streams) for name in model_names}
        else:
            batches = partial(Container, template=self.template)
            self.pools = {name: ContainerPool.from_config(ref, name, config, batches) for name in model_names}
        self._input_model = input_model
        self._queue_backend = getattr(user_class(service), "queue_backend", None)
        self.sink = sink
        self.jobs: JobDispatcher | None = None

    async def start(self) -> None:
        self.template.start()
        for stream_pool in self.stream_pools.values():
            await stream_pool.start()
        if self.streaming:
            return  # no jobs: a streaming service answers /predict_stream only
        queue_config = self.config.app_settings.queue_config
        self.sink = self.sink or make_sink(queue_config, self._queue_backend)
        store = JobStore(queue_config.job_store)
        in_flight = in_flight_window(self.config, len(self.pools))
        webhooks = self.config.app_settings.webhook_config
        self.jobs = JobDispatcher(store, self.pools, self._input_model, queue_config, self.sink, in_flight, webhooks)
        for pool in self.pools.values():
            await pool.start()
        await self.jobs.start()

    async def stop(self) -> None:
        if self.jobs is not None:  # first, so no job sees the shutdown as a failure
            await self.jobs.stop(grace_seconds=self.config.app_settings.local_config.shutdown_grace_seconds)
        await asyncio.gather(*(pool.stop() for pool in self._all_pools().values()))
        if self.jobs is not None:
            self.jobs.store.close()
        self.template.close()

    def submit(self, model_name: str, item: Any) -> Awaitable[Any]:
        self._refuse_if_streaming()
        return self.pools[model_name].submit(item)  # the batcher's future itself: no task per request

    async def spawn(self, model_name: str, request: AsyncRequest) -> str:
        self._refuse_if_streaming()
        assert self.jobs is not None, "the runtime is not started"
        return await self.jobs.accept(model_name, request)

    async def job(self, job_id: str) -> Job | None:
        if self.streaming:
            return None  # a streaming service runs no jobs
        assert self.jobs is not None, "the runtime is not started"
        return self.jobs.store.view(job_id)

    async def cancel(self, job_id: str) -> Job | None:
        if self.jobs is None:
            return None  # a streaming service runs no jobs
        return self.jobs.cancel(job_id)

    async def list_jobs(
        self, owner: str | None, status: JobState | None, limit: int, after: PageKey | None
    ) -> list[Job]:
        if self.jobs is None:
            return []
        return self.jobs.store.page(owner, status, limit, after)

    def stream(self, model_name: str, item: Any) -> AsyncIterator[Any]:
        """See `modalkit.runtime.Runtime.stream`."""
        if not self.streaming:
            raise ModalkitError("this service does not stream: /predict_stream needs a modalkit.StreamingService")
        return self.stream_pools[model_name].stream(item)

    def _all_pools(self) -> dict[str, ContainerPool | StreamPool]:
        return {**self.pools, **self.stream_pools}

    def _refuse_if_streaming(self) -> None:
        if self.streaming:
            raise ModalkitError("a StreamingService answers /predict_stream only: it has no batches or jobs to run")

    def ready(self) -> bool:
        """Ready to answer: no model is failing to load (a model with no container yet starts one on demand)."""
        return not any(pool.failed() for pool in self._all_pools().values())

    def not_ready(self) -> list[str]:
        return [reason for pool in self._all_pools().values() if (reason := pool.not_ready()) is not None]

    def observe(self) -> Observation:
        streams = self.stream_pools
        return Observation(
            pools={name: pool.stats for name, pool in self._all_pools().items()},
            queue_depth={
                **{name: len(pool.batcher) for name, pool in self.pools.items()},
                **{name: len(pool.slots) for name, pool in streams.items()},
            },
            jobs=self.jobs.store.counts() if self.jobs else {},
            job_store=self._store_usage(),
            streams={name: pool.streams for name, pool in streams.items()},
        )

    def health(self) -> dict[str, Any]:
        models = {name: pool.health() for name, pool in self._all_pools().items()}
        body: dict[str, Any] = {"runtime": "local", "models": models}
        if self.jobs is not None:
            body["jobs"] = {"pending": self.jobs.pending, **self.jobs.store.counts()}
            body["deliveries"] = self.jobs.store.delivery_counts()
            body["webhooks"] = self.jobs.store.delivery_counts("webhook")
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
