"""`modalkit init`: the scaffold is the MiniLM example, and its own test passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from click.testing import CliRunner

from modalkit.cli import main
from tests.conftest import ROOT


def test_init_creates_the_example_and_its_test_passes(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["init", "sentiment"])
    assert result.exit_code == 0, result.output
    app_dir = tmp_path / "sentiment"
    assert (app_dir / "app.py").read_text() == (ROOT / "examples/minilm/app.py").read_text()
    assert "app_prefix: sentiment" in (app_dir / "modalkit.yaml").read_text()
    again = CliRunner().invoke(main, ["init", "sentiment"])
    assert again.exit_code == 1 and "already exists" in again.output
    test_run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(app_dir / "test_app.py")],
                              cwd=app_dir, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert test_run.returncode == 0, test_run.stdout[-2000:]


def test_the_template_is_the_example() -> None:
    template = ROOT / "modalkit/templates/minilm"
    assert (template / "app.py").read_text() == (ROOT / "examples/minilm/app.py").read_text()
    assert (template / "modalkit.yaml").read_text() == (ROOT / "examples/minilm/modalkit.yaml").read_text()
