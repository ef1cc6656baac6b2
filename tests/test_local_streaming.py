"""Streaming in the local runtime: `LocalRuntime.stream` against real worker processes (tests/apps/stream_app.py).

Each test starts its own runtime inside `asyncio.run`, with the config it needs written to a YAML file that the
container processes read too (`MODALKIT_CONFIG`).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from modalkit.app_loader import import_app
from modalkit.config import ModalConfig
from modalkit.exceptions import ModalkitError, ServiceUnavailable
from modalkit.outcome import Encoded, Failure
from modalkit.runtime.local import LocalRuntime
from tests.conftest import APPS

MODEL = "tokens"
Scenario = Callable[[LocalRuntime, Any], Awaitable[None]]


def run_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scenario: Scenario, queued: int = 100, **deployment: Any
) -> None:
    """Run `scenario(runtime, app_module)` against a started runtime whose deployment_config has `deployment`, and
    at most `queued` streams waiting for a slot."""
    settings = {"max_containers": 1, "scaledown_window": 60, **deployment}
    lines = "".join(f"    {key}: {value}\n" for key, value in settings.items())
    config_file = tmp_path / "stream.yaml"
    config_file.write_text(
        f"app_settings:\n  app_prefix: stream-test\n  deployment_config:\n{lines}"
        f"  limits:\n    max_queued_requests: {queued}\nmodel_settings:\n  model_entries:\n    {MODEL}: {{}}\n"
    )
    monkeypatch.setenv("MODALKIT_CONFIG", str(config_file))
    app = import_app(APPS / "stream_app.py")

    async def main() -> None:
        runtime = LocalRuntime(app.TokenService, ModalConfig(), [MODEL], app.StreamIn)
        await runtime.start()
        try:
            await scenario(runtime, app)
        finally:
            await runtime.stop()

    asyncio.run(main())


async def collect(chunks: AsyncIterator[Any]) -> list[Any]:
    return [piece async for piece in chunks]


def token(piece: Any) -> dict[str, Any]:
    assert isinstance(piece, Encoded), piece
    return json.loads(piece)  # type: ignore[no-any-return]


def lines(path: Path) -> int:
    return len(path.read_text().split()) if path.exists() else 0


def test_chunks_arrive_as_they_are_made(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    progress = tmp_path / "progress"
    end = tmp_path / "progress.end"

    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        arrivals: list[float] = []
        ended_at_first_chunk = None
        pieces = []
        async for piece in runtime.stream(MODEL, app.StreamIn(text="a", tokens=6, delay=0.25, progress=str(progress))):
            arrivals.append(time.monotonic())
            pieces.append(token(piece))
            if ended_at_first_chunk is None:
                ended_at_first_chunk = end.exists()
        assert [p["index"] for p in pieces] == list(range(6))
        assert ended_at_first_chunk is False  # the model was still generating when the first chunk came
        assert arrivals[-1] - arrivals[0] > 1.0  # five more tokens, 0.25 s apart, came after it
        assert end.read_text() == "finished"
        assert runtime.observe().streams[MODEL].counts()["finished"] == 1

    run_with(tmp_path, monkeypatch, scenario)


def test_closing_a_stream_stops_its_generator_and_frees_the_slot(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    progress = tmp_path / "progress"

    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        long = runtime.stream(MODEL, app.StreamIn(text="long", tokens=100, delay=0.1, progress=str(progress)))
        assert token(await anext(long))["index"] == 0
        assert token(await anext(long))["index"] == 1
        await long.aclose()  # type: ignore[attr-defined]
        started = time.monotonic()
        short = await collect(runtime.stream(MODEL, app.StreamIn(text="short", tokens=2, delay=0.01)))
        assert [token(p)["text"] for p in short] == ["short", "short"]
        assert time.monotonic() - started < 2.0  # the one slot was free at once, not after ~10 s of "long"
        end = tmp_path / "progress.end"
        for _ in range(50):  # closed after the step in flight (0.1 s)
            if end.exists():
                break
            await asyncio.sleep(0.02)
        assert end.read_text() == "closed"
        made = lines(progress)
        await asyncio.sleep(0.5)
        assert lines(progress) == made <= 4  # the closed generator makes no more tokens
        health = runtime.health()["models"][MODEL]
        assert health["container_starts"] == 1 and health["active_streams"] == 0
        assert health["streams"]["cancelled"] == 1 and health["streams"]["finished"] == 1

    run_with(tmp_path, monkeypatch, scenario, max_concurrent_inputs=1)


def test_streams_wait_for_a_slot_up_to_the_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        busy = runtime.stream(MODEL, app.StreamIn(text="busy", tokens=100, delay=0.05))
        await anext(busy)
        waiting = [asyncio.create_task(collect(runtime.stream(MODEL, app.StreamIn(text=f"w{i}")))) for i in range(2)]
        await asyncio.sleep(0.2)
        assert runtime.health()["models"][MODEL]["queued"] == 2
        with pytest.raises(ServiceUnavailable, match="max_queued_requests"):
            await anext(runtime.stream(MODEL, app.StreamIn(text="refused")))
        await busy.aclose()  # type: ignore[attr-defined]
        for i, task in enumerate(waiting):
            assert [token(p)["text"] for p in await task] == [f"w{i}"] * 5
        assert runtime.observe().streams[MODEL].counts() == {
            "started": 3,
            "finished": 2,
            "failed": 0,
            "cancelled": 1,
            "refused": 1,
        }

    run_with(tmp_path, monkeypatch, scenario, queued=2, max_concurrent_inputs=1)


def test_a_failure_midway_ends_the_stream_after_its_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        *chunks, failure = await collect(runtime.stream(MODEL, app.StreamIn(text="x", tokens=5, fail_at=3)))
        assert [token(c)["index"] for c in chunks] == [0, 1, 2]
        assert isinstance(failure, Failure) and failure.cause == "error" and "broke at token 3" in failure.detail
        *chunks, refused = await collect(runtime.stream(MODEL, app.StreamIn(text="y", reject_at=0)))
        assert chunks == [] and refused == Failure("rejected", "token 0 is refused", 409)
        assert len(await collect(runtime.stream(MODEL, app.StreamIn(text="z")))) == 5  # the container serves on
        assert runtime.health()["models"][MODEL]["container_starts"] == 1

    run_with(tmp_path, monkeypatch, scenario)


def test_sixteen_streams_share_one_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        arrivals: list[int] = []

        async def one(n: int) -> list[Any]:
            pieces = []
            async for piece in runtime.stream(MODEL, app.StreamIn(text=str(n), tokens=5, delay=0.05)):
                arrivals.append(n)
                pieces.append(token(piece))
            return pieces

        answers = await asyncio.gather(*(one(n) for n in range(16)))
        for n, pieces in enumerate(answers):
            assert [(p["text"], p["index"]) for p in pieces] == [(str(n), i) for i in range(5)]
        assert len({p["pid"] for pieces in answers for p in pieces}) == 1
        assert len(set(arrivals[:16])) >= 8  # interleaved: the first chunks of many streams came before the rest
        health = runtime.health()["models"][MODEL]
        assert health["container_starts"] == 1 and health["streams"]["finished"] == 16

    run_with(tmp_path, monkeypatch, scenario, max_concurrent_inputs=16)


def test_a_killed_container_fails_its_streams_and_is_replaced(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        streams = [runtime.stream(MODEL, app.StreamIn(text=str(n), tokens=100, delay=0.05)) for n in range(2)]
        pid = {token(await anext(s))["pid"] for s in streams}.pop()
        os.kill(pid, signal.SIGKILL)
        for stream in streams:
            rest = await collect(stream)
            assert isinstance(rest[-1], Failure) and rest[-1].cause == "crash", rest[-1]
        after = await collect(runtime.stream(MODEL, app.StreamIn(text="after")))
        assert len(after) == 5 and token(after[0])["pid"] != pid
        assert runtime.health()["models"][MODEL]["restarts"] == {"crash": 1}

    run_with(tmp_path, monkeypatch, scenario, max_concurrent_inputs=2)


def test_a_cuda_error_recycles_the_container(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        other = runtime.stream(MODEL, app.StreamIn(text="other", tokens=100, delay=0.05))
        pid = token(await anext(other))["pid"]
        *chunks, failure = await collect(runtime.stream(MODEL, app.StreamIn(text="gpu", tokens=5, cuda_at=2)))
        assert len(chunks) == 2
        assert isinstance(failure, Failure) and failure.cause == "cuda" and "CUDA error" in failure.detail
        rest = await collect(other)  # the container's other stream ends the same way
        assert isinstance(rest[-1], Failure) and rest[-1].cause == "cuda"
        after = await collect(runtime.stream(MODEL, app.StreamIn(text="after")))
        assert len(after) == 5 and token(after[0])["pid"] != pid
        health = runtime.health()["models"][MODEL]
        assert health["restarts"] == {"cuda": 1} and health["container_starts"] == 2

    run_with(tmp_path, monkeypatch, scenario, max_concurrent_inputs=2)


def test_a_model_that_cannot_load_fails_its_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAM_FAIL_LOAD", "1")

    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        (failure,) = await collect(runtime.stream(MODEL, app.StreamIn(text="a")))
        assert isinstance(failure, Failure) and failure.cause == "load" and "weights are missing" in failure.detail
        assert not runtime.ready()

    run_with(tmp_path, monkeypatch, scenario)


def test_a_streaming_service_takes_no_batches_or_jobs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        with pytest.raises(ModalkitError, match="/predict_stream only"):
            runtime.submit(MODEL, app.StreamIn(text="a"))
        with pytest.raises(ModalkitError, match="/predict_stream only"):
            await runtime.spawn(MODEL, app.StreamIn(text="a"))
        assert await runtime.job("nope") is None

    run_with(tmp_path, monkeypatch, scenario)


def test_stopping_the_runtime_ends_open_streams(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        stream = runtime.stream(MODEL, app.StreamIn(text="a", tokens=100, delay=0.05))
        pid = token(await anext(stream))["pid"]
        await runtime.stop()
        rest = await collect(stream)
        assert rest[-1] == Failure("unavailable", "the server is shutting down")
        with pytest.raises(ServiceUnavailable):
            await anext(runtime.stream(MODEL, app.StreamIn(text="late")))
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the container process is gone

    run_with(tmp_path, monkeypatch, scenario)


def test_waiting_streams_scale_up_and_idle_containers_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario(runtime: LocalRuntime, app: Any) -> None:
        answers = await asyncio.gather(
            *(collect(runtime.stream(MODEL, app.StreamIn(text=str(n), tokens=3, delay=0.2))) for n in range(2))
        )
        assert len({token(a[0])["pid"] for a in answers}) == 2  # one slot each: a second container started
        health = runtime.health()["models"][MODEL]
        assert health["container_starts"] == 2
        for _ in range(100):  # scaledown_window 2 s, no min_containers: both stop
            if runtime.health()["models"][MODEL]["containers"] == 0:
                break
            await asyncio.sleep(0.1)
        assert runtime.health()["models"][MODEL]["containers"] == 0
        assert len(await collect(runtime.stream(MODEL, app.StreamIn(text="again")))) == 5  # one starts again

    run_with(tmp_path, monkeypatch, scenario, max_containers=2, max_concurrent_inputs=1, scaledown_window=2)
