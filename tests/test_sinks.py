"""Result sinks: Redis for real, retries with backoff, and a push that never raises."""

from __future__ import annotations

import json
import uuid
from typing import Any

from modalkit.config.schema import QueueConfig
from modalkit.sinks import MemorySink, ModalQueueSink, RedisSink, deliver, make_sink


class Flaky:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.pushed: list[dict[str, Any]] = []

    def push(self, queue: str, message: dict[str, Any]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("sink down")
        self.pushed.append(message)


def test_deliver_retries_until_the_sink_accepts() -> None:
    sink = Flaky(failures=2)
    assert deliver(sink, "q", {"n": 1}, attempts=3, first_delay=0.001)
    assert sink.pushed == [{"n": 1}]


def test_deliver_gives_up_without_raising() -> None:
    sink = Flaky(failures=10)
    assert not deliver(sink, "q", {"n": 1}, attempts=2, first_delay=0.001)
    assert sink.pushed == []


def test_redis_sink_appends_json_to_a_list(redis_url: str, redis_client: Any) -> None:
    queue = f"q-{uuid.uuid4().hex}"
    sink = make_sink(QueueConfig(backend="redis", redis_url=redis_url))
    assert isinstance(sink, RedisSink)
    sink.push(queue, {"a": 1})
    sink.push(queue, {"a": 2})
    assert [json.loads(m) for m in redis_client.lrange(queue, 0, -1)] == [{"a": 1}, {"a": 2}]
    redis_client.delete(queue)


def test_memory_sink_is_the_default() -> None:
    sink = make_sink(QueueConfig())
    assert isinstance(sink, MemorySink)
    sink.push("q", {"x": 1})
    assert sink.queues["q"] == [{"x": 1}]


def test_each_builtin_backend_has_its_sink() -> None:
    assert isinstance(make_sink(QueueConfig(backend="modal")), ModalQueueSink)  # nothing is contacted until a push
    assert isinstance(make_sink(QueueConfig(backend="redis")), RedisSink)
    # taskiq and sqs: tests/test_taskiq_sink.py and tests/test_aws.py; registered names: tests/test_task_queue.py
