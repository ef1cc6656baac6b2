"""Acceptance: `DELETE /predict_async/{job_id}` against `modalkit serve`. A queued job is cancelled at once and never
reaches the model, a running one has its result discarded, a finished one gets 409, and a cancel survives a
SIGKILL of the server (the restarted server does not run the job)."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from modalkit.client import Client, ClientError
from tests.conftest import APPS, Server, wait_for

RECORDER, RECORDER_CONFIG = APPS / "recorder_app.py", APPS / "recorder.yaml"


def start(serve: Any, folder: Path, store: Path | None = None) -> Server:
    env = {"RECORDER_FILE": str(folder / "seen.txt")}
    if store is not None:
        env["MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE"] = str(store)
    return serve(RECORDER, RECORDER_CONFIG, env=env)  # type: ignore[no-any-return]


def seen(folder: Path) -> list[str]:
    """Every input the model was given, in order."""
    record = folder / "seen.txt"
    return record.read_text().splitlines() if record.exists() else []


def submit(server: Server, text: str) -> str:
    accepted = httpx.post(f"{server.url}/predict_async", json={"text": text}, timeout=10)
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["job_id"])


def job(server: Server, job_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/predict_async/{job_id}", timeout=10)


def cancel(server: Server, job_id: str) -> httpx.Response:
    return httpx.delete(f"{server.url}/predict_async/{job_id}", timeout=10)


def finished(server: Server, job_id: str) -> dict[str, Any] | None:
    answer = job(server, job_id)
    return answer.json() if answer.status_code == 200 else None  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("recorder")


@pytest.fixture(scope="module")
def server(serve: Any, folder: Path) -> Server:
    return start(serve, folder)


def test_queued_jobs_are_cancelled_at_once_and_never_reach_the_model(server: Server, folder: Path) -> None:
    # One container, one input at a time, two jobs in flight: the first holds the container, the second is claimed
    # (`running`: in the batcher, or sent ahead to the container), the rest wait in the job store (`queued`: never
    # claimed, attempts 0). Cancelled newest first, so the queued ones are cancelled while still queued.
    holder = submit(server, "sleep:3 hold")
    wait_for(lambda: "sleep:3 hold" in seen(folder), timeout=30)
    waiting = [submit(server, f"never {i}") for i in range(4)]

    attempts = {}
    for job_id in reversed(waiting):
        answer = cancel(server, job_id)
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"job_id": job_id, "status": "cancelled", "attempts": answer.json()["attempts"]}
        attempts[job_id] = answer.json()["attempts"]
        now = job(server, job_id)
        assert now.status_code == 200 and now.json()["status"] == "cancelled" and "result" not in now.json()
    queued = [job_id for job_id in waiting if attempts[job_id] == 0]
    assert len(queued) >= 2, attempts  # at most two were in flight

    again = cancel(server, waiting[-1])  # a cancelled job: the same answer again
    assert again.status_code == 200 and again.json()["status"] == "cancelled"

    after = submit(server, "after the cancels")
    assert wait_for(lambda: finished(server, after), timeout=60)["result"] == {"text": "after the cancels"}
    assert finished(server, holder)["status"] == "succeeded"  # type: ignore[index]
    texts = seen(folder)
    assert texts[0] == "sleep:3 hold" and texts[-1] == "after the cancels"
    assert not {f"never {waiting.index(job_id)}" for job_id in queued} & set(texts)
    assert len([text for text in texts if text.startswith("never")]) <= 1  # only one can have been sent ahead
    for job_id in waiting:  # a job sent ahead to the container ran, and its result was discarded
        assert job(server, job_id).json() == {"job_id": job_id, "status": "cancelled", "attempts": attempts[job_id]}
    assert server.health()["jobs"]["pending"] == 0


def test_a_running_job_is_cancelled_and_its_result_discarded(server: Server, folder: Path) -> None:
    running = submit(server, "sleep:2 running")
    wait_for(lambda: "sleep:2 running" in seen(folder), timeout=30)
    answer = cancel(server, running)
    assert answer.status_code == 200 and answer.json()["status"] == "cancelled"
    # The batch ends; the job stays cancelled, with no result, and the next job runs.
    later = submit(server, "later")
    wait_for(lambda: finished(server, later), timeout=60)
    assert job(server, running).json() == {"job_id": running, "status": "cancelled", "attempts": 1}


def test_cancelling_a_finished_job_gets_409_and_an_unknown_one_404(server: Server) -> None:
    done = submit(server, "quick")
    wait_for(lambda: finished(server, done), timeout=60)
    refused = cancel(server, done)
    assert refused.status_code == 409
    assert (
        refused.json()["detail"] == f"job {done!r} has already succeeded: only a queued or running job can be cancelled"
    )
    assert job(server, done).json()["status"] == "succeeded"
    unknown = cancel(server, "0" * 32)
    assert unknown.status_code == 404 and "unknown job" in unknown.json()["detail"]


def test_the_client_cancels_and_says_409_for_a_finished_job(server: Server, folder: Path) -> None:
    with Client(server.url) as client:
        holder = client.submit({"text": "sleep:2 client hold"})
        wait_for(lambda: "sleep:2 client hold" in seen(folder), timeout=30)
        client.submit({"text": "client ahead"})  # claimed: the second job in flight
        queued = client.submit({"text": "client never"})
        cancelled = client.cancel(queued)
        assert (cancelled["status"], cancelled["attempts"]) == ("cancelled", 0)
        assert client.result(holder)["status"] == "succeeded"
        with pytest.raises(ClientError) as refused:
            client.cancel(holder)
        assert refused.value.status_code == 409
    assert "client never" not in seen(folder)


def test_a_cancel_survives_a_sigkill_and_the_restarted_server_does_not_run_the_job(serve: Any, tmp_path: Path) -> None:
    store = tmp_path / "jobs.sqlite3"
    server = start(serve, tmp_path, store)
    holder = submit(server, "sleep:3 before the kill")
    wait_for(lambda: "sleep:3 before the kill" in seen(tmp_path), timeout=30)
    cancelled = [submit(server, f"killed {i}") for i in range(3)]
    kept = submit(server, "kept")
    for job_id in cancelled:
        assert cancel(server, job_id).status_code == 200
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)

    restarted = start(serve, tmp_path, store)
    assert wait_for(lambda: finished(restarted, kept), timeout=60)["status"] == "succeeded"
    wait_for(lambda: finished(restarted, holder), timeout=60)  # resumed: it was running at the kill
    for job_id in cancelled:
        assert job(restarted, job_id).json()["status"] == "cancelled"
    assert not [text for text in seen(tmp_path) if text.startswith("killed")]
    assert restarted.health()["jobs"]["pending"] == 0
