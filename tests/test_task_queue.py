"""`modalkit.task_queue`, ModalKit's import path: backends, the registry, and a user's backend chosen in YAML."""

from __future__ import annotations

import asyncio
import json
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from modalkit.config import ModalConfig
from modalkit.config.schema import QueueConfig
from modalkit.exceptions import BackendError, ConfigError, ModalkitError, TypeValidationError
from modalkit.sinks import MemorySink, deliver, make_sink, registry
from modalkit.sinks.backend import BackendSink
from modalkit.task_queue import (
    InMemoryBackend,
    TaskiqBackend,
    create_backend,
    register_backend,
    send_response_queue,
)
from tests.conftest import APPS, wait_for


class Recorder:
    """A user's backend: keeps what it was sent, and the thread and loop it ran on."""

    def __init__(self, broker_url: str | None = None) -> None:
        self.broker_url = broker_url
        self.sent: list[tuple[str, str]] = []
        self.loops: set[int] = set()

    async def send_message(self, queue_name: str, message: str) -> bool:
        self.loops.add(id(asyncio.get_running_loop()))
        self.sent.append((queue_name, message))
        return True


class Refusing:
    """Refuses the first `refusals` messages by returning False, as ModalKit backends report failure."""

    def __init__(self, refusals: int) -> None:
        self.refusals = refusals
        self.accepted: list[str] = []

    async def send_message(self, queue_name: str, message: str) -> bool:
        if self.refusals:
            self.refusals -= 1
            return False
        self.accepted.append(message)
        return True


class Bare:
    async def send_message(self, queue_name: str, message: str) -> bool:
        return True


@pytest.fixture(autouse=True)
def forget_registered_backends(monkeypatch: pytest.MonkeyPatch) -> None:
    """Names registered by a test are forgotten after it."""
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))


@pytest.fixture
def sinks() -> Iterator[list[Any]]:
    made: list[Any] = []
    yield made
    for sink in made:
        sink.close()


