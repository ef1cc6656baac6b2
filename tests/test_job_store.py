"""The SQLite job store: each transition happens once, and a restart resumes what was left; what a job reports."""

from __future__ import annotations

import datetime
from dataclasses import dataclass
from pathlib import Path

from modalkit.iomodel import InferenceOutputModel
from modalkit.jobs import AsyncRequest, Job, job_outcome
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
