"""The behaviours ModalKit's own test-suite checks that no other test here covered (modalkit_checklist.md maps
every one of them), run on real config files, real Modal objects built offline, and real backends."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import threading
from pathlib import Path
from typing import Any

import modal
import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel, ValidationError

from modalkit.app_loader import import_app
from modalkit.exceptions import ConfigDeprecationWarning, ConfigError, TypeValidationError
from modalkit.inference_pipeline import InferencePipeline
from modalkit.iomodel import AsyncInputModel, SyncInputModel
from modalkit.jobs import AsyncRequest
from modalkit.modal_config import ModalConfig
from modalkit.settings import (
    AppSettings,
    BatchConfig,
    BuildConfig,
    CloudBucketMount,
    DeploymentConfig,
    ModelSettings,
    Settings,
)
from modalkit.sinks import registry
from modalkit.task_queue import SQSBackend, create_backend, register_backend, send_response_queue
from tests import test_aws
from tests.compat import test_config_compat
from tests.conftest import APPS, wait_for
from tests.modal_introspect import definition, image_steps, raw

# Fixtures shared with other modules: a working directory without MODALKIT_* variables, moto's AWS server and
# boto3's environment pointed at it.
folder = test_config_compat.folder
moto_url = test_aws.moto_url
aws = test_aws.aws

# A ModalKit-style app.py, written into the test's folder next to its modalkit.yaml and imported as Modal would.
APP = '''
import modal
from pydantic import BaseModel

from modalkit.inference_pipeline import InferencePipeline
from modalkit.iomodel import InferenceOutputModel
from modalkit.modal_config import ModalConfig
from modalkit.modal_service import ModalService


class Number(BaseModel):
    value: float


class Doubled(InferenceOutputModel):
    value: float = 0.0


class Kept:
    """A ModalKit queue backend that keeps what it is sent."""

    def __init__(self):
        self.messages = []

    async def send_message(self, queue_name, message):
        self.messages.append((queue_name, message))
        return True


class Doubler(InferencePipeline):
    reloads = []  # the model name, once per on_volume_reload call

    def __init__(self, model_name, all_model_data_folder, common_settings, *args, **kwargs):
        super().__init__(model_name, all_model_data_folder, common_settings, *args, **kwargs)
        self.factor = kwargs["factor"]

    def on_volume_reload(self):
        Doubler.reloads.append(self.model_name)
        if self.common_settings.get("broken_reload_hook"):
            raise RuntimeError("the reload hook broke")

    def preprocess(self, input_list):
        if any(item.value < 0 for item in input_list):
            raise ValueError("negative value")
        return {"values": [item.value for item in input_list]}

    def predict(self, input_list, preprocessed_data):
        return {"values": [v * self.factor for v in preprocessed_data["values"]]}

    def postprocess(self, input_list, raw_output):
        return [Doubled(status="success", value=v) for v in raw_output["values"]]


kept = Kept()
modal_config = ModalConfig()
app = modal.App(name=modal_config.app_name)


@app.cls(**modal_config.get_app_cls_settings())
class Doubling(ModalService):
    inference_implementation = Doubler
    model_name: str = modal.parameter(default="double")
    modal_utils: ModalConfig = modal_config
    queue_backend = kept
'''

CONFIG = """app_settings:
  app_prefix: checklist
  build_config: {{image: python, tag: 3.11-slim}}
  deployment_config:
{deployment}
  queue_config: {{message_format: modalkit}}
model_settings:
  local_model_repository_folder: /srv/models
  common: {{broken_reload_hook: {broken}}}
  model_entries: {{double: {{factor: 2}}}}
"""

STORAGE = """    gpu: null
    secure: true
    secrets: [hf-token, db-credentials]
    volumes: {/models: weights, /cache: cache-vol}
    cloud_bucket_mounts:
      - {mount_point: /data, bucket_name: training, secret: aws-creds, read_only: true, requester_pays: true}
      - {mount_point: /r2, bucket_name: artefacts, bucket_endpoint_url: 'https://acc.r2.cloudflarestorage.com',
         oidc_auth_role_arn: 'arn:aws:iam::123456789:role/reader'}"""


def write_config(folder: Path, deployment: str = "    gpu: null", broken: bool = False) -> Path:
    config = folder / "modalkit.yaml"
    config.write_text(CONFIG.format(deployment=deployment, broken=str(broken).lower()))
    return config


@pytest.fixture
def load_app(folder: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Write app.py and modalkit.yaml (with the given deployment_config lines) and import the app."""

    def load(deployment: str = "    gpu: null", broken: bool = False) -> Any:
        write_config(folder, deployment, broken)
        (folder / "checklist_app.py").write_text(APP)
        monkeypatch.syspath_prepend(str(folder))
        monkeypatch.delitem(sys.modules, "checklist_app", raising=False)
        module = import_app(folder / "checklist_app.py")
        return module

    return load


