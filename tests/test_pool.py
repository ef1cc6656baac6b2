"""The container pool on its own: the scaling decisions, and the pool driving stand-in containers (no processes).

A stand-in container answers each item by what it says: "slow" takes a while, "hang" never ends, "die" ends the
container mid-batch, "raise" breaks the exchange, "cuda" reports a CUDA failure (the container then exits), and
anything else answers at once.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from modalkit.app_loader import ServiceRef
from modalkit.config import ModalConfig
from modalkit.exceptions import ContainerDied, ContainerLoadFailed
from modalkit.outcome import Failure
from modalkit.runtime.local.lifecycle import LifeTimings
from modalkit.runtime.local.pool import ContainerPool, PoolSettings
from modalkit.runtime.local.scaling import (
    ScalingInputs,
    adds_capacity,
    may_idle_out,
    should_start_container,
    should_start_stream_container,
)

REF = ServiceRef("app.py", "App")
MODEL = "m"


# --- the scaling decisions -------------------------------------------------------------------------------------


def inputs(**changes: Any) -> ScalingInputs:
    """One container, busy, with an item that has waited longer than a batch takes: scale up, unless changed."""
    queue = {"queued": 1, "oldest_wait_s": 1.0, "batch_seconds": 0.5, "batch_wait_s": 0.01}
    containers = {"live": 1, "ready": 1, "busy": 1, "leaving": 0, "min_containers": 0, "max_containers": 3}
    return ScalingInputs(**{**queue, **containers, **changes})


@pytest.mark.parametrize(
    ("changes", "start"),
    [
        ({}, True),  # every container busy and the oldest item waited longer than a batch takes
        ({"live": 0, "ready": 0, "busy": 0, "oldest_wait_s": 0.0}, True),  # no container at all: start one at once
        ({"queued": 0, "oldest_wait_s": 0.0}, False),  # nothing queued
        ({"live": 3, "ready": 3, "busy": 3}, False),  # at max_containers
        ({"oldest_wait_s": 0.4}, False),  # not yet waited a batch
        ({"oldest_wait_s": 0.4, "batch_seconds": 0.1, "batch_wait_s": 0.5}, False),  # not yet waited wait_ms
        ({"live": 2}, False),  # one is starting already
        ({"live": 2, "ready": 2}, False),  # one is idle and will take it
        ({"live": 2, "ready": 2, "busy": 2}, True),
    ],
)
def test_should_start_container(changes: dict[str, Any], start: bool) -> None:
    assert should_start_container(inputs(**changes)) is start


@pytest.mark.parametrize(
    ("changes", "adds"),
    [
        ({}, True),  # nothing measured (no /proc): as on Modal, where each container is a machine of its own
        ({"spare_cores": 1.5}, False),  # measured, but no batch has run yet to say what a container uses
        ({"spare_cores": 0.1, "cores_per_container": 1.8}, False),  # threads already use every core: saturated
        ({"spare_cores": 0.4, "cores_per_container": 0.9}, False),  # less than MIN_SPARE_CORES idle
        ({"spare_cores": 0.0, "cores_per_container": 0.05}, True),  # it sleeps or waits on I/O: not the CPU
        ({"spare_cores": 0.6, "cores_per_container": 1.0}, True),  # bound by the GIL (one core) with one to spare
        ({"spare_cores": 14.0, "cores_per_container": 1.0}, True),  # a big machine, mostly idle
        ({"spare_cores": 3.0, "cores_per_container": 8.0}, False),  # a new one would get under half its share
        ({"spare_cores": 5.0, "cores_per_container": 8.0}, True),
        ({"devices": 1}, False),  # a GPU model on one GPU: a second container would share it
        ({"devices": 1, "spare_cores": 14.0, "cores_per_container": 1.0}, False),  # the GPU, not cores, decides
        ({"devices": 2}, True),  # a second GPU is free: capacity added, as on Modal
        ({"devices": 2, "live": 2, "ready": 2, "busy": 2}, False),  # every GPU has its container
    ],
)
def test_adds_capacity(changes: dict[str, Any], adds: bool) -> None:
    assert adds_capacity(inputs(**changes)) is adds


def test_no_scale_up_when_the_cores_are_saturated_but_scale_up_when_capacity_is_added() -> None:
    saturated = inputs(spare_cores=0.05, cores_per_container=1.9)
    assert not should_start_container(saturated)
    assert should_start_container(inputs(spare_cores=6.0, cores_per_container=1.0))
    assert should_start_container(inputs(live=0, ready=0, busy=0, spare_cores=0.0, cores_per_container=2.0))


@pytest.mark.parametrize(
    ("live", "leaving", "min_containers", "may"),
    [(1, 0, 0, True), (1, 0, 1, False), (2, 0, 1, True), (2, 1, 1, False), (3, 1, 1, True), (2, 2, 0, False)],
)
def test_may_idle_out(live: int, leaving: int, min_containers: int, may: bool) -> None:
    pool = inputs(live=live, ready=live - leaving, busy=0, leaving=leaving, min_containers=min_containers)
    assert may_idle_out(pool) is may


@pytest.mark.parametrize(
    ("waiting", "live", "ready", "start"),
    [
        (1, 0, 0, True),  # no container: the first stream starts one
        (0, 0, 0, False),  # nothing waits
        (2, 1, 0, True),  # one starting has 1 slot for 2 streams
        (1, 1, 0, False),  # the one starting will take it
        (1, 1, 1, True),  # the ready one is full (else it would not wait)
        (5, 3, 3, False),  # at max_containers
    ],
)
def test_should_start_stream_container(waiting: int, live: int, ready: int, start: bool) -> None:
    assert should_start_stream_container(waiting, live, ready, slots=1, max_containers=3) is start


# --- the pool, with stand-in containers -----------------------------------------------------------------------


class FakeContainers:
    """The factory of stand-in containers: what each one does, and every one made."""

    def __init__(self, load_failures: int = 0) -> None:
        self.load_failures = load_failures  # the first starts that fail to load
        self.made: list[FakeContainer] = []
        self.pids = itertools.count(1000)

    def __call__(self, ref: ServiceRef, model_name: str, env: dict[str, str]) -> FakeContainer:
        container = FakeContainer(self, next(self.pids))
        self.made.append(container)
        return container

    def serving(self) -> list[FakeContainer]:
        return [c for c in self.made if c.loaded and not c.exited.done()]


class FakeContainer:
    def __init__(self, factory: FakeContainers, pid: int) -> None:
        self.factory = factory
        self.pid = pid
        self.exited: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self.loaded = False
        self.threads: list[int] = []
        self.sent: list[list[Any]] = []  # batches sent and not yet run
        self.health_reason: str | None = None  # what the model's health() says
        self.health_checks = 0
        self.ran: list[list[Any]] = []

    async def start(self) -> None:
        await asyncio.sleep(0)
        if self.factory.load_failures:
            self.factory.load_failures -= 1
            self.end(3)
            raise ContainerLoadFailed("RuntimeError: weights are missing")
        self.loaded = True

    async def unhealthy(self) -> str | None:
        self.health_checks += 1
        return self.health_reason

    async def send(self, items: list[Any], threads: int, trace_id: str | None = None) -> None:
        if self.exited.done():
            raise ContainerDied("its pipe failed")
        self.sent.append(list(items))
        self.threads.append(threads)

    async def receive(self) -> tuple[list[Any], tuple[int, int]]:
        """Runs the oldest batch sent, as a worker runs them, one after another."""
        items = self.sent.pop(0)
        self.ran.append(items)
        if "slow" in items:
            await asyncio.sleep(0.15)
        if "slow-die" in items:
            await asyncio.sleep(0.15)
            self.end(-9)
            raise ContainerDied("killed by signal 9")
        if "hang" in items:
            await asyncio.sleep(3600)
        if "die" in items:
            self.end(-9)
            raise ContainerDied("killed by signal 9")
        if "raise" in items:
            raise RuntimeError("the pipe broke")
        if "cuda" in items:
            asyncio.get_running_loop().call_later(0.01, self.end, 0)  # a worker exits after a CUDA failure
        return [Failure("cuda", "CUDA error") if i == "cuda" else f"done:{i}" for i in items], (0, 0)

    def end(self, code: int) -> None:
        if not self.exited.done():
            self.exited.set_result(code)

    def kill(self) -> None:
        self.end(-9)

    async def wait(self) -> int:
        return await self.exited

    async def stop(self) -> None:
        await asyncio.sleep(0.05)  # a process takes a moment to exit
        self.end(0)


@pytest.fixture
def settings(tmp_path: Path) -> PoolSettings:
    """A pool's settings from a small YAML, with timings shorter than a config allows."""
    path = tmp_path / "modalkit.yaml"
    path.write_text(
        "app_settings:\n"
        "  batch_config: {max_batch_size: 1, wait_ms: 5}\n"
        "  deployment_config: {min_containers: 1, max_containers: 3, scaledown_window: 2, timeout: 1}\n"
    )
    from_config = PoolSettings.from_config(ModalConfig(path))
    assert (from_config.timings.scaledown_window, from_config.timings.batch_timeout) == (2.0, 1.0)
    quick = LifeTimings(
        scaledown_window=0.2, batch_timeout=0.2, backoff_base_s=0.02, backoff_max_s=0.1, quick_crash_s=5.0
    )
    return dataclasses.replace(from_config, timings=quick)


