"""The Modal async path offline: the real service class pushes to Redis from `.local()`; spawn and status
are wired through stand-ins at the FunctionCall boundary only (nothing can be spawned without Modal)."""

from __future__ import annotations

import json
import sys
import uuid
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import modal.exception
import pytest
from fastapi.testclient import TestClient

from modalkit.app_loader import import_app
from modalkit.jobs import AsyncRequest
from modalkit.outcome import Failure
from modalkit.runtime.modal import ModalRuntime
from modalkit.web import create_web_endpoints
from tests.conftest import APPS


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
