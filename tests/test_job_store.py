"""The SQLite job store: each transition happens once, and a restart resumes what was left; what a job reports."""

from __future__ import annotations

import base64
import datetime
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import pytest

from modalkit.iomodel import InferenceOutputModel
from modalkit.jobs import AsyncRequest, Job, job_outcome, page_cursor, read_cursor
from modalkit.outcome import Failure
from modalkit.runtime.local.job_store import JobStore


def test_a_job_is_claimed_and_finished_once(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.insert("j1", "echo", '{"text": "x"}', AsyncRequest(None, "ok", "bad", {"k": 1}), {"traceparent": "t"})
    job = store.claim("j1")
    assert job is not None and job.attempts == 1 and job.status == "running"
    assert job.request.meta == {"k": 1} and job.trace_context == {"traceparent": "t"}
    assert store.claim("j1") is None  # already running
    assert store.finish("j1", "succeeded", {"text": "x"}, ttl_seconds=60, deliver=True)
    assert not store.finish("j1", "failed", {"detail": "late duplicate"}, ttl_seconds=60, deliver=False)
    view = store.view("j1")
    assert view is not None and (view.status, view.result) == ("succeeded", {"text": "x"})
    assert store.undelivered() == ["j1"]
    store.delivered("j1")
    assert store.undelivered() == []


def test_restart_resumes_running_and_queued_jobs_in_order(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    for job_id in ("a", "b", "c"):
        store.insert(job_id, "echo", "{}", AsyncRequest(None))
    store.claim("a")
    store.claim("c")
    store.finish("c", "succeeded", {}, 60, deliver=False)
    store.close()

    reopened = JobStore(path)
    assert reopened.resume() == ["a", "b"]
    assert reopened.pending_count() == 2
    assert reopened.counts() == {"queued": 2, "succeeded": 1}


def test_requeue_marks_a_job_to_run_alone(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.insert("j", "echo", "{}", AsyncRequest(None))
    store.claim("j")
    store.requeue("j")
    again = store.claim("j")
    assert again is not None and again.suspect and again.attempts == 2


def test_expired_results_are_purged_unless_undelivered(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for job_id, deliver in (("gone", False), ("kept", True)):
        store.insert(job_id, "echo", "{}", AsyncRequest(None))
        store.claim(job_id)
        store.finish(job_id, "succeeded", {}, ttl_seconds=-1, deliver=deliver)
    assert store.purge_expired() == 1
    assert store.view("gone") is None and store.view("kept") is not None


def test_a_job_reports_its_error_and_its_delivery_as_the_api_answers_them(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.insert("j", "echo", "{}", AsyncRequest(None, "ok", "bad"))
    queued = store.view("j")
    assert isinstance(queued, Job) and queued.pending
    assert queued.answer() == {"job_id": "j", "status": "queued", "attempts": 0}
    store.claim("j")
    store.finish("j", *job_outcome(Failure("rejected", "too short")), ttl_seconds=60, deliver=True)
    store.delivery_retried("j", "ConnectionError: down")
    failed = store.view("j")
    assert failed is not None and not failed.pending
    assert failed.answer() == {
        "job_id": "j",
        "status": "failed",
        "attempts": 1,
        "error": {"status_code": 422, "detail": "too short"},
        "delivery": {"state": "pending", "queue": "bad", "attempts": 1, "error": "ConnectionError: down"},
    }
    assert store.owed() == [("j", "bad")]  # a failed job's result goes to the failure queue
    store.delivered("j")
    delivered = store.view("j")
    assert delivered is not None and delivered.answer()["delivery"] == {
        "state": "delivered",
        "queue": "bad",
        "attempts": 2,
    }


@dataclass
class Point:
    x: float
    when: datetime.datetime


def test_job_outcome_encodes_outputs_and_fails_those_that_say_so() -> None:
    when = datetime.datetime(2024, 1, 2, 3, 4, 5)
    assert job_outcome(Point(1.5, when)) == ("succeeded", {"x": 1.5, "when": "2024-01-02T03:04:05"})
    assert job_outcome(Failure("job_timeout", "too long")) == ("failed", {"status_code": 504, "detail": "too long"})
    reported = InferenceOutputModel(status="error", error="empty input", score=0)
    assert job_outcome(reported) == (
        "failed",
        {
            "status_code": 422,
            "detail": "empty input",
            "output": {"status": "error", "error": "empty input", "meta": {}, "score": 0},
        },
    )
    status, error = job_outcome(object())  # as a local container answers an output it cannot encode
    assert status == "failed" and error["status_code"] == 500 and "not JSON-serialisable" in error["detail"]


def test_the_queue_of_a_result_follows_its_status() -> None:
    request = AsyncRequest(None, "ok", "bad")
    assert (request.queue_for("succeeded"), request.queue_for("failed")) == ("ok", "bad")
    assert AsyncRequest(None, "ok").queue_for("failed") is None


def test_a_queued_job_is_cancelled_once_never_claimed_and_not_resumed(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    for job_id in ("queued", "running", "done"):
        store.insert(job_id, "echo", "{}", AsyncRequest(None, webhook_url="http://h/x", webhook_id="msg_1"))
    store.claim("running")
    store.claim("done")
    store.finish("done", "succeeded", {"ok": 1}, ttl_seconds=60, deliver=False)

    before = store.cancel("queued", ttl_seconds=60)
    assert before is not None and before.status == "queued"
    assert store.claim("queued") is None  # the dispatcher skips it
    assert store.cancel("running", ttl_seconds=60).status == "running"  # type: ignore[union-attr]
    assert not store.finish("running", "succeeded", {"late": True}, ttl_seconds=60, deliver=True)  # discarded
    finished = store.cancel("done", ttl_seconds=60)
    assert finished is not None and finished.status == "succeeded"  # left as it was
    assert store.cancel("unknown", ttl_seconds=60) is None

    cancelled = store.view("running")
    assert cancelled is not None and not cancelled.pending
    assert cancelled.answer() == {"job_id": "running", "status": "cancelled", "attempts": 1}
    assert store.owed_webhooks() == [("done", "http://h/x")]  # the finished job only: a cancelled one is owed none
    assert store.pending_count() == 0 and store.counts() == {"cancelled": 2, "succeeded": 1}
    store.close()

    reopened = JobStore(path)  # as after a SIGKILL: the cancels were committed
    assert reopened.resume() == []
    assert reopened.view("queued").status == "cancelled"  # type: ignore[union-attr]


def test_cancelled_jobs_are_swept_after_their_time_to_live(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    store.insert("j", "echo", "{}", AsyncRequest(None))
    store.cancel("j", ttl_seconds=-1)
    assert store.purge_expired() == 1 and store.view("j") is None


def test_a_page_holds_the_owners_jobs_newest_first_after_the_cursor(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for n in range(5):
        store.insert(f"a{n}", "echo", "{}", AsyncRequest(None, owner="alice"))
        store.insert(f"b{n}", "echo", "{}", AsyncRequest(None, owner="bob"))
    store.claim("a3")
    store.finish("a3", "succeeded", {}, 60, deliver=False)

    first = store.page("alice", None, 2, None)
    assert [job.job_id for job in first] == ["a4", "a3"] and {job.owner for job in first} == {"alice"}
    after = read_cursor(page_cursor(first[-1]))
    assert [job.job_id for job in store.page("alice", None, 10, after)] == ["a2", "a1", "a0"]
    assert [job.job_id for job in store.page("alice", "succeeded", 10, None)] == ["a3"]
    assert [job.job_id for job in store.page("bob", "succeeded", 10, None)] == []
    assert len(store.page(None, None, 100, None)) == 10  # auth off: every job
    view = store.view("a3")
    assert view is not None and view.owner == "alice" and view.created_at is not None
    assert "owner" not in view.answer() and "owner" not in view.model_dump()  # never shown


def test_a_cursor_that_no_page_made_is_refused() -> None:
    made = ('[NaN, "x"]', '[1e999, "x"]', '[true, "x"]')  # a time that is not a finite number
    crafted = tuple(base64.urlsafe_b64encode(text.encode()).decode() for text in made)
    for bad in ("not-a-cursor", "", "W10", "eyJhIjogMX0", *crafted):  # garbage, empty, [], {"a": 1}, crafted
        with pytest.raises(ValueError, match="not a cursor"):
            read_cursor(bad)
    job = Job(job_id="x", status="queued", created_at=12.5)
    assert read_cursor(page_cursor(job)) == (12.5, "x")


def test_a_store_written_before_owners_opens_and_its_jobs_run_and_list(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    with sqlite3.connect(path) as db:  # the table as the modalkit before job owners wrote it
        db.execute(OLD_TABLE)
        db.execute(
            "INSERT INTO jobs (id, model_name, status, payload, created_at) VALUES ('old', 'echo', 'queued', '{}', 1.0)"
        )
    store = JobStore(path)
    assert store.resume() == ["old"]
    claimed = store.claim("old")
    assert claimed is not None and claimed.request.owner is None
    assert [job.job_id for job in store.page(None, None, 10, None)] == ["old"]
    assert store.page("alice", None, 10, None) == []  # an ownerless job is no client's
    store.insert("new", "echo", "{}", AsyncRequest(None, owner="alice"))
    assert [job.job_id for job in store.page("alice", None, 10, None)] == ["new"]
    indexes = {row[1] for row in store._db.execute("PRAGMA index_list(jobs)")}
    assert "jobs_owner" in indexes


OLD_TABLE = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, model_name TEXT NOT NULL, status TEXT NOT NULL, payload TEXT NOT NULL,
    success_queue TEXT, failure_queue TEXT, meta TEXT, trace_context TEXT, attempts INTEGER NOT NULL DEFAULT 0,
    suspect INTEGER NOT NULL DEFAULT 0, result TEXT, error TEXT, created_at REAL NOT NULL, finished_at REAL,
    expires_at REAL, delivery TEXT, delivery_attempts INTEGER NOT NULL DEFAULT 0, delivery_error TEXT,
    payload_binary BLOB, blob_bytes INTEGER, webhook_url TEXT, webhook_id TEXT, webhook TEXT,
    webhook_attempts INTEGER NOT NULL DEFAULT 0, webhook_error TEXT
)
"""
