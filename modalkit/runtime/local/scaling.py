"""When a model's pool starts another container, and when an idle one may stop: pure decisions over a snapshot.

Another container starts (up to `max_containers`) when work is queued and either none is running, or none is
starting, none is idle, the oldest queued item has waited longer than a batch takes, and another container
would add capacity here (`adds_capacity`: on Modal each container is a machine of its own; here they share this
machine's cores and GPUs, and one that only takes a share of cores the others already use lowers throughput).
A container idle for
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
    spare_cores: float | None = None  # the machine's idle cores lately; None: not measured here
    cores_per_container: float | None = None  # cores one ready container used lately; None: not measured
    devices: int | None = None  # for a GPU model, how many containers this machine's GPUs give one each

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
    return pool.live == 0 or (pool.starting == 0 and pool.idle <= 0 and waited_a_batch and adds_capacity(pool))


# A container that used less than CPU_BOUND cores while it ran a batch is bound by something else (it sleeps,
# waits on I/O or a remote call): another adds capacity, as on Modal. One that used more must find at least
# SPARE_SHARE of what it uses idle on the machine, and at least MIN_SPARE_CORES: less, and the new one would
# mostly take cores from the containers (and the server) already running, lowering throughput.
CPU_BOUND = 0.5
SPARE_SHARE = 0.5
MIN_SPARE_CORES = 0.5


def adds_capacity(pool: ScalingInputs) -> bool:
    """Whether one more container would add capacity on this machine.

    A GPU model: while a GPU (or the GPUs one container asks for) is free, one container each. A model that is
    not bound by the CPU: yes. A CPU-bound model: while the machine has spare cores, at least half of what one
    container uses (a model bound by the GIL uses about one core, so where cores are idle a second one adds
    capacity; a model whose threads already use every core does not, and would lower throughput); until a batch
    has run, nothing is known of it: no. Nothing measured at all (no /proc): yes, as on Modal.
    """
    if pool.devices is not None:
        return pool.live < pool.devices
    if pool.spare_cores is None:
        return True
    if pool.cores_per_container is None:
        return False  # no batch has run yet to say what one container uses: the first will, shortly
    return pool.cores_per_container < CPU_BOUND or pool.spare_cores >= max(
        MIN_SPARE_CORES, SPARE_SHARE * pool.cores_per_container
    )


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
