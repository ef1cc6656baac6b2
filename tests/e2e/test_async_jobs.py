"""Acceptance: async jobs are durable, resumed after a SIGKILL, pushed to Redis, and poisoned jobs end failed."""

from __future__ import annotations

import asyncio
import json
import math
import os
import signal
import sqlite3
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.conftest import APPS, ROOT, Server, wait_for

ECHO, ECHO_CONFIG = APPS / "echo_app.py", APPS / "echo.yaml"


def redis_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {
        "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND": "redis",
        "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__REDIS_URL": redis_url,
        **extra,
    }


async def submit_all(url: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/predict_async", json=b) for b in bodies))


def job(server: Server, job_id: str) -> httpx.Response:
    return httpx.get(f"{server.url}/predict_async/{job_id}", timeout=10)


def all_finished(server: Server, job_ids: list[str]) -> dict[str, dict[str, Any]] | None:
    answers = {}
    for job_id in job_ids:
        response = job(server, job_id)
        if response.status_code != 200:
            return None
        answers[job_id] = response.json()
    return answers


def test_200_jobs_succeed_with_embeddings_and_reach_the_redis_queue(serve, redis_url: str, redis_client) -> None:
    queue = f"ok-{uuid.uuid4().hex}"
    server = serve(ROOT / "examples/minilm/app.py", env=redis_env(redis_url))
    bodies = [
        {"message": {"text": f"job {i}: a sentence about the weather"}, "success_queue": queue, "meta": {"n": i}}
        for i in range(200)
    ]
    accepted = asyncio.run(submit_all(server.url, bodies))
    assert {r.status_code for r in accepted} == {202}
    job_ids = [r.json()["job_id"] for r in accepted]
    assert len(set(job_ids)) == 200 and all(len(j) == 32 for j in job_ids)

    answers = wait_for(lambda: all_finished(server, job_ids), timeout=120, interval=0.5)
    reference = httpx.post(f"{server.url}/predict", json=bodies[7]["message"], timeout=30).json()["embedding"]
    for index, job_id in enumerate(job_ids):
        answer = answers[job_id]
        assert answer["status"] == "succeeded"
        embedding = answer["result"]["embedding"]
        assert len(embedding) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in embedding)), 1.0, abs_tol=1e-4)
        if index == 7:
            assert sum(a * b for a, b in zip(embedding, reference, strict=True)) > 0.9999

    wait_for(lambda: redis_client.llen(queue) >= 200, timeout=30)
    messages = [json.loads(m) for m in redis_client.lrange(queue, 0, -1)]
    by_job = {m["job_id"]: m for m in messages}
    assert set(by_job) == set(job_ids)
    for index, job_id in enumerate(job_ids):
        assert by_job[job_id]["meta"] == {"n": index}
        assert by_job[job_id]["result"] == answers[job_id]["result"]
    redis_client.delete(queue)


def test_sigkilled_server_resumes_every_accepted_job_exactly_once(serve, tmp_path: Path) -> None:
    store = tmp_path / "jobs.sqlite3"
    env = {"MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(store)}
    server = serve(ECHO, ECHO_CONFIG, env=env)
    accepted = asyncio.run(submit_all(server.url, [{"text": f"sleep:0.1 #{i}"} for i in range(80)]))
    assert {r.status_code for r in accepted} == {202}
    job_ids = [r.json()["job_id"] for r in accepted]

    # Kill it once some jobs are done and the rest are queued or running.
    wait_for(lambda: server.health()["jobs"].get("succeeded", 0) >= 8)
    assert server.health()["jobs"]["pending"] >= 40
    os.kill(server.process.pid, signal.SIGKILL)
    server.process.wait(timeout=10)

    restarted = serve(ECHO, ECHO_CONFIG, env=env)
    answers = wait_for(lambda: all_finished(restarted, job_ids), timeout=120, interval=0.5)
    assert {a["status"] for a in answers.values()} == {"succeeded"}
    assert [answers[j]["result"]["text"] for j in job_ids] == [f"sleep:0.1 #{i}" for i in range(80)]

    with sqlite3.connect(store) as db:
        rows = db.execute("SELECT id, status FROM jobs").fetchall()
    assert sorted(rows) == sorted((j, "succeeded") for j in job_ids)


def test_http_contract_of_async_jobs(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={"MODALKIT_APP_SETTINGS__QUEUE_CONFIG__MAX_PENDING": "2"})
    assert job(server, "f" * 32).status_code == 404

    malformed = httpx.post(f"{server.url}/predict_async", json={"message": {"txt": "x"}}, timeout=10)
    assert malformed.status_code == 422
    assert malformed.json()["detail"][0]["loc"] == ["body", "message", "text"]
    bad_queue = httpx.post(
        f"{server.url}/predict_async", json={"message": {"text": "x"}, "success_queue": "no spaces"}, timeout=10
    )
    assert bad_queue.status_code == 422
    assert bad_queue.json()["detail"][0]["loc"] == ["body", "success_queue"]

    slow = [httpx.post(f"{server.url}/predict_async", json={"text": "sleep:1.5"}, timeout=10) for _ in range(2)]
    assert [r.status_code for r in slow] == [202, 202]
    pending = job(server, slow[0].json()["job_id"])
    assert pending.status_code == 202
    assert pending.json()["status"] in ("queued", "running")

    full = httpx.post(f"{server.url}/predict_async", json={"text": "one too many"}, timeout=10)
    assert full.status_code == 429
    assert int(full.headers["retry-after"]) >= 1
    assert "max_pending" in full.json()["detail"]

    done = wait_for(lambda: all_finished(server, [r.json()["job_id"] for r in slow]), timeout=30)
    assert {a["status"] for a in done.values()} == {"succeeded"}
    assert httpx.post(f"{server.url}/predict_async", json={"text": "room again"}, timeout=10).status_code == 202


def test_poisoned_job_fails_after_max_attempts_while_its_batch_mates_succeed(
    serve, redis_url: str, redis_client
) -> None:
    ok_queue, failed_queue = f"ok-{uuid.uuid4().hex}", f"failed-{uuid.uuid4().hex}"
    server = serve(ECHO, ECHO_CONFIG, env=redis_env(redis_url))
    texts = ["before", "sleep:0.2", "cuda", "after", "also fine"]
    bodies = [{"message": {"text": t}, "success_queue": ok_queue, "failure_queue": failed_queue} for t in texts]
    accepted = asyncio.run(submit_all(server.url, bodies))
    job_ids = [r.json()["job_id"] for r in accepted]

    answers = wait_for(lambda: all_finished(server, job_ids), timeout=120, interval=0.3)
    poisoned = answers[job_ids[2]]
    assert poisoned["status"] == "failed"
    assert poisoned["attempts"] == 3
    assert poisoned["error"]["status_code"] == 503
    assert "CUDA error" in poisoned["error"]["detail"]
    for index in (0, 1, 3, 4):
        assert answers[job_ids[index]]["status"] == "succeeded"
        assert answers[job_ids[index]]["result"]["text"] == texts[index]

    wait_for(lambda: redis_client.llen(failed_queue) == 1 and redis_client.llen(ok_queue) == 4, timeout=30)
    failure = json.loads(redis_client.lpop(failed_queue))
    assert failure["job_id"] == job_ids[2]
    assert failure["message"] == {"text": "cuda"}
    # One recycled container per attempt of the poisoned job, and none for the others.
    wait_for(lambda: server.model_health("echo")["restarts"].get("cuda") == 3)
    redis_client.delete(ok_queue, failed_queue)
