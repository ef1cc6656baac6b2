"""The YAML schema: values, overlays, environment overrides, old names, and errors that name the key."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from modalkit.config import ModalConfig
from modalkit.exceptions import ConfigDeprecationWarning, ConfigError
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples/minilm/modalkit.yaml"


def write(tmp_path: Path, text: str, name: str = "modalkit.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def problems(path: Path | list[Path]) -> str:
    with pytest.raises(ConfigError) as info:
        ModalConfig(path)  # type: ignore[arg-type]
    return str(info.value)


def test_example_config_resolves() -> None:
    config = ModalConfig(EXAMPLE)
    assert config.app_name == "minilm-embeddings"
    assert config.get_batched_settings() == {"max_batch_size": 32, "wait_ms": 10}
    assert config.get_concurrent_settings(handler=True) == {"max_inputs": 100}
    settings = config.get_app_cls_settings()
    assert settings["gpu"] == "T4"
    assert settings["max_containers"] == 2
    assert settings["scaledown_window"] == 300
    assert config.model_entry("minilm") == {"max_length": 256, "normalize": True}


def test_root_config_matches_the_example() -> None:
    assert ModalConfig(ROOT / "modalkit.yaml").to_dict() == ModalConfig(EXAMPLE).to_dict()


def test_config_file_from_env_with_overlay(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = write(tmp_path, "app_settings:\n  app_prefix: base\n  batch_config: {max_batch_size: 4, wait_ms: 7}\n")
    prod = write(tmp_path, "app_settings:\n  batch_config: {max_batch_size: 16}\n", "prod.yaml")
    monkeypatch.setenv("MODALKIT_CONFIG", f"{base},{prod}")
    config = ModalConfig()
    assert config.app_name == "base"
    assert config.get_batched_settings() == {"max_batch_size": 16, "wait_ms": 7}


def test_environment_variables_override_yaml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path, "app_settings:\n  batch_config: {max_batch_size: 4}\n")
    monkeypatch.setenv("MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE", "12")
    assert ModalConfig(path).get_batched_settings()["max_batch_size"] == 12


def test_default_file_is_modalkit_yaml_in_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MODALKIT_CONFIG", raising=False)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=r"modalkit\.yaml: config file not found"):
        ModalConfig()
    write(tmp_path, "app_settings: {app_prefix: here}\n")
    assert ModalConfig().app_name == "here"


DEPLOY_YAML = "app_settings:\n  deployment_config: "
BATCH_YAML = "app_settings:\n  batch_config: "


@pytest.mark.parametrize(
    ("yaml_text", "path", "message"),
    [
        (DEPLOY_YAML + "{gpu: Z99}\n", "app_settings.deployment_config.gpu", "unknown GPU"),
        (DEPLOY_YAML + "{gpu: 'H100:9'}\n", "app_settings.deployment_config.gpu", "1 and 8"),
        (BATCH_YAML + "{max_batch_size: 0}\n", "batch_config.max_batch_size", "greater than or equal to 1"),
        (BATCH_YAML + "{wait_ms: 600001}\n", "app_settings.batch_config.wait_ms", "less than or equal to 600000"),
        (DEPLOY_YAML + "{colour: red}\n", "app_settings.deployment_config.colour", "unknown key"),
        (DEPLOY_YAML + "{scaledown_window: 1}\n", "deployment_config.scaledown_window", "greater than or equal to 2"),
        (DEPLOY_YAML + "{min_containers: 3, max_containers: 1}\n", "deployment_config", "min_containers (3) is"),
        (DEPLOY_YAML + "{cpu: [4, 2]}\n", "app_settings.deployment_config.cpu", "request <= limit"),
        ("app_settings:\n  auth_config: {enabled: true}\n", "app_settings.auth_config.enabled", "unknown key"),
        ("surprise: 1\n", "surprise", "unknown key"),
    ],
)
def test_bad_values_name_the_yaml_path_and_file(tmp_path: Path, yaml_text: str, path: str, message: str) -> None:
    config_file = write(tmp_path, yaml_text)
    error = problems(config_file)
    assert f"{config_file}: " in error
    assert path in error
    assert message in error


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    error = problems(write(tmp_path, "app_settings:\n  batch_config: {max_batch_size: 0, wait_ms: -1}\n"))
    assert "max_batch_size" in error and "wait_ms" in error


def test_error_names_the_overlay_that_set_the_value(tmp_path: Path) -> None:
    base = write(tmp_path, "app_settings:\n  batch_config: {max_batch_size: 4}\n")
    bad = write(tmp_path, "app_settings:\n  batch_config: {max_batch_size: 5000}\n", "bad.yaml")
    assert f"{bad}: app_settings.batch_config.max_batch_size" in problems([base, bad])


def test_gpu_names_are_normalised_and_fallback_lists_allowed(tmp_path: Path) -> None:
    path = write(tmp_path, "app_settings:\n  deployment_config: {gpu: [h100, 'a100-80gb:2', 'l4']}\n")
    assert ModalConfig(path).get_app_cls_settings()["gpu"] == ["H100", "A100-80GB:2", "L4"]


def test_old_names_translate_with_a_warning_naming_the_new_key(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "app_settings:\n  deployment_config:\n    concurrency_limit: 5\n    keep_warm: 1\n"
        "    container_idle_timeout: 120\n    allow_concurrent_inputs: 4\n    allow_concurrent_inputs_handler: 50\n",
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        config = ModalConfig(path)
    messages = [str(w.message) for w in caught if issubclass(w.category, ConfigDeprecationWarning)]
    expected = f"{path}: app_settings.deployment_config.concurrency_limit is deprecated, use app_settings."
    assert any(m.startswith(expected + "deployment_config.max_containers") for m in messages), messages
    settings = config.get_app_cls_settings()
    assert (settings["max_containers"], settings["min_containers"], settings["scaledown_window"]) == (
        5,
        1,
        120,
    )
    assert config.get_concurrent_settings() == {"max_inputs": 4}
    assert config.get_concurrent_settings(handler=True) == {"max_inputs": 50}


def test_old_and_new_name_together_is_an_error(tmp_path: Path) -> None:
    error = problems(write(tmp_path, "app_settings:\n  deployment_config: {concurrency_limit: 2, max_containers: 3}\n"))
    assert "concurrency_limit" in error and "max_containers" in error


def test_invalid_yaml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "app_settings: [unclosed\n")
    assert f"{path}: not valid YAML" in problems(path)
