"""Group commit of accepted jobs: the jobs asked for together share one transaction, and each fails alone."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from modalkit.jobs import AsyncRequest
from modalkit.runtime.local.group_commit import GroupCommit
from modalkit.runtime.local.job_store import BLOB_THRESHOLD_BYTES, JobStore


class CountingStore(JobStore):
    """A real store that counts its group commits and the jobs in each."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self.groups: list[int] = []

    def insert_group(self, jobs: Sequence[Any]) -> list[Exception | None]:
        self.groups.append(len(jobs))
        return super().insert_group(jobs)


def test_jobs_asked_for_together_share_one_commit_and_are_all_stored(tmp_path: Path) -> None:
    store = CountingStore(tmp_path / "jobs.sqlite3")
    commits = GroupCommit(store)

    async def scenario() -> None:
        asked = [commits.insert(f"j{i}", "echo", f'{{"text": "{i}"}}', AsyncRequest(None)) for i in range(20)]
        await asyncio.gather(*asked)
        await commits.insert("late", "echo", '{"text": "late"}', AsyncRequest(None))

    asyncio.run(scenario())
    assert store.groups == [20, 1]  # one turn of the event loop, one commit; alone, a job waits for nobody
    assert store.counts() == {"queued": 21} and store.usage().rows == 21
    reopened = JobStore(tmp_path / "jobs.sqlite3")  # committed: another connection sees every job
    assert reopened.counts() == {"queued": 21}


def test_a_refused_job_fails_alone(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.insert("taken", "echo", '{"text": "first"}', AsyncRequest(None))
    commits = GroupCommit(store)

    async def scenario() -> list[Any]:
        asked = [commits.insert(job_id, "echo", '{"text": "x"}', AsyncRequest(None)) for job_id in ("a", "taken", "b")]
        return await asyncio.gather(*asked, return_exceptions=True)

    first, duplicate, last = asyncio.run(scenario())
    assert first is None and last is None and isinstance(duplicate, sqlite3.IntegrityError)
    assert store.counts() == {"queued": 3} and store.usage().rows == 3
    assert store.get("taken").payload == '{"text": "first"}'  # type: ignore[union-attr]


def test_a_failed_commit_stores_no_job_of_its_group(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    commits = GroupCommit(store)

    def no_room(jobs: Sequence[Any]) -> list[Exception | None]:
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(store, "insert_group", no_room)

    async def scenario() -> list[Any]:
        asked = [commits.insert(f"j{i}", "echo", "{}", AsyncRequest(None)) for i in range(3)]
        return await asyncio.gather(*asked, return_exceptions=True)

    assert all(isinstance(error, sqlite3.OperationalError) for error in asyncio.run(scenario()))
    assert store.usage().rows == 0


def test_a_group_that_cannot_commit_stores_nothing(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    big = b"x" * (BLOB_THRESHOLD_BYTES + 1)
    store.insert("blocker", "echo", "{}", AsyncRequest(None))
    blocker = sqlite3.connect(tmp_path / "jobs.sqlite3", timeout=0)  # holds the write lock: the group cannot begin
    blocker.execute("BEGIN IMMEDIATE")
    store._db.execute("PRAGMA busy_timeout = 0")
    with pytest.raises(sqlite3.OperationalError):
        store.insert_group([("j1", "photo", big, AsyncRequest(None), None)])
    blocker.rollback()
    assert store.usage().rows == 1 and not (store.blobs / "j1").exists()
    assert store.insert_group([("j1", "photo", big, AsyncRequest(None), None)]) == [None]
    assert (store.blobs / "j1").exists() and store.usage().rows == 2