def test_a_registered_backend_is_chosen_by_its_yaml_name(tmp_path: Path, sinks: list[Any]) -> None:
    name = f"recorder-{uuid.uuid4().hex[:8]}"
    register_backend(name, Recorder)
    (tmp_path / "modalkit.yaml").write_text(
        f"app_settings:\n  queue_config:\n    backend: {name}\n    broker_url: memory://\n"
    )
    sink = make_sink(ModalConfig(tmp_path / "modalkit.yaml").app_settings.queue_config)
    sinks.append(sink)
    assert isinstance(sink, BackendSink) and isinstance(sink.backend, Recorder)
    assert sink.backend.broker_url == "memory://"  # keys of the queue config that its __init__ takes
    threads = [threading.Thread(target=sink.push, args=("done", {"n": n})) for n in range(5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(json.loads(m)["n"] for q, m in sink.backend.sent if q == "done") == [0, 1, 2, 3, 4]
    assert len(sink.backend.loops) == 1  # one long-lived loop, whatever thread pushed


def test_a_backend_that_returns_false_is_retried_by_deliver(sinks: list[Any]) -> None:
    backend = Refusing(refusals=2)
    sink = make_sink(QueueConfig(), backend=backend)
    sinks.append(sink)
    assert deliver(sink, "q", {"n": 1}, attempts=3, first_delay=0.001)
    assert backend.accepted == ['{"n": 1}']
    with pytest.raises(BackendError, match=r"Refusing.send_message refused the message for queue 'q'"):
        make_sink(QueueConfig(), backend=Refusing(refusals=1)).push("q", {"n": 2})


def test_a_backend_that_raises_or_hangs_fails_the_push(sinks: list[Any]) -> None:
    class Broken:
        async def send_message(self, queue_name: str, message: str) -> bool:
            raise ConnectionError("broker down")

    class Hanging:
        async def send_message(self, queue_name: str, message: str) -> bool:
            await asyncio.sleep(60)
            return True

    broken = make_sink(QueueConfig(), backend=Broken())
    hanging = BackendSink(Hanging(), timeout=0.05)
    sinks += [broken, hanging]
    assert not deliver(broken, "q", {"n": 1}, attempts=2, first_delay=0.001)
    with pytest.raises(TimeoutError):
        hanging.push("q", {"n": 1})


def test_an_injected_backend_wins_over_the_config(sinks: list[Any]) -> None:
    backend = Recorder()
    sink = make_sink(QueueConfig(backend="redis"), backend=backend)
    sinks.append(sink)
    sink.push("q", {"a": 1})
    assert backend.sent == [("q", '{"a": 1}')]
    with pytest.raises(TypeValidationError, match="no send_message"):
        make_sink(QueueConfig(), backend=object())


def test_a_registered_name_wins_over_a_builtin(sinks: list[Any]) -> None:
    name = f"memory-{uuid.uuid4().hex[:8]}"
    assert isinstance(make_sink(QueueConfig(backend="memory")), MemorySink)
    register_backend(name, Bare)
    sinks.append(make_sink(QueueConfig(backend=name)))
    assert isinstance(sinks[-1].backend, Bare)  # a class that takes no keyword arguments


def test_an_unknown_backend_names_the_key_and_how_to_register() -> None:
    register_backend("listed-backend", Bare)
    with pytest.raises(ConfigError) as caught:
        make_sink(QueueConfig(backend="kafka"))
    message = str(caught.value)
    assert "app_settings.queue_config.backend: unknown backend 'kafka'" in message
    assert "memory, redis, modal, taskiq, sqs" in message and "listed-backend" in message
    assert "modalkit.task_queue.register_backend(name, cls)" in message


def test_a_registered_backend_that_cannot_be_built_is_a_config_error() -> None:
    class NeedsToken:
        def __init__(self, token: str) -> None:
            self.token = token

        async def send_message(self, queue_name: str, message: str) -> bool:
            return True

    register_backend("needs-token", NeedsToken)
    with pytest.raises(ConfigError, match=r"cannot create the registered backend 'needs-token' \(.*NeedsToken\)"):
        make_sink(QueueConfig(backend="needs-token"))
    with pytest.raises(TypeValidationError, match="no send_message"):
        register_backend("nothing", object)


def test_create_backend_as_modalkit_did() -> None:
    dump = QueueConfig(backend="sqs").model_dump()
    memory = create_backend("memory", **dump)  # every key of the config: a class takes the ones it names
    assert isinstance(memory, InMemoryBackend)
    assert asyncio.run(memory.send_message("q", '{"x": 1}'))
    assert memory.messages["q"] == ['{"x": 1}']
    with pytest.raises(TypeValidationError):
        asyncio.run(memory.send_message("q", {"x": 1}))  # type: ignore[arg-type]
    with pytest.raises(BackendError, match=r"unknown queue backend 'nope'.*register_backend") as caught:
        create_backend("nope")
    assert isinstance(caught.value, ValueError) and isinstance(caught.value, ModalkitError)
    taskiq = create_backend("taskiq", **QueueConfig(backend="taskiq", broker_url="memory://").model_dump())
    assert isinstance(taskiq, TaskiqBackend) and taskiq.broker_url == "memory://"


def test_send_response_queue_uses_the_apps_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_client: Any
) -> None:
    queue = f"srq-{uuid.uuid4().hex}"
    (tmp_path / "modalkit.yaml").write_text(
        f"app_settings:\n  queue_config:\n    backend: redis\n    redis_url: {redis_url}\n"
    )
    monkeypatch.chdir(tmp_path)
    try:
        assert send_response_queue(queue, json.dumps({"status": "success"}))
        assert [json.loads(m) for m in redis_client.lrange(queue, 0, -1)] == [{"status": "success"}]
    finally:
        redis_client.delete(queue)
    with pytest.raises(TypeValidationError):
        send_response_queue(queue, {"status": "success"})  # type: ignore[arg-type]


def test_a_served_app_pushes_results_to_its_registered_backend(serve: Any, tmp_path: Path) -> None:
    received = tmp_path / "queue.jsonl"
    server = serve(APPS / "custom_queue_app.py", APPS / "custom_queue.yaml", env={"CUSTOM_QUEUE_FILE": str(received)})
    body = {"message": {"text": "hi"}, "success_queue": "done", "meta": {"n": 7}}
    accepted = httpx.post(f"{server.url}/predict_async", json=body, timeout=30)
    assert accepted.status_code == 202
    line = wait_for(lambda: received.exists() and received.read_text().strip(), timeout=30)
    sent = json.loads(line)
    assert sent["queue"] == "done"
    assert sent["message"]["meta"] == {"n": 7} and "HI" in json.dumps(sent["message"])
