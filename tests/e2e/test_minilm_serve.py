"""Acceptance: `modalkit serve examples/minilm/app.py` answers 64 concurrent requests with real embeddings."""

from __future__ import annotations

import asyncio
import json
import math
import re
import subprocess

import httpx

from tests.conftest import ROOT

SIMILAR = ("A man is playing a guitar.", "Someone plays the guitar.")
UNRELATED = "The stock market fell sharply on Tuesday."


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


async def embed_all(url: str, texts: list[str]) -> list[httpx.Response]:
    async with httpx.AsyncClient(base_url=url, timeout=120) as client:
        return await asyncio.gather(*(client.post("/predict", json={"text": t}) for t in texts))


def test_64_concurrent_predictions_are_correct_and_batched(serve) -> None:
    server = serve(ROOT / "examples/minilm/app.py")
    texts = [*SIMILAR, UNRELATED] + [f"sentence number {i} about topic {i % 7}" for i in range(61)]
    responses = asyncio.run(embed_all(server.url, texts))

    assert [r.status_code for r in responses] == [200] * 64
    embeddings = [r.json()["embedding"] for r in responses]
    for embedding in embeddings:
        assert len(embedding) == 384
        assert math.isclose(math.sqrt(sum(x * x for x in embedding)), 1.0, abs_tol=1e-4)
    similar, paraphrase, unrelated = embeddings[:3]
    assert cosine(similar, paraphrase) > cosine(similar, unrelated) + 0.3
    # Identical text in, identical embedding out, whatever batch it landed in.
    again = asyncio.run(embed_all(server.url, [SIMILAR[0]]))[0].json()["embedding"]
    assert cosine(again, similar) > 0.9999

    batch_sizes = server.model_health("minilm")["batch_sizes"]
    assert sum(int(size) * n for size, n in batch_sizes.items()) == 64 + 1
    assert max(int(size) for size in batch_sizes) > 1
    assert max(int(size) for size in batch_sizes) <= 32


def test_getting_started_word_for_word(serve) -> None:
    """The curl of docs/getting-started.md, run as written (against this test's port), returns an embedding."""
    page = (ROOT / "docs/getting-started.md").read_text()
    command = next(line for line in page.splitlines() if line.startswith("curl -s http://127.0.0.1:8000/predict "))
    server = serve(ROOT / "examples/minilm/app.py")
    answer = subprocess.run(
        re.sub(r"http://127\.0\.0\.1:8000", server.url, command), shell=True, capture_output=True, text=True, check=True
    ).stdout
    assert len(json.loads(answer)["embedding"]) == 384
