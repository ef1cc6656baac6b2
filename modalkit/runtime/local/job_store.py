"""The durable job store of the local runtime: SQLite in WAL mode, one row per async job.

An input is stored as JSON text (`payload`), or, for an input model with file fields, in binary form: up to
`BLOB_THRESHOLD_BYTES` in the row (`payload_binary`), larger in a file of its own in the blob directory beside
the store (`<store>.blobs/<job_id>`, its size in `blob_bytes`), written and fsynced before the row is committed
and deleted with the row.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pickle
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic_core import to_jsonable_python

from modalkit.jobs import PENDING_STATES, AsyncRequest, Delivery, DeliveryState, Job, JobState, PageKey

logger = logging.getLogger("modalkit.jobs")

Channel = Literal["queue", "webhook"]  # how a finished job's result is delivered

_TABLE = """
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
    created_at REAL NOT NULL,
    finished_at REAL,
    expires_at REAL,
    delivery TEXT,
    delivery_attempts INTEGER NOT NULL DEFAULT 0,
    delivery_error TEXT,
    payload_binary BLOB,
    blob_bytes INTEGER,
    webhook_url TEXT,
    webhook_id TEXT,
    webhook TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0,
    webhook_error TEXT,
    owner TEXT
)
"""
# Columns a store written by an older modalkit lacks; its delivery_pending = 1 becomes delivery = 'pending'.
_ADDED = {
    "delivery": "TEXT",
    "delivery_attempts": "INTEGER NOT NULL DEFAULT 0",
    "delivery_error": "TEXT",
    "payload_binary": "BLOB",
    "blob_bytes": "INTEGER",
    "webhook_url": "TEXT",
    "webhook_id": "TEXT",
    "webhook": "TEXT",
    "webhook_attempts": "INTEGER NOT NULL DEFAULT 0",
    "webhook_error": "TEXT",
    "owner": "TEXT",
}
_INDEXES = """
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, created_at);
CREATE INDEX IF NOT EXISTS jobs_expiry ON jobs (expires_at);
CREATE INDEX IF NOT EXISTS jobs_delivery ON jobs (delivery);
CREATE INDEX IF NOT EXISTS jobs_webhook ON jobs (webhook);
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner, created_at, id);
"""
_COLUMNS = (
    "id, model_name, status, payload, success_queue, failure_queue, meta, attempts, suspect, trace_context, result,"
    " error, expires_at, delivery, delivery_attempts, delivery_error, payload_binary, blob_bytes, finished_at,"
    " webhook_url, webhook_id, webhook, webhook_attempts, webhook_error, owner, created_at"
)
# Where each way of delivering a result keeps its state, attempts and last error.
_CHANNEL_COLUMNS = {
    "queue": ("delivery", "delivery_attempts", "delivery_error"),
    "webhook": ("webhook", "webhook_attempts", "webhook_error"),
}
# The size of one input, whatever its form (SQL).
_INPUT_SIZE = "length(CAST(payload AS BLOB)) + coalesce(length(payload_binary), blob_bytes, 0)"
_PENDING = "(" + ", ".join(f"'{state}'" for state in PENDING_STATES) + ")"  # SQL: status IN _PENDING
_WAL_KEPT_BYTES = 8 * 1024 * 1024  # after a checkpoint the WAL file is cut back to this
# A binary input larger than this is kept in a file of the blob directory rather than in its row: SQLite reads
# and rewrites whole rows, and large values in the WAL would make every checkpoint copy them once more.
BLOB_THRESHOLD_BYTES = 256 * 1024


@dataclass(frozen=True)
class StoredJob:
    """A job's row: what running it takes (payload, request, trace context) and where it stands.

    `outcome` is the result of a succeeded job or the error of a failed one; `delivery` is None when the job
    named no queue for its result, `webhook` when it named no webhook URL. `as_job` is what the API reports of it.
    """

    job_id: str
    model_name: str
    status: JobState
    payload: str  # the input as JSON text; "" for an input stored in binary form
    request: AsyncRequest  # message is still the stored payload here
    attempts: int
    suspect: bool
    trace_context: dict[str, str]
    outcome: Any
    expires_at: float | None = None
    delivery: DeliveryState | None = None  # None: the job has no queue to push to
    delivery_attempts: int = 0
    delivery_error: str | None = None
    binary: bytes | None = None  # the pickled `model_dump(mode="python")` of an input with file fields, in the row
    blob: Path | None = None  # ... or in this file, when larger than BLOB_THRESHOLD_BYTES
    size: int = 0  # the input's bytes, in whichever form it is stored
    finished_at: float | None = None
    webhook: DeliveryState | None = None  # None: the job has no webhook (or has not finished)
    webhook_attempts: int = 0
    webhook_error: str | None = None
    created_at: float | None = None

    @property
    def is_binary(self) -> bool:
        return self.binary is not None or self.blob is not None

    def stored_input(self) -> str | bytes:
        """The input as stored: JSON text, or the pickled dict of its fields (read from its blob file if there)."""
        if self.binary is not None:
            return self.binary
        if self.blob is not None:
            try:
                return self.blob.read_bytes()
            except FileNotFoundError:  # deleted behind the store's back: b"" does not unpickle, so the job fails
                logger.error("job %s: its blob file %s is missing", self.job_id, self.blob)
                return b""
        return self.payload

    def message(self) -> Any:
        """The input as JSON-able data (bytes as base64, as a `File` is in JSON), for a failure queue's message."""
        stored = self.stored_input()
        if isinstance(stored, str):
            return json.loads(stored)
        try:
            return to_jsonable_python(pickle.loads(stored), bytes_mode="base64")
        except Exception as exc:  # a lost blob file, a pickled type that is gone: the message goes without it
            logger.warning("job %s: its stored input cannot be read for its queue message: %s", self.job_id, exc)
            return None

    def as_job(self) -> Job:
        """The job as `GET /predict_async/{job_id}` answers it."""
        delivery = webhook = None
        if self.delivery is not None:
            queue = self.request.queue_for(self.status)
            delivery = Delivery(
                state=self.delivery, queue=queue, attempts=self.delivery_attempts, error=self.delivery_error
            )
        if self.webhook is not None:
            url = self.request.webhook_url
            webhook = Delivery(state=self.webhook, url=url, attempts=self.webhook_attempts, error=self.webhook_error)
        return Job(
            job_id=self.job_id,
            status=self.status,
            attempts=self.attempts,
            result=self.outcome if self.status == "succeeded" else None,
            error=self.outcome if self.status == "failed" else None,
            delivery=delivery,
            webhook=webhook,
            owner=self.request.owner,
            created_at=self.created_at,
        )


