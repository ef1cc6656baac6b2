"""The wheel, as a user gets it: built from the sources, installed with its dependencies into a fresh venv.

Everything the package needs at run time must be in the wheel (the templates of `modalkit init`, the
`modalkit` script, `python -m modalkit`), and its declared dependencies must be enough to run the command.
uv builds and installs (about 20 s; pip takes minutes for modal's dependencies); without uv, pip does it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from modalkit import __version__
from tests.conftest import ROOT

UV = shutil.which("uv", path=str(Path(sys.executable).parent)) or shutil.which("uv")


def sh(*cmd: str | Path, cwd: Path) -> str:
    done = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, f"{cmd} exited {done.returncode}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bin/ folder of a new venv with the wheel of these sources installed in it."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"  # a copy: a build leaves build/ and *.egg-info behind, never in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "modalkit", source / "modalkit", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = work / "venv"
    if UV:
        sh(UV, "build", "--quiet", "--wheel", "--out-dir", work / "dist", source, cwd=work)
        sh(UV, "venv", "--quiet", "--python", sys.executable, venv, cwd=work)
        sh(UV, "pip", "install", "--quiet", "--python", venv / "bin/python", *(work / "dist").glob("*.whl"), cwd=work)
    else:
        sh(sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", work / "dist", source, cwd=work)
        sh(sys.executable, "-m", "venv", venv, cwd=work)
        sh(venv / "bin/python", "-m", "pip", "install", "--quiet", *(work / "dist").glob("*.whl"), cwd=work)
    return venv / "bin"


def test_the_installed_command_prints_its_version(installed: Path, tmp_path: Path) -> None:
    assert sh(installed / "modalkit", "--version", cwd=tmp_path) == f"modalkit, version {__version__}\n"
    assert sh(installed / "python", "-m", "modalkit", "--version", cwd=tmp_path) == f"modalkit, version {__version__}\n"


def test_the_installed_package_is_the_wheel_not_the_checkout(installed: Path, tmp_path: Path) -> None:
    where = sh(installed / "python", "-c", "import modalkit; print(modalkit.__file__)", cwd=tmp_path)
    assert Path(where.strip()).is_relative_to(installed.parent)


def test_the_installed_command_checks_a_config(installed: Path, tmp_path: Path) -> None:
    shutil.copy(ROOT / "examples/minilm/modalkit.yaml", tmp_path / "modalkit.yaml")
    assert sh(installed / "modalkit", "config", "--check", cwd=tmp_path) == "OK: modalkit.yaml\n"


def test_the_wheel_carries_the_templates_of_init(installed: Path, tmp_path: Path) -> None:
    sh(installed / "modalkit", "init", "demo", cwd=tmp_path)
    assert sorted(p.name for p in (tmp_path / "demo").iterdir()) == ["app.py", "modalkit.yaml", "test_app.py"]
