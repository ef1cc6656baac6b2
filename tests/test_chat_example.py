"""The chat example's model in-process, without a server: it loads fast, really streams, and honours its inputs.

examples/chat/app.py trains a small character-level transformer at load; these tests load it once and generate
with it directly (`TinyChat.predict_stream`), then once through the service (`Chat.open_local`, `stream_chunks`).
"""

from __future__ import annotations

import asyncio
import string
import sys
import threading
import time
from collections.abc import Iterator
from types import ModuleType
from typing import Any

import pytest
from pydantic import ValidationError

from modalkit.app_loader import import_app
from tests.conftest import ROOT

EXAMPLE = ROOT / "examples" / "chat"


@pytest.fixture(scope="module")
def example() -> Iterator[ModuleType]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MODALKIT_CONFIG", str(EXAMPLE / "modalkit.yaml"))
        import torch  # imported before the load is timed, as a container has it by then

        threads = torch.get_num_threads()
        yield import_app(EXAMPLE / "app.py")
        torch.set_num_threads(threads)  # the model sets one thread for its process; give the others theirs back


@pytest.fixture(scope="module")
def loaded(example: ModuleType) -> tuple[Any, float]:
    started = time.perf_counter()
    model = example.TinyChat("tiny-chat", "models", {})
    return model, time.perf_counter() - started


@pytest.fixture(scope="module")
def model(loaded: tuple[Any, float]) -> Any:
    return loaded[0]


def answer(model: Any, example: ModuleType, **fields: Any) -> list[str]:
    return list(model.predict_stream(example.ChatIn(**fields)))


def test_learns_the_text_at_load(loaded: tuple[Any, float]) -> None:
    model, _ = loaded  # how long the training at load takes is measured by benchmarks/streaming.py, never asserted here
    assert model.loss < 0.5, "the last training batch's loss: the model has learnt its text"


def test_a_seed_gives_the_same_text(model: Any, example: ModuleType) -> None:
    first = answer(model, example, prompt="The sea", seed=7, temperature=0.8)
    assert answer(model, example, prompt="The sea", seed=7, temperature=0.8) == first
    others = {"".join(answer(model, example, prompt="The sea", seed=s, temperature=0.8)) for s in (8, 9, 10)}
    assert others - {"".join(first)}, "other seeds write other text"


def test_temperature_zero_always_takes_the_likeliest(model: Any, example: ModuleType) -> None:
    greedy = answer(model, example, prompt="Alice was", temperature=0)
    assert answer(model, example, prompt="Alice was", temperature=0, seed=123) == greedy


def test_max_tokens_is_the_number_of_one_character_chunks(model: Any, example: ModuleType) -> None:
    assert example.TOKENS_PER_CHUNK == 1
    for limit in (1, 5, 64):
        chunks = answer(model, example, prompt="Alice", max_tokens=limit, seed=1)
        assert len(chunks) == limit and all(isinstance(c, str) and len(c) == 1 for c in chunks)


def test_a_stop_string_ends_the_answer_and_is_not_sent(model: Any, example: ModuleType) -> None:
    text = "".join(answer(model, example, prompt="Alice was", temperature=0, max_tokens=64))
    stop = text[20:23]  # three characters the greedy answer writes: it must stop just before them
    stopped = answer(model, example, prompt="Alice was", temperature=0, max_tokens=64, stop=[stop])
    assert "".join(stopped) == text[: text.index(stop)]
    # a stop string that begins in one token and ends in another is held back, then cut
    assert list(example.before_stop(iter(["ab", "cd", "ef"]), ["de"])) == ["ab", "c"]
    assert list(example.before_stop(iter("xyz"), ["yzq"])) == ["x", "y", "z"]  # a partial match is sent at the end


def test_the_first_chunk_comes_long_before_the_last(model: Any, example: ModuleType) -> None:
    started = time.perf_counter()
    stamps = [time.perf_counter() - started for _ in model.predict_stream(example.ChatIn(prompt="The", seed=3))]
    assert len(stamps) == 64
    assert stamps[0] < stamps[-1] / 10, f"first chunk after {stamps[0] * 1000:.1f} ms of {stamps[-1] * 1000:.0f} ms"


def test_the_text_is_english_ish(model: Any, example: ModuleType) -> None:
    text = "".join(
        "".join(answer(model, example, prompt=prompt, seed=seed, max_tokens=64))
        for seed, prompt in enumerate(["The sea", "Alice was", "", "Once upon a time"])
    )
    usual = sum(c in string.ascii_letters + " " for c in text) / len(text)
    assert usual > 0.85, text
    words = text.split()
    assert sum(w.strip(string.punctuation).lower() in {"the", "and", "she", "her", "a", "to", "of"} for w in words) >= 8


def test_a_chat_is_rendered_as_a_prompt(example: ModuleType) -> None:
    chat = example.ChatIn(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}])
    assert chat.text() == "user: Hi\nassistant: Hello\nassistant:"
    assert example.ChatIn(prompt="The sea").text() == "The sea"
    for wrong in ({"prompt": "a", "messages": []}, {"max_tokens": 0}, {"max_tokens": 513}, {"temperature": 2.5}):
        with pytest.raises(ValidationError):
            example.ChatIn(**wrong)


def test_streams_on_threads_at_once_write_what_they_write_alone(model: Any, example: ModuleType) -> None:
    item = example.ChatIn(prompt="Down", seed=5, max_tokens=32)
    alone = list(model.predict_stream(item))
    results: list[list[str]] = []

    def stream() -> None:
        results.append(list(model.predict_stream(item)))

    threads = [threading.Thread(target=stream) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [alone] * 4


def test_the_service_streams_the_model_chunks(example: ModuleType) -> None:
    service = example.Chat.open_local("tiny-chat")
    item = example.ChatIn(prompt="The sea", seed=1, max_tokens=16, stop=["zzz"])

    async def collect() -> list[Any]:
        return [chunk async for chunk in service.stream_chunks(item)]

    chunks = asyncio.run(collect())
    assert len(chunks) == 16 and all(isinstance(c, str) for c in chunks)


def test_the_streaming_benchmark_reads_server_sent_events(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "path", list(sys.path))  # the benchmark puts benchmarks/ on the path
    for name in ("streaming", "_report"):  # it imports as these; no other test's modules are called so
        monkeypatch.delitem(sys.modules, name, raising=False)
    benchmark = import_app(ROOT / "benchmarks" / "streaming.py")
    canned = (
        b'data: "T"\n\ndata: "h"\r\n\r\n: a comment\n\ndata: {"text": "e"}\n\n'
        b'event: error\ndata: {"detail": "the model broke"}\n\nevent: done\ndata: {}\n\n'
    )
    expected = [
        ("message", '"T"'),
        ("message", '"h"'),
        ("message", '{"text": "e"}'),
        ("error", '{"detail": "the model broke"}'),
        ("done", "{}"),
    ]
    whole = benchmark.EventStream()
    assert list(whole.feed(canned)) == expected
    for size in (1, 3, 7):  # as the network may cut it: events come out whole, however the bytes arrive
        pieces = benchmark.EventStream()
        events = [event for at in range(0, len(canned), size) for event in pieces.feed(canned[at : at + size])]
        assert events == expected
