"""Runs async jobs: feeds queued jobs into the same batchers as sync requests and records every outcome."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import sqlite3
from collections.abc import Awaitable, Coroutine
from typing import Any

from opentelemetry.util.types import AttributeValue
from pydantic import BaseModel, ValidationError

from modalkit import telemetry
from modalkit.config.schema import QueueConfig
from modalkit.exceptions import QueueFull, ServiceUnavailable
from modalkit.jobs import AsyncRequest, JobState, job_outcome, new_job_id, sink_message
from modalkit.outcome import Failure
from modalkit.queues import ResultSink, deliver
from modalkit.runtime.local.job_store import JobStore, StoredJob
from modalkit.runtime.local.pool import ContainerPool

logger = logging.getLogger("modalkit.jobs")

_HOUSEKEEPING_S = 10.0


class JobDispatcher:
    def __init__(self, store: JobStore, pools: dict[str, ContainerPool], input_model: type[BaseModel],
                 config: QueueConfig, sink: ResultSink, max_in_flight: int) -> None:  # fmt: skip
        self.store = store
        self._pools = pools
        self._input_model = input_model
        self._config = config
        self._sink = sink
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._delivering: set[str] = set()
        self._feeder: asyncio.Task[Any] | None = None
        self._housekeeper: asyncio.Task[Any] | None = None
        self.pending = 0

    async def start(self) -> None:
        for job_id in self.store.resume():
            self._ready.put_nowait(job_id)
        self.pending = self.store.pending_count()
        if self.pending:
            logger.info("resuming %d queued async jobs", self.pending)
        self._redeliver()
        self._feeder = self._background(self._feed())
        self._housekeeper = self._background(self._housekeeping())

    async def stop(self, grace_seconds: float = 0.0) -> None:
        """Take no new job; let running ones finish for up to `grace_seconds`, then stop them. Jobs still
        queued or running stay so in the store and are resumed by the next start."""
        for task in (self._feeder, self._housekeeper):
            if task is not None:
                task.cancel()
        running = [t for t in self._tasks if t not in (self._feeder, self._housekeeper)]
        if running and grace_seconds > 0:
            await asyncio.wait(running, timeout=grace_seconds)
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def accept(self, model_name: str, request: AsyncRequest) -> str:
        """Store the job (committed before this returns) and queue it; raises `QueueFull` past max_pending."""
        if self.pending >= self._config.max_pending:
            raise QueueFull(f"{self.pending} async jobs are pending (queue_config.max_pending); retry later")
        job_id = new_job_id()
        trace_context = telemetry.inject_current()  # the job's span joins the trace of the request that made it
        try:
            self.store.insert(job_id, model_name, request.message.model_dump_json(), request, trace_context)
        except sqlite3.Error as exc:  # disk full, read-only, locked: refuse the job, keep the store intact
            logger.error("job store refused a job: %s", exc)
            raise ServiceUnavailable(f"the job store cannot take the job ({exc}); retry later") from None
        self.pending += 1
        self._ready.put_nowait(job_id)
        return job_id

    def _background(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        task.add_done_callback(_log_failure)
        return task

    async def _feed(self) -> None:
        while True:
            job_id = await self._ready.get()
            await self._slots.acquire()
            self._background(self._run(job_id))

    async def _run(self, job_id: str) -> None:
        try:
            job = self.store.claim(job_id)
            if job is None:
                return
            try:
                item = self._input_model.model_validate_json(job.payload)
            except ValidationError as exc:  # the input model changed since the job was accepted
                await self._finish(job, "failed", {"status_code": 422, "detail": str(exc)})
                return
            attributes: dict[str, AttributeValue] = {
                "modalkit.job_id": job_id,
                "modalkit.attempt": job.attempts,
                "modalkit.model_name": job.model_name,
            }
            with telemetry.tracer().start_as_current_span(
                "modalkit.job", context=telemetry.extract(job.trace_context), attributes=attributes
            ):
                answer = self._pools[job.model_name].submit(item, solo=job.suspect, background=True)
                result = await self._within_job_timeout(answer)
        finally:
            self._slots.release()
        # A transient failure is not the job's fault until it happens again with the job alone.
        if isinstance(result, Failure) and result.transient and job.attempts < self._config.max_attempts:
            logger.warning("job %s: %s; retrying alone (attempt %d)", job_id, result.detail, job.attempts + 1)
            self.store.requeue(job_id)
            self._ready.put_nowait(job_id)
        else:
            await self._finish(job, *job_outcome(result))

    async def _within_job_timeout(self, answer: Awaitable[Any]) -> Any:
        """The result, or a failure once the job has run for `queue_config.job_timeout_seconds`."""
        limit = self._config.job_timeout_seconds
        try:
            return await asyncio.wait_for(answer, limit)
        except TimeoutError:
            # The job's own doing (ModalKit's async_config.timeout): failed, not retried.
            return Failure(504, f"the job ran past queue_config.job_timeout_seconds ({limit:g} s)")

    async def _finish(self, job: StoredJob, status: JobState, outcome: Any) -> None:
        request = job.request
        queue = request.success_queue if status == "succeeded" else request.failure_queue
        if not self.store.finish(job.job_id, status, outcome, self._config.result_ttl_seconds, queue is not None):
            return
        self.pending -= 1
        if queue is not None:
            await self._deliver(job.job_id)

    async def _deliver(self, job_id: str) -> None:
        job = self.store.get(job_id)
        if job is None or job_id in self._delivering:
            return
        request = job.request
        queue = request.success_queue if job.status == "succeeded" else request.failure_queue
        if queue is None:
            return
        style = self._config.message_format
        message = sink_message(job_id, request, job.status, job.outcome, json.loads(job.payload), style)
        self._delivering.add(job_id)
        try:
            if await asyncio.to_thread(deliver, self._sink, queue, message):
                self.store.delivered(job_id)
            else:
                logger.error("job %s: result kept in the store, push to %r retried later", job_id, queue)
        finally:
            self._delivering.discard(job_id)

    def _redeliver(self) -> None:
        for job_id in self.store.undelivered():
            if job_id not in self._delivering:
                self._background(self._deliver(job_id))

    async def _housekeeping(self) -> None:
        while True:
            self.store.purge_expired()
            self._redeliver()
            await asyncio.sleep(_HOUSEKEEPING_S)


def _log_failure(task: asyncio.Task[Any]) -> None:
    # A job whose bookkeeping failed (say the disk filled up) stays queued or running in the store,
    # and the next start resumes it; say so rather than losing the error.
    if not task.cancelled() and task.exception() is not None:
        logger.error("async job bookkeeping failed; the job is resumed at the next start", exc_info=task.exception())
