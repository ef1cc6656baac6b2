"""Budgets around async jobs: allowed queue names, meta size, the job store's rows and bytes, and deliveries that
fail for good or hang without holding up the others."""

from __future__ import annotations

import asyncio
import json
import math
import sqlite3
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from botocore.exceptions import ClientError

from modalkit.config.schema import QueueConfig
from modalkit.exceptions import DeliveryRefused
from modalkit.jobs import AsyncRequest
from modalkit.runtime.local.delivery import Deliveries
from modalkit.runtime.local.job_store import JobStore
from modalkit.sinks import MemorySink, deliver, queue_allowed
from modalkit.sinks.failures import permanent_reason
from tests.conftest import APPS, Server, wait_for

ECHO, ECHO_CONFIG = APPS / "echo_app.py", APPS / "echo.yaml"
QUEUE_ENV = "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__"


def redis_env(redis_url: str, **extra: str) -> dict[str, str]:
    return {f"{QUEUE_ENV}BACKEND": "redis", f"{QUEUE_ENV}REDIS_URL": redis_url, **extra}


async def submit_all(url: str, bodies: list[Any]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/predict_async", json=b) for b in bodies))


def post(server: Server, body: Any = None, content: bytes | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    return httpx.post(f"{server.url}/predict_async", json=body, content=content, headers=headers, timeout=30)


def status(server: Server, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{server.url}/predict_async/{job_id}", timeout=10).json()  # type: ignore[no-any-return]


def store_stats(server: Server) -> dict[str, int]:
    return httpx.get(f"{server.url}/stats", timeout=10).json()["job_store"]  # type: ignore[no-any-return]


# --- deliveries -------------------------------------------------------------------------------------------------


def test_a_wrong_type_key_fails_its_deliveries_for_good_and_holds_up_no_other(
    serve, redis_url: str, redis_client
) -> None:
    bad, good = f"string-{uuid.uuid4().hex}", f"ok-{uuid.uuid4().hex}"
    redis_client.set(bad, "a string, not a list")
    server = serve(ECHO, ECHO_CONFIG, env=redis_env(redis_url))
    try:
        wrong = asyncio.run(submit_all(server.url, [{"message": {"text": f"b{i}"}, "success_queue": bad}
                                                     for i in range(300)]))  # fmt: skip
        started = time.monotonic()
        legit = asyncio.run(submit_all(server.url, [{"message": {"text": f"g{i}"}, "success_queue": good}
                                                     for i in range(10)]))  # fmt: skip
        assert {r.status_code for r in wrong + legit} == {202}

        wait_for(lambda: redis_client.llen(good) == 10, timeout=15, interval=0.05)
        took = time.monotonic() - started
        delivered = {json.loads(m)["job_id"] for m in redis_client.lrange(good, 0, -1)}
        assert delivered == {r.json()["job_id"] for r in legit}
        assert took < 10, f"the legitimate results took {took:.1f} s"

        wrong_ids = [r.json()["job_id"] for r in wrong]
        wait_for(lambda: server.health()["deliveries"].get("failed") == 300, timeout=30, interval=0.2)
        for job_id in wrong_ids[::30]:
            answer = status(server, job_id)
            assert answer["status"] == "succeeded"  # the job did its work; only its push failed
            assert answer["delivery"]["state"] == "failed"
            assert answer["delivery"]["attempts"] == 1  # refused for good: never retried
            assert "WRONGTYPE" in answer["delivery"]["error"]
        assert status(server, legit[0].json()["job_id"])["delivery"] == {"state": "delivered", "queue": good,
                                                                         "attempts": 1}  # fmt: skip
        assert redis_client.get(bad) == "a string, not a list"
        assert "failed for good" in server.log.read_text()
    finally:
        redis_client.delete(bad, good)


class SlowAndFast:
    """A sink whose queue "slow" takes a second per push (a queue behind a dying network) and "fast" takes none."""

    def __init__(self) -> None:
        self.fast: list[float] = []

    def push(self, queue: str, message: dict[str, Any]) -> None:
        if queue == "slow":
            time.sleep(1.0)
        else:
            self.fast.append(time.monotonic())


def finished_job(store: JobStore, job_id: str, queue: str, ttl: int = 60, outcome: Any = None) -> None:
    store.insert(job_id, "echo", '{"text": "x"}', AsyncRequest(None, queue, queue))
    store.claim(job_id)
    store.finish(job_id, "succeeded", outcome if outcome is not None else {"text": "x"}, ttl, deliver=True)


async def until(condition: Any, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"condition not met within {timeout}s")
        await asyncio.sleep(0.02)


def test_a_slow_queue_holds_at_most_half_the_delivery_workers(tmp_path: Path) -> None:
    store, sink = JobStore(tmp_path / "jobs.sqlite3"), SlowAndFast()
    for i in range(20):
        finished_job(store, f"slow{i}", "slow")
    for i in range(5):
        finished_job(store, f"fast{i}", "fast")

    async def run() -> float:
        deliveries = Deliveries(store, sink, QueueConfig(delivery_workers=4))
        started = time.monotonic()
        deliveries.start()
        try:
            await until(lambda: len(sink.fast) == 5, timeout=5)
            return max(sink.fast) - started
        finally:
            await deliveries.stop()

    # 20 slow pushes on 4 workers would take 5 s; the fast queue keeps two workers to itself.
    assert asyncio.run(run()) < 0.5


class Down:
    def __init__(self) -> None:
        self.tries = 0

    def push(self, queue: str, message: dict[str, Any]) -> None:
        self.tries += 1
        raise ConnectionError("connection refused")


def test_a_transient_failure_is_retried_with_backoff_until_the_result_expires(tmp_path: Path) -> None:
    store, sink = JobStore(tmp_path / "jobs.sqlite3"), Down()
    finished_job(store, "j", "q", ttl=2)

    async def run() -> None:
        deliveries = Deliveries(store, sink, QueueConfig())
        deliveries.start()
        try:
            await until(lambda: (store.get("j") or pytest.fail("purged")).delivery == "failed", timeout=5)
            assert deliveries.backlog == 0
        finally:
            await deliveries.stop()

    asyncio.run(run())
    job = store.get("j")
    assert job is not None and job.delivery_error is not None
    assert "expired after" in job.delivery_error and "connection refused" in job.delivery_error
    # 0.2 s, 0.4 s, 0.8 s, then the last try when the result expires: a handful of tries, not a busy loop.
    assert 3 <= sink.tries <= 6 and job.delivery_attempts == sink.tries


def test_nan_is_never_pushed(tmp_path: Path) -> None:
    store, sink = JobStore(tmp_path / "jobs.sqlite3"), MemorySink()
    finished_job(store, "nan", "q", outcome={"score": math.nan})
    finished_job(store, "fine", "q", outcome={"score": 0.5})

    async def run() -> None:
        deliveries = Deliveries(store, sink, QueueConfig())
        deliveries.start()
        try:
            await until(lambda: deliveries.backlog == 0, timeout=5)
        finally:
            await deliveries.stop()

    asyncio.run(run())
    assert [m["job_id"] for m in sink.queues["q"]] == ["fine"]
    view = store.view("nan")
    assert view is not None and view.delivery is not None
    assert view.delivery.state == "failed" and view.delivery.error is not None and "not JSON" in view.delivery.error


def test_which_push_failures_are_for_good() -> None:
    def aws(code: str, status: int) -> ClientError:
        return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "SendMessage")

    import redis

    assert permanent_reason(DeliveryRefused("no")) == "no"
    assert permanent_reason(redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"))
    assert permanent_reason(aws("InvalidParameterValue", 400))  # SQS: message must be shorter than 262144 bytes
    for transient in (
        redis.ConnectionError("refused"),
        redis.ResponseError("OOM command not allowed when used memory > 'maxmemory'"),
        aws("AWS.SimpleQueueService.RequestThrottled", 400),
        aws("InternalError", 500),
        TimeoutError(),
    ):
        assert permanent_reason(transient) is None, transient


class Refusing:
    def __init__(self) -> None:
        self.tries = 0

    def push(self, queue: str, message: dict[str, Any]) -> None:
        self.tries += 1
        raise DeliveryRefused("the queue will never take it")


def test_deliver_on_modal_stops_at_a_push_that_can_never_succeed() -> None:
    sink = Refusing()
    assert not deliver(sink, "q", {"n": 1}, attempts=5, first_delay=0.001)
    assert sink.tries == 1


# --- what a client may ask ----------------------------------------------------------------------------------------


def test_allowed_queue_names() -> None:
    assert queue_allowed("anything", ["*"])
    assert queue_allowed("results-7", ["results-*", "audit"]) and queue_allowed("audit", ["results-*", "audit"])
    assert not queue_allowed("audit-2", ["results-*", "audit"]) and not queue_allowed("results", ["results-*"])
    assert not queue_allowed("q", [])


def test_queue_names_outside_allowed_queues_get_422(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={f"{QUEUE_ENV}ALLOWED_QUEUES": '["results-*", "audit"]'})
    for body in (
        {"message": {"text": "x"}, "success_queue": "results-1", "failure_queue": "audit"},
        {"message": {"text": "x"}, "success_queue": "", "failure_queue": ""},  # "" is no queue
        {"text": "x"},
    ):
        assert post(server, body).status_code == 202, body
    refused = post(server, {"message": {"text": "x"}, "success_queue": "session:1234", "failure_queue": "audit2"})
    assert refused.status_code == 422
    detail = refused.json()["detail"]
    assert [d["loc"] for d in detail] == [["body", "success_queue"], ["body", "failure_queue"]]
    assert {d["type"] for d in detail} == {"queue_not_allowed"}
    assert "allowed_queues" in detail[0]["msg"] and "'session:1234'" in detail[0]["msg"]


def test_a_large_meta_gets_413_and_nan_gets_422(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={"MODALKIT_APP_SETTINGS__LIMITS__MAX_META_BYTES": "1024"})
    assert post(server, {"message": {"text": "x"}, "meta": {"note": "m" * 900}}).status_code == 202
    large = post(server, {"message": {"text": "x"}, "meta": {"note": "m" * 2000}})
    assert large.status_code == 413
    assert "meta" in large.json()["detail"] and "limits.max_meta_bytes" in large.json()["detail"]
    # Large enough to be parsed in the parsing thread (limits.parse_in_thread_bytes): the same answer.
    huge = post(server, {"message": {"text": "x"}, "meta": {"values": list(range(200_000))}})
    assert huge.status_code == 413

    for raw in (
        b'{"message": {"text": "x"}, "meta": {"score": NaN}}',
        b'{"message": {"text": "x"}, "meta": {"score": Infinity}}',
        b'{"message": {"text": "x"}, "meta": {"scores": [1, -Infinity]}}',
        b'{"message": {"text": "x", "weight": NaN}}',
    ):
        answer = post(server, content=raw)
        assert answer.status_code == 422, raw
        assert answer.json()["detail"][0]["loc"] == ["body"]


# --- the job store's budget ---------------------------------------------------------------------------------------


def test_a_full_store_refuses_jobs_with_507_until_results_expire(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={f"{QUEUE_ENV}MAX_STORE_ROWS": "100", f"{QUEUE_ENV}RESULT_TTL_SECONDS": "3"})
    accepted = asyncio.run(submit_all(server.url, [{"text": f"{i}"} for i in range(100)]))
    assert {r.status_code for r in accepted} == {202}
    full = post(server, {"text": "one too many"})
    assert full.status_code == 507
    assert "max_store_rows" in full.json()["detail"] and "result_ttl_seconds" in full.json()["detail"]
    assert 1 <= int(full.headers["retry-after"]) <= 5
    assert store_stats(server)["rows"] == 100

    # The results expire 3 s after they finish; the sweeper deletes them and the store takes jobs again.
    wait_for(lambda: post(server, {"text": "room again"}).status_code == 202, timeout=15, interval=0.25)
    wait_for(lambda: store_stats(server)["rows"] <= 1, timeout=10)
    assert httpx.get(f"{server.url}/predict_async/{accepted[0].json()['job_id']}", timeout=10).status_code == 404


def test_the_byte_budget_bounds_the_store_on_disk(serve) -> None:
    budget = 2 * 1024 * 1024
    server = serve(ECHO, ECHO_CONFIG, env={f"{QUEUE_ENV}MAX_STORE_BYTES": str(budget),
                                           f"{QUEUE_ENV}RESULT_TTL_SECONDS": "2"})  # fmt: skip
    answers = []
    for i in range(10):  # one at a time, each finished before the next: each stores 200 kB of input and of result
        answers.append(post(server, {"text": f"{i} " + "x" * 200_000}))
        if answers[-1].status_code != 202:
            break
        wait_for(lambda: status(server, answers[-1].json()["job_id"])["status"] == "succeeded")
    assert [a.status_code for a in answers] == [202] * 5 + [507]
    assert "max_store_bytes" in answers[-1].json()["detail"]
    stats = store_stats(server)
    assert budget - 400_000 < stats["bytes"] <= budget and stats["max_bytes"] == budget

    wait_for(lambda: post(server, {"text": "room again"}).status_code == 202, timeout=15, interval=0.25)
    # Swept and given back to the file system: the file shrinks, not only the pages in use.
    wait_for(lambda: store_stats(server)["file_bytes"] < budget / 2, timeout=15, interval=0.25)


def test_stats_and_health_show_the_job_store(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG)
    before = store_stats(server)
    assert set(before) == {"rows", "bytes", "file_bytes", "max_rows", "max_bytes"}
    assert (before["max_rows"], before["max_bytes"]) == (100_000, 1024**3)
    job_id = post(server, {"text": "y" * 50_000}).json()["job_id"]
    wait_for(lambda: status(server, job_id)["status"] == "succeeded")
    after = store_stats(server)
    assert after["rows"] == before["rows"] + 1 and after["bytes"] >= before["bytes"] + 90_000
    assert server.health()["job_store"]["rows"] == after["rows"]
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    assert f"modalkit_job_store_rows {float(after['rows'])}" in metrics


# --- the store itself -----------------------------------------------------------------------------------------------


def test_purged_jobs_give_their_space_back_to_the_file_system(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for i in range(10):
        store.insert(f"j{i}", "echo", json.dumps({"text": "x" * 1_000_000}), AsyncRequest(None))
        store.claim(f"j{i}")
        store.finish(f"j{i}", "succeeded", {"text": "y" * 100_000}, ttl_seconds=-1, deliver=False)
    full = store.usage()
    assert full.rows == 10 and full.bytes > 10_000_000
    assert store.purge_expired(limit=4) == 4 and store.purge_expired() == 6
    while store.reclaim(256):
        pass
    empty = store.usage()
    assert empty.rows == 0 and empty.bytes < 100_000 and empty.file_bytes < 200_000


def test_a_failed_delivery_keeps_its_job_no_longer_than_its_time_to_live(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    for job_id in ("refused", "owed", "delivered"):
        finished_job(store, job_id, "q", ttl=-1)
    store.delivery_failed("refused", "Redis refused the push: WRONGTYPE")
    store.delivered("delivered")
    assert store.purge_expired() == 2
    assert store.undelivered() == ["owed"]  # still owed: kept until its push succeeds or is given up


def test_a_store_from_before_delivery_states_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE jobs (id TEXT PRIMARY KEY, model_name TEXT NOT NULL, status TEXT NOT NULL, payload TEXT NOT"
            " NULL, success_queue TEXT, failure_queue TEXT, meta TEXT, trace_context TEXT, attempts INTEGER NOT NULL"
            " DEFAULT 0, suspect INTEGER NOT NULL DEFAULT 0, result TEXT, error TEXT, delivery_pending INTEGER NOT"
            " NULL DEFAULT 0, created_at REAL NOT NULL, finished_at REAL, expires_at REAL)"
        )
        db.execute(
            "INSERT INTO jobs (id, model_name, status, payload, success_queue, result, delivery_pending, created_at,"
            " expires_at) VALUES ('old', 'echo', 'succeeded', '{}', 'q', '{}', 1, 0, 1e12)"
        )
    store = JobStore(path)
    assert store.owed() == [("old", "q")]
    assert store.usage().rows == 1
    store.close()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental from now on


def test_deliveries_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite3"
    store = JobStore(path)
    finished_job(store, "owed", "q")
    store.close()
    reopened, sink = JobStore(path), MemorySink()

    async def run() -> None:
        deliveries = Deliveries(reopened, sink, QueueConfig())
        deliveries.start()
        try:
            await until(lambda: reopened.undelivered() == [], timeout=5)
        finally:
            await deliveries.stop()

    asyncio.run(run())
    assert [m["job_id"] for m in sink.queues["q"]] == ["owed"]
