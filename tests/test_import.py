"""`import modalkit` is cheap: no torch, no transformers, no file read beyond its own module."""

from __future__ import annotations

import json
import subprocess
import sys

PROBE = """
import json, sys
opened = []
sys.addaudithook(lambda event, args: opened.append(str(args[0])) if event == "open" else None)
import modalkit
first = list(opened)
from modalkit import InferenceBase, ModalConfig, ModalService, create_web_endpoints
print(json.dumps({
    "opened": first,
    "heavy": sorted(m for m in ("torch", "transformers") if m in sys.modules),
}))
"""


def test_import_reads_no_file_and_imports_no_torch() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    result = json.loads(out)
    assert result["heavy"] == []
    # Only Python modules are opened: no config, no model, no data file.
    assert result["opened"], "the audit hook saw no import at all"
    assert all(path.endswith((".py", ".pyc", ".so")) for path in result["opened"]), result["opened"]
