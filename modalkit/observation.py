"""The raw figures a runtime keeps, for the web edge to render as `/metrics` and `/stats`, and (locally) where
each container stands, which the pool scales by and `/health` shows.

Only the server process records: local containers report their timings back with each batch, so
plain in-process counters are exact and there is no multi-process bookkeeping to get wrong.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Literal

_SAMPLES = 10_000  # latencies kept per kind for /stats percentiles


# Where one container life stands: loading (or waiting to retry, or being replaced), waiting for a batch,
# running one, or stopping after it idled out.
Phase = Literal["starting", "idle", "busy", "leaving"]


@dataclass
class PoolStats:
    """The figures of one model's containers: the raw counts `/metrics` and `/stats` render, and where each
    container life stands now, which the pool's scaling and `/health` read."""

    container_starts: int = 0
    restarts: Counter[str] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)  # "cold" / "warm"
    latencies: dict[str, deque[float]] = field(
        default_factory=lambda: {"cold": deque(maxlen=_SAMPLES), "warm": deque(maxlen=_SAMPLES)}
    )
    container_seconds: float = 0.0
    batch_seconds: float = 0.0  # how long a batch takes: a moving average, a cold batch restarts it
    load_error: str | None = None  # why the last start failed to load the model; None once one loads
    _alive: dict[int, float] = field(default_factory=dict)  # when each life's container process started
    _phases: dict[int, Phase] = field(default_factory=dict)  # each container life's phase, by its key

    def record_batch(self, size: int, cold: bool, seconds: float, latencies: list[float]) -> None:
        """A batch that ran: its size, whether its container's first, how long it took, its items' latencies."""
        kind = "cold" if cold else "warm"
        self.batch_sizes[size] += 1
        self.requests[kind] += size
        self.latencies[kind].extend(latencies)
        self.batch_seconds = seconds if cold else 0.8 * self.batch_seconds + 0.2 * seconds

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
    """What a runtime exposes to `/metrics` and `/stats`; empty on Modal, where containers report to Modal."""

    pools: dict[str, PoolStats] = field(default_factory=dict)
    queue_depth: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    job_store: dict[str, int] = field(default_factory=dict)  # rows, bytes, file_bytes, max_rows, max_bytes
    streams: dict[str, StreamStats] = field(default_factory=dict)  # by model entry, for a streaming service
