"""Acceptance: `POST /predict_stream` over real HTTP, served by `modalkit serve` with real container processes.

The first chunk arrives while the model is still generating; a client that disconnects frees the container at
once; a failure midway ends with `event: error`; 16 streams share one container (`max_concurrent_inputs: 16`)
and all complete, their chunks interleaved.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import APPS, Server, wait_for

APP = APPS / "stream_app.py"


def config(tmp_path: Path, concurrency: int) -> Path:
    path = tmp_path / f"stream-{concurrency}.yaml"
    path.write_text(
        "app_settings:\n  app_prefix: stream-e2e\n"
        f"  deployment_config: {{min_containers: 1, max_containers: 1, max_concurrent_inputs: {concurrency}}}\n"
        "model_settings:\n  model_entries: {tokens: {}}\n"
    )
    return path


@pytest.fixture(scope="module")
def single(serve, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """One container that runs one stream at a time."""
    return serve(APP, config(tmp_path_factory.mktemp("single"), 1))


@pytest.fixture(scope="module")
def shared(serve, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """One container that runs 16 streams at once."""
    return serve(APP, config(tmp_path_factory.mktemp("shared"), 16))


def parse(block: str) -> tuple[str | None, Any]:
    fields = dict(line.split(": ", 1) for line in block.splitlines())
    return fields.get("event"), json.loads(fields["data"])


async def read_events(response: httpx.Response) -> Any:
    """Each server-sent event of a streamed response, as it arrives."""
    buffer = ""
    async for text in response.aiter_text():
        buffer += text
        while "\n\n" in buffer:
            block, buffer = buffer.split("\n\n", 1)
            yield parse(block)


def test_the_first_chunk_arrives_while_the_model_is_generating(single: Server, tmp_path: Path) -> None:
    progress = tmp_path / "progress"
    body = {"text": "a", "tokens": 40, "delay": 0.05, "progress": str(progress)}

    async def first_then_rest() -> tuple[int, bool, list[Any]]:
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("POST", f"{single.url}/predict_stream", json=body) as answer,
        ):
            assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
            events = read_events(answer)
            first = await anext(events)
            made_so_far = len(progress.read_text().split())  # tokens the model had made when the first one arrived
            ended = Path(f"{progress}.end").exists()
            assert first == (None, {"text": "a", "index": 0, "pid": first[1]["pid"]})
            return made_so_far, ended, [event async for event in events]

    made_so_far, ended, rest = asyncio.run(first_then_rest())
    assert made_so_far <= 10 and not ended  # of 40 tokens, 50 ms apart: the model had two seconds still to go
    assert [data["index"] for _, data in rest[:-1]] == list(range(1, 40)) and rest[-1] == ("done", {})


def test_a_client_that_disconnects_frees_the_container(single: Server, tmp_path: Path) -> None:
    progress = tmp_path / "long"
    long = {"text": "long", "tokens": 2000, "delay": 0.01, "progress": str(progress)}  # 20 s if left to run

    async def leave_early() -> None:
        async with (
            httpx.AsyncClient(timeout=60) as client,
            client.stream("POST", f"{single.url}/predict_stream", json=long) as answer,
        ):
            events = read_events(answer)
            await anext(events)
            await anext(events)
        # the connection is closed here, with the stream half read

    asyncio.run(leave_early())
    started = time.monotonic()
    after = httpx.post(f"{single.url}/predict_stream", json={"text": "next", "tokens": 3, "delay": 0.01}, timeout=60)
    waited = time.monotonic() - started
    assert [parse(b) for b in after.text.strip().split("\n\n")][-1] == ("done", {})
    assert waited < 5, f"the next stream waited {waited:.1f} s: the slot was not freed"  # not the 20 s of the first
    wait_for(lambda: Path(f"{progress}.end").exists(), timeout=10)
    assert Path(f"{progress}.end").read_text() == "closed"  # the generator was stopped, not left running
    made = len(progress.read_text().split())
    time.sleep(0.3)
    assert len(progress.read_text().split()) == made < 2000
    stats = httpx.get(f"{single.url}/stats", timeout=10).json()["streams"]
    assert stats["cancelled"] >= 1 and stats["completed"] >= 1


def test_a_failure_midway_ends_with_an_error_event(single: Server) -> None:
    answer = httpx.post(f"{single.url}/predict_stream", json={"text": "f", "tokens": 6, "fail_at": 3}, timeout=60)
    events = [parse(block) for block in answer.text.strip().split("\n\n")]
    assert [data["index"] for _, data in events[:-1]] == [0, 1, 2]
    said = {
        "detail": "inference failed: ValueError: the model broke at token 3",
        "request_id": answer.headers["x-request-id"],
    }
    assert events[-1] == ("error", said)  # the request id that finds the failure in the server's logs
    refused = httpx.post(f"{single.url}/predict_stream", json={"text": "r", "reject_at": 0}, timeout=60)
    assert (refused.status_code, refused.json()["detail"]) == (409, "token 0 is refused")  # before any chunk
    invalid = httpx.post(f"{single.url}/predict_stream", json={"tokens": "many"}, timeout=60)
    assert invalid.status_code == 422 and invalid.json()["detail"][0]["loc"] == ["body", "tokens"]


def test_sixteen_streams_share_one_container_interleaved(shared: Server) -> None:
    arrivals: list[int] = []

    async def one(client: httpx.AsyncClient, stream: int) -> list[Any]:
        body = {"text": str(stream), "tokens": 12, "delay": 0.05}
        async with client.stream("POST", f"{shared.url}/predict_stream", json=body) as answer:
            events = []
            async for event in read_events(answer):
                if event[0] is None:
                    arrivals.append(stream)
                events.append(event)
            return events

    async def all_streams() -> list[list[Any]]:
        limits = httpx.Limits(max_connections=32)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:
            return await asyncio.gather(*(one(client, i) for i in range(16)))

    results = asyncio.run(all_streams())
    for stream, events in enumerate(results):
        assert events[-1] == ("done", {}) and [d["index"] for _, d in events[:-1]] == list(range(12))
        assert {d["text"] for _, d in events[:-1]} == {str(stream)}
    assert len({d["pid"] for events in results for _, d in events[:-1]}) == 1  # one container ran all 16
    assert len(set(arrivals[:16])) >= 8, arrivals[:32]  # interleaved: the first 16 chunks come from many streams
