"""The raw figures a runtime keeps, for the web edge to render as `/metrics` and `/stats`.

Only the server process records: local containers report their timings back with each batch, so
plain in-process counters are exact and there is no multi-process bookkeeping to get wrong.
"""

from __future__ import annotations

import time
from collections import Counter, deque
from dataclasses import dataclass, field

_SAMPLES = 10_000  # latencies kept per kind for /stats percentiles


@dataclass
class PoolStats:
    """The raw figures of one model's containers."""

    container_starts: int = 0
    restarts: Counter[str] = field(default_factory=Counter)
    batch_sizes: Counter[int] = field(default_factory=Counter)
    requests: Counter[str] = field(default_factory=Counter)  # "cold" / "warm"
    latencies: dict[str, deque[float]] = field(
        default_factory=lambda: {"cold": deque(maxlen=_SAMPLES), "warm": deque(maxlen=_SAMPLES)}
    )
    container_seconds: float = 0.0
    _alive: dict[int, float] = field(default_factory=dict)

    def record_batch(self, size: int, cold: bool, latencies: list[float]) -> None:
        kind = "cold" if cold else "warm"
        self.batch_sizes[size] += 1
        self.requests[kind] += size
        self.latencies[kind].extend(latencies)

    def container_up(self, key: int) -> None:
        self.container_starts += 1
        self._alive[key] = time.monotonic()

    def container_down(self, key: int) -> None:
        started = self._alive.pop(key, None)
        if started is not None:
            self.container_seconds += time.monotonic() - started

    def container_time(self) -> float:
        now = time.monotonic()
        return self.container_seconds + sum(now - t for t in self._alive.values())


@dataclass
class Observation:
    """What a runtime exposes to `/metrics` and `/stats`; empty on Modal, where containers report to Modal."""

    pools: dict[str, PoolStats] = field(default_factory=dict)
    queue_depth: dict[str, int] = field(default_factory=dict)
    jobs: dict[str, int] = field(default_factory=dict)
    job_store: dict[str, int] = field(default_factory=dict)  # rows, bytes, file_bytes, max_rows, max_bytes
