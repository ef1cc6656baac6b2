"""The taskiq backend: results published through real brokers and received by a real `taskiq worker`."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modalkit.config.schema import QueueConfig
from modalkit.exceptions import ConfigError
from modalkit.sinks import deliver, make_sink
from modalkit.sinks.backend import BackendSink
from modalkit.sinks.taskiq import TaskiqBackend
from tests.conftest import APPS, ROOT, wait_for


@pytest.fixture
def worker(redis_url: str, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """`taskiq worker tests.apps.taskiq_consumer:broker` for a new queue; yields (queue, file of received lines)."""
    queue, received, log = f"results-{uuid.uuid4().hex}", tmp_path / "received.jsonl", tmp_path / "worker.log"
    env = {**os.environ, "TASKIQ_QUEUE": queue, "TASKIQ_BROKER_URL": redis_url, "TASKIQ_RECEIVED": str(received)}
    cmd = [sys.executable, "-m", "taskiq", "worker", "tests.apps.taskiq_consumer:broker", "--workers", "1"]
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield queue, received
    finally:
        os.killpg(process.pid, signal.SIGTERM)  # the worker and the child process it started
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        if process.returncode not in (0, -signal.SIGTERM):
            print(log.read_text()[-3000:])


def lines(path: Path) -> list[Any]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_a_taskiq_worker_receives_each_result_as_json(
    worker: tuple[str, Path], redis_url: str, redis_client: Any
) -> None:
    queue, received = worker
    sink = make_sink(QueueConfig(backend="taskiq", broker_url=redis_url))
    assert isinstance(sink, BackendSink) and isinstance(sink.backend, TaskiqBackend)
    try:
        messages = [{"job_id": f"j{n}", "status": "succeeded", "result": {"n": n}} for n in range(3)]
        for message in messages:  # one broker for the queue, started once, kept across pushes
            assert deliver(sink, queue, message)
        assert len(sink.backend._brokers) == 1
        got = wait_for(lambda: len(lines(received)) == 3 and lines(received), timeout=20)
        assert sorted(got, key=lambda m: m["job_id"]) == messages
    finally:
        sink.close()
        redis_client.delete(queue)


def test_pushes_from_many_threads_all_arrive(redis_url: str, redis_client: Any) -> None:
    from concurrent.futures import ThreadPoolExecutor

    queue = f"threads-{uuid.uuid4().hex}"
    sink = make_sink(QueueConfig(backend="taskiq", broker_url=redis_url))
    try:
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(lambda n: sink.push(queue, {"n": n}), range(40)))
        assert redis_client.llen(queue) == 40  # the list taskiq-redis' ListQueueBroker reads
    finally:
        sink.close()
        redis_client.delete(queue)


def test_the_memory_broker_runs_its_task_in_process() -> None:
    sink = make_sink(QueueConfig(backend="taskiq", broker_url="memory://"))
    assert isinstance(sink, BackendSink) and isinstance(sink.backend, TaskiqBackend)
    backend = sink.backend
    try:
        sink.push("results", {"n": 1})
        assert backend.received["results"] == ['{"n": 1}']
        seen: list[dict[str, Any]] = []

        async def mine(message: str) -> None:
            seen.append(json.loads(message))

        backend.broker("results").register_task(mine, task_name="results")
        sink.push("results", {"n": 2})
        assert seen == [{"n": 2}]
    finally:
        sink.close()


def test_an_unreachable_redis_fails_the_push() -> None:
    sink = make_sink(QueueConfig(backend="taskiq", broker_url="redis://127.0.0.1:1/0"))
    try:
        assert not deliver(sink, "q", {"n": 1}, attempts=2, first_delay=0.01)
    finally:
        sink.close()


def test_a_broker_url_that_taskiq_cannot_use_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"queue_config\.broker_url: 'amqp://x' is not a taskiq broker"):
        make_sink(QueueConfig(backend="taskiq", broker_url="amqp://x"))
    with pytest.raises(ValueError, match="backend taskiq needs broker_url"):
        QueueConfig(backend="taskiq")


def test_missing_taskiq_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "taskiq_redis", None)  # as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'modalkit\[taskiq\]'"):
        make_sink(QueueConfig(backend="taskiq", broker_url="redis://127.0.0.1:6379/15"))


def test_a_served_app_publishes_async_results_to_the_taskiq_worker(
    worker: tuple[str, Path], serve: Any, redis_url: str, redis_client: Any
) -> None:
    queue, received = worker
    env = {
        "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND": "taskiq",
        "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BROKER_URL": redis_url,
    }
    server = serve(APPS / "echo_app.py", APPS / "echo.yaml", env=env)
    try:
        body = {"message": {"text": "hello"}, "success_queue": queue, "meta": {"doc": 42}}
        accepted = httpx.post(f"{server.url}/predict_async", json=body, timeout=30)
        assert accepted.status_code == 202
        (message,) = wait_for(lambda: lines(received), timeout=30)
        assert message["job_id"] == accepted.json()["job_id"]
        assert message["status"] == "succeeded" and message["meta"] == {"doc": 42}
        assert message["result"]["text"] == "hello"
    finally:
        redis_client.delete(queue)
