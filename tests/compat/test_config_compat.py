"""How ModalKit users point at, overlay and name their configuration."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from modalkit.config import ModalConfig
from modalkit.config.settings import Settings
from modalkit.exceptions import ConfigDeprecationWarning, ConfigError, ConfigWarning
from modalkit.modal_config import ModalConfig as ModalKitConfig

MINIMAL = "app_settings:\n  app_prefix: {prefix}\nmodel_settings:\n  model_entries: {{m: {{}}}}\n"


@pytest.fixture
def folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A working directory with no MODALKIT_* variables set, and Settings' file choice restored after."""
    chosen = Settings.model_config.get("yaml_file")
    for name in ("MODALKIT_CONFIG", "MODALKIT_APP_POSTFIX", "MODALKIT_CONFIG_JSON"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    Settings.model_config["yaml_file"] = chosen


def test_settings_yaml_file_chooses_the_file(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "deploy.yaml").write_text(MINIMAL.format(prefix="chosen"))
    Settings.model_config["yaml_file"] = "deploy.yaml"
    assert ModalConfig().app_settings.app_prefix == "chosen"
    assert Settings().app_settings.app_prefix == "chosen"  # ModalKit's Settings() reads the file too
    assert ModalKitConfig(Settings()).app_settings.app_prefix == "chosen"
    (folder / "other.yaml").write_text(MINIMAL.format(prefix="other"))
    monkeypatch.setenv("MODALKIT_CONFIG", "other.yaml")  # the variable wins, as in ModalKit
    assert ModalConfig().app_settings.app_prefix == "other"


def test_app_postfix(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "modalkit.yaml").write_text(MINIMAL.format(prefix="svc"))
    assert ModalConfig().app_name == "svc"
    assert ModalKitConfig().app_name == "svc-dev"  # ModalKit's default postfix under ModalKit's import path
    monkeypatch.setenv("MODALKIT_APP_POSTFIX", "-prod")
    assert (ModalConfig().app_name, ModalKitConfig().app_name) == ("svc-prod", "svc-prod")
    monkeypatch.setenv("MODALKIT_APP_POSTFIX", "")
    assert ModalKitConfig().app_name == "svc"


def test_dotenv_overlays_yaml_and_yields_to_the_environment(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (folder / "modalkit.yaml").write_text(
        "app_settings:\n  app_prefix: from-yaml\n  batch_config: {max_batch_size: 4, wait_ms: 7}\n"
    )
    (folder / ".env").write_text(
        "MODALKIT_APP_SETTINGS__APP_PREFIX=from-dotenv\n"
        "MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE=16\n"
        'MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__SECRETS=["hf-token"]\n'
        "MODALKIT_APP_POSTFIX=-staging\n"
        "UNRELATED=1\n"
    )
    config = ModalKitConfig()
    assert config.app_name == "from-dotenv-staging"
    batch = config.app_settings.batch_config
    assert (batch.max_batch_size, batch.wait_ms) == (16, 7)
    assert config.app_settings.deployment_config.secrets == ["hf-token"]
    monkeypatch.setenv("MODALKIT_APP_SETTINGS__BATCH_CONFIG__MAX_BATCH_SIZE", "32")
    assert ModalConfig().app_settings.batch_config.max_batch_size == 32
    (folder / ".env").write_text("MODALKIT_APP_SETTINGS__BATCH_CONFIG__WAIT_MS=forever\n")
    with pytest.raises(ConfigError, match=r"\.env: app_settings\.batch_config\.wait_ms"):
        ModalConfig()


def test_an_error_in_the_first_overlay_names_the_first_file(folder: Path) -> None:
    (folder / "base.yaml").write_text("app_settings:\n  deployment_config:\n    min_containers: 3\n")
    (folder / "prod.yaml").write_text("app_settings:\n  deployment_config:\n    gpu: T4\n    max_containers: 2\n")
    with pytest.raises(ConfigError) as info:
        ModalConfig(["base.yaml", "prod.yaml"])
    assert "base.yaml, prod.yaml: app_settings.deployment_config: min_containers (3)" in str(info.value)
    (folder / "prod.yaml").write_text("app_settings:\n  deployment_config:\n    cpu: 2\n")
    (folder / "base.yaml").write_text("app_settings:\n  deployment_config:\n    gpu: Z99\n")
    with pytest.raises(ConfigError) as info:
        ModalConfig(["base.yaml", "prod.yaml"])
    assert str(info.value).splitlines()[1].strip().startswith("base.yaml: app_settings.deployment_config.gpu")


def test_old_name_warnings_point_at_the_yaml_key(folder: Path) -> None:
    (folder / "modalkit.yaml").write_text(
        "app_settings:\n  deployment_config:\n    gpu: T4\n    container_idle_timeout: 120\n"
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ModalConfig()
    [warning] = [w for w in caught if issubclass(w.category, ConfigDeprecationWarning)]
    assert (warning.filename, warning.lineno) == ("modalkit.yaml", 4)
    assert "app_settings.deployment_config.container_idle_timeout" in str(warning.message)


def test_a_tag_on_an_image_that_has_one_is_not_appended(folder: Path) -> None:
    (folder / "modalkit.yaml").write_text(
        "app_settings:\n  build_config:\n    image: python:3.11-slim\n    tag: latest\n"
    )
    with pytest.warns(ConfigWarning, match="'latest' is not used"):
        config = ModalConfig()
    assert config.app_settings.build_config.registry_image == "python:3.11-slim"
    (folder / "modalkit.yaml").write_text(
        "app_settings:\n  build_config:\n    image: localhost:5000/team/img\n    tag: v2\n"
    )
    assert ModalConfig().app_settings.build_config.registry_image == "localhost:5000/team/img:v2"


def test_async_config_becomes_queue_config(folder: Path) -> None:
    (folder / "modalkit.yaml").write_text("app_settings:\n  async_config:\n    timeout: 600\n    result_ttl: 3600\n")
    with pytest.warns(ConfigDeprecationWarning, match=r"async_config\.timeout"):
        queue = ModalConfig().app_settings.queue_config
    assert (queue.job_timeout_seconds, queue.result_ttl_seconds) == (600, 3600)
    (folder / "modalkit.yaml").write_text("app_settings:\n  async_config:\n    retries: 2\n")
    with pytest.raises(ConfigError, match=r"async_config\.retries: unknown key"):
        ModalConfig()


@pytest.mark.parametrize(("value", "meaning"), [(None, "off"), (-1, "every batch"), (0, "every batch"), (30, "30 s")])
def test_volume_reload_interval_keeps_modalkit_meaning(folder: Path, value: int | None, meaning: str) -> None:
    line = "" if value is None else f"  deployment_config:\n    volume_reload_interval_seconds: {value}\n"
    (folder / "modalkit.yaml").write_text(f"app_settings:\n{line}" if line else "{}\n")
    assert ModalConfig().app_settings.deployment_config.volume_reload_interval_seconds == value
