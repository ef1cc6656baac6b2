"""`modalkit.web.request_ids` and `access_log`, in process: the real app with a scripted runtime, so that the
unhandled-error path (Starlette's 500 handler, outside every middleware) and streams can be reached on purpose.
tests/e2e/test_request_ids.py checks the same against a served app and its log."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from modalkit import create_web_endpoints
from modalkit.logs import JsonFormatter, TraceContext
from tests.test_web_streaming import KEY, Prompt, ScriptedRuntime, Text, Vector, client_for, services

__all__ = ["services"]  # the fixture, imported for the tests below

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@pytest.fixture
def json_log() -> Iterator[io.StringIO]:
    """What the server's stderr would show: JSON lines with the trace context, from every modalkit logger."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(TraceContext())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("modalkit")
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    yield out
    logger.removeHandler(handler)
    logger.setLevel(level)


def lines(log: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.getvalue().splitlines()]


def call(app: Any, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None) -> httpx.Response:
    """One request with the key, answered as a server would: an unhandled error is a 500, not an exception."""

    async def scenario() -> httpx.Response:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        key = {"authorization": f"Bearer {KEY}"}
        async with httpx.AsyncClient(transport=transport, base_url="http://modalkit", headers=key) as client:
            return await client.request(method, path, json=body, headers=headers)

    return asyncio.run(scenario())


def test_an_unhandled_error_is_answered_and_logged_under_the_request_id(
    services: dict[str, Any], json_log: io.StringIO
) -> None:
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=ScriptedRuntime())
    answer = call(
        app, "POST", "/predict_stream", {"prompt": "no script for this one"}, {"x-request-id": "case-500.a:1"}
    )
    assert answer.status_code == 500 and answer.headers["x-request-id"] == "case-500.a:1"
    assert answer.json()["request_id"] == "case-500.a:1" and "Traceback" not in answer.text
    trace_id = TRACEPARENT.fullmatch(answer.headers["traceparent"]).group(1)  # type: ignore[union-attr]
    (logged,) = [line for line in lines(json_log) if line["logger"] == "modalkit.web"]
    assert logged["message"] == "unhandled error on POST /predict_stream" and "KeyError" in logged["exception"]
    assert (logged["request_id"], logged["trace_id"]) == ("case-500.a:1", trace_id)


def test_a_stream_carries_the_ids(services: dict[str, Any]) -> None:
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=ScriptedRuntime())
    answer = call(app, "POST", "/predict_stream", {"prompt": "hello"})
    assert answer.status_code == 200 and answer.headers["content-type"].startswith("text/event-stream")
    assert re.fullmatch(r"[0-9a-f]{32}", answer.headers["x-request-id"])
    assert TRACEPARENT.fullmatch(answer.headers["traceparent"])


def test_openai_errors_carry_the_id_where_the_openai_package_reads_it(services: dict[str, Any]) -> None:
    app = create_web_endpoints(services["stream"], Prompt, Text, runtime=ScriptedRuntime())

    async def scenario() -> list[openai.APIStatusError]:
        client = client_for(app)
        raised = []
        for call in (
            client.with_options(api_key="sk-wrong").completions.create(model="tiny", prompt="hello"),
            client.completions.create(model="gpt-4", prompt="hello"),
            client.completions.create(model="tiny", prompt="no script for this one"),
        ):
            with pytest.raises(openai.APIStatusError) as info:
                await call
            raised.append(info.value)
        return raised

    for error in asyncio.run(scenario()):
        assert re.fullmatch(r"[0-9a-f]{32}", error.request_id or ""), error
        assert isinstance(error.body, dict) and error.body["request_id"] == error.request_id
        assert error.code is not None or error.status_code == 500  # still OpenAI's shape


def test_one_access_log_line_per_request_with_the_route_template(
    services: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    app = create_web_endpoints(services["embed"], Text, Vector, runtime=ScriptedRuntime())
    caplog.set_level(logging.INFO, "modalkit.access")
    unknown = call(app, "GET", "/predict_async/abc123", headers={"x-request-id": "job-poll-1"})
    ok = call(app, "POST", "/predict", {"text": "two words"})
    assert unknown.status_code == 404
    records = [r for r in caplog.records if r.name == "modalkit.access"]
    assert [r.getMessage().rsplit(" ", 1)[0] for r in records] == [
        "GET /predict_async/abc123 404",
        "POST /predict 200",
    ]
    fields = [r.fields for r in records]  # type: ignore[attr-defined]
    assert fields[0]["route"] == "/predict_async/{job_id}" and fields[0]["request_id"] == "job-poll-1"
    assert {k: v for k, v in fields[1].items() if k != "duration_ms"} == {
        "method": "POST",
        "route": "/predict",
        "status": 200,
        "request_id": ok.headers["x-request-id"],
    }
    assert all(isinstance(f["duration_ms"], float) and f["duration_ms"] >= 0 for f in fields)


def test_the_access_log_is_quiet_below_info(services: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    app = create_web_endpoints(services["embed"], Text, Vector, runtime=ScriptedRuntime())
    caplog.set_level(logging.WARNING, "modalkit.access")
    assert call(app, "POST", "/predict", {"text": "x"}).status_code == 200
    assert not [r for r in caplog.records if r.name == "modalkit.access"]
