"""The `modalkit` command in process: `config`, help and version, and the one-line errors of a user's mistakes."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from modalkit import __version__
from modalkit.cli import main
from modalkit.logs import ACCESS_LOGGER, configure_logging
from tests.conftest import APPS, ROOT


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


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI sets MODALKIT_CONFIG and configures logging in this process: both are put back afterwards."""
    monkeypatch.setenv("MODALKIT_CONFIG", "")
    root, access = logging.getLogger(), logging.getLogger(ACCESS_LOGGER)
    handlers, level, access_level = root.handlers[:], root.level, access.level
    yield
    root.handlers[:], root.level = handlers, level
    access.setLevel(access_level)


def test_version_is_the_package_version() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0 and result.output == f"modalkit, version {__version__}\n"


@pytest.mark.parametrize("command", [[], *([name] for name in sorted(main.commands))])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_every_command_has_short_and_long_help(command: list[str], flag: str) -> None:
    result = CliRunner().invoke(main, [*command, flag])
    assert result.exit_code == 0 and result.output.startswith("Usage: "), result.output


def test_python_dash_m_modalkit_is_the_command() -> None:
    done = subprocess.run([sys.executable, "-m", "modalkit", "--version"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout == f"modalkit, version {__version__}\n", done.stderr


def test_config_takes_config_like_every_command_and_file_as_its_alias() -> None:
    yaml_file = str(ROOT / "modalkit.yaml")
    for flag in ("--config", "--file"):
        result = CliRunner().invoke(main, ["config", "--check", flag, yaml_file])
        assert result.exit_code == 0 and result.output == f"OK: {yaml_file}\n"


def test_a_bad_log_level_is_a_usage_error_and_case_does_not_matter(tmp_path: Path) -> None:
    bogus = CliRunner().invoke(main, ["serve", str(APPS / "echo_app.py"), "--log-level", "bogus"])
    assert bogus.exit_code == 2
    assert "Invalid value for '--log-level': 'bogus' is not one of" in bogus.output
    no_app = tmp_path / "level_app.py"
    no_app.write_text("x = 1\n")
    shouted = CliRunner().invoke(main, ["serve", str(no_app), "--log-level", "WARNING", "--port", "0"])
    assert shouted.exit_code == 1 and "no @modal.asgi_app() function" in shouted.output  # parsed, then refused


def test_a_port_in_use_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setenv("MODALKIT_PORT", str(port))  # the variable stands for --port
        result = CliRunner().invoke(main, ["serve", str(APPS / "echo_app.py")])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: cannot listen on 127.0.0.1:{port}: Address already in use; choose another with --port or MODALKIT_PORT\n"
    )


def test_a_port_that_is_not_a_number_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODALKIT_PORT", "eighty")
    result = CliRunner().invoke(main, ["serve", str(APPS / "echo_app.py")])
    assert result.exit_code == 2 and "'eighty' is not a valid integer" in result.output


def test_an_app_with_a_syntax_error_is_one_line_with_file_and_line(tmp_path: Path) -> None:
    app = tmp_path / "syntax_error_app.py"
    app.write_text("import modal\n\ndef web(:\n    pass\n")
    result = CliRunner().invoke(main, ["serve", str(app), "--port", "0"])
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: {app}:3: ") and result.output.count("\n") == 1, result.output


def test_an_app_that_fails_on_import_says_where_without_a_traceback(tmp_path: Path) -> None:
    app = tmp_path / "missing_import_app.py"
    app.write_text("import modal\nimport no_such_package_here\n")
    result = CliRunner().invoke(main, ["run", str(app), "--input", str(app), "--output", str(tmp_path / "o.jsonl")])
    assert result.exit_code == 1
    assert result.output == (
        f"Error: {app}:2: loading {app} raised ModuleNotFoundError: No module named 'no_such_package_here'\n"
    )


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ("missing.yaml", "missing.yaml: config file not found"),
        ("bad.yaml", "bad.yaml: app_settings.deployment_config.gpu"),
    ],
)
def test_a_missing_or_invalid_config_is_an_error_without_a_traceback(tmp_path: Path, config: str, message: str) -> None:
    (tmp_path / "bad.yaml").write_text("app_settings:\n  deployment_config: {gpu: Z99}\n")
    app = tmp_path / f"config_{Path(config).stem}_app.py"  # a module name of its own: the app reads its config anew
    app.write_text((APPS / "echo_app.py").read_text())
    result = CliRunner().invoke(main, ["serve", str(app), "--config", str(tmp_path / config), "--port", "0"])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("flag", "level", "shown"), [(False, "info", False), (True, "info", True), (True, "error", True)]
)
def test_the_access_log_is_written_only_with_the_flag_whatever_the_level(
    capsys: pytest.CaptureFixture[str], flag: bool, level: str, shown: bool
) -> None:
    configure_logging(level, json_lines=True, access_log=flag)
    logging.getLogger(ACCESS_LOGGER).info("POST /predict 200 1.0ms")
    logging.getLogger("modalkit.pool").info("an info line")
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [line["logger"] for line in lines if line["logger"] == ACCESS_LOGGER] == ([ACCESS_LOGGER] if shown else [])
    assert any(line["logger"] == "modalkit.pool" for line in lines) == (level == "info")
