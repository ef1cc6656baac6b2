"""The web edge of streaming and of the OpenAI routes, in process: the real routes, the official `openai` package,
and a scripted runtime in place of containers (tests/e2e/test_streaming.py and test_openai.py serve the examples).

The scripted runtime yields what each input's text names, so every edge case is exact: chunk boundaries across a
stop string, a failure before or after the first chunk, the token counts of embeddings.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from modalkit import InferenceBase, ModalConfig, ModalService, StreamingService, create_web_endpoints
from modalkit.observation import Observation
from modalkit.outcome import Failure
from tests.conftest import SPANS

KEY = "sk-test-key"


class Prompt(BaseModel):
    prompt: str = ""
    max_tokens: int = 16
    seed: int | None = None
    stop: list[str] | None = None


class Text(BaseModel):
    text: str


class Vector(BaseModel):
    embedding: list[float]
    tokens: int


SCRIPTS: dict[str, list[Any]] = {
    "user: hello\nassistant:": ["Hel", "lo wo", "rld", "!"],
    "hello": ["Hel", "lo wo", "rld", "!"],
    "fail midway": ["one ", "two ", Failure("error", "inference failed: ValueError: boom")],
    "user: fail midway\nassistant:": ["one ", Failure("error", "inference failed: ValueError: boom")],
    "fail at once": [Failure("rejected", "no such prompt", 400)],
    "load": [Failure("load", "model 'm' failed to load: weights are missing")],
}


class ScriptedRuntime:
    """A runtime whose streams and batches are scripted by input; records what it was asked."""

    def __init__(self) -> None:
        self.seen: list[Any] = []
        self.closed = 0

    async def start(self) -> None: ...
    async def stop(self) -> None: ...

    async def stream(self, model_name: str, item: Any) -> AsyncIterator[Any]:
        self.seen.append(item)
        try:
            for chunk in SCRIPTS[item.prompt]:
                await asyncio.sleep(0)
                yield chunk
        finally:
            self.closed += 1

    async def submit(self, model_name: str, item: Any) -> Any:
        self.seen.append(item)
        if item.text == "broken":
            return Failure("crash", "container crashed")
        return Vector(embedding=[len(item.text) / 10, 0.5, -0.25], tokens=len(item.text.split()) + 2)

    async def spawn(self, model_name: str, request: Any) -> str:
        raise AssertionError("not used")

    async def job(self, job_id: str) -> Any:
        return None

    def ready(self) -> bool:
        return True

    def health(self) -> dict[str, Any]:
        return {"runtime": "scripted"}

    def observe(self) -> Observation:
        return Observation()


class Unused(InferenceBase):
    pass


@pytest.fixture
def services(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    config = tmp_path / "modalkit.yaml"
    config.write_text(
        "app_settings:\n  app_prefix: web-streaming\n"
        f"  auth_config: {{api_key: {KEY}}}\n"
        "model_settings:\n  model_entries: {tiny: {}, other: {}}\n"
    )
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    module = sys.modules[__name__]

    class Generator(StreamingService):
        inference_implementation = Unused
        model_name = "tiny"
        modal_config = ModalConfig()

    class Embedder(ModalService):
        inference_implementation = Unused
        model_name = "tiny"
        modal_config = ModalConfig()

    Generator.__module__ = Embedder.__module__ = module.__name__
    yield {"stream": Generator, "embed": Embedder}


def client_for(app: Any) -> openai.AsyncOpenAI:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    http = httpx.AsyncClient(transport=transport, base_url="http://modalkit")
    return openai.AsyncOpenAI(base_url="http://modalkit/v1", api_key=KEY, http_client=http, max_retries=0)


def raw_client(app: Any) -> httpx.AsyncClient:
    headers = {"authorization": f"Bearer {KEY}"}
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://modalkit", headers=headers)


def events(body: str) -> list[tuple[str | None, Any]]:
    """(event name, JSON data) of every server-sent event in `body`."""
    found = []
    for block in body.strip().split("\n\n"):
        lines = dict(line.split(": ", 1) for line in block.splitlines())
        found.append((lines.get("event"), json.loads(lines["data"])))
    return found


def test_predict_stream_sends_one_event_per_chunk_then_done(services: dict[str, Any]) -> None:
    runtime = ScriptedRuntime()
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=runtime)

    async def scenario() -> httpx.Response:
        async with raw_client(app) as client:
            return await client.post("/predict_stream", json={"prompt": "hello"})

    answer = asyncio.run(scenario())
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    assert events(answer.text) == [(None, "Hel"), (None, "lo wo"), (None, "rld"), (None, "!"), ("done", {})]
    assert runtime.closed == 1


def test_a_failure_midway_ends_with_an_error_event_and_one_first_is_an_http_error(services: dict[str, Any]) -> None:
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=ScriptedRuntime())

    async def scenario() -> list[httpx.Response]:
        async with raw_client(app) as client:
            prompts = ["fail midway", "fail at once", "load"]
            answers = [await client.post("/predict_stream", json={"prompt": p}) for p in prompts]
            given = await client.post(
                "/predict_stream", json={"prompt": "fail midway"}, headers={"x-request-id": "r-42"}
            )
            return [*answers, given]

    midway, at_once, load, given = asyncio.run(scenario())
    request_id = midway.headers["x-request-id"]  # the id the server made: in the header and in the error event
    assert events(midway.text) == [
        (None, "one "),
        (None, "two "),
        ("error", {"detail": "inference failed: ValueError: boom", "request_id": request_id}),
    ]
    assert events(given.text)[-1] == ("error", {"detail": "inference failed: ValueError: boom", "request_id": "r-42"})
    assert (at_once.status_code, at_once.json()["detail"]) == (400, "no such prompt")
    assert load.status_code == 503 and "weights are missing" in load.json()["detail"]


def test_a_batched_service_has_no_stream_route_and_a_streaming_one_no_predict(services: dict[str, Any]) -> None:
    streaming = create_web_endpoints(services["stream"], Prompt, Text, runtime=ScriptedRuntime())
    batched = create_web_endpoints(services["embed"], Text, Vector, runtime=ScriptedRuntime())
    paths = lambda app: {route.path for route in app.routes}  # noqa: E731
    assert {"/predict_stream", "/v1/chat/completions", "/v1/completions", "/v1/models"} <= paths(streaming)
    assert not {"/predict", "/predict_batch", "/predict_async", "/v1/embeddings"} & paths(streaming)
    assert {"/predict", "/v1/embeddings", "/v1/models"} <= paths(batched)
    assert not {"/predict_stream", "/v1/chat/completions"} & paths(batched)


def test_openai_chat_streamed_concatenates_to_the_whole_answer(services: dict[str, Any]) -> None:
    runtime = ScriptedRuntime()
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=runtime)
    messages = [{"role": "user", "content": "hello"}]

    async def scenario() -> tuple[Any, list[Any]]:
        client = client_for(app)
        whole = await client.chat.completions.create(model="tiny", messages=messages, seed=7, max_tokens=9)
        stream = await client.chat.completions.create(model="tiny", messages=messages, seed=7, stream=True)
        return whole, [chunk async for chunk in stream]

    whole, chunks = asyncio.run(scenario())
    assert whole.choices[0].message.content == "Hello world!" and whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens == 4 and whole.model == "tiny"
    pieces = [c.choices[0].delta.content for c in chunks if c.choices[0].delta.content]
    assert pieces == ["Hel", "lo wo", "rld", "!"] and "".join(pieces) == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant" and chunks[-1].choices[0].finish_reason == "stop"
    # The prompt model has no `messages`: the chat is rendered as its prompt, and the parameters it declares pass.
    assert runtime.seen[0] == Prompt(prompt="user: hello\nassistant:", max_tokens=9, seed=7)


def test_stop_and_max_tokens_apply_across_chunk_boundaries(services: dict[str, Any]) -> None:
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=ScriptedRuntime())

    async def scenario() -> list[Any]:
        client = client_for(app)
        stop = await client.completions.create(model="tiny", prompt="hello", stop=["o w"])
        streamed = await client.completions.create(model="tiny", prompt="hello", stop="o w", stream=True)
        length = await client.completions.create(model="tiny", prompt="hello", max_tokens=2)
        return [stop, [c async for c in streamed], length]

    stop, streamed, length = asyncio.run(scenario())
    assert (stop.choices[0].text, stop.choices[0].finish_reason) == ("Hell", "stop")
    assert "".join(c.choices[0].text for c in streamed) == "Hell" and streamed[-1].choices[0].finish_reason == "stop"
    assert (length.choices[0].text, length.choices[0].finish_reason) == ("Hello wo", "length")


def test_openai_errors_have_openai_shape_and_the_statuses_of_the_other_routes(services: dict[str, Any]) -> None:
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=ScriptedRuntime())

    async def scenario() -> dict[str, Exception]:
        client = client_for(app)
        wrong_key = client.with_options(api_key="sk-wrong")
        raised: dict[str, Exception] = {}
        calls = {
            "key": wrong_key.completions.create(model="tiny", prompt="hello"),
            "model": client.completions.create(model="gpt-4", prompt="hello"),
            "body": client.completions.create(model="tiny", prompt="hello", temperature=7),
            "midway": _drain(client.completions.create(model="tiny", prompt="fail midway", stream=True)),
            "crash": client.completions.create(model="tiny", prompt="no script for this one"),
        }
        for name, call in calls.items():
            try:
                await call
            except Exception as exc:
                raised[name] = exc
        return raised

    raised = asyncio.run(scenario())
    assert isinstance(raised["key"], openai.AuthenticationError) and raised["key"].status_code == 401
    assert raised["key"].message.endswith("invalid API key")  # openai prefixes "Error code: 401 - "
    assert (raised["key"].type, raised["key"].code) == ("authentication_error", "invalid_api_key")
    assert isinstance(raised["model"], openai.NotFoundError) and "gpt-4" in raised["model"].message
    assert isinstance(raised["body"], openai.UnprocessableEntityError) and "temperature" in raised["body"].message
    assert isinstance(raised["midway"], openai.APIError) and "boom" in raised["midway"].message
    assert isinstance(raised["crash"], openai.InternalServerError) and "server log" in raised["crash"].message


async def _drain(call: Any) -> None:
    async for _ in await call:
        pass


def test_openai_embeddings_go_through_the_runtime_in_both_encodings(services: dict[str, Any]) -> None:
    runtime = ScriptedRuntime()
    app = create_web_endpoints(services["embed"], Text, Vector, runtime=runtime)

    async def scenario() -> list[Any]:
        client = client_for(app)
        default = await client.embeddings.create(model="tiny", input=["a cat", "two small dogs"])  # base64
        floats = await client.embeddings.create(model="other", input="a cat", encoding_format="float")
        models = await client.models.list()
        try:
            await client.embeddings.create(model="tiny", input=["fine", "broken"])
        except openai.APIStatusError as exc:
            failed = exc
        return [default, floats, models, failed]

    default, floats, models, failed = asyncio.run(scenario())
    expected = [[0.5, 0.5, -0.25], [1.4, 0.5, -0.25]]  # float32 on the wire in base64: equal within 1e-6
    got = [d.embedding for d in default.data]
    assert all(
        abs(x - y) < 1e-6 for row, want in zip(got, expected, strict=True) for x, y in zip(row, want, strict=True)
    )
    assert default.usage.prompt_tokens == 4 + 5 and default.model == "tiny"
    assert floats.data[0].embedding == [0.5, 0.5, -0.25] and floats.model == "other"
    assert [m.id for m in models.data] == ["tiny", "other"]
    assert failed.status_code == 503 and failed.type == "server_error"
    assert [item.text for item in runtime.seen[:3]] == ["a cat", "two small dogs", "a cat"]


def test_a_stream_is_one_request_span_with_a_generation_child_and_is_metered(services: dict[str, Any]) -> None:
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=ScriptedRuntime())
    SPANS.clear()

    async def scenario() -> tuple[httpx.Response, str, dict[str, Any]]:
        async with raw_client(app) as client:
            answer = await client.post("/predict_stream", json={"prompt": "hello"})
            await client.post("/predict_stream", json={"prompt": "fail midway"})
            return answer, (await client.get("/metrics")).text, (await client.get("/stats")).json()

    answer, metrics, stats = asyncio.run(scenario())
    assert answer.status_code == 200
    spans = SPANS.get_finished_spans()
    generation = next(s for s in spans if s.name == "modalkit.stream" and s.attributes["modalkit.chunks"] == 4)
    request = next(s for s in spans if s.context.span_id == generation.parent.span_id)
    assert request.name == "POST /predict_stream" and request.context.trace_id == generation.context.trace_id
    assert generation.attributes["modalkit.stream_outcome"] == "completed"
    assert 'modalkit_stream_first_chunk_seconds_count{route="/predict_stream"} 2.0' in metrics
    assert 'modalkit_stream_chunks_total{route="/predict_stream"} 6.0' in metrics
    assert 'modalkit_streams_total{outcome="failed",route="/predict_stream"} 1.0' in metrics
    assert stats["streams"] == {"completed": 1, "failed": 1, "cancelled": 0, "chunks": 6}


def test_an_openai_stream_that_fails_midway_ends_with_an_error_carrying_the_request_id(
    services: dict[str, Any],
) -> None:
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=ScriptedRuntime())
    body = {"model": "tiny", "messages": [{"role": "user", "content": "fail midway"}], "stream": True}

    async def scenario() -> httpx.Response:
        async with raw_client(app) as client:
            return await client.post("/v1/chat/completions", json=body, headers={"x-request-id": "r-7"})

    answer = asyncio.run(scenario())
    datas = [line[len("data: ") :] for line in answer.text.splitlines() if line.startswith("data: ")]
    error = json.loads(next(d for d in datas if '"error"' in d))["error"]
    assert error["request_id"] == "r-7" and error["type"] == "server_error" and "boom" in error["message"]
