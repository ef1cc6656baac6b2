"""ModalKit's deployment guide, unchanged: built into a real `modal.App` offline, and served by `modalkit serve`
with the bodies a ModalKit client sends."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from modal._partial_function import _PartialFunctionFlags

from modalkit.app_loader import import_app, user_class
from modalkit.config.settings import Settings
from modalkit.exceptions import ConfigError
from modalkit.runtime.modal import with_config_concurrency
from tests.conftest import ROOT, wait_for
from tests.modal_introspect import autoscaler, raw

GUIDE = ROOT / "examples/modalkit_guide"
GUIDE_APP_TEXT = """import modal
from modalkit.modal_service import ModalService, create_web_endpoints
from modalkit.modal_config import ModalConfig
from modalkit.settings import Settings

# Load configuration
Settings.model_config["yaml_file"] = "modalkit.yaml"
modal_config = ModalConfig()

# Create Modal app
app = modal.App(name=modal_config.app_name)

@app.cls(**modal_config.get_app_cls_settings())
class MyApp(ModalService):
    inference_implementation = MyInference
    model_name: str = modal.parameter(default="my_model")
    modal_utils: ModalConfig = modal_config

@app.function(**modal_config.get_handler_settings())
@modal.asgi_app()
def web_endpoints():
    return create_web_endpoints(
        app_cls=MyApp,
        input_model=MyInput,
        output_model=MyOutput
    )
"""


@pytest.fixture
def in_folder(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Import an app from its own folder, as `cd folder && modal deploy app.py` does."""
    chosen = Settings.model_config.get("yaml_file")
    monkeypatch.delenv("MODALKIT_CONFIG", raising=False)
    monkeypatch.delenv("MODALKIT_APP_POSTFIX", raising=False)

    def load(folder: Path) -> Any:
        monkeypatch.chdir(folder)
        monkeypatch.delitem(sys.modules, "app", raising=False)
        with pytest.warns(FutureWarning):  # ModalKit's key names are translated, and each says its new name
            return import_app(folder / "app.py")

    yield load
    Settings.model_config["yaml_file"] = chosen


def test_the_example_holds_the_guide_app_py_verbatim() -> None:
    assert GUIDE_APP_TEXT in (GUIDE / "app.py").read_text()


def test_guide_app_builds_a_real_modal_app(in_folder: Any) -> None:
    guide = in_folder(GUIDE)
    assert guide.app.name == "guide-sentiment-dev"  # ModalKit's MODALKIT_APP_POSTFIX default, "-dev"
    service_fn = guide.MyApp._get_class_service_function()
    info = service_fn.info()
    assert info.gpus == [("T4", 1)]
    assert info.method_names == ["process_request"]
    assert (info.batching_info.max_batch_size, info.batching_info.wait_ms) == (8, 20)
    scaling = autoscaler(service_fn)
    assert (scaling.max_containers, scaling.scaledown_window) == (5, 180)

    cls = user_class(guide.MyApp)
    assert raw(cls.__dict__["load_artefacts"]).flags & _PartialFunctionFlags.ENTER_POST_SNAPSHOT
    assert raw(cls.__dict__["process_request"]).flags & _PartialFunctionFlags.BATCHED
    assert cls.modal_utils is cls.modal_config is guide.modal_config

    # The class has no @modal.concurrent: allow_concurrent_inputs: 4 travels with every call instead.
    assert info.concurrency_info is None
    bound = with_config_concurrency(guide.MyApp)
    assert raw(bound)._options.max_concurrent_inputs == 4
    assert guide.web_endpoints.info().web_info is not None


def test_guide_app_runs_a_batch_through_modal_local(in_folder: Any) -> None:
    guide = in_folder(GUIDE)
    outputs = guide.MyApp(model_name="my_model").process_request.local(
        [guide.MyInput(text="great, I love it"), guide.MyInput(text="nothing known here")]
    )
    assert (outputs[0].status, outputs[0].label, outputs[0].score) == ("success", "positive", 2.0)
    assert (outputs[1].status, outputs[1].error) == ("error", "no known words in the text")


def test_handler_concurrency_without_the_decorator_names_the_line_to_add(in_folder: Any, tmp_path: Path) -> None:
    shutil.copy(GUIDE / "app.py", tmp_path / "app.py")
    yaml = (GUIDE / "modalkit.yaml").read_text()
    (tmp_path / "modalkit.yaml").write_text(
        yaml.replace("# allow_concurrent_inputs_handler: 10", "allow_concurrent_inputs_handler: 10")
    )
    with pytest.raises(ConfigError) as info:
        in_folder(tmp_path)
    line = (tmp_path / "app.py").read_text().splitlines().index("@app.function(**modal_config.get_handler_settings())")
    message = str(info.value)
    assert f"{tmp_path / 'app.py'}:{line + 1}: web_endpoints" in message
    assert "add `@modal.concurrent(max_inputs=10)`" in message


def test_guide_app_serves_modalkit_requests(serve: Any, redis_url: str, redis_client: Any) -> None:
    server = serve(
        GUIDE / "app.py",
        env={
            "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__BACKEND": "redis",
            "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__REDIS_URL": redis_url,
            "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__MESSAGE_FORMAT": "modalkit",
        },
    )
    answer = httpx.post(f"{server.url}/predict_sync", params={"model_name": "my_model"}, json={"text": "awful, slow"})
    assert answer.status_code == 200
    assert answer.json() == {"status": "success", "error": None, "meta": {}, "label": "negative", "score": -1.25}

    ok, failed = "guide-ok", "guide-failed"
    redis_client.delete(ok, failed)
    jobs = {}
    for text, success_queue in (("fine and good", ok), ("??", ok), ("great", "")):
        body = {"message": {"text": text}, "success_queue": success_queue, "failure_queue": failed, "meta": {"t": text}}
        accepted = httpx.post(f"{server.url}/predict_async", params={"model_name": "my_model"}, json=body)
        assert accepted.status_code == 202, accepted.text
        jobs[text] = accepted.json()["job_id"]

    def done(job_id: str) -> Any:
        answer = httpx.get(f"{server.url}/predict_async/{job_id}")
        return answer.json() if answer.status_code == 200 else None

    assert wait_for(lambda: done(jobs["fine and good"]))["result"]["label"] == "positive"
    failed_job = wait_for(lambda: done(jobs["??"]))
    assert failed_job["status"] == "failed" and failed_job["error"]["detail"] == "no known words in the text"
    assert wait_for(lambda: done(jobs["great"]))["status"] == "succeeded"  # "" means no success queue

    import json

    success = json.loads(wait_for(lambda: redis_client.lpop(ok)))
    assert success == {"status": "success", "meta": {"t": "fine and good"}, "label": "positive", "score": 0.75}
    failure = json.loads(wait_for(lambda: redis_client.lpop(failed)))
    assert failure == {
        "status": "error",
        "error": "no known words in the text",
        "meta": {"t": "??"},
        "label": "",
        "score": 0.0,
    }
    assert redis_client.llen(ok) == 0 and redis_client.llen(failed) == 0
