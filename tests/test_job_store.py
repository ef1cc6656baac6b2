"""The SQLite job store: each transition happens once, and a restart resumes what was left."""

from __future__ import annotations

from pathlib import Path

from modalkit.jobs import AsyncRequest
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
