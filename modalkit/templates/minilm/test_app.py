"""A first test of your app: the real model, called the way a container calls it."""

import math
import os
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
os.environ.setdefault("MODALKIT_CONFIG", str(HERE / "modalkit.yaml"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(HERE))

import app  # noqa: E402


def test_embeddings_are_unit_vectors() -> None:
    outputs = app.Embedder().process_request.local([app.EmbedIn(text="hello"), app.EmbedIn(text="world")])
    assert len(outputs) == 2
    for output in outputs:
        assert len(output.embedding) == 384
        assert math.isclose(sum(x * x for x in output.embedding), 1.0, rel_tol=1e-3)
