"""`modalkit config` prints the resolved config and Modal arguments, or every problem with its key."""

from __future__ import annotations

from pathlib import Path

from click.testing import CliRunner

from modalkit.cli import main
from tests.conftest import ROOT


def test_config_prints_resolved_settings_and_modal_arguments() -> None:
    result = CliRunner().invoke(main, ["config", "--file", str(ROOT / "examples/minilm/modalkit.yaml")])
    assert result.exit_code == 0, result.output
    assert "app_prefix: minilm-embeddings" in result.output
    assert "modal.batched:\n  max_batch_size: 32\n  wait_ms: 10" in result.output
    assert "gpu: T4" in result.output


def test_config_errors_name_the_key_and_exit_non_zero(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("app_settings:\n  deployment_config: {gpu: Z99}\n")
    result = CliRunner().invoke(main, ["config", "--file", str(bad)])
    assert result.exit_code == 1
    assert "app_settings.deployment_config.gpu" in result.output


def test_serve_rejects_a_file_without_an_app(tmp_path: Path) -> None:
    empty = tmp_path / "empty_app.py"
    empty.write_text("x = 1\n")
    result = CliRunner().invoke(main, ["serve", str(empty)])
    assert result.exit_code == 1
    assert "no @modal.asgi_app() function" in result.output


def test_config_check_prints_every_problem_with_file_and_path(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "app_settings:\n  deployment_config: {gpu: Z99, cloud: azure}\n  batch_config: {max_batch_size: 0}\n"
    )
    result = CliRunner().invoke(main, ["config", "--check", "--file", str(bad)])
    assert result.exit_code == 1
    for path in ("deployment_config.gpu", "deployment_config.cloud", "batch_config.max_batch_size"):
        assert f"{bad}: app_settings.{path}" in result.output


def test_config_check_ok() -> None:
    result = CliRunner().invoke(main, ["config", "--check", "--file", str(ROOT / "modalkit.yaml")])
    assert result.exit_code == 0 and result.output.startswith("OK: ")
