"""The raw figures a runtime keeps, for the web edge to render as `/metrics` and `/stats`, and (locally) where
each container stands, which the pool scales by and `/health` shows.

Only the server process records: local containers report their timings back with each batch, so
plain in-process counters are exact and there is no multi-process bookkeeping to get wrong. On Modal the web
container records the same way: an item it sends `Metered` comes back `Timed`, with its batch's `BatchTiming`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any, Literal

_SAMPLES = 10_000  # latencies kept per kind for /stats percentiles
# Upper bounds, in seconds, of the time histograms (an implied last bucket takes the rest).
TIME_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


# Where one container life stands: loading (or waiting to retry, or being replaced), waiting for a batch,
# running one, or stopping after it idled out.
Phase = Literal["starting", "idle", "busy", "leaving"]


@dataclass
class Histogram:
    """Counts of observed values per bucket, kept as they are observed (`/metrics` renders them cumulative)."""

    bounds: tuple[float, ...] = TIME_BUCKETS
    counts: list[int] = field(init=False)  # one per bound, and one for the values past the last
    total: float = 0.0

    def __post_init__(self) -> None:
        self.counts = [0] * (len(self.bounds) + 1)

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1  # a value equal to a bound counts in that bucket
        self.total += value

    @property
    def count(self) -> int:
        return sum(self.counts)


@dataclass
class PoolStats:
    """The figures of one model's containers: the raw counts `/metrics` and `/stats` render, and where each
    container life stands now, which the pool's scaling and `/health` read."""

    container_starts: int = 0
    loads: int = 0  # containers that loaded the model: with none yet, a model is not known to load at all
    restarts: Counter[str] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)  # "cold" / "warm"
    latencies: dict[str, deque[float]] = field(
        default_factory=lambda: {"cold": deque(maxlen=_SAMPLES), "warm": deque(maxlen=_SAMPLES)}
    )
    inference_seconds: Histogram = field(default_factory=Histogram)  # per batch, as its container timed it
    queue_wait: Histogram = field(default_factory=Histogram)  # per item: from its arrival until its batch began to run
    container_seconds: float = 0.0
    batch_seconds: float = 0.0  # how long a batch takes: a moving average, a cold batch restarts it
    busy_seconds: float = 0.0  # inference time of every batch so far, as the containers timed it
    load_error: str | None = None  # why the last start failed to load the model; None once one loads
    _alive: dict[int, float] = field(default_factory=dict)  # when each life's container process started
    _phases: dict[int, Phase] = field(default_factory=dict)  # each container life's phase, by its key

    def record_batch(
        self,
        size: int,
        cold: bool,
        seconds: float,
        latencies: list[float],
        queue_waits: list[float] | None = None,
        inference_seconds: float | None = None,
    ) -> None:
        """A batch that ran: its size, whether its container's first, how long it took, its items' latencies, how
        long each item waited for the batch to be sent, and how long inference took in the container (default:
        `seconds`)."""
        self.batch_ran(size, cold, seconds, inference_seconds)
        self.items_answered(cold, latencies, queue_waits or [])

    def batch_ran(self, size: int, cold: bool, seconds: float, inference_seconds: float | None = None) -> None:
        """The batch's own figures, once per batch (on Modal, a web container may get only some of its items)."""
        self.batch_sizes[size] += 1
        self.inference_seconds.observe(seconds if inference_seconds is None else inference_seconds)
        self.batch_seconds = seconds if cold else 0.8 * self.batch_seconds + 0.2 * seconds

    def items_answered(self, cold: bool, latencies: list[float], queue_waits: list[float]) -> None:
        kind = "cold" if cold else "warm"
        self.requests[kind] += len(latencies)
        self.latencies[kind].extend(latencies)
        for wait in queue_waits:
            self.queue_wait.observe(wait)

    def container_up(self, life: int) -> None:
        self.container_starts += 1
        self._alive[life] = time.monotonic()

    def container_down(self, life: int) -> None:
        started = self._alive.pop(life, None)
        if started is not None:
            self.container_seconds += time.monotonic() - started

    def container_time(self) -> float:
        now = time.monotonic()
        return self.container_seconds + sum(now - t for t in self._alive.values())

    def enter(self, life: int, phase: Phase) -> None:
        self._phases[life] = phase

    def end(self, life: int) -> None:
        self._phases.pop(life, None)

    def phases(self) -> Counter[Phase]:
        """How many container lives are in each phase now."""
        return Counter(self._phases.values())

    @property
    def live(self) -> int:
        """Container lives, whatever their phase."""
        return len(self._phases)

    @property
    def ready(self) -> int:
        """Containers loaded and serving: idle or busy."""
        return sum(1 for p in self._phases.values() if p in ("idle", "busy"))

    @property
    def busy(self) -> int:
        return sum(1 for p in self._phases.values() if p == "busy")

    @property
    def leaving(self) -> int:
        """Containers that idled out and are stopping."""
        return sum(1 for p in self._phases.values() if p == "leaving")


@dataclass
class StreamStats:
    """The streams of one model entry (a streaming service): how many took a container, and how each ended."""

    started: int = 0  # took a container slot and began
    finished: int = 0  # ran to their end
    failed: int = 0  # ended with a Failure (before the first chunk or midway)
    cancelled: int = 0  # closed early by their reader (a client that left)
    refused: int = 0  # could not start: too many streams waited (`limits.max_queued_requests`)

    def counts(self) -> dict[str, int]:
        return {
            "started": self.started,
            "finished": self.finished,
            "failed": self.failed,
            "cancelled": self.cancelled,
            "refused": self.refused,
        }


@dataclass
class Observation:
    """What a runtime exposes to `/metrics` and `/stats`. On Modal, the batches this web container's own requests
    went into, as their containers timed them; no container phases, queues or jobs (Modal keeps those)."""

    pools: dict[str, PoolStats] = field(default_factory=dict)
    container_phases: bool = True  # whether `pools` know where each container stands (not on Modal)
    queue_depth: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    job_store: dict[str, int] = field(default_factory=dict)  # rows, bytes, file_bytes, max_rows, max_bytes
    streams: dict[str, StreamStats] = field(default_factory=dict)  # by model entry, for a streaming service


@dataclass(frozen=True, slots=True)
class BatchTiming:
    """When a Modal container ran one batch, as its own clock saw it: returned with each `Metered` item's result."""

    container: str  # this container's token, made at its first batch
    number: int  # batches this container ran before this one: 0 is its first (a cold start)
    size: int
    started_ns: int  # inference start and end, `time.time_ns()` in the container
    ended_ns: int

    @property
    def cold(self) -> bool:
        return self.number == 0

    @property
    def seconds(self) -> float:
        return (self.ended_ns - self.started_ns) / 1e9


@dataclass(frozen=True, slots=True)
class Metered:
    """An item whose sender wants its batch's timing back: the container answers it `Timed`. Only `ModalRuntime`
    sends these, so whoever calls `process_request` with plain items gets plain results, as before."""

    item: Any


@dataclass(frozen=True, slots=True)
class Timed:
    """A `Metered` item's result (an output or a `Failure`) and the timing of the batch that made it."""

    value: Any
    timing: BatchTiming
