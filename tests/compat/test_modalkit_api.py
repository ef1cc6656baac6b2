"""ModalKit's public names, written the ModalKit way, run on our one implementation."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import modal
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel

from modalkit.app_loader import import_app
from modalkit.exceptions import ConfigError, InferenceError
from modalkit.iomodel import AsyncInputModel, AsyncOutputModel, SyncInputModel
from modalkit.jobs import AsyncRequest
from modalkit.modal_config import ModalConfig as ModalKitConfig
from modalkit.modal_service import ModalService, create_web_endpoints
from modalkit.outcome import Failure
from tests.conftest import APPS, wait_for


@pytest.fixture
def pipeline(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.setenv("MODALKIT_CONFIG", str(APPS / "pipeline.yaml"))
    monkeypatch.delitem(sys.modules, "pipeline_app", raising=False)
    with pytest.warns(FutureWarning, match="concurrency_limit"):
        return import_app(APPS / "pipeline_app.py")


def test_inference_pipeline_serves_a_batch_with_item_errors(pipeline: Any) -> None:
    batch = [
        pipeline.Numbers(values=[1, 2, 3]),
        pipeline.Numbers(values=[]),
        pipeline.Numbers(values=[float("nan")]),
        pipeline.Numbers(values=[4]),
    ]
    outputs = pipeline.PipelineApp(model_name="double").process_request.local(batch)
    assert (outputs[0].status, outputs[0].mean, outputs[0].folder) == ("success", 4.0, "/srv/models")
    assert (outputs[1].status, outputs[1].error) == ("error", "values is empty")  # reported by the model
    assert isinstance(outputs[2], Failure) and "NaN in values" in outputs[2].detail  # raised: fails alone
    assert (outputs[3].status, outputs[3].mean) == ("success", 8.0)
    # volume_reload_interval_seconds: -1 is ModalKit's "before every batch" (the first batch ran before ours).
    assert outputs[0].reloads >= 1


def test_inference_pipeline_runs_the_modalkit_chain_directly() -> None:
    from modalkit.inference_pipeline import InferencePipeline

    class Upper(InferencePipeline):
        def preprocess(self, input_list: list[str]) -> dict[str, Any]:
            return {"texts": [t.strip() for t in input_list]}

        def predict(self, input_list: list[str], preprocessed_data: dict[str, Any]) -> dict[str, Any]:
            return {"upper": [t.upper() for t in preprocessed_data["texts"]]}

        def postprocess(self, input_list: list[str], raw_output: dict[str, Any]) -> list[str]:
            return raw_output["upper"]

    model = Upper(model_name="m", all_model_data_folder="/data", common_settings={"k": 1})
    assert (model.model_name, model.all_model_data_folder, model.common_settings) == ("m", "/data", {"k": 1})
    assert model.run_inference([" a", "b "]) == ["A", "B"]


def test_pipeline_app_answers_modalkit_http(serve: Any) -> None:
    server = serve(APPS / "pipeline_app.py", config=APPS / "pipeline.yaml")
    sync = httpx.post(f"{server.url}/predict_sync", params={"model_name": "mean"}, json={"values": [2, 4]})
    assert sync.status_code == 200 and sync.json()["mean"] == 3.0
    reported = httpx.post(f"{server.url}/predict_sync", json={"values": []})
    assert reported.status_code == 200 and reported.json()["status"] == "error"  # as ModalKit: the output as is
    body = {"message": {"values": []}, "success_queue": "", "failure_queue": "", "meta": {"id": 1}}
    job = httpx.post(f"{server.url}/predict_async", json=body).json()["job_id"]

    def done() -> Any:
        answer = httpx.get(f"{server.url}/predict_async/{job}")
        return answer.json() if answer.status_code == 200 else None

    finished = wait_for(done)
    assert finished["status"] == "failed" and finished["error"]["detail"] == "values is empty"


def test_a_service_without_config_fails_when_defined() -> None:
    with pytest.raises(ConfigError, match=r"Forgotten has no config: add `modal_config = ModalConfig\(\)`"):

        class Forgotten(ModalService):
            inference_implementation = object  # type: ignore[assignment]
            model_name: str = modal.parameter(default="m")


def test_a_misspelled_config_attribute_fails_when_defined(tmp_path: Path) -> None:
    config_file = tmp_path / "modalkit.yaml"
    config_file.write_text("model_settings:\n  model_entries: {m: {}}\n")
    config = ModalKitConfig(config_file)
    with pytest.raises(ConfigError, match=r"Typo.modal_util: a ModalConfig must be named modal_config"):

        class Typo(ModalService):
            inference_implementation = object  # type: ignore[assignment]
            modal_util = config


def test_a_constructor_fails_when_defined_and_says_where_queue_backend_goes() -> None:
    with pytest.raises(ConfigError, match=r"Injected.__init__: Modal 1.6 classes take no constructor"):

        class Injected(ModalService):
            def __init__(self) -> None:
                self.queue_backend = object()


def test_an_intermediate_base_class_needs_no_config() -> None:
    class Base(ModalService):
        pass

    assert "process_request" not in Base.__dict__


class Message(BaseModel):
    message: str
    priority: int = 0


class Echoed(BaseModel):
    message: str


def test_an_input_with_its_own_message_field_is_not_taken_for_the_envelope() -> None:
    from pydantic import create_model

    from modalkit.web.async_routes import parse_job

    envelope = create_model("E", message=(Message, ...), success_queue=(str | None, None))
    bare = parse_job(envelope, Message, {"message": "hello", "priority": 2})
    assert bare == AsyncRequest(Message(message="hello", priority=2))
    wrapped = parse_job(envelope, Message, {"message": {"message": "hi"}, "success_queue": ""})
    assert wrapped == AsyncRequest(Message(message="hi"), None, None, None)


class StandInCall:
    def __init__(self, object_id: str) -> None:
        self.object_id = object_id


class StandInService:
    """Stands in for a deployed `MyApp(model_name=...)` at the `process_request` boundary (no Modal here)."""

    calls: list[tuple[str, str, Any]] = []

    def __init__(self, model_name: str) -> None:
        async def remote(item: Any) -> Any:
            self.calls.append(("remote", model_name, item))
            return Failure("rejected", "too short") if item.message == "x" else Echoed(message=item.message.upper())

        async def spawn(request: AsyncRequest) -> StandInCall:
            self.calls.append(("spawn", model_name, request))
            return StandInCall("fc-42")

        self.process_request = SimpleNamespace(remote=SimpleNamespace(aio=remote), spawn=SimpleNamespace(aio=spawn))


def test_sync_call_and_async_call_take_modalkit_wrapped_inputs() -> None:
    asyncio.run(_sync_and_async_calls())


async def _sync_and_async_calls() -> None:
    sync_fn = ModalService.sync_call(StandInService)
    assert await sync_fn("m", SyncInputModel[Message](message=Message(message="hey"))) == Echoed(message="HEY")
    assert await sync_fn(model_name="m", input_data=Message(message="bare")) == Echoed(message="BARE")
    with pytest.raises(InferenceError) as failed:
        await sync_fn("m", Message(message="x"))
    assert failed.value.status_code == 422

    async_fn = ModalService.async_call(StandInService)
    wrapped = AsyncInputModel[Message](message=Message(message="later"), success_queue="ok", meta={"a": 1})
    assert await async_fn("m2", wrapped) == AsyncOutputModel(job_id="fc-42")
    kind, model_name, request = StandInService.calls[-1]
    assert (kind, model_name) == ("spawn", "m2")
    assert request == AsyncRequest(Message(message="later"), "ok", None, {"a": 1})


def test_sync_call_is_reachable_through_the_modal_class(pipeline: Any) -> None:
    fn = pipeline.PipelineApp.sync_call(pipeline.PipelineApp)
    assert callable(fn)


def test_create_web_endpoints_takes_app_cls_by_keyword(pipeline: Any, tmp_path: Path) -> None:
    from modalkit.runtime.modal import ModalRuntime

    runtime = ModalRuntime(StandInService, ["mean"])
    app = create_web_endpoints(
        app_cls=pipeline.PipelineApp, input_model=pipeline.Numbers, output_model=pipeline.Stats, runtime=runtime
    )
    with TestClient(app) as client:
        assert {"/predict_sync", "/predict_async", "/health"} <= {r.path for r in app.routes}  # type: ignore[attr-defined]
        assert client.get("/health").status_code == 200


def test_async_config_timeout_fails_a_job_that_runs_too_long(serve: Any) -> None:
    # Two warm containers: the slow job holds one past its timeout, the quick one runs beside it.
    server = serve(
        APPS / "echo_app.py",
        config=APPS / "echo.yaml",
        env={
            "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_TIMEOUT_SECONDS": "1",
            "MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__MIN_CONTAINERS": "2",
            "MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__MAX_CONTAINERS": "2",
        },
    )
    wait_for(lambda: server.model_health("echo")["ready_containers"] == 2)
    slow = httpx.post(f"{server.url}/predict_async", json={"text": "sleep:3"}).json()["job_id"]

    def state(job_id: str) -> Any:
        answer = httpx.get(f"{server.url}/predict_async/{job_id}")
        return answer.json() if answer.status_code == 200 else None

    failed = wait_for(lambda: state(slow), timeout=20)
    assert failed["status"] == "failed" and failed["error"]["status_code"] == 504
    assert "job_timeout_seconds" in failed["error"]["detail"]
    quick = httpx.post(f"{server.url}/predict_async", json={"text": "fast"}).json()["job_id"]
    assert wait_for(lambda: state(quick), timeout=20)["status"] == "succeeded"


def test_modalkit_message_format_on_the_modal_path(
    tmp_path: Path, redis_url: str, redis_client: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`message_format: modalkit`: the JSON a ModalKit queue consumer reads, pushed from a container."""
    import json
    import uuid

    config = tmp_path / "modal.yaml"
    config.write_text(
        "app_settings:\n  app_prefix: echo-modalkit-format\n"
        f"  queue_config: {{backend: redis, redis_url: '{redis_url}', message_format: modalkit}}\n"
        "model_settings:\n  model_entries: {echo: {}}\n"
    )
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    monkeypatch.delitem(sys.modules, "echo_app", raising=False)
    echo = import_app(APPS / "echo_app.py")
    ok, failed = f"ok-{uuid.uuid4().hex}", f"failed-{uuid.uuid4().hex}"
    batch = [
        AsyncRequest(echo.EchoIn(text="hi"), success_queue=ok, failure_queue=failed, meta={"id": 1}),
        AsyncRequest(echo.EchoIn(text="bad"), success_queue=ok, failure_queue=failed, meta={"id": 2}),
    ]
    echo.EchoService(model_name="echo").process_request.local(batch)
    success = json.loads(redis_client.lpop(ok))
    assert success["status"] == "success" and success["text"] == "hi" and success["meta"] == {"id": 1}
    assert "error" not in success
    failure = json.loads(redis_client.lpop(failed))
    assert failure["status"] == "error" and "cannot echo 'bad'" in failure["error"] and failure["meta"] == {}
    assert failure["original_message"] == {
        "message": {"text": "bad"},
        "success_queue": ok,
        "failure_queue": failed,
        "meta": {"id": 2},
    }
    redis_client.delete(ok, failed)
