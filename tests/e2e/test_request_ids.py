"""Acceptance: every answer of `modalkit serve` names its request (`x-request-id`) and its trace (`traceparent`);
error bodies and the server's log lines carry the same id; the client reports it; OpenAPI lists each route's errors."""

from __future__ import annotations

import json
import logging
import re
from typing import Any

import httpx
import openai
import pytest

from modalkit.client import Client, ClientError, RetryPolicy
from tests.conftest import APPS, Server, wait_for

TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")
NEW_ID = re.compile(r"[0-9a-f]{32}")
PROBES = {"/health", "/livez", "/readyz"}


@pytest.fixture(scope="module")
def server(serve) -> Server:
    return serve(APPS / "echo_app.py", APPS / "echo.yaml")


def log_lines(server: Server) -> list[dict[str, Any]]:
    found = []
    for line in server.log.read_text().splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except ValueError:
                continue
    return found


def logged_under(server: Server, request_id: str) -> list[dict[str, Any]]:
    return [line for line in log_lines(server) if line.get("request_id") == request_id]


def test_the_id_sent_is_echoed_in_the_answer_and_found_in_the_servers_log(server: Server) -> None:
    sent = "client-7.run:42"
    answer = httpx.post(f"{server.url}/predict", json={"text": "bad"}, headers={"x-request-id": sent}, timeout=30)
    assert answer.status_code == 500 and answer.headers["x-request-id"] == sent
    assert answer.json() == {"detail": "inference failed: ValueError: cannot echo 'bad'", "request_id": sent}
    trace_id = TRACEPARENT.fullmatch(answer.headers["traceparent"]).group(1)  # type: ignore[union-attr]
    lines = wait_for(lambda: [line for line in logged_under(server, sent) if line["level"] == "warning"])
    assert "cannot echo 'bad'" in lines[0]["message"] and lines[0]["trace_id"] == trace_id


def test_a_new_id_is_made_when_none_is_sent_or_the_one_sent_is_not_sane(server: Server) -> None:
    ids = set()
    for sent in (None, "", "has space", "x" * 129, "semi;colon", "ünï".encode()):
        headers = {} if sent is None else {"x-request-id": sent}
        answer = httpx.post(f"{server.url}/predict", json={"text": "a"}, headers=headers, timeout=30)
        assert answer.status_code == 200 and NEW_ID.fullmatch(answer.headers["x-request-id"]), sent
        ids.add(answer.headers["x-request-id"])
    assert len(ids) == 6
    longest = "A-z.0:_" + "9" * 121
    kept = httpx.get(f"{server.url}/health", headers={"x-request-id": longest}, timeout=10)
    assert kept.headers["x-request-id"] == longest


def test_traceparent_names_the_server_span_in_the_callers_trace(server: Server) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    headers = {"traceparent": f"00-{caller_trace}-{caller_span}-01"}
    answer = httpx.post(f"{server.url}/predict", json={"text": "a"}, headers=headers, timeout=30)
    match = TRACEPARENT.fullmatch(answer.headers["traceparent"])
    assert match is not None and match.group(1) == caller_trace and match.group(2) != caller_span
    alone = httpx.post(f"{server.url}/predict", json={"text": "a"}, timeout=30).headers["traceparent"]
    assert TRACEPARENT.fullmatch(alone) and caller_trace not in alone


def test_every_error_answer_carries_the_id_in_its_body(server: Server) -> None:
    url = server.url
    answers = [
        httpx.post(f"{url}/predict", json={"wrong": 1}, timeout=30),  # 422
        httpx.post(f"{url}/predict", params={"model_name": "nope"}, json={"text": "a"}, timeout=30),  # 404
        httpx.post(f"{url}/predict", content=b"text=a", headers={"content-type": "text/plain"}, timeout=30),  # 415
        httpx.post(f"{url}/predict_batch", json=[{"text": "a"}] * 10_000, timeout=30),  # 413
        httpx.get(f"{url}/predict_async/{'0' * 32}", timeout=30),  # 404, an unknown job
        httpx.get(f"{url}/no/such/route", timeout=30),  # 404
        httpx.put(f"{url}/predict", timeout=30),  # 405
    ]
    assert [a.status_code for a in answers] == [422, 404, 415, 413, 404, 404, 405]
    for answer in answers:
        body = answer.json()
        assert "detail" in body and body["request_id"] == answer.headers["x-request-id"], body
        assert TRACEPARENT.fullmatch(answer.headers["traceparent"])


def test_openai_errors_keep_their_shape_with_the_id_inside(server: Server) -> None:
    answer = httpx.get(f"{server.url}/v1/models/nope", timeout=10)
    assert answer.status_code == 404
    error = answer.json()["error"]
    assert (
        set(error) == {"message", "type", "code", "request_id"}
        and error["request_id"] == answer.headers["x-request-id"]
    )
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("nope")
    assert info.value.request_id and info.value.body["request_id"] == info.value.request_id  # type: ignore[index]


def test_the_client_reports_the_id_of_a_failed_call(server: Server, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "modalkit.client")
    with Client(server.url, retry=RetryPolicy(attempts=1)) as client, pytest.raises(ClientError) as info:
        client.predict({"text": "bad"})
    request_id = info.value.request_id
    assert info.value.status_code == 500 and request_id and f"request id {request_id}" in str(info.value)
    (record,) = [r for r in caplog.records if r.name == "modalkit.client"]
    assert request_id in record.getMessage() and "HTTP 500" in record.getMessage()
    assert wait_for(lambda: logged_under(server, request_id))  # the id the client sent is the server's too


def test_openapi_lists_every_routes_errors_and_no_security_without_a_key(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    assert "securitySchemes" not in spec.get("components", {})
    expected = {
        ("post", "/predict"): {404, 413, 415, 422, 500, 503, 504},
        ("post", "/predict_batch"): {404, 413, 415, 422, 500, 503, 504},
        ("post", "/predict_async"): {404, 413, 415, 422, 429, 500, 503, 504, 507},
        ("get", "/predict_async/{job_id}"): {404, 410, 422, 500},  # 422: FastAPI's, for the path parameter
        ("get", "/v1/models"): {500},
        ("get", "/stats"): {500},
        ("get", "/metrics"): {500},
        ("get", "/health"): {503},
    }
    for (method, path), statuses in expected.items():
        responses = spec["paths"][path][method]["responses"]
        assert {int(s) for s in responses if int(s) >= 400} == statuses, (method, path)
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            assert "security" not in operation, (method, path)
            for status, response in operation["responses"].items():
                if int(status) >= 400 and path not in PROBES:  # a probe's 503 is its status body
                    ref = response["content"]["application/json"]["schema"]["$ref"]
                    body = "OpenAIErrorBody" if path.startswith("/v1/") else "ErrorBody"
                    assert ref == f"#/components/schemas/{body}", (method, path, status)
    assert set(spec["components"]["schemas"]["ErrorBody"]["properties"]) == {"detail", "request_id"}
