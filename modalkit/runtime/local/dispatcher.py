"""Runs async jobs: feeds queued jobs into the same batchers as sync requests and records every outcome."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import pickle
import sqlite3
import time
from collections.abc import Awaitable, Coroutine
from typing import Any

from opentelemetry.util.types import AttributeValue
from pydantic import BaseModel, ValidationError

from modalkit import telemetry
from modalkit.config.schema import QueueConfig, WebhookConfig
from modalkit.exceptions import QueueFull, ServiceUnavailable, StoreFull
from modalkit.files import file_fields
from modalkit.jobs import PENDING_STATES, AsyncRequest, Job, job_outcome, new_job_id
from modalkit.outcome import Failure
from modalkit.runtime.local.delivery import Deliveries
from modalkit.runtime.local.group_commit import GroupCommit
from modalkit.runtime.local.job_store import JobStore, StoredJob, StoreUsage
from modalkit.runtime.local.pool import ContainerPool
from modalkit.sinks import ResultSink

logger = logging.getLogger("modalkit.jobs")

CANCELLED = object()  # what the batcher future of a job cancelled while it runs is resolved with
_USAGE_TTL_S = 0.1  # the store's size on disk is read at most this often while jobs are accepted
_SWEEP_ROWS = 500  # expired jobs deleted per step of a sweep; the event loop runs between steps
_SWEEP_PAGES = 256  # free pages given back to the file system per step


class JobDispatcher:
    def __init__(
        self,
        store: JobStore,
        pools: dict[str, ContainerPool],
        input_model: type[BaseModel],
        config: QueueConfig,
        sink: ResultSink,
        max_in_flight: int,
        webhooks: WebhookConfig | None = None,
    ) -> None:
        self.store = store
        self.commits = GroupCommit(store)  # the jobs accepted in one turn of the event loop share a commit
        self._pools = pools
        self._input_model = input_model
        # An input with file fields is stored in binary form, its bytes as bytes (see job_store.py); else as JSON.
        self._binary = bool(file_fields(input_model))
        self._config = config
        self.deliveries = Deliveries(store, sink, config, webhooks)
        self._ready: asyncio.Queue[str] = asyncio.Queue()
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[Any]] = set()
        # Expired results outlive their time to live by at most a quarter of it (10 s for long ones).
        self._sweep_s = min(10.0, max(0.25, config.result_ttl_seconds / 4))
        self._usage: tuple[float, StoreUsage] | None = None  # when the store's usage was last read, and what it was
        self._stored_since_usage = 0  # input bytes of the jobs accepted since then
        self._feeder: asyncio.Task[Any] | None = None
        self._housekeeper: asyncio.Task[Any] | None = None
        self.pending = 0
        self._reserved = 0  # bytes held for the results of pending jobs: as many as their inputs
        self._answers: dict[str, asyncio.Future[Any]] = {}  # the batcher futures of the running jobs

    async def start(self) -> None:
        for job_id in self.store.resume():
            self._ready.put_nowait(job_id)
        self.pending = self.store.pending_count()
        self._reserved = self.store.pending_bytes()
        if self.pending:
            logger.info("resuming %d queued async jobs", self.pending)
        self.deliveries.start()
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
        await self.deliveries.stop()

    async def accept(self, model_name: str, request: AsyncRequest) -> str:
        """Store the job (committed before this returns, in one commit with the jobs accepted beside it) and queue
        it; raises `QueueFull` past max_pending and `StoreFull` past the store's budget."""
        if self.pending >= self._config.max_pending:
            raise QueueFull(f"{self.pending} async jobs are pending (queue_config.max_pending); retry later")
        payload = stored_form(request.message, self._binary)
        size = len(payload.encode()) if isinstance(payload, str) else len(payload)
        self._check_room(size)
        self._stored_since_usage += size
        job_id = new_job_id()
        trace_context = telemetry.inject_current()  # the job's span joins the trace of the request that made it
        self.pending += 1  # counted while it commits, so the jobs accepted beside it see it
        self._reserved += size

        def stored(committed: asyncio.Future[None]) -> None:  # even when the caller has left: the job is stored
            if not committed.cancelled() and committed.exception() is None:
                self._ready.put_nowait(job_id)
            else:
                self.pending -= 1
                self._reserved -= size

        committed = self.commits.insert(job_id, model_name, payload, request, trace_context)
        committed.add_done_callback(stored)
        try:
            await asyncio.shield(committed)
        except (sqlite3.Error, OSError) as exc:  # disk full, read-only, locked: refuse the job, keep the store intact
            logger.error("job store refused a job: %s", exc)
            raise ServiceUnavailable(f"the job store cannot take the job ({exc}); retry later", retry_after=5) from None
        return job_id

    def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job (committed before this returns); the job as it is now, None if unknown.

        A queued job is never claimed. A running job's item is dropped by the batcher if no container took it yet;
        if one did, its result is discarded when the batch ends. A finished job is left as it is.
        """
        before = self.store.cancel(job_id, self._config.result_ttl_seconds)
        if before is None or before.status not in PENDING_STATES:
            return before.as_job() if before is not None else None
        self.pending -= 1
        self._reserved -= before.size
        answer = self._answers.pop(job_id, None)
        if answer is not None and not answer.done():
            answer.set_result(CANCELLED)  # the batcher skips an item whose future is done
        return self.store.view(job_id)

    def _check_room(self, payload_bytes: int) -> None:
        """Finished jobs keep their results for result_ttl_seconds: the budget bounds the disk, whatever the rate.

        A job needs room for its input now and for its result later, which is reckoned as large as the input.
        """
        config, stored = self._config, self._store_usage().bytes + self._stored_since_usage
        if self.store.rows >= config.max_store_rows:
            held = f"{self.store.rows} jobs (queue_config.max_store_rows is {config.max_store_rows})"
        elif stored + self._reserved + 2 * payload_bytes > config.max_store_bytes:
            held = (
                f"{stored} bytes and keeps {self._reserved} for the results of pending jobs; this job needs"
                f" {2 * payload_bytes} (queue_config.max_store_bytes is {config.max_store_bytes})"
            )
        else:
            return
        next_expiry = self.store.next_expiry()
        wait = (next_expiry - time.time() if next_expiry is not None else config.result_ttl_seconds) + self._sweep_s
        retry_after = max(1, math.ceil(wait))
        raise StoreFull(
            f"the job store is full: it holds {held}; finished results are kept for queue_config.result_ttl_seconds"
            f" ({config.result_ttl_seconds} s), and the next one expires in about {retry_after} s: retry then",
            retry_after,
        )

    def _store_usage(self) -> StoreUsage:
        """The store's usage, read again once `_USAGE_TTL_S` passed (two PRAGMAs and two stats cost as much as the
        rest of an accept), or when a job finished; the inputs of the jobs accepted since are counted in
        `_stored_since_usage`."""
        now = time.monotonic()
        if self._usage is None or now - self._usage[0] > _USAGE_TTL_S:
            self._usage, self._stored_since_usage = (now, self.store.usage()), 0
        return self._usage[1]

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
            item = restored_input(self._input_model, job)
            if isinstance(item, Failure):  # the input model changed since the job was accepted
                await self._finish(job, item)
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
                self._answers[job_id] = answer
                result = await self._within_job_timeout(answer)
        finally:
            self._answers.pop(job_id, None)
            self._slots.release()
        if result is CANCELLED:  # cancelled while it ran: the store says so already
            return
        # A transient failure is not the job's fault until it happens again with the job alone.
        if isinstance(result, Failure) and result.transient and job.attempts < self._config.max_attempts:
            logger.warning("job %s: %s; retrying alone (attempt %d)", job_id, result.detail, job.attempts + 1)
            self.store.requeue(job_id)
            self._ready.put_nowait(job_id)
        else:
            await self._finish(job, result)

    async def _within_job_timeout(self, answer: Awaitable[Any]) -> Any:
        """The result, or a failure once the job has run for `queue_config.job_timeout_seconds`."""
        limit = self._config.job_timeout_seconds
        try:
            return await asyncio.wait_for(answer, limit)
        except TimeoutError:
            # The job's own doing (ModalKit's async_config.timeout): failed, not retried.
            return Failure("job_timeout", f"the job ran past queue_config.job_timeout_seconds ({limit:g} s)")

    async def _finish(self, job: StoredJob, result: Any) -> None:
        """Record the job's result (an output or a `Failure`) and owe it to its queue and its webhook, if it named
        them."""
        status, outcome = job_outcome(result)
        queue = job.request.queue_for(status)
        if not self.store.finish(job.job_id, status, outcome, self._config.result_ttl_seconds, queue is not None):
            return
        self.pending -= 1
        self._reserved -= job.size
        self._usage = None  # its result is stored now, which may be larger than the room kept for it
        if queue is not None:
            self.deliveries.schedule(job.job_id, queue)
        if job.request.webhook_url is not None:
            self.deliveries.schedule_webhook(job.job_id, job.request.webhook_url)

    async def _housekeeping(self) -> None:
        while True:
            try:
                await self._sweep()
            except sqlite3.Error as exc:  # a full or read-only disk: the next sweep tries again
                logger.error("sweeping the job store failed: %s", exc)
            await asyncio.sleep(self._sweep_s)

    async def _sweep(self) -> None:
        """Delete the jobs past their time to live and give their pages back, a step at a time."""
        while self.store.purge_expired(_SWEEP_ROWS) == _SWEEP_ROWS:
            await asyncio.sleep(0)
        free = self.store.reclaim(_SWEEP_PAGES)
        while free:
            await asyncio.sleep(0)
            free, before = self.store.reclaim(_SWEEP_PAGES), free
            if free >= before:  # nothing more to give back
                break


def stored_form(message: BaseModel, binary: bool) -> str | bytes:
    """How a job's input is stored: JSON text, or, for a model with file fields, the pickled dict of its fields
    (never the model object: its class may change before the job runs), so the bytes stay bytes."""
    if binary:
        return pickle.dumps(message.model_dump(mode="python"), protocol=pickle.HIGHEST_PROTOCOL)
    return message.model_dump_json()


def restored_input(model: type[BaseModel], job: StoredJob) -> BaseModel | Failure:
    """The job's input validated again by today's `model`, or a "rejected" failure if it no longer can be."""
    try:
        stored = job.stored_input()
        if isinstance(stored, str):
            return model.model_validate_json(stored)
        return model.model_validate(pickle.loads(stored))
    except ValidationError as exc:
        return Failure("rejected", str(exc))
    except Exception as exc:  # an unreadable blob file, or a pickled value whose type is gone
        return Failure("rejected", f"the stored input of job {job.job_id} cannot be read: {exc}")


def _log_failure(task: asyncio.Task[Any]) -> None:
    # A job whose bookkeeping failed (say the disk filled up) stays queued or running in the store,
    # and the next start resumes it; say so rather than losing the error.
    if not task.cancelled() and task.exception() is not None:
        logger.error("async job bookkeeping failed; the job is resumed at the next start", exc_info=task.exception())
