"""`Deliveries`: pushes the results of finished async jobs to their queues, on a bounded pool of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

from modalkit.config.schema import QueueConfig
from modalkit.jobs import sink_message
from modalkit.runtime.local.job_store import JobStore, StoredJob
from modalkit.sinks import ResultSink
from modalkit.sinks.failures import permanent_reason

logger = logging.getLogger("modalkit.jobs")

_FIRST_RETRY_S = 0.2
_LAST_RETRY_S = 30.0  # the backoff stops growing here; retries go on until the result expires


class Deliveries:
    """Pushes each owed result to its queue, at most `queue_config.delivery_workers` pushes at once.

    Queues take turns and one queue holds at most half the workers, so a slow or broken queue never holds up
    the others. A push that fails for good (`permanent_reason`: a Redis key of another type, a message too
    large) marks the delivery failed at once; any other failure is retried with exponential backoff until
    the result expires, and then marked failed too. Either way the job's status says why.
    """

    def __init__(self, store: JobStore, sink: ResultSink, config: QueueConfig) -> None:
        self._store = store
        self._sink = sink
        self._style = config.message_format
        self._workers = config.delivery_workers
        self._per_queue = max(1, config.delivery_workers // 2)
        # Threads of its own: a push that hangs until its socket times out takes no thread from anyone else.
        self._threads = ThreadPoolExecutor(config.delivery_workers, thread_name_prefix="modalkit-delivery")
        self._due: dict[str, deque[str]] = {}  # queue -> job ids ready to push; the dict's order is the turn order
        self._busy: Counter[str] = Counter()
        self._owed: set[str] = set()  # due, being pushed, or waiting for a retry
        self._retries: dict[str, asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def backlog(self) -> int:
        """Results owed to a queue and not pushed yet."""
        return len(self._owed)

    def start(self) -> None:
        for job_id, queue in self._store.owed():  # what the last process had not pushed
            self.schedule(job_id, queue)
        self._tasks = [asyncio.create_task(self._deliver_due()) for _ in range(self._workers)]

    async def stop(self) -> None:
        """Push nothing more; what is still owed stays so in the store and is pushed after the next start."""
        for handle in self._retries.values():
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._threads.shutdown(wait=False, cancel_futures=True)

    def schedule(self, job_id: str, queue: str) -> None:
        if job_id not in self._owed:
            self._owed.add(job_id)
            self._make_due(job_id, queue)

    def _make_due(self, job_id: str, queue: str) -> None:
        self._retries.pop(job_id, None)
        self._due.setdefault(queue, deque()).append(job_id)
        self._wake.set()

    async def _deliver_due(self) -> None:
        while True:
            picked = self._next_due()
            if picked is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            queue, job_id = picked
            self._busy[queue] += 1
            try:
                await self._push(job_id, queue)
            except Exception:  # the store failed us (a full disk): the result stays owed, try again later
                logger.exception("job %s: recording the push to %r failed; trying again later", job_id, queue)
                self._retry_later(job_id, queue, _LAST_RETRY_S)
            finally:
                self._busy[queue] -= 1
                self._wake.set()  # the queue may take another turn

    def _next_due(self) -> tuple[str, str] | None:
        """The next job of the first queue, in turn order, that holds less than its share of the workers."""
        for queue in self._due:
            if self._busy[queue] < self._per_queue:
                waiting = self._due.pop(queue)
                job_id = waiting.popleft()
                if waiting:
                    self._due[queue] = waiting  # to the back of the line
                return queue, job_id
        return None

    async def _push(self, job_id: str, queue: str) -> None:
        job = self._store.get(job_id)
        if job is None or job.delivery != "pending":  # purged, or settled meanwhile
            self._owed.discard(job_id)
            return
        message = sink_message(job_id, job.request, job.status, job.outcome, job.message(), self._style)
        try:
            await asyncio.get_running_loop().run_in_executor(self._threads, self._sink.push, queue, message)
        except Exception as exc:
            self._push_failed(job, queue, exc)
            return
        self._store.delivered(job_id)
        self._owed.discard(job_id)

    def _push_failed(self, job: StoredJob, queue: str, exc: Exception) -> None:
        reason = permanent_reason(exc)
        attempt = job.delivery_attempts + 1
        if reason is None:
            error = f"{type(exc).__name__}: {exc}"
            left = (job.expires_at or 0.0) - time.time()
            if left > 0:
                delay = min(_LAST_RETRY_S, _FIRST_RETRY_S * 2 ** min(attempt - 1, 16), left)
                self._store.delivery_retried(job.job_id, error)
                logger.warning(
                    "job %s: push %d to %r failed, retried in %.1f s: %s", job.job_id, attempt, queue, delay, error
                )
                self._retry_later(job.job_id, queue, delay)
                return
            reason = f"the result expired after {attempt} failed pushes; the last: {error}"
        self._store.delivery_failed(job.job_id, reason)
        self._owed.discard(job.job_id)
        logger.error("job %s: push to %r failed for good, not retried: %s", job.job_id, queue, reason)

    def _retry_later(self, job_id: str, queue: str, delay: float) -> None:
        self._retries[job_id] = asyncio.get_running_loop().call_later(delay, self._make_due, job_id, queue)
