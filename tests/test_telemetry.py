"""Tracing, in-process with an in-memory exporter: request -> batch -> inference, and async job traces."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind

from modalkit.app_loader import import_app
from modalkit.web import create_web_endpoints
from tests.conftest import APPS, SPANS, wait_for

EXPORTER = SPANS


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    mp = pytest.MonkeyPatch()
    mp.setenv("MODALKIT_CONFIG", str(APPS / "echo.yaml"))
    mp.setenv("MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE", str(tmp_path_factory.mktemp("jobs") / "j.sqlite3"))
    mp.delitem(sys.modules, "echo_app", raising=False)
    echo = import_app(APPS / "echo_app.py")
    app = create_web_endpoints(echo.EchoService, echo.EchoIn, echo.EchoOut)
    with TestClient(app) as test_client:
        wait_for(lambda: test_client.get("/health").status_code == 200)
        yield test_client
    mp.undo()


def spans_named(name: str) -> list[ReadableSpan]:
    return [s for s in EXPORTER.get_finished_spans() if s.name == name]


def server_span(name: str) -> ReadableSpan:
    matches = [s for s in spans_named(name) if s.kind == SpanKind.SERVER]
    assert len(matches) == 1, [s.name for s in EXPORTER.get_finished_spans()]
    return matches[0]


def test_predict_request_is_parent_of_batch_and_inference_spans(client: TestClient) -> None:
    EXPORTER.clear()
    assert client.post("/predict", json={"text": "traced"}).status_code == 200
    request = server_span("POST /predict")
    (batch,) = spans_named("modalkit.batch")
    (inference,) = spans_named("modalkit.inference")
    trace_id = request.context.trace_id
    assert batch.context.trace_id == inference.context.trace_id == trace_id
    assert batch.parent is not None and batch.parent.span_id == request.context.span_id
    assert inference.parent is not None and inference.parent.span_id == batch.context.span_id
    assert [link.context.span_id for link in batch.links] == [request.context.span_id]
    attributes: dict[str, Any] = dict(batch.attributes or {})
    assert attributes["modalkit.batch_size"] == 1
    assert attributes["modalkit.model_name"] == "echo"
    assert attributes["modalkit.container_id"].isdigit()
    assert isinstance(attributes["modalkit.cold_start"], bool)
    assert batch.start_time <= inference.start_time <= inference.end_time <= batch.end_time


def test_async_job_runs_in_the_trace_of_the_request_that_created_it(client: TestClient) -> None:
    EXPORTER.clear()
    accepted = client.post("/predict_async", json={"text": "later"})
    assert accepted.status_code == 202
    job_id = accepted.json()["job_id"]
    wait_for(lambda: client.get(f"/predict_async/{job_id}").status_code == 200)
    wait_for(lambda: spans_named("modalkit.batch"))
    creator = server_span("POST /predict_async")
    (job,) = spans_named("modalkit.job")
    (batch,) = spans_named("modalkit.batch")
    assert job.context.trace_id == creator.context.trace_id
    assert job.parent is not None and job.parent.span_id == creator.context.span_id
    assert (job.attributes or {})["modalkit.job_id"] == job_id
    assert batch.context.trace_id == creator.context.trace_id
    assert batch.parent is not None and batch.parent.span_id == job.context.span_id


def test_a_batch_links_every_request_in_it(client: TestClient) -> None:
    EXPORTER.clear()
    response = client.post("/predict_batch", json=[{"text": str(i)} for i in range(4)])
    assert response.status_code == 200
    wait_for(lambda: sum((b.attributes or {})["modalkit.batch_size"] for b in spans_named("modalkit.batch")) == 4)
    batches = spans_named("modalkit.batch")
    assert sum((b.attributes or {})["modalkit.batch_size"] for b in batches) == 4
    request = server_span("POST /predict_batch")
    assert all(link.context.span_id == request.context.span_id for b in batches for link in b.links)
