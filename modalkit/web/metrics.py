"""The web edge's views of what the runtime measured: Prometheus metrics (`/metrics`) and usage (`/stats`).

The raw figures are `modalkit.observation`'s, kept by the runtime; this module renders them.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any, get_args

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client import Counter as PromCounter
from prometheus_client import Gauge as PromGauge
from prometheus_client import Histogram as PromHistogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from modalkit.config.pricing import DEFAULT_CPU_CORES, DEFAULT_MEMORY_MIB, PRICES_TAKEN_ON
from modalkit.config.schema import AppSettings
from modalkit.jobs import JobState
from modalkit.observation import TIME_BUCKETS, Histogram, Observation, Phase

_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1000)


class Metrics:
    def __init__(self, observe: Callable[[], Observation]) -> None:
        self.registry = CollectorRegistry()
        labels = ["route", "method", "status", "client"]
        self.requests = PromCounter(
            "modalkit_requests", "HTTP requests by route, status and client (API key)", labels, registry=self.registry
        )
        self.clients: Counter[str] = Counter()  # requests by client name, for /stats
        self.latency = PromHistogram(
            "modalkit_request_duration_seconds",
            "HTTP request latency",
            ["route"],
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.first_chunk = PromHistogram(
            "modalkit_stream_first_chunk_seconds",
            "time from a stream's request to its first chunk",
            ["route"],
            buckets=TIME_BUCKETS,
            registry=self.registry,
        )
        self.in_flight = PromGauge(
            "modalkit_requests_in_flight", "HTTP requests being answered, by route", ["route"], registry=self.registry
        )
        self.chunks = PromCounter("modalkit_stream_chunks", "chunks sent by streams", ["route"], registry=self.registry)
        self.streams = PromCounter(
            "modalkit_streams", "streams by how they ended", ["route", "outcome"], registry=self.registry
        )
        self.stream_outcomes: Counter[str] = Counter()  # completed / failed / cancelled, for /stats
        self.registry.register(_RuntimeCollector(observe))

    def count_request(self, route: str, method: str, status: int, client: str) -> None:
        """One answered request; `client` is a configured client name or "anonymous" (bounded by the config)."""
        self.requests.labels(route, method, str(status), client).inc()
        self.clients[client] += 1

    def count_stream(self, route: str, outcome: str, chunks: int) -> None:
        self.streams.labels(route, outcome).inc()
        self.chunks.labels(route).inc(chunks)
        self.stream_outcomes[outcome] += 1
        self.stream_outcomes["chunks"] += chunks

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _RuntimeCollector(Collector):
    def __init__(self, observe: Callable[[], Observation]) -> None:
        self._observe = observe

    def collect(self) -> Iterable[Metric]:
        seen = self._observe()
        return [*_pool_metrics(seen), *_time_metrics(seen), *_container_metrics(seen), *_queue_metrics(seen)]


def _pool_metrics(seen: Observation) -> list[Metric]:
    model = ["model"]
    batch = HistogramMetricFamily("modalkit_batch_size", "items per batch run by a container", labels=model)
    starts = CounterMetricFamily("modalkit_container_starts", "containers started (model loaded)", labels=model)
    restarts = CounterMetricFamily(
        "modalkit_container_restarts", "containers replaced, by cause", labels=["model", "cause"]
    )
    cold = CounterMetricFamily("modalkit_cold_starts", "requests served by a container's first batch", labels=model)
    warm = CounterMetricFamily("modalkit_warm_starts", "requests served by a warm container", labels=model)
    for name, stats in seen.pools.items():
        sizes = stats.batch_sizes
        buckets = [(str(bound), sum(n for size, n in sizes.items() if size <= bound)) for bound in _BATCH_BUCKETS]
        buckets.append(("+Inf", sum(sizes.values())))
        batch.add_metric([name], buckets, sum(size * n for size, n in sizes.items()))
        starts.add_metric([name], stats.container_starts)
        for cause, n in stats.restarts.items():
            restarts.add_metric([name, cause], n)
        cold.add_metric([name], stats.requests["cold"])
        warm.add_metric([name], stats.requests["warm"])
    return [batch, starts, restarts, cold, warm]


def _time_metrics(seen: Observation) -> list[Metric]:
    model = ["model"]
    inference = HistogramMetricFamily(
        "modalkit_inference_seconds", "time a container took to run a batch, as it measured it", labels=model
    )
    wait = HistogramMetricFamily(
        "modalkit_queue_wait_seconds", "time an item waited from its arrival until its batch was sent", labels=model
    )
    for name, stats in seen.pools.items():
        inference.add_metric([name], _cumulative(stats.inference_seconds), stats.inference_seconds.total)
        wait.add_metric([name], _cumulative(stats.queue_wait), stats.queue_wait.total)
    return [inference, wait]


def _cumulative(histogram: Histogram) -> list[tuple[str, float]]:
    """Prometheus's buckets: each counts the values up to its bound, "+Inf" all of them."""
    running, buckets = 0, []
    for bound, n in zip([*map(str, histogram.bounds), "+Inf"], histogram.counts, strict=True):
        running += n
        buckets.append((bound, float(running)))
    return buckets


