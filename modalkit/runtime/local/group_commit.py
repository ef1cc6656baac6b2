"""Group commit of accepted jobs: the jobs accepted in one turn of the event loop share one transaction and commit.

An accept asks for its job to be stored and waits for the commit. The first ask of a turn schedules the commit at
the end of the turn; every accept that runs before then (under load, the requests that arrived together) joins
it. So one commit serves many jobs, and alone a job waits for nobody. A 202 still means "committed", exactly as
with one transaction per job.

The commit runs on the event loop, on the store's one connection. A writer thread with a connection of its own
was measured slower here: the dispatcher's own writes (claim, finish) on the loop's connection then wait for the
writer's lock, and SQLite's busy wait stalls the loop for a millisecond or more each time.
"""

from __future__ import annotations

import asyncio

from modalkit.jobs import AsyncRequest
from modalkit.runtime.local.job_store import JobStore

NewJob = tuple[str, str, str | bytes, AsyncRequest, dict[str, str] | None]  # `JobStore.insert`'s arguments


class GroupCommit:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._asked: list[tuple[NewJob, asyncio.Future[None]]] = []

    def insert(
        self,
        job_id: str,
        model_name: str,
        payload: str | bytes,
        request: AsyncRequest,
        trace_context: dict[str, str] | None = None,
    ) -> asyncio.Future[None]:
        """Store a job as `JobStore.insert` does; the future is done once its group is committed (or raises the
        job's error). The job is committed even if the caller stops waiting."""
        loop = asyncio.get_running_loop()
        committed: asyncio.Future[None] = loop.create_future()
        if not self._asked:
            loop.call_soon(self._commit)  # after the accepts already waiting to run in this turn
        self._asked.append(((job_id, model_name, payload, request, trace_context), committed))
        return committed

    def _commit(self) -> None:
        group, self._asked = self._asked, []
        try:
            errors = self._store.insert_group([job for job, _ in group])
        except Exception as exc:  # the commit failed: no job of the group is stored
            errors = [exc] * len(group)
        for (_, committed), error in zip(group, errors, strict=True):
            if committed.done():
                continue
            if error is None:
                committed.set_result(None)
            else:
                committed.set_exception(error)
