"""`modalkit.client`: retries with backoff on 429/503 and connection errors, Retry-After, deadlines, stats;
against a real local HTTP server that fails on purpose, and against a real modalkit server."""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from modalkit.client import AsyncClient, Client, ClientError, DeadlineExceeded, JobFailed, RetryPolicy
from tests.conftest import APPS, free_port

FAST = RetryPolicy(attempts=5, first_delay=0.01, max_delay=0.05)


def flaky_app() -> FastAPI:
    app = FastAPI()
    calls: Counter[str] = Counter()
    app.state.calls = calls

    @app.post("/predict")
    async def predict(request: Request) -> JSONResponse:
        calls["predict"] += 1
        if calls["predict"] <= 2:  # busy twice, then fine
            return JSONResponse({"detail": "container recycled"}, status_code=503, headers={"Retry-After": "0.2"})
        return JSONResponse({"echo": await request.json(), "key": request.headers.get("x-api-key")})

    @app.post("/predict_async")
    async def submit() -> JSONResponse:
        calls["submit"] += 1
        if calls["submit"] == 1:
            return JSONResponse({"detail": "queue full"}, status_code=429, headers={"Retry-After": "0"})
        return JSONResponse({"job_id": "j1", "status_url": "/predict_async/j1"}, status_code=202)

    @app.get("/predict_async/{job_id}")
    async def job(job_id: str) -> JSONResponse:
        calls[job_id] += 1
        if job_id == "bad":
            return JSONResponse({"job_id": job_id, "status": "failed", "error": {"detail": "boom"}})
        if job_id.startswith("gone"):  # cancelled: it will never finish
            return JSONResponse({"job_id": job_id, "status": "cancelled", "attempts": 0})
        if calls[job_id] < 3:
            return JSONResponse({"job_id": job_id, "status": "running"}, status_code=202)
        return JSONResponse({"job_id": job_id, "status": "succeeded", "result": {"ok": True}})

    @app.delete("/predict_async/{job_id}")
    async def cancel(job_id: str) -> JSONResponse:
        return JSONResponse({"job_id": job_id, "status": "cancelled", "attempts": 0})

    @app.post("/always_busy")
    async def busy() -> JSONResponse:
        return JSONResponse({"detail": "busy"}, status_code=503)

    @app.post("/slow")
    async def slow() -> JSONResponse:
        await asyncio.sleep(2)
        return JSONResponse({})

    @app.post("/bad")
    async def bad() -> JSONResponse:
        calls["bad"] += 1
        return JSONResponse({"detail": [{"loc": ["body", "text"]}]}, status_code=422)

    return app


@pytest.fixture
def flaky() -> Iterator[tuple[str, Counter[str]]]:
    app = flaky_app()
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}", app.state.calls
    server.should_exit = True
    thread.join(timeout=10)


def test_retries_503_honouring_retry_after(flaky: tuple[str, Counter[str]]) -> None:
    url, calls = flaky
    with Client(url, api_key="k", retry=FAST) as client:
        started = time.monotonic()
        assert client.predict({"text": "x"}) == {"echo": {"text": "x"}, "key": "k"}
        assert time.monotonic() - started >= 0.4  # two waits of Retry-After 0.2 s, longer than the backoff
        assert client.stats() == {"sent": 3, "succeeded": 1, "failed": 0, "retried": 2}
    assert calls["predict"] == 3


def test_429_then_job_polled_to_success(flaky: tuple[str, Counter[str]]) -> None:
    url, _ = flaky
    with Client(url, retry=FAST) as client:
        job_id = client.submit({"text": "x"}, success_queue="q", meta={"m": 1})
        assert job_id == "j1"
        assert client.result(job_id, poll_interval=0.01)["result"] == {"ok": True}
        with pytest.raises(JobFailed, match="boom"):
            client.result("bad")


def test_result_of_a_cancelled_job_returns_it_rather_than_polling_to_the_deadline(
    flaky: tuple[str, Counter[str]],
) -> None:
    url, calls = flaky
    with Client(url, retry=FAST, deadline=30) as client:
        assert client.result("gone", poll_interval=0.01)["status"] == "cancelled"
    assert calls["gone"] == 1

    async def scenario() -> None:
        async with AsyncClient(url, retry=FAST, deadline=30) as client:
            assert (await client.result("gone-async", poll_interval=0.01))["status"] == "cancelled"

    asyncio.run(scenario())
    assert calls["gone-async"] == 1


