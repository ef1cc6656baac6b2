"""When a model's pool starts another container, and when an idle one may stop: pure decisions over a snapshot.

Another container starts (up to `max_containers`) when work is queued and either none is running, or none is
starting, none is idle and the oldest queued item has waited longer than a batch takes. A container idle for
`scaledown_window` stops, unless that would leave fewer than `min_containers`. A streaming pool starts another
when streams wait for a slot and the containers already starting cannot take them all.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ScalingInputs:
    """What the pool looks like at one moment, as far as scaling is concerned."""

    queued: int  # items waiting for a batch
    oldest_wait_s: float  # how long the oldest of them has waited
    batch_seconds: float  # how long a batch takes (a moving average)
    batch_wait_s: float  # the batcher's wait_ms, in seconds: a batch may wait this long to fill
    live: int  # container lives, whatever their phase
    ready: int  # loaded and serving (idle or busy)
    busy: int  # running a batch
    leaving: int  # idled out and stopping
    min_containers: int
    max_containers: int

    @property
    def starting(self) -> int:
        """Lives without a serving container: loading, waiting to retry, being replaced, or stopping."""
        return self.live - self.ready

    @property
    def idle(self) -> int:
        return self.ready - self.busy


def should_start_container(pool: ScalingInputs) -> bool:
    """Whether to start another container now."""
    if pool.live >= pool.max_containers or not pool.queued:
        return False
    waited_a_batch = pool.oldest_wait_s > max(pool.batch_seconds, pool.batch_wait_s)
    return pool.live == 0 or (pool.starting == 0 and pool.idle <= 0 and waited_a_batch)


def may_idle_out(pool: ScalingInputs) -> bool:
    """Whether an idle container may stop: the others that stay are still at least `min_containers`."""
    return may_stop_one(pool.live, pool.leaving, pool.min_containers)


def may_stop_one(live: int, leaving: int, min_containers: int) -> bool:
    """`may_idle_out` from the counts it reads (a streaming pool has no batch figures to fill a snapshot with)."""
    return live - leaving > min_containers


def should_start_stream_container(waiting: int, live: int, ready: int, slots: int, max_containers: int) -> bool:
    """Whether a streaming pool starts another container now: streams wait for a slot, and the containers
    already starting (`live - ready`, each with `slots` slots) will not have room for them all."""
    return live < max_containers and waiting > (live - ready) * slots
