"""`Deliveries`: delivers the results of finished async jobs, to their queues and their webhooks, on a bounded pool
of its own."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor

import httpx

from modalkit.config.schema import QueueConfig, WebhookConfig
from modalkit.jobs import sink_message, webhook_payload
from modalkit.runtime.local.job_store import Channel, JobStore, StoredJob
from modalkit.sinks import ResultSink
from modalkit.sinks.failures import json_message, permanent_reason
from modalkit.webhooks import deliver_once, next_try_in

logger = logging.getLogger("modalkit.jobs")

_FIRST_RETRY_S = 0.2
_LAST_RETRY_S = 30.0  # the backoff stops growing here; retries go on until the result expires

Lane = tuple[Channel, str]  # ("queue", its name) or ("webhook", the URL's host): what takes turns
Owed = tuple[Channel, str]  # (channel, job id): one delivery still to make


class Deliveries:
    """Delivers each owed result, at most `queue_config.delivery_workers` at once: pushes to queues, and webhooks.

    Queues and webhook hosts take turns and one holds at most half the workers, so a slow or broken one never holds
    up the others. A delivery that fails for good (`permanent_reason`: a Redis key of another type, a message too
    large, a webhook URL no longer allowed) is marked failed at once. Any other failure is retried with exponential
    backoff: a push until the result expires, a webhook as `webhook_config` bounds it (`max_attempts`,
    `retry_window_seconds`); then it is marked failed too. Either way the job's status says why.
    """

    def __init__(
        self, store: JobStore, sink: ResultSink, config: QueueConfig, webhooks: WebhookConfig | None = None
    ) -> None:
        self._store = store
        self._sink = sink
        self._style = config.message_format
        self._webhooks = webhooks or WebhookConfig()
        self._workers = config.delivery_workers
        self._per_lane = max(1, config.delivery_workers // 2)
        # Threads of its own: a push that hangs until its socket times out takes no thread from anyone else.
        self._threads = ThreadPoolExecutor(config.delivery_workers, thread_name_prefix="modalkit-delivery")
        self._due: dict[Lane, deque[str]] = {}  # lane -> job ids ready to deliver; the dict's order is the turn order
        self._busy: Counter[Lane] = Counter()
        self._owed: set[Owed] = set()  # due, being delivered, or waiting for a retry
        self._retries: dict[Owed, asyncio.TimerHandle] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def backlog(self) -> int:
        """Deliveries owed and not made yet (pushes and webhooks)."""
        return len(self._owed)

    def start(self) -> None:
        for job_id, queue in self._store.owed():  # what the last process had not delivered
            self.schedule(job_id, queue)
        for job_id, url in self._store.owed_webhooks():
            self.schedule_webhook(job_id, url)
        self._tasks = [asyncio.create_task(self._deliver_due()) for _ in range(self._workers)]

    async def stop(self) -> None:
        """Deliver nothing more; what is still owed stays so in the store and is delivered after the next start."""
        for handle in self._retries.values():
            handle.cancel()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._threads.shutdown(wait=False, cancel_futures=True)

    def schedule(self, job_id: str, queue: str) -> None:
        self._owe(("queue", queue), job_id)

    def schedule_webhook(self, job_id: str, url: str) -> None:
        try:
            host = httpx.URL(url).host
        except httpx.InvalidURL:  # refused when the job was accepted; delivering it says so on the job
            host = ""
        self._owe(("webhook", host), job_id)

    def _owe(self, lane: Lane, job_id: str) -> None:
        if (lane[0], job_id) not in self._owed:
            self._owed.add((lane[0], job_id))
            self._make_due(lane, job_id)

    def _make_due(self, lane: Lane, job_id: str) -> None:
        self._retries.pop((lane[0], job_id), None)
        self._due.setdefault(lane, deque()).append(job_id)
        self._wake.set()

    async def _deliver_due(self) -> None:
        while True:
            picked = self._next_due()
            if picked is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            lane, job_id = picked
            self._busy[lane] += 1
            try:
                await self._deliver(lane, job_id)
            except Exception:  # the store failed us (a full disk): the result stays owed, try again later
                logger.exception("job %s: recording its delivery to %r failed; trying again later", job_id, lane[1])
                self._retry_later(lane, job_id, _LAST_RETRY_S)
            finally:
                self._busy[lane] -= 1
                self._wake.set()  # the lane may take another turn

    def _next_due(self) -> tuple[Lane, str] | None:
        """The next job of the first lane, in turn order, that holds less than its share of the workers."""
        for lane in self._due:
            if self._busy[lane] < self._per_lane:
                waiting = self._due.pop(lane)
                job_id = waiting.popleft()
                if waiting:
                    self._due[lane] = waiting  # to the back of the line
                return lane, job_id
        return None

    async def _deliver(self, lane: Lane, job_id: str) -> None:
        channel = lane[0]
        job = self._store.get(job_id)
        state = None if job is None else job.delivery if channel == "queue" else job.webhook
        if job is None or state != "pending":  # purged, or settled meanwhile
            self._owed.discard((channel, job_id))
            return
        try:
            await asyncio.get_running_loop().run_in_executor(self._threads, self._send, channel, lane[1], job)
        except Exception as exc:
            self._failed(lane, job, exc)
            return
        self._store.delivered(job_id, channel)
        self._owed.discard((channel, job_id))

    def _send(self, channel: Channel, queue: str, job: StoredJob) -> None:
        """One push or one webhook POST, on a delivery thread."""
        if channel == "queue":
            message = sink_message(job.job_id, job.request, job.status, job.outcome, job.message(), self._style)
            self._sink.push(queue, message)
            return
        request = job.request
        payload = webhook_payload(job.job_id, job.status, job.outcome, job.attempts, request.meta)
        webhook_id = request.webhook_id or f"msg_{job.job_id}"
        deliver_once(request.webhook_url or "", webhook_id, json_message(payload).encode(), self._webhooks)

    def _failed(self, lane: Lane, job: StoredJob, exc: Exception) -> None:
        channel, job_id = lane[0], job.job_id
        where = f"webhook to {job.request.webhook_url}" if channel == "webhook" else f"push to {lane[1]!r}"
        reason = permanent_reason(exc)
        if reason is None:
            error = f"{type(exc).__name__}: {exc}"
            attempt, delay = self._retry_delay(channel, job)
            if delay is not None:
                self._store.delivery_retried(job_id, error, channel)
                logger.warning(
                    "job %s: %s failed (try %d), retried in %.1f s: %s", job_id, where, attempt, delay, error
                )
                self._retry_later(lane, job_id, delay)
                return
            gave_up = "the result expired after" if channel == "queue" else "webhook_config's retries ran out after"
            reason = f"{gave_up} {attempt} failed {'pushes' if channel == 'queue' else 'tries'}; the last: {error}"
        self._store.delivery_failed(job_id, reason, channel)
        self._owed.discard((channel, job_id))
        logger.error("job %s: %s failed for good, not retried: %s", job_id, where, reason)

    def _retry_delay(self, channel: Channel, job: StoredJob) -> tuple[int, float | None]:
        """The number of this failed try, and the wait before the next (None: no next)."""
        if channel == "webhook":
            attempt = job.webhook_attempts + 1
            return attempt, next_try_in(self._webhooks, attempt, time.time() - (job.finished_at or time.time()))
        attempt = job.delivery_attempts + 1
        left = (job.expires_at or 0.0) - time.time()
        if left <= 0:
            return attempt, None
        return attempt, min(_LAST_RETRY_S, _FIRST_RETRY_S * 2 ** min(attempt - 1, 16), left)

    def _retry_later(self, lane: Lane, job_id: str, delay: float) -> None:
        handle = asyncio.get_running_loop().call_later(delay, self._make_due, lane, job_id)
        self._retries[(lane[0], job_id)] = handle