def test_a_job_id_is_one_path_segment_whatever_it_holds(flaky: tuple[str, Counter[str]]) -> None:
    url, calls = flaky
    with Client(url, retry=FAST) as client:
        assert client.cancel("gone?status=x#y")["job_id"] == "gone?status=x#y"  # not a query, nor a fragment
        assert client.result("gone?x", wait=False)["job_id"] == "gone?x"
    assert calls["gone?x"] == 1


def test_client_errors_are_not_retried(flaky: tuple[str, Counter[str]]) -> None:
    url, calls = flaky
    with Client(url, retry=FAST) as client, pytest.raises(ClientError) as info:
        client._request_with_retries("POST", "/bad")
    assert info.value.status_code == 422 and calls["bad"] == 1


def test_gives_up_after_its_attempts_and_within_its_deadline(flaky: tuple[str, Counter[str]]) -> None:
    url, _ = flaky
    with Client(url, retry=FAST) as client, pytest.raises(ClientError) as info:
        client._request_with_retries("POST", "/always_busy")
    assert info.value.status_code == 503 and client.stats()["sent"] == 5
    with Client(url, timeout=0.3, deadline=1.0, retry=FAST) as client:
        started = time.monotonic()
        with pytest.raises(DeadlineExceeded):
            client._request_with_retries("POST", "/slow")
        assert time.monotonic() - started < 2.0


def test_connection_errors_are_retried_until_the_deadline() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", deadline=0.5, retry=FAST) as client, pytest.raises(DeadlineExceeded):
        client.predict({"text": "x"})


def test_async_client_against_a_real_modalkit_server(serve) -> None:
    server = serve(APPS / "echo_app.py", APPS / "echo.yaml")

    async def scenario() -> None:
        async with AsyncClient(server.url, retry=FAST) as client:
            assert (await client.predict({"text": "hi"}, model_name="shout"))["text"] == "!hi"
            batch = await client.predict_batch([{"text": "a"}, {"text": "bad"}])
            assert batch[0]["text"] == "a" and batch[1]["error"]["status_code"] == 500
            job_id = await client.submit({"text": "later"})
            assert (await client.result(job_id, poll_interval=0.05))["result"]["text"] == "later"
            with pytest.raises(ClientError) as info:
                await client.predict({"txt": "typo"})
            assert info.value.status_code == 422
            assert client.stats()["failed"] == 1

    asyncio.run(scenario())


def test_async_client_cancels_lists_and_names_a_webhook_against_a_real_server(serve, tmp_path) -> None:
    server = serve(APPS / "recorder_app.py", APPS / "recorder.yaml", env={"RECORDER_FILE": str(tmp_path / "seen")})

    async def scenario() -> None:
        async with AsyncClient(server.url, retry=FAST) as client:
            holder = await client.submit({"text": "sleep:2"})
            ahead = await client.submit({"text": "ahead"})
            queued = await client.submit({"text": "queued"})
            assert (await client.cancel(queued))["status"] == "cancelled"
            assert (await client.result(holder, poll_interval=0.05))["status"] == "succeeded"
            await client.result(ahead, poll_interval=0.05)
            with pytest.raises(ClientError) as finished:
                await client.cancel(holder)
            assert finished.value.status_code == 409
            first = await client.list_jobs(limit=2)
            assert [job["job_id"] for job in first["jobs"]] == [queued, ahead]
            rest = await client.list_jobs(limit=2, cursor=first["next_cursor"])
            assert [job["job_id"] for job in rest["jobs"]] == [holder] and rest["next_cursor"] is None
            assert [job["job_id"] for job in (await client.list_jobs(status="cancelled"))["jobs"]] == [queued]
            with pytest.raises(ClientError) as refused:  # webhooks are off: the URL is refused, naming it
                await client.submit({"text": "x"}, webhook_url="http://127.0.0.1:9/hook", meta={"k": 1})
            assert refused.value.status_code == 422 and refused.value.detail[0]["loc"] == ["body", "webhook_url"]

    asyncio.run(scenario())


def test_submit_sends_the_webhook_url_in_the_envelope_or_as_a_part() -> None:
    args = Client._submit_args({"text": "x"}, None, (None, None), None, None, "https://hooks.example.com/j")
    assert args["json"] == {"message": {"text": "x"}, "webhook_url": "https://hooks.example.com/j", "meta": None}
    assert Client._submit_args({"text": "x"}, None, (None, None), None, None)["json"] == {"text": "x"}
    upload = Client._submit_args({}, {"image": b"\x00"}, ("ok", None), {"a": 1}, None, "https://h/j")
    assert upload["data"] == {"success_queue": "ok", "webhook_url": "https://h/j", "meta": '{"a": 1}'}
