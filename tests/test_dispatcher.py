"""The job dispatcher's cancel, with the real job store and the real batcher (no container takes batches here): a
queued job is never claimed, a claimed job's item is dropped from the batcher, and the counts of pending work
follow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from modalkit.config.schema import QueueConfig
from modalkit.jobs import AsyncRequest
from modalkit.runtime.local.batcher import Batcher
from modalkit.runtime.local.dispatcher import JobDispatcher
from modalkit.runtime.local.job_store import JobStore
from modalkit.sinks import make_sink


class Text(BaseModel):
    text: str


class BatcherOnly:
    """A pool whose batcher no container reads: what is submitted waits there until a test takes it."""

    def __init__(self) -> None:
        self.batcher = Batcher(max_batch_size=8, wait_ms=0)

    def submit(self, item: Any, solo: bool = False, background: bool = False) -> asyncio.Future[Any]:
        return self.batcher.submit(item, solo, None, background)


async def until(condition: Any) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


def test_cancel_skips_a_queued_job_and_drops_a_claimed_one_from_the_batcher(tmp_path: Path) -> None:
    asyncio.run(_cancel_scenario(tmp_path))


async def _cancel_scenario(tmp_path: Path) -> None:
    config = QueueConfig()
    pool = BatcherOnly()
    store = JobStore(tmp_path / "jobs.sqlite3")
    dispatcher = JobDispatcher(store, {"m": pool}, Text, config, make_sink(config), max_in_flight=1)  # type: ignore[dict-item]
    await dispatcher.start()
    try:
        claimed = await dispatcher.accept("m", AsyncRequest(Text(text="claimed")))
        queued = await dispatcher.accept("m", AsyncRequest(Text(text="queued")))
        await until(lambda: len(pool.batcher) == 1)  # one in flight: the other waits in the store
        assert store.view(claimed).status == "running" and store.view(queued).status == "queued"  # type: ignore[union-attr]
        assert (dispatcher.pending, dispatcher._reserved > 0) == (2, True)

        first = dispatcher.cancel(queued)
        assert first is not None and (first.status, first.attempts) == ("cancelled", 0)
        second = dispatcher.cancel(claimed)
        assert second is not None and (second.status, second.attempts) == ("cancelled", 1)
        assert dispatcher.pending == 0 and dispatcher._reserved == 0
        assert await pool.batcher.next_batch(idle_timeout=0.05) == []  # the claimed item is dropped, not run

        again = dispatcher.cancel(claimed)  # already cancelled: as it is, counts untouched
        assert again is not None and again.status == "cancelled" and dispatcher.pending == 0
        assert dispatcher.cancel("unknown") is None

        later = await dispatcher.accept("m", AsyncRequest(Text(text="later")))  # the freed slot takes the next job
        await until(lambda: len(pool.batcher) == 1)
        [pending] = await pool.batcher.next_batch(idle_timeout=1)
        assert pending.item == Text(text="later")
        pending.future.set_result({"text": "later"})
        await until(lambda: store.view(later).status == "succeeded")  # type: ignore[union-attr]
        assert store.counts() == {"cancelled": 2, "succeeded": 1}
    finally:
        await dispatcher.stop()
        store.close()


def test_a_job_cancelled_while_its_batch_runs_keeps_no_result_and_owes_no_queue_or_webhook(tmp_path: Path) -> None:
    asyncio.run(_running_cancel_scenario(tmp_path))


async def _running_cancel_scenario(tmp_path: Path) -> None:
    config = QueueConfig()
    pool = BatcherOnly()
    store = JobStore(tmp_path / "jobs.sqlite3")
    dispatcher = JobDispatcher(store, {"m": pool}, Text, config, make_sink(config), max_in_flight=2)  # type: ignore[dict-item]
    await dispatcher.start()
    owed = AsyncRequest(Text(text="x"), success_queue="done", failure_queue="failed")
    try:
        in_batch = await dispatcher.accept("m", owed.with_webhook("http://127.0.0.1:9/hook"))
        just_done = await dispatcher.accept("m", owed.with_webhook("http://127.0.0.1:9/hook"))
        await until(lambda: len(pool.batcher) == 2)
        batch = await pool.batcher.next_batch(idle_timeout=1)  # a container has both: the batch runs
        assert len(batch) == 2

        cancelled = dispatcher.cancel(in_batch)
        assert cancelled is not None and cancelled.status == "cancelled"
        for pending in batch:  # the batch ends: the cancelled job's result comes too late to count
            if not pending.future.done():
                pending.future.set_result({"text": "x"})
        # The other job's result has come, but its task has not run yet when it is cancelled.
        assert dispatcher.cancel(just_done) is not None
        background = {dispatcher._feeder, dispatcher._housekeeper}
        await until(lambda: dispatcher._tasks <= background)  # both jobs' tasks have seen their results and ended

        for job_id in (in_batch, just_done):
            job = store.get(job_id)
            assert job is not None and (job.status, job.outcome) == ("cancelled", None)
            assert (job.delivery, job.webhook) == (None, None)
        assert store.owed() == [] and store.owed_webhooks() == []
        assert (dispatcher.pending, dispatcher._reserved) == (0, 0)
    finally:
        await dispatcher.stop()
        store.close()
