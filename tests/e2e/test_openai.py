"""Acceptance: the official `openai` package, unchanged, against the served examples (`modalkit serve`).

MiniLM answers `/v1/embeddings` with exactly what `/predict` gives; the chat example answers `/v1/chat/completions`
and `/v1/completions`, streamed and whole; a wrong key gets OpenAI's 401.
"""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import ROOT, Server

KEY = "sk-modalkit-e2e"
AUTH = {"MODALKIT_APP_SETTINGS__AUTH_CONFIG__API_KEY_ENV": "SERVE_KEY", "SERVE_KEY": KEY}
TEXTS = ["A man is playing a guitar.", "The stock market fell sharply on Tuesday."]


@pytest.fixture(scope="module")
def minilm(serve) -> Server:
    return serve(ROOT / "examples/minilm/app.py", env=AUTH)


@pytest.fixture(scope="module")
def chat(serve) -> Server:
    return serve(ROOT / "examples/chat/app.py", env=AUTH)


def client(server: Server, key: str = KEY) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)


def test_embeddings_equal_predict(minilm: Server) -> None:
    answer = client(minilm).embeddings.create(model="minilm", input=TEXTS)  # base64, as the package asks by default
    floats = client(minilm).embeddings.create(model="minilm", input=TEXTS[0], encoding_format="float")
    for text, item in zip(TEXTS, answer.data, strict=True):
        direct = httpx.post(f"{minilm.url}/predict", json={"text": text}, headers={"x-api-key": KEY}, timeout=60)
        expected = direct.json()["embedding"]
        assert len(item.embedding) == len(expected) == 384
        assert max(abs(a - b) for a, b in zip(item.embedding, expected, strict=True)) < 1e-5
    assert (
        floats.data[0].embedding
        == httpx.post(f"{minilm.url}/predict", json={"text": TEXTS[0]}, headers={"x-api-key": KEY}, timeout=60).json()[
            "embedding"
        ]
    )
    tokens = [
        httpx.post(f"{minilm.url}/predict", json={"text": t}, headers={"x-api-key": KEY}, timeout=60).json()["tokens"]
        for t in TEXTS
    ]
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == sum(tokens) > 0
    assert [m.id for m in client(minilm).models.list().data] == ["minilm"]


def test_a_wrong_key_gets_openai_401(minilm: Server) -> None:
    with pytest.raises(openai.AuthenticationError) as refused:
        client(minilm, key="sk-wrong").embeddings.create(model="minilm", input="hello")
    assert refused.value.status_code == 401
    assert refused.value.body == {
        "message": "invalid API key",
        "type": "authentication_error",
        "code": "invalid_api_key",
        "request_id": refused.value.request_id,
    }
    with pytest.raises(openai.NotFoundError):
        client(minilm).embeddings.create(model="text-embedding-3-small", input="hello")


def test_streamed_chat_concatenates_to_the_whole_answer(chat: Server) -> None:
    model = client(chat).models.list().data[0].id
    messages = [{"role": "user", "content": "Tell me about the sea."}]
    whole = client(chat).chat.completions.create(model=model, messages=messages, max_tokens=32, seed=11)
    stream = client(chat).chat.completions.create(model=model, messages=messages, max_tokens=32, seed=11, stream=True)
    chunks = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content]
    text = whole.choices[0].message.content
    assert len(chunks) > 3 and "".join(chunks) == text and text
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 32

    completion = client(chat).completions.create(model=model, prompt="The sea", max_tokens=16, seed=5)
    streamed = client(chat).completions.create(model=model, prompt="The sea", max_tokens=16, seed=5, stream=True)
    assert "".join(c.choices[0].text for c in streamed) == completion.choices[0].text != ""
