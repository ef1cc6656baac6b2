"""What `/metrics` renders of the runtime's figures: histograms kept as observations happen, container phases, and
the requests in flight by route (`RequestMetrics`)."""

from __future__ import annotations

import asyncio

import httpx
from fastapi import FastAPI
from prometheus_client.parser import text_string_to_metric_families

from modalkit.observation import Histogram, Observation, PoolStats
from modalkit.web.metrics import Metrics
from modalkit.web.middleware import RequestMetrics

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(metrics: Metrics) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics.render().decode())
        for s in family.samples
    }


def label(**labels: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(labels.items()))


def test_a_histogram_counts_each_value_in_the_first_bucket_that_holds_it() -> None:
    histogram = Histogram(bounds=(0.1, 1.0))
    for value in (0.05, 0.1, 0.5, 3.0):
        histogram.observe(value)
    assert histogram.counts == [2, 1, 1]  # a value equal to a bound is in that bound's bucket (Prometheus's `le`)
    assert (histogram.count, histogram.total) == (4, 3.65)


def test_record_batch_keeps_inference_time_per_batch_and_queue_wait_per_item() -> None:
    stats = PoolStats()
    stats.record_batch(2, True, 0.5, [0.6, 0.7], queue_waits=[0.02, 0.003], inference_seconds=0.4)
    stats.record_batch(1, False, 0.2, [0.3])  # the call as it was: no waits, inference time taken as `seconds`
    assert stats.batch_sizes == {2: 1, 1: 1}
    assert (stats.requests["cold"], stats.requests["warm"]) == (2, 1)
    assert stats.inference_seconds.count == 2 and round(stats.inference_seconds.total, 6) == 0.6
    assert stats.queue_wait.count == 2 and round(stats.queue_wait.total, 6) == 0.023


def test_metrics_render_the_histograms_cumulative_with_the_model_label() -> None:
    stats = PoolStats()
    stats.record_batch(2, True, 0.5, [0.6, 0.7], queue_waits=[0.002, 0.2], inference_seconds=0.004)
    stats.enter(1, "busy")
    stats.enter(2, "starting")
    seen = samples(Metrics(lambda: Observation(pools={"m": stats})))

    assert seen[("modalkit_inference_seconds_bucket", label(model="m", le="0.0025"))] == 0
    assert seen[("modalkit_inference_seconds_bucket", label(model="m", le="0.005"))] == 1
    assert seen[("modalkit_inference_seconds_count", label(model="m"))] == 1
    assert seen[("modalkit_queue_wait_seconds_bucket", label(model="m", le="0.0025"))] == 1
    assert seen[("modalkit_queue_wait_seconds_bucket", label(model="m", le="0.25"))] == 2
    assert seen[("modalkit_queue_wait_seconds_bucket", label(model="m", le="+Inf"))] == 2
    assert round(seen[("modalkit_queue_wait_seconds_sum", label(model="m"))], 6) == 0.202
    phases = {phase: seen[("modalkit_containers", label(model="m", phase=phase))] for phase in ("starting", "busy")}
    assert phases == {"starting": 1, "busy": 1} and seen[("modalkit_containers", label(model="m", phase="idle"))] == 0


def test_without_container_phases_no_container_gauge_is_rendered() -> None:
    seen = samples(Metrics(lambda: Observation(pools={"m": PoolStats()}, container_phases=False)))
    assert not any(name == "modalkit_containers" for name, _ in seen)
    assert seen[("modalkit_batch_size_count", label(model="m"))] == 0


def test_requests_in_flight_are_counted_by_route_until_answered() -> None:
    metrics = Metrics(Observation)
    app = FastAPI()
    release = asyncio.Event()

    @app.get("/slow/{name}")
    async def slow(name: str) -> str:
        await release.wait()
        return name

    app.add_middleware(RequestMetrics, metrics=metrics)

    async def scenario() -> tuple[float, float, Samples]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            calls = [asyncio.create_task(client.get(f"/slow/{n}")) for n in ("a", "b")]
            key = ("modalkit_requests_in_flight", label(route="/slow/{name}"))
            while samples(metrics).get(key, 0) < 2:  # both inside the route (the deadline is wait_for's)
                await asyncio.sleep(0.001)
            during = samples(metrics)[key]
            release.set()
            await asyncio.gather(*calls)
            missing = (await client.get("/nowhere")).status_code
        return during, missing, samples(metrics)

    during, missing, after = asyncio.run(asyncio.wait_for(scenario(), 10))
    assert during == 2 and missing == 404
    assert after[("modalkit_requests_in_flight", label(route="/slow/{name}"))] == 0
    assert (
        after[("modalkit_requests_total", label(route="/slow/{name}", method="GET", status="200", client="anonymous"))]
        == 2
    )
    assert (
        after[("modalkit_requests_total", label(route="unmatched", method="GET", status="404", client="anonymous"))]
        == 1
    )