def _container_metrics(seen: Observation) -> list[Metric]:
    if not seen.container_phases:
        return []  # on Modal, only Modal knows its containers
    phases = GaugeMetricFamily(
        "modalkit_containers", "container lives by phase: starting, idle, busy, leaving", labels=["model", "phase"]
    )
    for name, stats in seen.pools.items():
        counted = stats.phases()
        for phase in get_args(Phase):
            phases.add_metric([name, phase], counted[phase])
    return [phases]


def _queue_metrics(seen: Observation) -> list[Metric]:
    depth = GaugeMetricFamily("modalkit_queue_depth", "items waiting for a batch", labels=["model"])
    for name, n in seen.queue_depth.items():
        depth.add_metric([name], n)
    jobs = GaugeMetricFamily("modalkit_jobs", "async jobs in the store, by state", labels=["state"])
    for state in get_args(JobState):
        jobs.add_metric([state], seen.jobs.get(state, 0))
    found: list[Metric] = [depth, jobs]
    if seen.job_store:
        rows, used = seen.job_store["rows"], seen.job_store["bytes"]
        found.append(GaugeMetricFamily("modalkit_job_store_rows", "jobs in the local job store", value=rows))
        found.append(
            GaugeMetricFamily("modalkit_job_store_bytes", "bytes of the local job store's pages in use", value=used)
        )
    return found


def usage(seen: Observation, app: AppSettings) -> dict[str, Any]:
    """The `/stats` view: invocations, cold vs warm, their latency percentiles, batch size and cost; locally also
    the job store's disk use (`job_store`: rows, bytes, file_bytes and their budgets)."""
    requests: Counter[str] = Counter()
    latencies: dict[str, list[float]] = {"cold": [], "warm": []}
    batches = seconds = 0.0
    for stats in seen.pools.values():
        requests.update(stats.requests)
        for kind in latencies:
            latencies[kind].extend(stats.latencies[kind])
        batches += sum(stats.batch_sizes.values())
        seconds += stats.container_time()
    invocations = requests["cold"] + requests["warm"]
    found: dict[str, Any] = {
        "invocations": invocations,
        "cold_starts": requests["cold"],
        "warm_starts": requests["warm"],
        "latency_ms": {kind: _percentiles(values) for kind, values in latencies.items()},
        "batches": int(batches),
        "mean_batch_size": round(invocations / batches, 3) if batches else 0.0,
        "cost": estimate_cost(seconds, app),
    }
    if seen.job_store:
        found["job_store"] = dict(seen.job_store)
    return found


def _percentiles(values: list[float]) -> dict[str, float | None]:
    ordered = sorted(values)
    if not ordered:
        return {"p50": None, "p95": None, "p99": None}

    def percentile_ms(q: float) -> float:
        return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000, 3)

    return {"p50": percentile_ms(0.50), "p95": percentile_ms(0.95), "p99": percentile_ms(0.99)}


def estimate_cost(container_seconds: float, app: AppSettings) -> dict[str, Any]:
    """What the measured container time would cost on Modal with this deployment_config."""
    deploy, prices = app.deployment_config, app.pricing
    gpu = deploy.gpu[0] if isinstance(deploy.gpu, list) else deploy.gpu
    gpu_rate = 0.0
    if gpu:
        kind, _, count = gpu.partition(":")
        gpu_rate = prices.gpu_per_second.get(kind, 0.0) * int(count or 1)
    cpu = deploy.cpu[0] if isinstance(deploy.cpu, tuple) else deploy.cpu or DEFAULT_CPU_CORES
    memory_mib = deploy.memory[0] if isinstance(deploy.memory, tuple) else deploy.memory or DEFAULT_MEMORY_MIB
    per_second = gpu_rate + cpu * prices.cpu_core_per_second + memory_mib / 1024 * prices.memory_gib_per_second
    return {
        "container_seconds": round(container_seconds, 3),
        "gpu": gpu,
        "usd_per_container_second": per_second,
        "estimated_usd": float(f"{per_second * container_seconds:.4g}"),  # significant digits: small sums stay > 0
        "prices_taken_on": PRICES_TAKEN_ON,
    }