def reload_interval(seconds: int | None) -> str:
    return f"    volume_reload_interval_seconds: {'null' if seconds is None else seconds}"


# test_fastapi.py


def test_predict_sync_answers_404_for_an_unknown_model_name(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODALKIT_CONFIG", str(APPS / "echo.yaml"))
    monkeypatch.setenv("MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE", str(folder / "jobs.sqlite3"))
    monkeypatch.delitem(sys.modules, "echo_app", raising=False)
    echo = import_app(APPS / "echo_app.py")
    web = echo.web.local()
    with TestClient(web) as client:
        answer = client.post("/predict_sync", params={"model_name": "nope"}, json={"text": "hi"})
    assert answer.status_code == 404
    assert answer.json()["detail"] == "unknown model_name 'nope'; known: echo, shout"


# test_iomodel.py


class Message(BaseModel):
    data: str


def test_async_input_model_defaults_and_refuses_unknown_keys() -> None:
    bare = AsyncInputModel[Message](message=Message(data="x"))
    assert (bare.success_queue, bare.failure_queue, bare.meta) == ("", "", {})
    assert AsyncInputModel[Message](message=Message(data="y")).meta is not bare.meta  # a fresh dict each time
    with pytest.raises(ValidationError, match="priority"):
        AsyncInputModel[Message](message=Message(data="x"), priority=1)
    with pytest.raises(ValidationError, match="meta"):
        SyncInputModel[Message](message=Message(data="x"), meta={})


# test_inference_pipeline.py


class Recording(InferencePipeline):
    """Keeps what each stage received; `failing` names the stage that raises."""

    def __init__(self, failing: str = "") -> None:
        super().__init__(model_name="m", all_model_data_folder="/data", common_settings={})
        self.failing = failing
        self.calls: list[tuple[str, Any, Any]] = []

    def _stage(self, name: str, inputs: list[str], data: Any) -> None:
        self.calls.append((name, list(inputs), data))
        if name == self.failing:
            raise RuntimeError(f"{name} broke")

    def preprocess(self, input_list: list[str]) -> dict[str, Any]:
        self._stage("preprocess", input_list, None)
        return {"lengths": [len(t) for t in input_list]}

    def predict(self, input_list: list[str], preprocessed_data: dict[str, Any]) -> dict[str, Any]:
        self._stage("predict", input_list, preprocessed_data)
        return {"scores": [n * 10 for n in preprocessed_data["lengths"]]}

    def postprocess(self, input_list: list[str], raw_output: dict[str, Any]) -> list[str]:
        self._stage("postprocess", input_list, raw_output)
        return [f"{text}={score}" for text, score in zip(input_list, raw_output["scores"], strict=True)]


def test_every_stage_gets_the_original_inputs() -> None:
    model = Recording()
    assert model.run_inference(["ab", "c"]) == ["ab=20", "c=10"]
    assert model.calls == [
        ("preprocess", ["ab", "c"], None),
        ("predict", ["ab", "c"], {"lengths": [2, 1]}),
        ("postprocess", ["ab", "c"], {"scores": [20, 10]}),
    ]


def test_run_inference_of_nothing_is_an_empty_list() -> None:
    model = Recording()
    assert model.run_inference([]) == []
    assert [name for name, _, _ in model.calls] == ["preprocess", "predict", "postprocess"]


@pytest.mark.parametrize("stage", ["preprocess", "predict", "postprocess"])
def test_run_inference_raises_the_error_of_the_stage_that_failed(stage: str) -> None:
    model = Recording(failing=stage)
    with pytest.raises(RuntimeError, match=f"^{stage} broke$"):
        model.run_inference(["a", "b"])
    assert model.calls[-1][0] == stage  # no later stage ran


def test_the_default_volume_reload_hook_does_nothing() -> None:
    model = Recording()
    before = dict(vars(model))
    assert model.on_volume_reload() is None
    assert vars(model) == before and model.calls == []


# test_modal_config.py


def test_modal_config_takes_settings_built_in_code(folder: Path) -> None:
    with pytest.warns(ConfigDeprecationWarning) as caught:  # ModalKit's old names, written as Python arguments
        deployment = DeploymentConfig(gpu="T4", volumes={}, concurrency_limit=5, container_idle_timeout=300)
    said = " ".join(str(w.message) for w in caught)
    assert "use app_settings.deployment_config.max_containers" in said and "scaledown_window" in said
    app_settings = AppSettings(
        app_prefix="sentiment-analyzer",
        build_config=BuildConfig(image="python", tag="3.11-slim", env={"MODEL_PATH": "/models"}, workdir="/app"),
        deployment_config=deployment,
        batch_config=BatchConfig(max_batch_size=10, wait_ms=100),
    )
    entries = {"sentiment-v1": {"version": "1.0"}}
    models = ModelSettings(model_entries=entries, local_model_repository_folder="/srv/models", common={"timeout": 30})
    settings = Settings(app_settings=app_settings, model_settings=models)
    config = ModalConfig(settings)
    assert config.settings is settings
    assert config.app_settings is settings.app_settings and config.model_settings is settings.model_settings
    assert config.app_name == "sentiment-analyzer-dev"
    cls_settings = config.get_app_cls_settings()
    assert (cls_settings["gpu"], cls_settings["max_containers"], cls_settings["scaledown_window"]) == ("T4", 5, 300)


def test_model_settings_take_a_path_for_the_model_folder(tmp_path: Path) -> None:
    settings = ModelSettings(model_entries={}, local_model_repository_folder=tmp_path / "models", common={})
    assert str(settings.local_model_repository_folder) == str(tmp_path / "models")


def test_volumes_maps_each_mount_path_to_a_modal_volume(folder: Path) -> None:
    write_config(folder, STORAGE)
    volumes = ModalConfig().volumes
    assert {path: (type(v), v.name) for path, v in volumes.items()} == {
        "/models": (modal.Volume, "weights"),
        "/cache": (modal.Volume, "cache-vol"),
    }
    write_config(folder)
    assert ModalConfig().volumes == {}


def test_a_volume_name_modal_refuses_fails_when_the_volumes_are_built(folder: Path) -> None:
    write_config(folder, "    volumes: {/models: 'model weights'}")
    config = ModalConfig()  # the YAML itself is valid: Modal judges the name
    with pytest.raises(modal.exception.InvalidError, match="model weights"):
        config.volumes  # noqa: B018


def test_cloud_bucket_mounts_carry_their_secret_and_oidc_role(folder: Path) -> None:
    write_config(folder, STORAGE)
    mounts = {path: raw(mount) for path, mount in ModalConfig().cloud_bucket_mounts.items()}
    assert sorted(mounts) == ["/data", "/r2"]
    data, r2 = mounts["/data"], mounts["/r2"]
    assert (data.bucket_name, data.secret.name) == ("training", "aws-creds")
    assert data.read_only and data.requester_pays
    assert (r2.secret, r2.oidc_auth_role_arn) == (None, "arn:aws:iam::123456789:role/reader")
    assert r2.bucket_endpoint_url == "https://acc.r2.cloudflarestorage.com"


def test_volumes_and_bucket_mounts_together_reach_the_class(load_app: Any) -> None:
    checklist = load_app(STORAGE)
    assert sorted(checklist.modal_config.all_volumes) == ["/cache", "/data", "/models", "/r2"]
    service = checklist.Doubling._get_class_service_function()
    info = service.info()
    assert {path: v.name for path, v in info.volumes.items()} == {"/models": "weights", "/cache": "cache-vol"}
    assert {path: m.bucket_name for path, m in info.cloud_bucket_mounts.items()} == {
        "/data": "training",
        "/r2": "artefacts",
    }
    sent = {path: raw(m) for path, m in definition(service)["cloud_bucket_mounts"]}
    assert sent["/data"].secret.name == "aws-creds"
    assert sent["/r2"].oidc_auth_role_arn == "arn:aws:iam::123456789:role/reader"


def test_two_secrets_a_null_gpu_and_a_registry_image_on_the_built_class(load_app: Any) -> None:
    checklist = load_app(STORAGE)
    assert "gpu" not in checklist.modal_config.get_app_cls_settings()
    service = checklist.Doubling._get_class_service_function()
    info = service.info()
    assert info.gpus == []
    assert info.secrets == ["modal.Secret.from_name('hf-token')", "modal.Secret.from_name('db-credentials')"]
    # image: python + tag: 3.11-slim is that registry image (ModalKit built debian_slim for it).
    assert image_steps(raw(service)._spec.image)[0] == "FROM python:3.11-slim"


def test_get_batched_method_settings_is_modalkits_name(folder: Path) -> None:
    (folder / "modalkit.yaml").write_text("app_settings:\n  batch_config: {max_batch_size: 10, wait_ms: 100}\n")
    config = ModalConfig()
    assert config.get_batched_method_settings() == {"max_batch_size": 10, "wait_ms": 100}
    assert config.get_batched_method_settings() == config.get_batched_settings()


@pytest.mark.parametrize("secure", [True, False])
def test_asgi_app_settings_ask_for_proxy_auth_only_when_secure(folder: Path, secure: bool) -> None:
    (folder / "modalkit.yaml").write_text(f"app_settings:\n  deployment_config: {{secure: {str(secure).lower()}}}\n")
    settings = ModalConfig().get_asgi_app_settings()
    assert settings == {"requires_proxy_auth": secure}  # ModalKit's shape, for both values


def test_reload_volumes_logs_a_volume_that_fails_and_goes_on(folder: Path, caplog: pytest.LogCaptureFixture) -> None:
    write_config(folder)
    ModalConfig().reload_volumes()  # no volumes: nothing to do
    # Offline, with no Modal token, every reload fails for real: each is logged, none stops the others.
    write_config(folder, STORAGE)
    with caplog.at_level(logging.ERROR, logger="modalkit.config"):
        ModalConfig().reload_volumes()
    failed = [r for r in caplog.records if r.name == "modalkit.config"]
    assert [r.getMessage() for r in failed] == [
        "reloading the volume at /models failed",
        "reloading the volume at /cache failed",
    ]
    assert all(r.exc_info is not None for r in failed)


# test_modal_service.py


def test_a_service_class_queue_backend_gets_the_async_results(load_app: Any) -> None:
    checklist = load_app()
    ok, failed = "results-ok", "results-failed"
    batch = [
        AsyncRequest(checklist.Number(value=1), success_queue=ok, failure_queue=failed, meta={"n": 1}),
        AsyncRequest(checklist.Number(value=-1), success_queue=ok, failure_queue=failed, meta={"n": 2}),
    ]
    checklist.Doubling(model_name="double").process_request.local(batch)
    sent = {queue: json.loads(message) for queue, message in checklist.kept.messages}
    assert sent[ok] == {"status": "success", "meta": {"n": 1}, "value": 2.0}
    assert sent[failed]["status"] == "error" and "negative value" in sent[failed]["error"]
    assert sent[failed]["original_message"]["meta"] == {"n": 2}


def test_load_artefacts_sets_modalkits_instance_attributes(load_app: Any) -> None:
    checklist = load_app()
    service = checklist.Doubling(model_name="double")
    assert [o.value for o in service.process_request.local([checklist.Number(value=3)])] == [6.0]
    assert service._model_inference_kwargs == {"factor": 2}
    model = service._model_inference_instance
    assert isinstance(model, checklist.Doubler)
    assert (model.model_name, model.all_model_data_folder, model.common_settings) == (
        "double",
        "/srv/models",
        {"broken_reload_hook": False},
    )


def test_an_empty_batch_gives_an_empty_list(load_app: Any) -> None:
    checklist = load_app()
    assert checklist.Doubling(model_name="double").process_request.local([]) == []


def test_process_request_takes_modalkits_wrapped_items(load_app: Any) -> None:
    checklist = load_app()
    wrapped = [
        SyncInputModel(message=checklist.Number(value=1)),
        AsyncInputModel(message=checklist.Number(value=2), success_queue="wrapped-ok", meta={"n": 2}),
    ]
    outputs = checklist.Doubling(model_name="double").process_request.local(wrapped)
    assert [getattr(o, "value", o) for o in outputs] == [2.0, 4.0]
    assert [(q, json.loads(m)["meta"]) for q, m in checklist.kept.messages] == [("wrapped-ok", {"n": 2})]


def reload_threads() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if "_reload_volumes_every" in t.name}


