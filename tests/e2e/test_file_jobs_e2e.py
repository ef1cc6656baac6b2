"""Acceptance: async jobs whose input is a 2 MB file (sent as JSON, and as a multipart upload) survive a SIGKILL of
the server and complete after the restart with the same bytes; their blob files are deleted when results expire."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import sqlite3
from pathlib import Path
from typing import Any

import httpx

from modalkit.runtime.local.job_store import BLOB_THRESHOLD_BYTES
from tests.conftest import APPS, Server, wait_for

FILE_APP = APPS / "file_app.py"
CONFIG = """\
app_settings:
  app_prefix: file-e2e
  deployment_config:
    max_containers: 1
  batch_config:
    max_batch_size: 1
    wait_ms: 5
model_settings:
  model_entries:
    photo: {}
"""


def file_body(data: bytes, label: str, sleep: float = 0.0) -> dict[str, Any]:
    image = {"data": base64.b64encode(data).decode(), "filename": f"{label}.png", "content_type": "image/png"}
    return {"message": {"image": image, "label": label, "sleep": sleep}}


def status(server: Server, job_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/predict_async/{job_id}", timeout=10)


def collect(server: Server, job_ids: list[str], answers: dict[str, Any]) -> bool:
    """Keep each job's answer once it has finished (a result expires later); True once all have."""
    for job_id in job_ids:
        if job_id not in answers:
            response = status(server, job_id)
            if response.status_code == 200:
                answers[job_id] = response.json()
    return len(answers) == len(job_ids)


def test_a_2mb_file_job_survives_a_sigkill_and_completes_after_restart(serve, tmp_path: Path) -> None:
    config = tmp_path / "file.yaml"
    config.write_text(CONFIG)
    store = tmp_path / "jobs.sqlite3"
    blobs = tmp_path / "jobs.sqlite3.blobs"
    env = {
        "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(store),
        "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__RESULT_TTL_SECONDS": "8",
    }
    server = serve(FILE_APP, config, env=env)
    files = {"running": os.urandom(2 * 1024 * 1024), "queued": os.urandom(2 * 1024 * 1024 + 7)}
    sleeps = {"running": 3.0, "queued": 0.0}
    job_ids = {}
    for label, data in files.items():
        if label == "running":  # JSON: the file as base64
            accepted = httpx.post(f"{server.url}/predict_async", json=file_body(data, label, sleeps[label]), timeout=30)
        else:  # a multipart upload: the file as a file part, the other fields as text parts
            form = {"label": label, "sleep": str(sleeps[label])}
            upload = {"image": (f"{label}.png", data, "image/png")}
            accepted = httpx.post(f"{server.url}/predict_async", data=form, files=upload, timeout=30)
        assert accepted.status_code == 202, accepted.text
        job_ids[label] = accepted.json()["job_id"]

    # Both inputs are on disk in binary form, one file each, before the server dies.
    assert sorted(p.name for p in blobs.iterdir()) == sorted(job_ids.values())
    for label, job_id in job_ids.items():
        assert (blobs / job_id).stat().st_size < len(files[label]) + 1024  # bytes, not base64 (4/3 larger)
    wait_for(lambda: status(server, job_ids["running"]).json()["status"] == "running", timeout=60)
    assert status(server, job_ids["queued"]).json()["status"] in ("queued", "running")  # waits behind it
    os.kill(server.process.pid, signal.SIGKILL)  # its containers die with it
    server.process.wait(timeout=10)

    restarted = serve(FILE_APP, config, env=env)  # the same job store
    answers: dict[str, Any] = {}
    wait_for(lambda: collect(restarted, list(job_ids.values()), answers), timeout=90, interval=0.25)
    for label, job_id in job_ids.items():
        answer = answers[job_id]
        assert answer["status"] == "succeeded", answer
        result = answer["result"]
        assert result["length"] == len(files[label])
        assert result["sha256"] == hashlib.sha256(files[label]).hexdigest()
        assert (result["filename"], result["content_type"], result["label"]) == (f"{label}.png", "image/png", label)
    assert answers[job_ids["running"]]["attempts"] == 2  # claimed before the kill, and again after

    # Past result_ttl_seconds the sweeper deletes the rows and their blob files.
    wait_for(lambda: not any(blobs.iterdir()), timeout=30, interval=0.25)
    assert status(restarted, job_ids["queued"]).status_code == 404
    stats = httpx.get(f"{restarted.url}/stats", timeout=10).json()["job_store"]
    assert stats["rows"] == 0 and stats["bytes"] < 2 * 1024 * 1024


def test_a_small_file_job_is_kept_in_its_row(serve, tmp_path: Path) -> None:
    config = tmp_path / "file.yaml"
    config.write_text(CONFIG)
    store = tmp_path / "jobs.sqlite3"
    server = serve(FILE_APP, config, env={"MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(store)})
    data = bytes(range(256)) * 100
    accepted = httpx.post(f"{server.url}/predict_async", json=file_body(data, "small"), timeout=30)
    job_id = accepted.json()["job_id"]
    answer = wait_for(lambda: status(server, job_id).status_code == 200 and status(server, job_id).json(), timeout=60)
    assert answer["result"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert len(data) < BLOB_THRESHOLD_BYTES
    assert not (tmp_path / "jobs.sqlite3.blobs").exists()
    with sqlite3.connect(store) as db:
        (binary,) = db.execute("SELECT payload_binary FROM jobs WHERE id = ?", (job_id,)).fetchone()
    assert data in binary  # the bytes themselves, not their base64
