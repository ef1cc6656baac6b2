"""The Modal path, offline: real `modal.App` objects built from our config, read with `Function.info()`."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from modalkit.app_loader import import_app, user_class
from modalkit.config import ModalConfig
from modalkit.exceptions import ConfigDeprecationWarning
from modalkit.outcome import Failure, http_status
from tests.conftest import APPS, ROOT
from tests.modal_introspect import autoscaler


def load(path: Path, config: Path, monkeypatch: pytest.MonkeyPatch, module: str) -> object:
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    monkeypatch.delitem(sys.modules, module, raising=False)
    return import_app(path)


def test_example_app_builds_with_the_yaml_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    example = load(ROOT / "examples/minilm/app.py", ROOT / "examples/minilm/modalkit.yaml", monkeypatch, "app")
    service_fn = example.Embedder._get_class_service_function()  # type: ignore[attr-defined]
    info = service_fn.info()
    assert info.gpus == [("T4", 1)]
    assert (info.batching_info.max_batch_size, info.batching_info.wait_ms) == (32, 10)
    assert info.concurrency_info.max_inputs == 1
    assert info.method_names == ["process_request"]
    scaling = autoscaler(service_fn)
    assert (scaling.min_containers, scaling.max_containers, scaling.scaledown_window) == (0, 2, 300)

    web_info = example.web.info()  # type: ignore[attr-defined]
    assert web_info.web_info is not None
    assert web_info.concurrency_info.max_inputs == 100
    assert example.app.name == "minilm-embeddings"  # type: ignore[attr-defined]


def test_old_names_build_a_real_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "old.yaml"
    config.write_text(
        "app_settings:\n  app_prefix: old-names\n  deployment_config:\n    gpu: A10G\n"
        "    concurrency_limit: 3\n"
        "    keep_warm: 1\n    container_idle_timeout: 200\n    allow_concurrent_inputs: 2\n"
        "    allow_concurrent_inputs_handler: 20\n  batch_config: {max_batch_size: 4, wait_ms: 50}\n"
        "model_settings:\n  model_entries: {echo: {}}\n"
    )
    with pytest.warns(ConfigDeprecationWarning) as warned:
        echo = load(APPS / "echo_app.py", config, monkeypatch, "echo_app")
    old_names = {w.message.old.rsplit(".", 1)[1] for w in warned if isinstance(w.message, ConfigDeprecationWarning)}
    assert old_names == {
        "concurrency_limit",
        "keep_warm",
        "container_idle_timeout",
        "allow_concurrent_inputs",
        "allow_concurrent_inputs_handler",
    }
    assert all(str(w.message).startswith(f"{config}: ") for w in warned)
    service_fn = echo.EchoService._get_class_service_function()  # type: ignore[attr-defined]
    info = service_fn.info()
    assert info.gpus == [("A10G", 1)]
    assert info.concurrency_info.max_inputs == 2
    assert (info.batching_info.max_batch_size, info.batching_info.wait_ms) == (4, 50)
    scaling = autoscaler(service_fn)
    assert (scaling.min_containers, scaling.max_containers, scaling.scaledown_window) == (1, 3, 200)
    assert echo.web.info().concurrency_info.max_inputs == 20  # type: ignore[attr-defined]


def test_process_request_runs_through_modal_local(monkeypatch: pytest.MonkeyPatch) -> None:
    echo = load(APPS / "echo_app.py", APPS / "echo.yaml", monkeypatch, "echo_app")
    service = echo.EchoService  # type: ignore[attr-defined]
    outputs = service(model_name="shout").process_request.local([echo.EchoIn(text="a"), echo.EchoIn(text="bad")])  # type: ignore[attr-defined]
    assert outputs[0].text == "!a"
    assert isinstance(outputs[1], Failure) and outputs[1].cause == "error" and http_status(outputs[1]) == 500

    cuda = service().process_request.local([echo.EchoIn(text="x"), echo.EchoIn(text="cuda")])  # type: ignore[attr-defined]
    assert all(isinstance(o, Failure) and http_status(o) == 503 and o.recycles_container for o in cuda)


def test_service_gets_enter_and_batched_from_its_own_config(monkeypatch: pytest.MonkeyPatch) -> None:
    echo = load(APPS / "echo_app.py", APPS / "echo.yaml", monkeypatch, "echo_app")
    cls = user_class(echo.EchoService)  # type: ignore[attr-defined]
    assert type(cls.__dict__["load_artefacts"]).__name__ == "PartialFunction"
    assert type(cls.__dict__["process_request"]).__name__ == "PartialFunction"
    assert cls.default_model_name() == "echo"


def test_image_carries_the_resolved_config_into_the_container(monkeypatch: pytest.MonkeyPatch) -> None:
    import modal

    local = ModalConfig(ROOT / "examples/minilm/modalkit.yaml")
    assert isinstance(local.get_image(), modal.Image)
    # Inside a Modal container there is no YAML file: the image's environment holds the resolved config.
    from modalkit.config.translate import resolved_config_json

    monkeypatch.setenv("MODALKIT_CONFIG_JSON", resolved_config_json(local.settings))
    monkeypatch.setenv("MODALKIT_CONFIG", "/nonexistent.yaml")
    assert ModalConfig().to_dict() == local.to_dict()
