"""Config files shaped like the complete modalkit.yaml examples of ModalKit's README and docs pass `modalkit config --check`.

Each file under configs/ has the sections, keys and kinds of values of one such example (old key names
included), with its own values. Old names may warn; a warning must point at the YAML file, not at the
Python line that happened to load it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

MODALKIT = str(Path(sys.executable).parent / "modalkit")
CONFIGS = Path(__file__).resolve().parent / "configs"
FILES = sorted(CONFIGS.glob("*.yaml"))
PYTHON_LINE = re.compile(r"\.py:\d+")


def _env() -> dict[str, str]:
    # No MODALKIT_* variable from the caller's shell may change what the file says.
    env = {k: v for k, v in os.environ.items() if not k.startswith("MODALKIT_")}
    env["AWS_DEFAULT_REGION"] = "us-east-1"
    return env


def test_there_is_a_config_per_shape() -> None:
    assert len(FILES) >= 11


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_modalkit_shaped_config_passes_check(path: Path) -> None:
    result = subprocess.run(
        [MODALKIT, "config", "--file", path.name, "--check"],
        cwd=CONFIGS,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"OK: {path.name}" in result.stdout

    output = result.stdout + result.stderr
    assert not PYTHON_LINE.search(output), f"a warning names a Python source line:\n{output}"
    for line in output.splitlines():
        if "Warning" in line:
            assert path.name in line, f"a warning does not name {path.name}: {line}"
