"""`modalkit init NAME`: a new app folder from the MiniLM example (app.py, modalkit.yaml, test_app.py)."""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path

from modalkit.exceptions import ModalkitError

TEMPLATE = "minilm"
FILES = ("app.py", "modalkit.yaml", "test_app.py")


def scaffold(name: str, parent: Path) -> Path:
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise ModalkitError(f"{name!r} cannot name an app: use letters, digits, '.', '_' or '-' (64 at most)")
    target = parent / name
    if target.exists():
        raise ModalkitError(f"{target} already exists; choose another name or remove it")
    source = resources.files("modalkit") / "templates" / TEMPLATE
    target.mkdir(parents=True)
    for file in FILES:
        text = (source / file).read_text()
        if file == "modalkit.yaml":
            text = text.replace("app_prefix: minilm-embeddings", f"app_prefix: {name}")
        (target / file).write_text(text)
    return target
