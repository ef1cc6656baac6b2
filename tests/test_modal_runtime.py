"""The Modal async path offline: the real service class pushes to Redis from `.local()`; spawn and status
are wired through stand-ins at the FunctionCall boundary only (nothing can be spawned without Modal)."""

from __future__ import annotations

import asyncio
import json
import pickle
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import modal
import modal.exception
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from modalkit.app_loader import import_app
from modalkit.config.schema import WebhookConfig
from modalkit.jobs import AsyncRequest
from modalkit.observation import Metered
from modalkit.outcome import Failure
from modalkit.runtime.modal import ModalRuntime
from modalkit.runtime.modal_jobs import JobBook, job_dict, send_and_record
from modalkit.web import create_web_endpoints
from modalkit.web.auth import key_fingerprint
from tests.conftest import APPS
from tests.webhook_receiver import SECRET, receiving


@pytest.fixture
def echo(tmp_path: Path, redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    config = tmp_path / "modal.yaml"
    config.write_text(
        "app_settings:\n  app_prefix: echo-modal\n  batch_config: {max_batch_size: 8, wait_ms: 5}\n"
        f"  queue_config: {{backend: redis, redis_url: '{redis_url}'}}\n"
        "model_settings:\n  model_entries: {echo: {}, shout: {prefix: '!'}}\n"
    )
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    monkeypatch.delitem(sys.modules, "echo_app", raising=False)
    return import_app(APPS / "echo_app.py")


def test_container_pushes_async_results_to_their_queues(echo: Any, redis_client: Any) -> None:
    ok, failed = f"ok-{uuid.uuid4().hex}", f"failed-{uuid.uuid4().hex}"
    batch = [
        AsyncRequest(echo.EchoIn(text="hi"), success_queue=ok, failure_queue=failed, meta={"id": 1}),
        AsyncRequest(echo.EchoIn(text="bad"), success_queue=ok, failure_queue=failed, meta={"id": 2}),
        echo.EchoIn(text="a sync item in the same batch"),
    ]
    results = echo.EchoService(model_name="shout").process_request.local(batch)
    assert results[0].text == "!hi" and isinstance(results[1], Failure) and results[2].text.startswith("!a sync")

    success = json.loads(redis_client.lpop(ok))
    assert (success["status"], success["result"]["text"], success["meta"]) == ("succeeded", "!hi", {"id": 1})
    failure = json.loads(redis_client.lpop(failed))
    assert failure["status"] == "failed" and failure["message"] == {"text": "bad"} and failure["meta"] == {"id": 2}
    assert "cannot echo 'bad'" in failure["error"]["detail"]
    assert redis_client.llen(ok) == 0
    redis_client.delete(ok, failed)


class StandInCall:
    """What `modal.FunctionCall.from_id(id)` returns, scripted per id."""

    outcomes: dict[str, Any] = {}

    def __init__(self, object_id: str) -> None:
        self.object_id = object_id
        self.get = SimpleNamespace(aio=self._get)

    @classmethod
    def from_id(cls, object_id: str) -> StandInCall:
        return cls(object_id)

    async def _get(self, timeout: float | None = None) -> Any:
        assert timeout == 0
        outcome = self.outcomes[self.object_id]
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class StandInService:
    """Stands in for `Embedder(model_name=...)`: records what `process_request.spawn.aio` was given."""

    spawned: list[tuple[str, AsyncRequest]] = []

    def __init__(self, model_name: str) -> None:
        async def spawn(request: AsyncRequest) -> StandInCall:
            self.spawned.append((model_name, request))
            return StandInCall(f"fc-{len(self.spawned)}")

        self.process_request = SimpleNamespace(spawn=SimpleNamespace(aio=spawn))


def test_modal_runtime_wires_spawn_and_status_through_function_calls(echo: Any) -> None:
    runtime = ModalRuntime(StandInService, ["echo", "shout"], function_call=StandInCall)
    app = create_web_endpoints(echo.EchoService, echo.EchoIn, echo.EchoOut, runtime=runtime)
    StandInCall.outcomes = {
        "fc-1": TimeoutError(),
        "fc-2": echo.EchoOut(text="done", model="shout", pid=1),
        "fc-3": modal.exception.OutputExpiredError("expired"),
        "fc-4": Failure("cuda", "container recycled after a CUDA error"),
        "fc-unknown": modal.exception.NotFoundError("no such call"),
    }
    with TestClient(app) as client:
        first = client.post("/predict_async", json={"text": "x"})
        assert first.status_code == 202
        assert first.json() == {"job_id": "fc-1", "status_url": "/predict_async/fc-1"}
        envelope = {"message": {"text": "y"}, "success_queue": "ok", "meta": {"k": "v"}}
        assert client.post("/predict_async?model_name=shout", json=envelope).json()["job_id"] == "fc-2"
        for _ in range(2):
            client.post("/predict_async", json={"text": "z"})

        assert client.get("/predict_async/fc-1").status_code == 202
        done = client.get("/predict_async/fc-2")
        assert done.status_code == 200 and done.json()["result"] == {"text": "done", "model": "shout", "pid": 1}
        expired = client.get("/predict_async/fc-3")
        assert expired.status_code == 410 and "expired" in expired.json()["detail"]
        failed = client.get("/predict_async/fc-4")
        assert failed.status_code == 200 and failed.json()["error"]["status_code"] == 503
        assert client.get("/predict_async/fc-unknown").status_code == 404

    model_name, request = StandInService.spawned[1]
    assert model_name == "shout"
    assert (request.message.text, request.success_queue, request.meta) == ("y", "ok", {"k": "v"})


# ---- ModalRuntime.submit: the batches the web container's requests went into ------------------------------------


class RemoteBatches:
    """Stands in for `process_request.remote.aio` at the network only: the calls made together run as one batch
    of the real service code (`process_request.local` of one object: one container), each item and each result
    pickled as Modal's transport does."""

    def __init__(self, container: Any) -> None:
        self.run_batch = container.process_request.local  # taken before this stand-in replaces it
        self.batch_size = 1
        self.waiting: list[tuple[Any, asyncio.Future[Any]]] = []
        self.received: list[Any] = []
        self.remote = SimpleNamespace(aio=self._remote)

    async def _remote(self, item: Any) -> Any:
        answer = asyncio.get_running_loop().create_future()
        self.waiting.append((pickle.loads(pickle.dumps(item)), answer))
        if len(self.waiting) >= self.batch_size:
            batch, self.waiting = self.waiting, []
            self.received.extend(item for item, _ in batch)
            results = self.run_batch([item for item, _ in batch])
            for (_, waiting), result in zip(batch, results, strict=True):
                waiting.set_result(result)
        return pickle.loads(pickle.dumps(await answer))


@pytest.fixture
def echo_local(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MODALKIT_CONFIG", str(APPS / "echo.yaml"))
    monkeypatch.delitem(sys.modules, "echo_app", raising=False)
    return import_app(APPS / "echo_app.py")


def batched_runtime(echo: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[ModalRuntime, RemoteBatches]:
    runtime = ModalRuntime(echo.EchoService, ["echo", "shout"])
    container = runtime._objects["echo"]
    remote = RemoteBatches(container)
    monkeypatch.setattr(container, "process_request", remote)
    return runtime, remote


def test_submit_records_each_batch_once_with_the_containers_timing(
    echo_local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, remote = batched_runtime(echo_local, monkeypatch)

    async def send(*texts: str) -> list[Any]:
        return await asyncio.gather(*(runtime.submit("echo", echo_local.EchoIn(text=t)) for t in texts))

    remote.batch_size = 3
    cold = asyncio.run(send("a", "b", "bad"))
    remote.batch_size = 1
    (warm,) = asyncio.run(send("c"))
    assert [o.text for o in cold[:2]] == ["a", "b"] and isinstance(cold[2], Failure) and warm.text == "c"
    assert all(isinstance(item, Metered) for item in remote.received)  # what crossed: the item, metered

    stats = runtime.observe().pools["echo"]
    assert stats.batch_sizes == {3: 1, 1: 1}  # three answers, one batch: counted once
    assert (stats.requests["cold"], stats.requests["warm"], stats.container_starts) == (3, 1, 1)
    assert stats.inference_seconds.count == 2 and stats.inference_seconds.total > 0
    assert stats.queue_wait.count == 4 and len(stats.latencies["cold"]) == 3
    assert runtime.observe().pools["shout"].batch_sizes == {}
    assert runtime.observe().container_phases is False


def test_a_direct_call_gets_plain_results_and_sync_call_sends_plain_items(
    echo_local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    direct = echo_local.EchoService(model_name="echo").process_request.local([echo_local.EchoIn(text="x")])
    assert [type(o).__name__ for o in direct] == ["EchoOut"]

    plain = ModalRuntime(echo_local.EchoService, ["echo"], observed=False)
    remote = RemoteBatches(plain._objects["echo"])
    monkeypatch.setattr(plain._objects["echo"], "process_request", remote)
    assert asyncio.run(plain.submit("echo", echo_local.EchoIn(text="y"))).text == "y"
    assert type(remote.received[0]).__name__ == "EchoIn" and plain.observe().pools["echo"].batch_sizes == {}


def test_the_web_function_shows_its_batches_in_metrics_and_stats(
    echo_local: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime, _ = batched_runtime(echo_local, monkeypatch)
    app = create_web_endpoints(echo_local.EchoService, echo_local.EchoIn, echo_local.EchoOut, runtime=runtime)
    with TestClient(app) as client:
        for text in ("cold", "warm"):
            assert client.post("/predict", json={"text": text}).json()["text"] == text
        metrics = client.get("/metrics").text
        stats = client.get("/stats").json()

    seen = {
        (s.name, s.labels.get("model")): s.value for f in text_string_to_metric_families(metrics) for s in f.samples
    }
    assert seen[("modalkit_batch_size_count", "echo")] == 2
    assert seen[("modalkit_inference_seconds_count", "echo")] == 2
    assert seen[("modalkit_queue_wait_seconds_count", "echo")] == 2
    assert seen[("modalkit_cold_starts_total", "echo")] == 1 and seen[("modalkit_warm_starts_total", "echo")] == 1
    assert seen[("modalkit_container_starts_total", "echo")] == 1
    assert not any(name == "modalkit_containers" for name, _ in seen)  # only Modal knows its containers
    assert (stats["invocations"], stats["cold_starts"], stats["warm_starts"], stats["batches"]) == (2, 1, 1, 2)


# ---- the job book: owners, cancel and listing on Modal ---------------------------------------------------------


def test_the_job_book_is_the_apps_modal_dict(echo: Any) -> None:
    runtime = ModalRuntime(echo.EchoService, ["echo"])
    assert runtime.job_book is not None
    book = runtime.job_book.store
    assert isinstance(book, modal.Dict) and book.name == f"{echo.config.app_name}-jobs"
    assert job_dict(echo.config).name == book.name
    assert ModalRuntime(StandInService, ["echo"]).job_book is None  # a class without modal_config has none


class MemoryDict:
    """The interface of `modal.Dict` the job book uses (`put`, `get`, `items`, each `.aio`), in memory: it stands in
    for the Dict only, to test the runtime's bookkeeping; the real object is built above."""

    def __init__(self) -> None:
        self.data: dict[str, Any] = {}
        self.refuse = False
        self.put = SimpleNamespace(aio=self._put)
        self.get = SimpleNamespace(aio=self._get)
        self.items = SimpleNamespace(aio=self._items)

    async def _put(self, key: str, value: Any) -> None:
        if self.refuse:
            raise modal.exception.Error("the Dict is unreachable")
        self.data[key] = pickle.loads(pickle.dumps(value))

    async def _get(self, key: str, default: Any = None) -> Any:
        return self.data.get(key, default)

    async def _items(self) -> Any:
        for item in list(self.data.items()):
            yield item


class BookCall:
    """`modal.FunctionCall.from_id(id)`, scripted per id, recording cancels."""

    outcomes: dict[str, Any] = {}
    cancelled: list[str] = []

    def __init__(self, object_id: str) -> None:
        self.object_id = object_id
        self.get = SimpleNamespace(aio=self._get)
        self.cancel = SimpleNamespace(aio=self._cancel)

    @classmethod
    def from_id(cls, object_id: str) -> BookCall:
        return cls(object_id)

    async def _get(self, timeout: float | None = None) -> Any:
        outcome = self.outcomes.get(self.object_id, TimeoutError())
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    async def _cancel(self, terminate_containers: bool = False) -> None:
        self.cancelled.append(self.object_id)


def book_service(spawned: list[AsyncRequest]) -> Any:
    def bound(model_name: str) -> Any:
        async def spawn(request: AsyncRequest) -> BookCall:
            spawned.append(request)
            return BookCall(f"fc-book-{len(spawned)}")

        return SimpleNamespace(process_request=SimpleNamespace(spawn=SimpleNamespace(aio=spawn)))

    return bound


@pytest.fixture
def echo_with_clients(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    config = tmp_path / "modal.yaml"
    config.write_text(
        "app_settings:\n  app_prefix: echo-book\n"
        "  auth_config: {clients: {alice: {api_key_env: ALICE_KEY}, bob: {api_key_env: BOB_KEY}}}\n"
        "model_settings:\n  model_entries: {echo: {}}\n"
    )
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    monkeypatch.setenv("ALICE_KEY", "k-alice")
    monkeypatch.setenv("BOB_KEY", "k-bob")
    monkeypatch.delitem(sys.modules, "echo_app", raising=False)
    return import_app(APPS / "echo_app.py")


def test_on_modal_a_job_is_its_keys_and_is_cancelled_and_listed_through_the_book(echo_with_clients: Any) -> None:
    echo, book, spawned = echo_with_clients, MemoryDict(), []
    runtime = ModalRuntime(book_service(spawned), ["echo"], function_call=BookCall, job_book=JobBook(book))
    app = create_web_endpoints(echo.EchoService, echo.EchoIn, echo.EchoOut, runtime=runtime)
    BookCall.outcomes, BookCall.cancelled = {}, []
    alice, bob = {"x-api-key": "k-alice"}, {"x-api-key": "k-bob"}
    with TestClient(app) as client:
        made = [client.post("/predict_async", json={"text": f"a{n}"}, headers=alice).json()["job_id"] for n in range(3)]
        theirs = client.post("/predict_async", json={"text": "b"}, headers=bob).json()["job_id"]
        entry = book.data[made[0]]
        assert entry["owner"] == key_fingerprint("k-alice") and entry["status"] == "running"
        assert "k-alice" not in repr(book.data) and spawned[0].owner == entry["owner"]

        assert client.get(f"/predict_async/{made[0]}", headers=alice).status_code == 202
        for answer in (
            client.get(f"/predict_async/{made[0]}", headers=bob),
            client.delete(f"/predict_async/{made[0]}", headers=bob),
        ):
            assert answer.status_code == 404
        assert BookCall.cancelled == []

        cancelled = client.delete(f"/predict_async/{made[0]}", headers=alice)
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        assert BookCall.cancelled == [made[0]] and book.data[made[0]]["status"] == "cancelled"
        assert client.get(f"/predict_async/{made[0]}", headers=alice).json()["status"] == "cancelled"

        BookCall.outcomes[made[1]] = echo.EchoOut(text="a1", model="echo", pid=1)
        refused = client.delete(f"/predict_async/{made[1]}", headers=alice)
        assert refused.status_code == 409 and book.data[made[1]]["status"] == "succeeded"

        BookCall.outcomes[made[2]] = echo.EchoOut(text="a2", model="echo", pid=1)  # finished since last seen
        first = client.get("/predict_async", params={"limit": 2}, headers=alice).json()
        assert [job["job_id"] for job in first["jobs"]] == [made[2], made[1]]
        assert first["jobs"][0]["status"] == "succeeded" and book.data[made[2]]["status"] == "succeeded"
        rest = client.get("/predict_async", params={"limit": 2, "cursor": first["next_cursor"]}, headers=alice).json()
        assert [job["job_id"] for job in rest["jobs"]] == [made[0]] and rest["next_cursor"] is None
        succeeded = client.get("/predict_async", params={"status": "succeeded"}, headers=alice).json()
        assert [job["job_id"] for job in succeeded["jobs"]] == [made[2], made[1]]
        assert [job["job_id"] for job in client.get("/predict_async", headers=bob).json()["jobs"]] == [theirs]

        book.refuse = True  # the book cannot record the job: the call is cancelled and the job refused
        unrecorded = client.post("/predict_async", json={"text": "lost"}, headers=alice)
        assert unrecorded.status_code == 503 and BookCall.cancelled[-1] == f"fc-book-{len(spawned)}"


class RecordingBook(MemoryDict):
    """The Dict as a container's thread uses it (`put`, blocking): every state written, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[tuple[str, Any]] = []
        self.put = self._put_now  # type: ignore[assignment]

    def _put_now(self, key: str, value: Any) -> None:
        self.written.append((key, value))
        self.data[key] = value


def test_a_container_records_its_webhook_in_the_book_and_get_shows_it(
    echo_with_clients: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MODALKIT_WEBHOOK_SECRET", SECRET)
    config = WebhookConfig(allowed_hosts=["127.0.0.1"], allow_private=True, first_retry_seconds=0.01)
    book = RecordingBook()
    with receiving([503]) as receiver:
        assert send_and_record(receiver.url, "msg_book", b'{"job_id": null}', config, book)
        assert len(receiver.received()) == 2
    assert book.written == [
        ("webhook:msg_book", {"state": "pending", "attempts": 0}),
        ("webhook:msg_book", {"state": "pending", "attempts": 1}),
        ("webhook:msg_book", {"state": "delivered", "attempts": 2}),
    ]

    echo = echo_with_clients
    book.put = SimpleNamespace(aio=book._put)  # type: ignore[assignment]  # the web function's side: `.aio`
    runtime = ModalRuntime(book_service([]), ["echo"], function_call=BookCall, job_book=JobBook(book))
    app = create_web_endpoints(echo.EchoService, echo.EchoIn, echo.EchoOut, runtime=runtime)
    echo.EchoService.modal_config.app_settings.webhook_config.allowed_hosts = ["127.0.0.1"]
    echo.EchoService.modal_config.app_settings.webhook_config.allow_private = True
    alice = {"x-api-key": "k-alice"}
    with TestClient(app) as client:
        body = {"message": {"text": "hook"}, "webhook_url": "http://127.0.0.1:9/hook"}
        job_id = client.post("/predict_async", json=body, headers=alice).json()["job_id"]
        assert "webhook" not in client.get(f"/predict_async/{job_id}", headers=alice).json()  # while it runs
        BookCall.outcomes[job_id] = echo.EchoOut(text="hook", model="echo", pid=1)
        webhook_id = book.data[job_id]["webhook_id"]
        assert client.get(f"/predict_async/{job_id}", headers=alice).json()["webhook"] == {
            "state": "pending",
            "url": "http://127.0.0.1:9/hook",
            "attempts": 0,
        }
        book.data[f"webhook:{webhook_id}"] = {"state": "delivered", "attempts": 2}  # as the container writes it
        shown = client.get(f"/predict_async/{job_id}", headers=alice).json()["webhook"]
        assert shown == {"state": "delivered", "url": "http://127.0.0.1:9/hook", "attempts": 2}
        listed = client.get("/predict_async", headers=alice).json()["jobs"]
        assert [job["job_id"] for job in listed] == [job_id]  # the webhook's record is not a job


class FinishingCall(BookCall):
    """A call that finishes just before the cancel reaches it: Modal's cancel is then a no-op."""

    async def _cancel(self, terminate_containers: bool = False) -> None:
        await super()._cancel(terminate_containers)
        self.outcomes[self.object_id] = {"text": "done first", "model": "echo", "pid": 1}


def test_on_modal_a_job_that_finishes_as_it_is_cancelled_stays_finished_and_gets_409(echo_with_clients: Any) -> None:
    echo, book = echo_with_clients, MemoryDict()
    runtime = ModalRuntime(book_service([]), ["echo"], function_call=FinishingCall, job_book=JobBook(book))
    app = create_web_endpoints(echo.EchoService, echo.EchoIn, echo.EchoOut, runtime=runtime)
    BookCall.outcomes, BookCall.cancelled = {}, []
    alice = {"x-api-key": "k-alice"}
    with TestClient(app) as client:
        job_id = client.post("/predict_async", json={"text": "x"}, headers=alice).json()["job_id"]
        refused = client.delete(f"/predict_async/{job_id}", headers=alice)
        assert refused.status_code == 409 and BookCall.cancelled == [job_id]
        assert book.data[job_id]["status"] == "succeeded"  # not recorded cancelled: its result is there
        shown = client.get(f"/predict_async/{job_id}", headers=alice)
        assert shown.status_code == 200 and shown.json()["result"]["text"] == "done first"


def test_on_modal_an_expired_job_is_410_to_its_owner_and_404_to_anyone_else(echo_with_clients: Any) -> None:
    echo, book = echo_with_clients, MemoryDict()
    runtime = ModalRuntime(book_service([]), ["echo"], function_call=BookCall, job_book=JobBook(book))
    app = create_web_endpoints(echo.EchoService, echo.EchoIn, echo.EchoOut, runtime=runtime)
    BookCall.outcomes, BookCall.cancelled = {}, []
    alice, bob = {"x-api-key": "k-alice"}, {"x-api-key": "k-bob"}
    with TestClient(app) as client:
        job_id = client.post("/predict_async", json={"text": "x"}, headers=alice).json()["job_id"]
        BookCall.outcomes[job_id] = modal.exception.OutputExpiredError("expired")
        BookCall.outcomes["fc-no-entry"] = modal.exception.OutputExpiredError("expired")
        assert client.get(f"/predict_async/{job_id}", headers=alice).status_code == 410
        unknown = client.get(f"/predict_async/{'0' * 32}", headers=bob).json()["detail"]
        for answer in (
            client.get(f"/predict_async/{job_id}", headers=bob),
            client.delete(f"/predict_async/{job_id}", headers=bob),
        ):
            assert answer.status_code == 404
            assert answer.json()["detail"] == unknown.replace("0" * 32, job_id)  # the same as an unknown job
        assert client.get("/predict_async/fc-no-entry", headers=alice).status_code == 404  # no one's: not in the book
    assert BookCall.cancelled == []


def test_the_job_book_never_reads_a_webhook_record_as_a_job() -> None:
    book = MemoryDict()
    book.data["webhook:msg_1"] = {"state": "delivered", "attempts": 1}
    assert asyncio.run(JobBook(book).entry("webhook:msg_1")) is None
