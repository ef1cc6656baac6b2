"""docs/configuration.md names every key of the schema."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from pydantic import BaseModel

from modalkit.config.settings import ModalkitSettings
from tests.conftest import ROOT


def keys(model: type[BaseModel]) -> set[str]:
    found = set()
    for name, field in model.model_fields.items():
        found.add(field.alias or name)
        for arg in (field.annotation, *getattr(field.annotation, "__args__", ())):
            for inner in (arg, *getattr(arg, "__args__", ())):
                if isinstance(inner, type) and issubclass(inner, BaseModel):
                    found |= keys(inner)
    return found


def test_configuration_reference_lists_every_key() -> None:
    text = (ROOT / "docs/configuration.md").read_text()
    missing = sorted(k for k in keys(ModalkitSettings) if not re.search(rf"\b{k}\b", text))
    assert not missing, f"docs/configuration.md does not describe: {missing}"


def test_docs_build_without_warnings(tmp_path) -> None:  # type: ignore[no-untyped-def]
    mkdocs = Path(sys.executable).parent / "mkdocs"
    result = subprocess.run(
        [str(mkdocs), "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]


def test_every_python_snippet_imports_cleanly() -> None:
    imports = []
    for page in sorted((ROOT / "docs").glob("*.md")):
        for block in re.findall(r"```python\n(.*?)```", page.read_text(), re.S):
            imports += [line for line in block.splitlines() if re.match(r"(import|from) \S+", line)]
    assert imports
    program = "\n".join(sorted(set(imports)))
    result = subprocess.run([sys.executable, "-c", program], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
