"""Each example beyond MiniLM, served as a user would serve it."""

from __future__ import annotations

import httpx

from tests.conftest import ROOT


def cosine(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True))


def test_tabular_classifier_trained_at_load(serve) -> None:
    server = serve(ROOT / "examples/tabular/app.py")
    points = [[0.0, 0.0], [0.1, -0.2], [1.8, 1.8], [-1.9, 0.2], [0.3, 0.4]]
    answers = httpx.post(f"{server.url}/predict_batch", json=[{"features": p} for p in points], timeout=60).json()
    assert [a["label"] for a in answers] == ["inside", "inside", "outside", "outside", "inside"]
    assert all(0.5 <= a["probability"] <= 1 for a in answers)
    bad = httpx.post(f"{server.url}/predict", json={"features": [1.0]}, timeout=10)
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["body", "features"]


def test_ensemble_weights_members_per_model_entry(serve) -> None:
    server = serve(ROOT / "examples/ensemble/app.py")

    def embed(text: str, model: str = "ensemble") -> dict:
        return httpx.post(f"{server.url}/predict", params={"model_name": model}, json={"text": text}, timeout=60).json()

    cat, kitten, stocks = (
        embed("A cat sits on the mat."),
        embed("A kitten rests on the rug."),
        embed("Stocks fell sharply."),
    )
    assert cat["members"] == {"minilm": 0.8, "ngrams": 0.2}
    assert len(cat["embedding"]) == 384
    assert cosine(cat["embedding"], kitten["embedding"]) > cosine(cat["embedding"], stocks["embedding"])
    grams = embed("A cat sits on the mat.", "ngrams_only")
    assert grams["members"] == {"ngrams": 1.0}
    assert cosine(grams["embedding"], embed("A cat sits on the mat!", "ngrams_only")["embedding"]) > 0.8
