"""The durable job store of the local runtime: SQLite in WAL mode, one row per async job."""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from modalkit.jobs import AsyncRequest, JobState, JobView

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    model_name TEXT NOT NULL,
    status TEXT NOT NULL,
    payload TEXT NOT NULL,
    success_queue TEXT,
    failure_queue TEXT,
    meta TEXT,
    trace_context TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    suspect INTEGER NOT NULL DEFAULT 0,
    result TEXT,
    error TEXT,
    delivery_pending INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    finished_at REAL,
    expires_at REAL
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
"""


@dataclass(frozen=True)
class StoredJob:
    job_id: str
    model_name: str
    status: JobState
    payload: str
    request: AsyncRequest  # message is still the JSON payload here
    attempts: int
    suspect: bool
    trace_context: dict[str, str]
    outcome: Any


class JobStore:
    """Every state change is committed before it is acted on, so a killed server loses no accepted job.

    WAL with synchronous=NORMAL: a commit survives the process being killed (the guarantee the
    local runtime makes); only an OS crash or power loss can drop the last transactions.
    """

    def __init__(self, path: str | Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def insert(self, job_id: str, model_name: str, payload: str, request: AsyncRequest,
               trace_context: dict[str, str] | None = None) -> None:  # fmt: skip
        self._db.execute(
            "INSERT INTO jobs (id, model_name, status, payload, success_queue, failure_queue, meta, trace_context,"
            " created_at) VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?)",
            (job_id, model_name, payload, request.success_queue, request.failure_queue,
             json.dumps(request.meta) if request.meta is not None else None,
             json.dumps(trace_context or {}), time.time()),
        )  # fmt: skip

    def claim(self, job_id: str) -> StoredJob | None:
        """queued -> running, attempts + 1; None if the job is not queued (already taken or finished)."""
        changed = self._db.execute(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1 WHERE id = ? AND status = 'queued'",
            (job_id,),
        ).rowcount
        return self.get(job_id) if changed else None

    def requeue(self, job_id: str) -> None:
        """running -> queued after its container died; it will run alone next time (it may be the cause)."""
        self._db.execute(
            "UPDATE jobs SET status = 'queued', suspect = 1 WHERE id = ? AND status = 'running'", (job_id,)
        )

    def finish(self, job_id: str, status: JobState, outcome: Any, ttl_seconds: int, deliver: bool) -> bool:
        """running -> succeeded/failed, once: False if the job was not running (a duplicate completion)."""
        now = time.time()
        column = "result" if status == "succeeded" else "error"
        changed = self._db.execute(
            f"UPDATE jobs SET status = ?, {column} = ?, finished_at = ?, expires_at = ?, delivery_pending = ?"
            " WHERE id = ? AND status = 'running'",
            (status, json.dumps(outcome), now, now + ttl_seconds, int(deliver), job_id),
        ).rowcount
        return bool(changed)

    def delivered(self, job_id: str) -> None:
        self._db.execute("UPDATE jobs SET delivery_pending = 0 WHERE id = ?", (job_id,))

    def get(self, job_id: str) -> StoredJob | None:
        row = self._db.execute(
            "SELECT id, model_name, status, payload, success_queue, failure_queue, meta, attempts, suspect,"
            " trace_context, result, error FROM jobs WHERE id = ?",
            (job_id,),
        ).fetchone()
        return _stored(row) if row else None

    def view(self, job_id: str) -> JobView | None:
        job = self.get(job_id)
        if job is None:
            return None
        view = JobView(job.job_id, job.status, attempts=job.attempts)
        if job.status == "succeeded":
            view.result = job.outcome
        elif job.status == "failed":
            view.error = job.outcome
        return view

    def resume(self) -> list[str]:
        """After a restart: jobs left running go back to queued; all queued job ids, oldest first."""
        self._db.execute("UPDATE jobs SET status = 'queued' WHERE status = 'running'")
        return [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at")]

    def undelivered(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE delivery_pending = 1")]

    def pending_count(self) -> int:
        return int(self._db.execute("SELECT count(*) FROM jobs WHERE status IN ('queued', 'running')").fetchone()[0])

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())

    def purge_expired(self) -> int:
        return int(
            self._db.execute("DELETE FROM jobs WHERE expires_at < ? AND delivery_pending = 0", (time.time(),)).rowcount
        )


def _stored(row: tuple[Any, ...]) -> StoredJob:
    (job_id, model_name, status, payload, success_queue, failure_queue, meta, attempts, suspect, trace, result,
     error) = row  # fmt: skip
    request = AsyncRequest(payload, success_queue, failure_queue, json.loads(meta) if meta else None)
    outcome = json.loads(result) if result is not None else json.loads(error) if error is not None else None
    return StoredJob(job_id, model_name, status, payload, request, attempts, bool(suspect), json.loads(trace or "{}"),
                     outcome)  # fmt: skip
