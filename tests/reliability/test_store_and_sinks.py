"""Faults around async jobs: a Redis that goes away and comes back, and a job store whose disk fills up."""

from __future__ import annotations

import json
import shutil
import sqlite3
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.conftest import APPS, free_port, wait_for

ECHO, ECHO_CONFIG = APPS / "echo_app.py", APPS / "echo.yaml"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def start_redis(port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [REDIS_SERVER, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    client = redis.Redis(port=port, socket_connect_timeout=0.5)
    wait_for(lambda: _pings(client), timeout=10)
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False


def test_results_reach_redis_after_it_comes_back(serve) -> None:
    port = free_port()
    private = start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    server = serve(ECHO, ECHO_CONFIG, env={"MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND": "redis",
                                           "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__REDIS_URL": url})  # fmt: skip
    queue = f"ok-{uuid.uuid4().hex}"
    try:
        private.kill()
        private.wait()
        job_ids = [
            httpx.post(
                f"{server.url}/predict_async", json={"message": {"text": f"j{i}"}, "success_queue": queue}, timeout=10
            ).json()["job_id"]
            for i in range(10)
        ]
        # Redis is down: the results are stored, readable, and their delivery is pending.
        wait_for(lambda: server.health()["jobs"].get("succeeded") == 10, timeout=30)
        assert httpx.get(f"{server.url}/predict_async/{job_ids[0]}", timeout=10).json()["result"]["text"] == "j0"
        private = start_redis(port)
        client = redis.Redis(port=port, decode_responses=True)
        wait_for(lambda: client.llen(queue) >= 10, timeout=60, interval=0.5)
        delivered = {json.loads(m)["job_id"] for m in client.lrange(queue, 0, -1)}
        assert delivered == set(job_ids)
    finally:
        private.kill()
        private.wait()


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=384k", "tmpfs", str(mount_point)], check=True)
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_full_disk_gives_503_and_leaves_the_store_intact(serve, tiny_disk: Path) -> None:
    store = tiny_disk / "jobs.sqlite3"
    server = serve(ECHO, ECHO_CONFIG, env={"MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(store),
                                           "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__MAX_PENDING": "100000"})  # fmt: skip
    accepted: list[str] = []
    refused = None
    with httpx.Client(base_url=server.url, timeout=10) as client:
        for i in range(5000):
            answer = client.post("/predict_async", json={"text": f"{i} " + "x" * 2000})
            if answer.status_code != 202:
                refused = answer
                break
            accepted.append(answer.json()["job_id"])
    assert refused is not None, "the disk never filled up"
    assert refused.status_code == 503 and "job store" in refused.json()["detail"]
    assert refused.headers["retry-after"]
    assert httpx.get(f"{server.url}/predict_async/{accepted[0]}", timeout=10).status_code in (200, 202)
    assert httpx.get(f"{server.url}/health", timeout=10).status_code == 200

    server.process.terminate()
    server.process.wait(timeout=60)
    with sqlite3.connect(store) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        stored = {row[0] for row in db.execute("SELECT id FROM jobs")}
    assert set(accepted) <= stored  # every job answered 202 is in the store
