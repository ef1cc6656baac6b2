"""Acceptance: console spans from `modalkit serve`, /metrics that match the traffic, /stats cold vs warm."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from modalkit.cli import main
from tests.conftest import APPS, ROOT, Server, wait_for

ECHO, ECHO_CONFIG = APPS / "echo_app.py", APPS / "echo.yaml"


def predict(server: Server, text: str) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json={"text": text}, timeout=30)


def replaced(server: Server) -> bool:
    health = server.model_health("echo")
    return health["restarts"] == {"cuda": 1} and health["ready_containers"] == 1


def samples(server: Server) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_console_exporter_prints_request_batch_and_inference_spans(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={"OTEL_TRACES_EXPORTER": "console", "OTEL_SERVICE_NAME": "echo-test"})
    assert predict(server, "printed").status_code == 200

    def spans() -> list[dict[str, Any]]:
        found = []
        decoder = json.JSONDecoder()
        text = server.log.read_text()
        index = text.find('{\n    "name"')
        while index != -1:
            span, end = decoder.raw_decode(text, index)
            found.append(span)
            index = text.find('{\n    "name"', end)
        return found

    printed = wait_for(
        lambda: {s["name"] for s in spans()} >= {"POST /predict", "modalkit.batch", "modalkit.inference"} and spans()
    )
    by_name = {s["name"]: s for s in printed}
    trace_ids = {by_name[n]["context"]["trace_id"] for n in ("POST /predict", "modalkit.batch", "modalkit.inference")}
    assert len(trace_ids) == 1
    assert by_name["modalkit.batch"]["attributes"]["modalkit.batch_size"] == 1
    assert by_name["modalkit.batch"]["resource"]["attributes"]["service.name"] == "echo-test"


def test_metrics_parse_and_match_the_requests_sent(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG)
    for i in range(5):
        assert predict(server, f"ok {i}").status_code == 200
    assert httpx.post(f"{server.url}/predict", json={"wrong": 1}, timeout=10).status_code == 422
    assert predict(server, "cuda").status_code == 503
    wait_for(lambda: replaced(server))

    seen = samples(server)
    label = lambda **kw: tuple(sorted(kw.items()))  # noqa: E731
    assert (
        seen[("modalkit_requests_total", label(route="/predict", method="POST", status="200", client="anonymous"))] == 5
    )
    assert (
        seen[("modalkit_requests_total", label(route="/predict", method="POST", status="422", client="anonymous"))] == 1
    )
    assert (
        seen[("modalkit_requests_total", label(route="/predict", method="POST", status="503", client="anonymous"))] == 1
    )
    assert seen[("modalkit_request_duration_seconds_count", label(route="/predict"))] == 7
    assert seen[("modalkit_batch_size_count", label(model="echo"))] == 6  # the 422 never reached a batch
    assert seen[("modalkit_batch_size_sum", label(model="echo"))] == 6
    assert seen[("modalkit_inference_seconds_count", label(model="echo"))] == 6
    assert seen[("modalkit_queue_wait_seconds_count", label(model="echo"))] == 6
    assert seen[("modalkit_requests_in_flight", label(route="/predict"))] == 0
    ready = [seen[("modalkit_containers", label(model="echo", phase=phase))] for phase in ("idle", "busy")]
    assert sum(ready) == 1  # the replacement
    assert seen[("modalkit_container_restarts_total", label(model="echo", cause="cuda"))] == 1
    assert seen[("modalkit_container_starts_total", label(model="echo"))] == 2
    assert seen[("modalkit_queue_depth", label(model="echo"))] == 0
    assert seen[("modalkit_jobs", label(state="queued"))] == 0


def test_stats_count_cold_and_warm_starts(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG)
    for text in ("first is cold", "warm", "warm too", "cuda"):
        predict(server, text)
    wait_for(lambda: replaced(server))
    assert predict(server, "cold again: a new container").status_code == 200

    stats = httpx.get(f"{server.url}/stats", timeout=10).json()
    assert (stats["invocations"], stats["cold_starts"], stats["warm_starts"]) == (5, 2, 3)
    assert stats["batches"] == 5 and stats["mean_batch_size"] == 1.0
    for kind in ("cold", "warm"):
        assert stats["latency_ms"][kind]["p50"] > 0
    assert stats["cost"]["gpu"] is None and stats["cost"]["container_seconds"] > 0
    assert stats["cost"]["estimated_usd"] > 0

    printed = CliRunner().invoke(main, ["stats", server.url])
    assert printed.exit_code == 0, printed.output
    assert "invocations        5  (cold 2, warm 3)" in printed.output


def test_logs_are_json_lines_with_the_trace_id(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG)
    assert predict(server, "cuda").status_code == 503
    lines = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith('{"time"')]
    assert lines and all("trace_id" in line for line in lines)
    failed = [line for line in lines if line["logger"] == "modalkit.web"]
    assert failed and failed[0]["trace_id"] and len(failed[0]["trace_id"]) == 32


# A sample's suffix -> the family types it may belong to (`modalkit_batch_size_bucket` is a histogram's).
_SUFFIXES = {"_bucket": ("histogram",), "_sum": ("histogram",), "_count": ("histogram",), "_total": ("counter",)}


def dashboard_metric_names() -> set[str]:
    """Every metric name in the PromQL of docs/grafana-dashboard.json: its panels and its template variables."""
    dashboard = json.loads((ROOT / "docs/grafana-dashboard.json").read_text())
    queries = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    queries += [v["query"]["query"] for v in dashboard["templating"]["list"] if isinstance(v.get("query"), dict)]
    return {name for query in queries for name in re.findall(r"\bmodalkit_[a-z_]+", query)}


def family_of(name: str, types: dict[str, str]) -> str:
    """The family a sample name belongs to: a suffix is stripped only when the rest is a family of its type."""
    for suffix, allowed in _SUFFIXES.items():
        base = name.removesuffix(suffix)
        if base != name and types.get(base) in allowed:
            return base
    return name


def test_every_metric_of_the_grafana_dashboard_is_served(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG)
    assert predict(server, "one request, so labelled series exist").status_code == 200
    families = list(text_string_to_metric_families(httpx.get(f"{server.url}/metrics", timeout=10).text))
    types = {family.name: family.type for family in families}
    sample_names = {sample.name for family in families for sample in family.samples}

    used = dashboard_metric_names()
    assert {family_of(name, types) for name in used} >= {
        "modalkit_requests",
        "modalkit_request_duration_seconds",
        "modalkit_requests_in_flight",
        "modalkit_batch_size",
        "modalkit_inference_seconds",
        "modalkit_queue_wait_seconds",
        "modalkit_containers",
        "modalkit_cold_starts",
        "modalkit_jobs",
    }
    for name in used:
        assert family_of(name, types) in types, f"{name}: no such metric in /metrics"
        assert name in sample_names, f"{name}: /metrics has no such series (a histogram needs _bucket, _sum or _count)"