def with_pool(
    settings: PoolSettings, containers: FakeContainers, scenario: Callable[[ContainerPool], Awaitable[None]]
) -> None:
    async def main() -> None:
        pool = ContainerPool(REF, MODEL, settings, containers)
        await pool.start()
        try:
            await scenario(pool)
        finally:
            await pool.stop()

    asyncio.run(asyncio.wait_for(main(), 8))


async def until(condition: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.005)


def failure(result: Any) -> Failure:
    assert isinstance(result, Failure), result
    return result


def test_min_containers_start_at_boot_and_share_the_cores(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        await until(lambda: pool.stats.ready == 2)
        assert await pool.submit("a") == "done:a"
        health = pool.health()
        assert (health["containers"], health["ready_containers"], health["container_starts"]) == (2, 2, 2)
        assert sorted(health["pids"]) == [1000, 1001]
        assert [t for c in containers.made for t in c.threads] == [max(1, (os.cpu_count() or 1) // 2)]

    with_pool(dataclasses.replace(settings, min_containers=2), containers, scenario)


def test_scales_up_while_work_waits_then_idles_down_to_the_minimum(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        await until(lambda: pool.stats.ready == 1)
        answers = [pool.submit("slow") for _ in range(8)]
        await until(lambda: pool.stats.live == 3)
        assert await asyncio.gather(*answers) == ["done:slow"] * 8
        await until(lambda: pool.stats.ready == 3)
        together = [pool.submit("slow") for _ in range(3)]  # one each: all three go idle at the same moment
        assert await asyncio.gather(*together) == ["done:slow"] * 3
        await until(lambda: pool.stats.live == 1)
        await asyncio.sleep(0.5)  # more than one scaledown_window: the last one stays
        assert (pool.stats.live, pool.stats.ready, pool.stats.leaving) == (1, 1, 0)
        assert len(containers.made) == 3 and len(containers.serving()) == 1
        assert pool.stats.restarts == {}

    with_pool(settings, containers, scenario)


def test_with_no_minimum_a_container_starts_on_demand_and_idles_out(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        await asyncio.sleep(0.1)
        assert containers.made == []
        assert await pool.submit("a") == "done:a"
        await until(lambda: pool.stats.live == 0)
        assert containers.serving() == [] and pool.health()["pids"] == []

    with_pool(dataclasses.replace(settings, min_containers=0), containers, scenario)


def test_a_container_that_dies_while_idle_is_replaced(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        await until(lambda: pool.stats.ready == 1)
        containers.made[0].end(-9)
        await until(lambda: pool.stats.restarts == {"crash": 1} and pool.stats.ready == 1)
        assert pool.health()["pids"] == [containers.made[1].pid]
        assert await pool.submit("a") == "done:a"

    with_pool(settings, containers, scenario)


def test_a_container_that_dies_mid_batch_fails_it_as_a_crash_and_is_replaced(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        crashed = failure(await pool.submit("die"))
        assert crashed.cause == "crash" and crashed.transient and "killed by signal 9" in crashed.detail
        await until(lambda: pool.stats.ready == 1)
        assert pool.stats.restarts == {"crash": 1} and len(containers.made) == 2
        assert await pool.submit("a") == "done:a"

    with_pool(settings, containers, scenario)


def test_a_full_batch_is_sent_ahead_while_one_runs(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        await until(lambda: pool.stats.ready == 1)
        running = pool.submit("slow")
        await until(lambda: len(containers.made[0].ran) == 1)
        queued = pool.submit("a")  # a full batch (max_batch_size 1): sent while "slow" runs
        await until(lambda: containers.made[0].sent == [["a"]])
        assert not running.done()
        assert (await running, await queued) == ("done:slow", "done:a")

    with_pool(dataclasses.replace(settings, min_containers=1, max_containers=1), containers, scenario)


def test_a_batch_sent_ahead_to_a_container_that_dies_runs_on_its_replacement(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        await until(lambda: pool.stats.ready == 1)
        dying = pool.submit("slow-die")
        await until(lambda: len(containers.made[0].ran) == 1)
        ahead = pool.submit("a")
        await until(lambda: containers.made[0].sent == [["a"]])
        assert failure(await dying).cause == "crash"
        assert await ahead == "done:a"  # never ran on the dead container: requeued, not failed
        assert containers.made[1].ran == [["a"]]

    with_pool(dataclasses.replace(settings, min_containers=1, max_containers=1), containers, scenario)


def test_a_partial_batch_keeps_filling_while_the_container_is_busy(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        await until(lambda: pool.stats.ready == 1)
        running = pool.submit("slow")
        await until(lambda: len(containers.made[0].ran) == 1)
        first = pool.submit("a")  # one of two: not sent ahead, it waits for more while "slow" runs
        await asyncio.sleep(0.05)
        assert containers.made[0].sent == []
        second = pool.submit("b")
        await until(lambda: containers.made[0].sent == [["a", "b"]])
        assert await running == "done:slow" and (await first, await second) == ("done:a", "done:b")

    two = dataclasses.replace(settings, min_containers=1, max_containers=1, max_batch_size=2, wait_ms=10)
    with_pool(two, containers, scenario)


def test_readiness_follows_the_models_health_hook(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        await until(lambda: pool.stats.ready == 1 and containers.made[0].health_checks >= 1)
        assert pool.not_ready() is None
        containers.made[0].health_reason = "the GPU has no memory left"
        await until(lambda: pool.not_ready() == f"model {MODEL!r}: the GPU has no memory left")
        assert await pool.submit("a") == "done:a"  # readiness only: a container that says no still serves
        containers.made[0].health_reason = None
        await until(lambda: pool.not_ready() is None)
        assert containers.made[0].sent == []

    timings = dataclasses.replace(settings.timings, health_interval_s=0.02)
    one = dataclasses.replace(settings, min_containers=1, max_containers=1, timings=timings)
    with_pool(one, containers, scenario)


def test_with_no_minimum_readiness_starts_a_container_and_stays_after_it_idles_out(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        assert pool.stats.live == 0
        assert pool.not_ready() == f"model {MODEL!r}: no container has loaded it yet"
        await until(lambda: pool.stats.ready == 1)  # asking started one
        assert pool.not_ready() is None
        await until(lambda: pool.stats.live == 0)  # idled out (scaledown_window 0.2 s)
        assert pool.not_ready() is None  # loaded before: the next request starts one, as on Modal

    with_pool(dataclasses.replace(settings, min_containers=0), containers, scenario)


def test_quick_crashes_are_replaced_after_a_growing_backoff(
    settings: PoolSettings, caplog: pytest.LogCaptureFixture
) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        for _ in range(3):
            assert failure(await pool.submit("die")).cause == "crash"
        await until(lambda: pool.stats.ready == 1)
        assert pool.stats.restarts == {"crash": 3}

    with caplog.at_level(logging.WARNING, logger="modalkit.pool"):
        with_pool(settings, containers, scenario)
    replaced = [r.getMessage().rsplit(" in ", 1)[1] for r in caplog.records if "replaced after crash" in r.getMessage()]
    assert replaced == ["0s", "0.04s", "0.08s"]  # the first at once, then backoff_s(1), backoff_s(2)


def test_a_batch_that_cannot_run_fails_as_a_crash_and_the_container_is_replaced(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        broken = failure(await pool.submit("raise"))
        assert broken.cause == "crash" and "RuntimeError: the pipe broke" in broken.detail
        await until(lambda: pool.stats.ready == 1)
        assert pool.stats.restarts == {"error": 1} and containers.made[0].exited.result() == -9
        assert await pool.submit("a") == "done:a"

    with_pool(settings, containers, scenario)


def test_a_model_that_fails_to_load_is_retried_with_backoff_and_fails_queued_items(
    settings: PoolSettings, caplog: pytest.LogCaptureFixture
) -> None:
    containers = FakeContainers(load_failures=4)

    async def scenario(pool: ContainerPool) -> None:
        queued = failure(await pool.submit("a"))
        assert queued.cause == "load" and "weights are missing" in queued.detail
        assert pool.failed() and "weights are missing" in str(pool.health()["load_error"])
        assert failure(await pool.submit("b")).cause == "load"  # answered at once while no container loads
        await until(lambda: pool.stats.ready == 1)
        assert not pool.failed() and pool.health()["load_error"] is None
        assert await pool.submit("c") == "done:c"
        assert pool.stats.container_starts == 5 and pool.stats.restarts == {}

    with caplog.at_level(logging.ERROR, logger="modalkit.pool"):
        with_pool(settings, containers, scenario)
    delays = [r.getMessage().split("next in ")[1].split(")")[0] for r in caplog.records]
    assert delays == ["0.04s", "0.08s", "0.1s", "0.1s"]  # backoff_s(attempt), capped at backoff_max_s


def test_a_batch_past_the_timeout_is_killed_and_its_container_replaced(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        timed_out = failure(await pool.submit("hang"))
        assert timed_out.cause == "timeout" and timed_out.transient
        assert containers.made[0].exited.result() == -9  # killed
        await until(lambda: pool.stats.ready == 1)
        assert pool.stats.restarts == {"timeout": 1}
        assert await pool.submit("a") == "done:a"

    with_pool(settings, containers, scenario)


def test_a_cuda_failure_recycles_the_container(settings: PoolSettings) -> None:
    containers = FakeContainers()

    async def scenario(pool: ContainerPool) -> None:
        assert failure(await pool.submit("cuda")).cause == "cuda"
        await until(lambda: pool.stats.restarts == {"cuda": 1} and pool.stats.ready == 1)
        assert containers.made[0].exited.result() == 0 and len(containers.made) == 2
        assert await pool.submit("a") == "done:a"

    with_pool(settings, containers, scenario)


def test_stop_answers_running_and_queued_items_as_unavailable(settings: PoolSettings) -> None:
    containers = FakeContainers()
    answers: list[asyncio.Future[Any]] = []

    async def scenario(pool: ContainerPool) -> None:
        await until(lambda: pool.stats.ready == 1)
        answers.extend(pool.submit(item, background=True) for item in ("slow", "queued"))
        await until(lambda: pool.stats.busy == 1)

    with_pool(dataclasses.replace(settings, max_containers=1), containers, scenario)
    assert [failure(a.result()).cause for a in answers] == ["unavailable", "unavailable"]


# --- what the scaling decisions measure ------------------------------------------------------------------------


def test_the_core_meter_sees_a_busy_container_use_a_core_and_the_machine_lose_it() -> None:
    import multiprocessing
    import time

    from modalkit.runtime.local.cores import CoreMeter, machine_ticks, process_cpu_seconds

    assert machine_ticks() is not None  # Linux: /proc/stat (elsewhere scaling keeps Modal's rule)
    cores = os.cpu_count() or 1
    spinner = multiprocessing.get_context("spawn").Process(target=_spin, args=(4.0,), daemon=True)
    spinner.start()
    try:
        assert spinner.pid is not None
        time.sleep(0.5)  # started and spinning
        meter = CoreMeter(cores, interval_s=0.0)
        began = time.monotonic()
        meter.sample(began, [spinner.pid], busy_seconds=0.0)
        assert meter.spare_cores is None and meter.cores_per_container is None  # one sample is no interval
        time.sleep(0.1)
        meter.sample(time.monotonic(), [spinner.pid], busy_seconds=0.1)
        assert meter.cores_per_container is None  # under MIN_BUSY_S of busy time: ticks of 10 ms say too little
        time.sleep(0.9)
        now = time.monotonic()
        meter.sample(now, [spinner.pid], busy_seconds=now - began)  # as if it ran one batch all along
        assert meter.cores_per_container is not None and 0.6 < meter.cores_per_container <= 1.2  # one core
        assert meter.spare_cores is not None and meter.spare_cores <= cores - 0.5
    finally:
        spinner.kill()
    assert process_cpu_seconds(None) is None


def _spin(seconds: float) -> None:
    import time

    end = time.monotonic() + seconds
    while time.monotonic() < end:
        pass


def test_a_gpu_models_containers_get_a_gpu_each_from_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from modalkit.runtime.local.cores import local_gpus

    def config(gpu: str | None) -> ModalConfig:
        path = tmp_path / f"{gpu}.yaml"
        deployment = f"\n    deployment_config: {{gpu: '{gpu}'}}" if gpu else ""
        path.write_text(
            f"app_settings:\n    app_prefix: g{deployment}\nmodel_settings:\n    model_entries: {{m: {{}}}}\n"
        )
        return ModalConfig(path)

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert local_gpus(config(None)) is None  # a CPU model
    assert local_gpus(config("H100")) == ["0", "1", "2", "3"]
    assert local_gpus(config("A100:2")) == ["0,1", "2,3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_gpus(config("H100")) is None  # no GPU here: it runs on what it finds