@dataclass(frozen=True)
class StoreUsage:
    rows: int
    # in the pages that hold jobs (freed pages do not count, even before the sweeper returns them), and in blob files
    bytes: int
    file_bytes: int  # the database file, its WAL and the blob files, on disk


class JobStore:
    """Every state change is committed before it is acted on, so a killed server loses no accepted job.

    WAL with synchronous=NORMAL: a commit survives the process being killed (the guarantee the
    local runtime makes); only an OS crash or power loss can drop the last transactions. Incremental
    auto-vacuum: `reclaim` gives the pages of purged jobs back to the file system.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), isolation_level=None)
        self._db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new file, before its first table
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA journal_size_limit = {_WAL_KEPT_BYTES}")
        # Not zeroing every freed page (some builds do by default) makes a purge 40 times faster; `reclaim`
        # then cuts the freed pages off the file.
        self._db.execute("PRAGMA secure_delete = FAST")
        self._db.execute(_TABLE)
        self._migrate()
        self._db.executescript(_INDEXES)
        self._page_size = self._pragma("page_size")
        self._rows = int(self._db.execute("SELECT count(*) FROM jobs").fetchone()[0])
        self.blobs = self.path.with_name(self.path.name + ".blobs")
        self._blob_bytes = int(self._db.execute("SELECT coalesce(sum(blob_bytes), 0) FROM jobs").fetchone()[0])
        self._drop_orphan_blobs()

    def _drop_orphan_blobs(self) -> None:
        """Delete the blob files no row names: a job whose insert failed, or whose row was purged, before a kill."""
        if not self.blobs.is_dir():
            return
        kept = {r[0] for r in self._db.execute("SELECT id FROM jobs WHERE blob_bytes IS NOT NULL")}
        for file in self.blobs.iterdir():
            if file.name not in kept:
                logger.info("deleting %s: no job names it", file)
                file.unlink(missing_ok=True)

    def _migrate(self) -> None:
        present = {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}
        for column, declaration in _ADDED.items():
            if column not in present:
                self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {declaration}")
        if "delivery_pending" in present:
            self._db.execute("UPDATE jobs SET delivery = 'pending' WHERE delivery_pending = 1 AND delivery IS NULL")
        if self._pragma("auto_vacuum") != 2:  # a store made before incremental vacuum
            logger.info("converting the job store %s to incremental vacuum (once)", self.path)
            self._db.execute("VACUUM")

    def close(self) -> None:
        self._db.close()

    def insert(
        self,
        job_id: str,
        model_name: str,
        payload: str | bytes,
        request: AsyncRequest,
        trace_context: dict[str, str] | None = None,
    ) -> None:
        """Store a queued job. `payload` is the input's JSON text, or its binary form (bytes): a binary one larger
        than `BLOB_THRESHOLD_BYTES` goes to a blob file, fsynced before the row is committed and deleted if the
        insert fails."""
        text, binary = (payload, None) if isinstance(payload, str) else ("", payload)
        blob_bytes = None
        if binary is not None and len(binary) > BLOB_THRESHOLD_BYTES:
            blob_bytes, binary = self._write_blob(job_id, binary), None
        meta = json.dumps(request.meta) if request.meta is not None else None
        try:
            self._db.execute(
                "INSERT INTO jobs (id, model_name, status, payload, success_queue, failure_queue, meta, trace_context,"
                " created_at, payload_binary, blob_bytes, webhook_url, webhook_id, owner)"
                " VALUES (?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    job_id,
                    model_name,
                    text,
                    request.success_queue,
                    request.failure_queue,
                    meta,
                    json.dumps(trace_context or {}),
                    time.time(),
                    binary,
                    blob_bytes,
                    request.webhook_url,
                    request.webhook_id,
                    request.owner,
                ),
            )
        except BaseException:
            if blob_bytes is not None:
                self._blob_path(job_id).unlink(missing_ok=True)
            raise
        self._rows += 1
        self._blob_bytes += blob_bytes or 0

    def _blob_path(self, job_id: str) -> Path:
        if not job_id or os.sep in job_id or job_id.startswith("."):
            raise ValueError(f"job id {job_id!r} cannot name a blob file")
        return self.blobs / job_id

    def _write_blob(self, job_id: str, data: bytes) -> int:
        """Write `data` to the job's blob file, durably (file and directory fsynced); its size."""
        path = self._blob_path(job_id)
        if path.exists():  # another job's (a duplicate id): never overwrite it, nor delete it when the insert fails
            raise FileExistsError(f"{path} already holds the input of job {job_id}")
        self.blobs.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{job_id}.partial")  # never a job's name, so a leftover is an orphan
        try:
            with partial.open("wb") as file:
                file.write(data)
                file.flush()
                os.fsync(file.fileno())
            os.replace(partial, path)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        _fsync_dir(self.blobs)
        return len(data)

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

    def cancel(self, job_id: str, ttl_seconds: int) -> StoredJob | None:
        """queued/running -> cancelled, committed before this returns; the job as it was before (None: unknown).

        A cancelled job is never claimed, resumed or finished (each of those wants it queued or running), is owed
        to no queue or webhook, and is swept `ttl_seconds` from now like a finished one.
        """
        before = self.get(job_id)
        if before is not None and before.status in PENDING_STATES:
            now = time.time()
            self._db.execute(
                f"UPDATE jobs SET status = 'cancelled', finished_at = ?, expires_at = ? WHERE id = ?"
                f" AND status IN {_PENDING}",
                (now, now + ttl_seconds, job_id),
            )
        return before

    def page(self, owner: str | None, status: JobState | None, limit: int, after: PageKey | None) -> list[Job]:
        """Up to `limit` jobs, newest first, that follow `after` (the key of the last job of the previous page);
        only `owner`'s unless it is None (auth off: every job), only those in `status` unless it is None."""
        where: list[str] = []
        args: list[Any] = []
        if owner is not None:
            where.append("owner = ?")
            args.append(owner)
        if status is not None:
            where.append("status = ?")
            args.append(status)
        if after is not None:
            where.append("(created_at, id) < (?, ?)")
            args.extend(after)
        condition = f"WHERE {' AND '.join(where)}" if where else ""
        rows = self._db.execute(
            f"SELECT id, status, attempts, created_at, owner FROM jobs {condition}"
            " ORDER BY created_at DESC, id DESC LIMIT ?",
            (*args, limit),
        )
        return [
            Job(job_id=job_id, status=state, attempts=attempts, created_at=created_at, owner=who)
            for job_id, state, attempts, created_at, who in rows
        ]

    def finish(self, job_id: str, status: JobState, outcome: Any, ttl_seconds: int, deliver: bool) -> bool:
        """running -> succeeded/failed, once: False if the job was not running (a duplicate completion).

        `deliver`: the result is owed to a queue (delivery 'pending') until `delivered` or `delivery_failed`; a job
        with a webhook URL owes its webhook the same way (webhook 'pending').
        """
        now = time.time()
        column = "result" if status == "succeeded" else "error"
        changed = self._db.execute(
            f"UPDATE jobs SET status = ?, {column} = ?, finished_at = ?, expires_at = ?, delivery = ?,"
            " webhook = CASE WHEN webhook_url IS NULL THEN NULL ELSE 'pending' END"
            " WHERE id = ? AND status = 'running'",
            (status, json.dumps(outcome), now, now + ttl_seconds, "pending" if deliver else None, job_id),
        ).rowcount
        return bool(changed)

    def delivered(self, job_id: str, channel: Channel = "queue") -> None:
        state, attempts, error = _CHANNEL_COLUMNS[channel]
        self._db.execute(
            f"UPDATE jobs SET {state} = 'delivered', {attempts} = {attempts} + 1, {error} = NULL WHERE id = ?",
            (job_id,),
        )

    def delivery_failed(self, job_id: str, reason: str, channel: Channel = "queue") -> None:
        """The push (or webhook) is given up: the job keeps its result until it expires, with `reason` on its status."""
        state, attempts, error = _CHANNEL_COLUMNS[channel]
        self._db.execute(
            f"UPDATE jobs SET {state} = 'failed', {attempts} = {attempts} + 1, {error} = ? WHERE id = ?",
            (reason, job_id),
        )

    def delivery_retried(self, job_id: str, reason: str, channel: Channel = "queue") -> None:
        """One push (or webhook) failed and will be tried again; `reason` is shown on the job's status meanwhile."""
        _, attempts, error = _CHANNEL_COLUMNS[channel]
        self._db.execute(f"UPDATE jobs SET {attempts} = {attempts} + 1, {error} = ? WHERE id = ?", (reason, job_id))

    def get(self, job_id: str) -> StoredJob | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _stored_job(row, self.blobs) if row else None

    def view(self, job_id: str) -> Job | None:
        job = self.get(job_id)
        return job.as_job() if job is not None else None

    def resume(self) -> list[str]:
        """After a restart: jobs left running go back to queued; all queued job ids, oldest first (a cancelled
        job is neither, so it never runs again)."""
        self._db.execute("UPDATE jobs SET status = 'queued' WHERE status = 'running'")
        return [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY created_at")]

    def undelivered(self) -> list[str]:
        return [job_id for job_id, _ in self.owed()]

    def owed(self) -> list[tuple[str, str]]:
        """(job id, queue) of every result still owed to its queue."""
        rows = self._db.execute(
            "SELECT id, status, success_queue, failure_queue FROM jobs WHERE delivery = 'pending' ORDER BY finished_at"
        )
        owed = (
            (job_id, AsyncRequest(None, success, failure).queue_for(status))
            for job_id, status, success, failure in rows
        )
        return [(job_id, queue) for job_id, queue in owed if queue is not None]

    def owed_webhooks(self) -> list[tuple[str, str]]:
        """(job id, webhook URL) of every finished job whose webhook is still owed."""
        rows = self._db.execute("SELECT id, webhook_url FROM jobs WHERE webhook = 'pending' ORDER BY finished_at")
        return [(job_id, url) for job_id, url in rows]

    def pending_count(self) -> int:
        query = f"SELECT count(*) FROM jobs WHERE status IN {_PENDING}"
        return int(self._db.execute(query).fetchone()[0])

    def pending_bytes(self) -> int:
        """The size of the inputs of the jobs queued or running."""
        query = f"SELECT coalesce(sum({_INPUT_SIZE}), 0) FROM jobs WHERE status IN {_PENDING}"
        return int(self._db.execute(query).fetchone()[0])

    def counts(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, count(*) FROM jobs GROUP BY status").fetchall())

    def delivery_counts(self, channel: Channel = "queue") -> dict[str, int]:
        state = _CHANNEL_COLUMNS[channel][0]
        query = f"SELECT {state}, count(*) FROM jobs WHERE {state} IS NOT NULL GROUP BY {state}"
        return dict(self._db.execute(query).fetchall())

    @property
    def rows(self) -> int:
        """Jobs stored now (kept in memory: no query)."""
        return self._rows

    def usage(self) -> StoreUsage:
        pages = self._pragma("page_count") - self._pragma("freelist_count")
        files = (self.path, self.path.with_name(self.path.name + "-wal"))
        blobs = self._blob_bytes
        return StoreUsage(self._rows, pages * self._page_size + blobs, sum(_size(f) for f in files) + blobs)

    def next_expiry(self) -> float | None:
        """When the next finished job expires (it may be past: a job whose result is still owed to its queue)."""
        found = self._db.execute("SELECT min(expires_at) FROM jobs WHERE expires_at IS NOT NULL").fetchone()[0]
        return float(found) if found is not None else None

    def purge_expired(self, limit: int = 1000) -> int:
        """Delete up to `limit` jobs past their time to live, except those whose result is still owed to a queue or
        a webhook."""
        deleted = self._db.execute(
            "DELETE FROM jobs WHERE id IN (SELECT id FROM jobs WHERE expires_at < ?"
            " AND delivery IS NOT 'pending' AND webhook IS NOT 'pending' LIMIT ?)"
            " RETURNING id, blob_bytes",
            (time.time(), limit),
        ).fetchall()
        self._rows -= len(deleted)
        for job_id, blob_bytes in deleted:  # after the commit: a kill in between leaves an orphan, deleted at start
            if blob_bytes is not None:
                self._blob_bytes -= blob_bytes
                with contextlib.suppress(OSError):
                    self._blob_path(job_id).unlink(missing_ok=True)
        return len(deleted)

    def reclaim(self, max_pages: int = 1000) -> int:
        """Give up to `max_pages` free pages back to the file system; the number still free afterwards."""
        if not self._pragma("freelist_count"):
            return 0
        # executescript steps the pragma to its end; execute() would free one page only.
        self._db.executescript(f"PRAGMA incremental_vacuum({int(max_pages)});")
        left = self._pragma("freelist_count")
        if not left:  # in WAL mode the file shrinks when the WAL is written back; TRUNCATE empties the WAL too
            self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
        return left

    def _pragma(self, name: str) -> int:
        return int(self._db.execute(f"PRAGMA {name}").fetchone()[0])

    def insert_group(
        self, jobs: Sequence[tuple[str, str, str | bytes, AsyncRequest, dict[str, str] | None]]
    ) -> list[Exception | None]:
        """`insert` of every job (its arguments), in one transaction: one commit for all (`group_commit`).

        Each job's error, in order (None: stored): a job whose row or blob file is refused fails alone. A failed
        commit raises, and then no job of the group is stored.
        """
        errors: list[Exception | None] = []
        rows, blob_bytes = self._rows, self._blob_bytes
        self._db.execute("BEGIN IMMEDIATE")
        try:
            for job in jobs:
                try:
                    self.insert(*job)
                except (sqlite3.IntegrityError, OSError) as exc:  # SQLite undoes this statement, not the group
                    errors.append(exc)
                else:
                    errors.append(None)
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            self._rows, self._blob_bytes = rows, blob_bytes
            for (job_id, *_), error in zip(jobs, errors, strict=False):
                if error is None:  # its blob file, if it had one, names no row now
                    with contextlib.suppress(ValueError):
                        self._blob_path(job_id).unlink(missing_ok=True)
            raise
        return errors


def _size(path: Path) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def _fsync_dir(path: Path) -> None:
    """Make a file's creation or rename in `path` durable."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _stored_job(row: tuple[Any, ...], blobs: Path) -> StoredJob:
    job_id, model_name, status, payload, success_queue, failure_queue, meta, attempts, suspect, trace = row[:10]
    result, error, expires_at, delivery, delivery_attempts, delivery_error, binary, blob_bytes = row[10:18]
    finished_at, webhook_url, webhook_id, webhook, webhook_attempts, webhook_error, owner, created_at = row[18:]
    stored = binary if binary is not None else payload
    meta_value = json.loads(meta) if meta else None
    request = AsyncRequest(stored, success_queue, failure_queue, meta_value, webhook_url, webhook_id, owner)
    outcome = json.loads(result) if result is not None else json.loads(error) if error is not None else None
    return StoredJob(
        job_id=job_id,
        model_name=model_name,
        status=status,
        payload=payload,
        request=request,
        attempts=attempts,
        suspect=bool(suspect),
        trace_context=json.loads(trace or "{}"),
        outcome=outcome,
        expires_at=expires_at,
        delivery=delivery,
        delivery_attempts=delivery_attempts,
        delivery_error=delivery_error,
        binary=binary,
        blob=blobs / job_id if blob_bytes is not None else None,
        size=len(payload.encode()) + (len(binary) if binary is not None else blob_bytes or 0),
        finished_at=finished_at,
        webhook=webhook,
        webhook_attempts=webhook_attempts,
        webhook_error=webhook_error,
        created_at=created_at,
    )