def test_a_null_reload_interval_never_reloads(load_app: Any) -> None:
    checklist = load_app(reload_interval(None))
    before = reload_threads()
    outputs = checklist.Doubling(model_name="double").process_request.local([checklist.Number(value=1)])
    assert outputs[0].value == 2.0
    assert checklist.Doubler.reloads == []
    assert reload_threads() == before  # and no timer was started


def test_a_positive_reload_interval_reloads_on_a_timer(load_app: Any) -> None:
    checklist = load_app(reload_interval(1))
    before = reload_threads()
    outputs = checklist.Doubling(model_name="double").process_request.local([checklist.Number(value=1)])
    assert outputs[0].value == 2.0
    assert len(reload_threads() - before) == 1
    # With no further batch, the hook keeps running every second.
    wait_for(lambda: len(checklist.Doubler.reloads) >= 2, timeout=5)


def test_a_failing_reload_hook_is_logged_and_the_batch_succeeds(
    load_app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    checklist = load_app(reload_interval(-1), broken=True)
    with caplog.at_level(logging.ERROR, logger="modalkit.service"):
        outputs = checklist.Doubling(model_name="double").process_request.local(
            [checklist.Number(value=1), checklist.Number(value=2)]
        )
    assert [(o.status, o.value) for o in outputs] == [("success", 2.0), ("success", 4.0)]
    assert checklist.Doubler.reloads == ["double"]
    [record] = [r for r in caplog.records if r.name == "modalkit.service"]
    assert "volume reload failed" in record.getMessage()
    assert record.exc_info is not None and "the reload hook broke" in str(record.exc_info[1])


# test_settings.py


def test_an_overlay_with_an_old_key_overrides_a_base_with_it(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "base.yaml").write_text(
        "app_settings:\n  app_prefix: new_prefix\n  deployment_config:\n    gpu: T4\n    concurrency_limit: 1\n"
    )
    (folder / "override.yaml").write_text("app_settings:\n  deployment_config:\n    concurrency_limit: 2\n")
    monkeypatch.setenv("MODALKIT_CONFIG", "base.yaml,override.yaml")
    with pytest.warns(ConfigDeprecationWarning, match="concurrency_limit"):
        settings = Settings()
    assert settings.app_settings.app_prefix == "new_prefix"
    assert settings.app_settings.deployment_config.max_containers == 2
    assert settings.app_settings.deployment_config.gpu == "T4"


def test_cloud_bucket_mount_fields_and_defaults() -> None:
    minimal = CloudBucketMount(mount_point="/mnt/bucket", bucket_name="my-bucket")
    optional = ("bucket_endpoint_url", "key_prefix", "secret", "oidc_auth_role_arn")
    assert [getattr(minimal, name) for name in optional] == [None] * 4
    assert (minimal.read_only, minimal.requester_pays) == (False, False)
    role = "arn:aws:iam::123456789:role/r2-role"
    r2 = CloudBucketMount(
        mount_point="/mnt/r2",
        bucket_name="my-r2-bucket",
        bucket_endpoint_url="https://account.r2.cloudflarestorage.com",
        key_prefix="data/",
        oidc_auth_role_arn=role,
        requester_pays=True,
    )
    assert (r2.oidc_auth_role_arn, r2.requester_pays, r2.key_prefix) == (role, True, "data/")


def test_a_bucket_mount_without_its_required_fields_names_them(folder: Path) -> None:
    with pytest.raises(ValidationError, match="bucket_name"):
        CloudBucketMount(mount_point="/mnt/bucket")  # type: ignore[call-arg]
    with pytest.raises(ValidationError, match="mount_point"):
        CloudBucketMount(bucket_name="my-bucket")  # type: ignore[call-arg]
    (folder / "modalkit.yaml").write_text(
        "app_settings:\n  deployment_config:\n    cloud_bucket_mounts: [{mount_point: /mnt/bucket}]\n"
    )
    with pytest.raises(ConfigError, match=r"app_settings\.deployment_config\.cloud_bucket_mounts\.0\.bucket_name"):
        ModalConfig()


# test_task_queue.py


def test_create_backend_sqs_is_an_sqs_backend_that_takes_only_strings(aws: str) -> None:
    backend = create_backend("sqs")
    assert isinstance(backend, SQSBackend)
    with pytest.raises(TypeValidationError, match="must be a str"):
        asyncio.run(backend.send_message("results", {"status": "success"}))  # type: ignore[arg-type]


# test_task_queue_integration.py


class Refusing:
    async def send_message(self, queue_name: str, message: str) -> bool:
        return False


class CannotStart:
    def __init__(self) -> None:
        raise ConnectionError("broker unreachable")

    async def send_message(self, queue_name: str, message: str) -> bool:
        return True


@pytest.mark.parametrize("backend", [Refusing, CannotStart])
def test_send_response_queue_is_false_when_the_backend_fails(
    backend: type, folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(registry, "_REGISTERED", dict(registry._REGISTERED))
    register_backend("checklist-backend", backend)
    (folder / "modalkit.yaml").write_text("app_settings:\n  queue_config: {backend: checklist-backend}\n")
    assert send_response_queue("results", json.dumps({"status": "success"})) is False


# ModalKit's first history line: tests/test_utils.py


def test_an_auth_config_with_two_key_sources_is_refused(folder: Path) -> None:
    (folder / "modalkit.yaml").write_text("app_settings:\n  auth_config: {api_key: k, ssm_key: /app/key}\n")
    with pytest.raises(ConfigError, match=r"app_settings\.auth_config: set one of .* not api_key and ssm_key"):
        ModalConfig()
