"""One container's life in a model's pool, from its first start until it idles out.

A container starts, and one that cannot start or load is retried with capped exponential backoff (`Life`, what
every pool's containers share). A loaded batch container (`ContainerLife`) takes batches from the pool's batcher
and answers every item of each; a streaming one is `stream_pool.StreamLife`. One that crashed (noticed
when its process ends, busy or idle), ran a batch past the timeout, reported a CUDA failure, or could not run
a batch is replaced at once, or after a backoff when it keeps crashing soon after loading. One that waited
`scaledown_window` for work stops, when the pool may lose it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Literal, Protocol, TypeVar

from modalkit import telemetry
from modalkit.app_loader import ServiceRef
from modalkit.exceptions import ContainerDied, ContainerLoadFailed
from modalkit.observation import PoolStats
from modalkit.outcome import Cause, Failure
from modalkit.runtime.local.batcher import Batcher, Pending, resolve
from modalkit.runtime.local.container import exit_reason

logger = logging.getLogger("modalkit.pool")

# Why a container's life in service ended: it idled out, or why it was replaced (`PoolStats.restarts`).
Ended = Literal["idle", "crash", "timeout", "cuda", "error"]
SHUTTING_DOWN = "the server is shutting down"


class ProcessHandle(Protocol):
    """What any life needs of its container process: start it, see it end, stop it."""

    @property
    def pid(self) -> int | None: ...

    @property
    def exited(self) -> asyncio.Future[int]:
        """Done with the exit status as soon as the process ends, whatever it was doing."""
        ...

    async def start(self) -> None:
        """Returns once the model has loaded; raises `ContainerLoadFailed` if it cannot."""
        ...

    def kill(self) -> None: ...

    async def wait(self) -> int: ...

    async def stop(self) -> None: ...


class ContainerHandle(ProcessHandle, Protocol):
    """What a batch life needs of a container; `modalkit.runtime.local.container.Container` is the real one."""

    async def send(self, items: list[Any], threads: int, trace_id: str | None = None) -> None:
        """Send a batch, to run after those sent before it; `ContainerDied` if the container goes."""
        ...

    async def unhealthy(self) -> str | None:
        """The model's `health()`, asked with no batch in flight: None when it can serve, else why not."""
        ...

    async def receive(self) -> tuple[list[Any], tuple[int, int]]:
        """The oldest unanswered batch's results and when its inference started and ended (ns); `ContainerDied`
        if the container goes first."""
        ...


ContainerFactory = Callable[[ServiceRef, str, dict[str, str]], ContainerHandle]
H = TypeVar("H", bound=ProcessHandle)


@dataclass(frozen=True, slots=True)
class LifeTimings:
    scaledown_window: float  # seconds a container waits for work before it may stop
    batch_timeout: float  # Modal's per-input timeout: a batch past it is killed with its container
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    quick_crash_s: float = 10.0  # a container that crashes this soon after loading, twice running, backs off
    health_interval_s: float = 10.0  # a ready container's `health()` is asked at most this often

    def backoff_s(self, attempt: int) -> float:
        return min(self.backoff_max_s, self.backoff_base_s * 2.0**attempt)


def load_failure(model_name: str, error: str) -> Failure:
    return Failure("load", f"model {model_name!r} failed to load: {error}")


class Life(Generic[H]):
    """One slot of a pool: the container in it now, and its replacements until one idles out.

    The pool provides the shared parts: its stats (where this life's phase is kept, under `key`: the pool enters
    it as "starting" and ends it), how to make a container, and whether an idle container may stop now. What a
    loaded container does is the subclass's `_serve`; `_fail_waiting` answers the work that waits for a container
    when none can load.
    """

    def __init__(
        self,
        key: int,
        model_name: str,
        timings: LifeTimings,
        *,
        stats: PoolStats,
        new_container: Callable[[], H],
        may_idle_out: Callable[[], bool],
    ) -> None:
        self.key = key
        self.model_name = model_name
        self.container: H | None = None  # the one serving now; None while starting or stopping
        self.unhealthy: str | None = None  # why the model's `health()` says its container cannot serve now
        self._timings = timings
        self._stats = stats
        self._new_container = new_container
        self._may_idle_out = may_idle_out

    async def _serve(self, container: H) -> Ended:
        """Serve with a loaded container until it dies, must be replaced, or idles out; why it ended."""
        raise NotImplementedError

    def _fail_waiting(self, failure: Failure) -> None:
        """Answer the work waiting for a container with `failure` (no container could load)."""
        raise NotImplementedError

    async def run(self) -> None:
        """Start a container, serve with it, and replace it when it must go, until one idles out."""
        loop = asyncio.get_running_loop()
        quick_crashes = 0
        while True:
            container = await self._start_loaded()
            ready_at = loop.time()
            ended = await self._serve_then_stop(container)
            if ended == "idle":
                logger.info("container of %r idle for %ss: stopped", self.model_name, self._timings.scaledown_window)
                return
            self._stats.restarts[ended] += 1
            quick = ended == "crash" and loop.time() - ready_at < self._timings.quick_crash_s
            quick_crashes = quick_crashes + 1 if quick else 0
            delay = self._timings.backoff_s(quick_crashes - 1) if quick_crashes > 1 else 0.0
            logger.warning(
                "container of %r (pid %s) replaced after %s, in %gs", self.model_name, container.pid, ended, delay
            )
            await asyncio.sleep(delay)

    async def _start_loaded(self) -> H:
        """A container that has loaded; a failed start or load is retried with capped exponential backoff."""
        failures = 0
        while True:
            container = self._new_container()
            self._stats.container_up(self.key)
            try:
                await container.start()
            except ContainerLoadFailed as exc:
                await self._discard(container)
                failures += 1
                await self._back_off_after_load_failure(str(exc), failures)
                continue
            except BaseException:
                await self._discard(container)
                raise
            self._stats.load_error = None
            return container

    async def _discard(self, container: H) -> None:
        self._stats.container_down(self.key)
        await container.stop()

    async def _back_off_after_load_failure(self, error: str, failures: int) -> None:
        self._stats.load_error = error
        delay = self._timings.backoff_s(failures)
        logger.error("model %r failed to load (attempt %d, next in %gs): %s", self.model_name, failures, delay, error)
        if self._stats.ready == 0:  # no other container will serve the queue meanwhile
            self._fail_waiting(load_failure(self.model_name, error))
        await asyncio.sleep(delay)

    async def _serve_then_stop(self, container: H) -> Ended:
        """Serve with a loaded container, then stop it; why it ended."""
        self.container = container
        self._stats.loads += 1
        self._stats.enter(self.key, "idle")
        logger.info("container of %r ready (pid %s)", self.model_name, container.pid)
        ended: Ended | None = None
        try:
            ended = await self._serve(container)
            return ended
        finally:  # in the same step as the decision: another idle container counts this one as leaving
            self.container = None
            self._stats.enter(self.key, "leaving" if ended == "idle" else "starting")
            await self._discard(container)


class ContainerLife(Life[ContainerHandle]):
    """A life that serves batches: it takes them from the pool's batcher and answers every item of each, with the
    threads the pool gives a batch now."""

    def __init__(
        self,
        key: int,
        model_name: str,
        timings: LifeTimings,
        *,
        batcher: Batcher,
        stats: PoolStats,
        new_container: Callable[[], ContainerHandle],
        threads: Callable[[], int],
        may_idle_out: Callable[[], bool],
    ) -> None:
        super().__init__(key, model_name, timings, stats=stats, new_container=new_container, may_idle_out=may_idle_out)
        self._batcher = batcher
        self._threads = threads
        self._health_due = 0.0  # loop time

    def _fail_waiting(self, failure: Failure) -> None:
        self._batcher.fail_all(failure)

    async def _serve(self, container: ContainerHandle) -> Ended:
        return await self._serve_batches(container)

    async def _serve_batches(self, container: ContainerHandle) -> Ended:
        """Feed batches to the container until it dies, must be replaced, or idles out; why it ended.

        While a batch runs, a full batch waiting in the queue is sent ahead, so the container starts it as soon
        as the one before ends (its transfer and unpickling overlap that batch's inference). A batch sent ahead
        that never ran, because its container went, goes back to the head of the queue.
        """
        cold = True  # the first batch of a container pays for its start
        ahead: list[Pending] = []  # a batch sent while the one before ran
        self.unhealthy = None  # asked first one interval after loading: a container that just loaded can serve
        self._health_due = asyncio.get_running_loop().time() + self._timings.health_interval_s
        while True:
            batch, sent = ahead, bool(ahead)
            if not batch:
                taken = await self._wait_for_batch(container)
                if isinstance(taken, str):
                    return taken
                batch = taken
            ahead = []
            ended = await self._run_batch(container, batch, cold, sent, ahead)
            if ended is not None:
                self._batcher.requeue(ahead)
                return ended
            cold = False

    async def _wait_for_batch(self, container: ContainerHandle) -> list[Pending] | Ended:
        """The next batch; asking the model's health when it is due; or why the container's service ends: it
        died while idle, or it waited `scaledown_window` for work and the pool may lose it."""
        loop = asyncio.get_running_loop()
        idle_since = loop.time()
        while True:
            if loop.time() >= self._health_due and (ended := await self._check_health(container)) is not None:
                return ended
            idle_left = idle_since + self._timings.scaledown_window - loop.time() if self._may_idle_out() else None
            wait = (
                self._health_due - loop.time() if idle_left is None else min(idle_left, self._health_due - loop.time())
            )
            taken = await self._next_batch_unless_dead(container, max(0.0, wait))
            if taken is None:
                reason = exit_reason(container.exited.result())
                logger.warning("container of %r (pid %s) died while idle (%s)", self.model_name, container.pid, reason)
                return "crash"
            if taken:
                return taken
            if loop.time() - idle_since >= self._timings.scaledown_window and self._may_idle_out():
                return "idle"

    async def _check_health(self, container: ContainerHandle) -> Ended | None:
        """Ask the model's `health()` (nothing is in flight); a container that cannot answer in the batch timeout,
        or dies asking, must go."""
        try:
            async with asyncio.timeout(self._timings.batch_timeout):
                unhealthy = await container.unhealthy()
        except TimeoutError:
            logger.warning(
                "container of %r (pid %s): health() did not answer; replaced", self.model_name, container.pid
            )
            container.kill()
            return "timeout"
        except ContainerDied:
            return None  # waiting for the next batch notices the exit, and says so
        if unhealthy != self.unhealthy:
            log = logger.warning if unhealthy else logger.info
            log("container of %r (pid %s): %s", self.model_name, container.pid, unhealthy or "healthy again")
        self.unhealthy = unhealthy
        self._health_due = asyncio.get_running_loop().time() + self._timings.health_interval_s
        return None

    async def _next_batch_unless_dead(
        self, container: ContainerHandle, idle_timeout: float | None
    ) -> list[Pending] | None:
        """The next batch (empty after `idle_timeout` s with nothing queued), or None if the container died first."""
        waiting = asyncio.ensure_future(self._batcher.next_batch(idle_timeout))
        try:
            await asyncio.wait((waiting, container.exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiting.cancel()  # takes nothing from the queue unless it is done already
        if waiting.done() and not waiting.cancelled():
            return waiting.result()  # taken as the container died: the run fails it as a crash, and jobs retry
        return None

    async def _run_batch(
        self, container: ContainerHandle, batch: list[Pending], cold: bool, sent: bool, ahead: list[Pending]
    ) -> Ended | None:
        """Run one batch (`sent` already) and answer every item in it, putting a batch sent ahead meanwhile in
        `ahead`; why the container must go, or None if it serves on."""
        loop = asyncio.get_running_loop()
        started_ns, started = time.time_ns(), loop.time()
        ran = await self._run_or_fail_batch(container, batch, sent, ahead)
        if isinstance(ran, str):
            return ran
        results, inference_ns = ran
        for pending, result in zip(batch, results, strict=True):
            resolve(pending, result)
        done = loop.time()
        inference_s = (inference_ns[1] - inference_ns[0]) / 1e9
        self._stats.busy_seconds += inference_s  # what the scaling's core meter weighs the containers' CPU time by
        self._stats.record_batch(
            len(batch),
            cold,
            done - started,
            [done - p.arrival for p in batch],
            queue_waits=[max(0.0, started - p.arrival) for p in batch],  # until the batch began to run
            inference_seconds=inference_s,
        )
        traces = [p.trace for p in batch]
        window_ns = (started_ns, time.time_ns())
        telemetry.record_batch(self.model_name, traces, str(container.pid), cold, window_ns, inference_ns)
        if any(isinstance(r, Failure) and r.recycles_container for r in results):
            await container.wait()  # the worker exits after sending a result that recycles it
            return "cuda"
        return None

    async def _run_or_fail_batch(
        self, container: ContainerHandle, batch: list[Pending], sent: bool, ahead: list[Pending]
    ) -> tuple[list[Any], tuple[int, int]] | Ended:
        """The batch's results and when inference ran; or, when it could not finish, every item answered with
        a Failure and why the container must go (a batch sent `ahead` never ran then: the caller requeues it)."""
        self._stats.enter(self.key, "busy")
        try:
            async with asyncio.timeout(self._timings.batch_timeout):
                return await self._results(container, batch, sent, ahead)
        except TimeoutError:
            container.kill()
            timeout = self._timings.batch_timeout
            _fail(batch, "timeout", f"the batch ran past deployment_config.timeout ({timeout:g} s); container replaced")
            return "timeout"
        except ContainerDied as exc:
            _fail(batch, "crash", f"container crashed ({exc}) while running this batch; retry")
            return "crash"
        except asyncio.CancelledError:
            _fail(batch + ahead, "unavailable", SHUTTING_DOWN)
            raise
        except Exception as exc:  # a batch is never dropped: whatever went wrong, its items are answered
            logger.exception("container of %r (pid %s) could not run a batch", self.model_name, container.pid)
            container.kill()
            _fail(batch, "crash", f"the batch could not be run ({type(exc).__name__}: {exc}); retry")
            return "error"
        finally:
            self._stats.enter(self.key, "idle")

    async def _results(
        self, container: ContainerHandle, batch: list[Pending], sent: bool, ahead: list[Pending]
    ) -> tuple[list[Any], tuple[int, int]]:
        """Send the batch unless `sent`, and wait for its results; meanwhile take a full batch from the queue,
        if one fills and no free container wants it, and send it ahead (its items end up in `ahead`)."""
        if not sent:
            await container.send([p.item for p in batch], self._threads(), _trace_of(batch))
        answer = asyncio.ensure_future(container.receive())
        taking: asyncio.Future[list[Pending]] | None = None
        if asyncio.get_running_loop().time() < self._health_due:  # when it is due, the health check goes next
            taking = asyncio.ensure_future(self._batcher.next_full_batch())
        try:
            while not answer.done():
                waits: list[asyncio.Future[Any]] = [answer, taking] if taking else [answer]
                await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                if taking is not None and taking.done():
                    ahead.extend(taking.result())
                    taking = None
                    await container.send([p.item for p in ahead], self._threads(), _trace_of(ahead))
            return answer.result()
        finally:
            answer.cancel()
            if taking is not None and not taking.cancel():  # taken as the answer came: it waits for the next run
                self._batcher.requeue(taking.result())


def _trace_of(batch: list[Pending]) -> str | None:
    """The batch's trace: its span is a child of its first traced request."""
    first = next((p.trace for p in batch if p.trace is not None), None)
    return format(first.trace_id, "032x") if first is not None else None


def _fail(batch: list[Pending], cause: Cause, detail: str) -> None:
    failure = Failure(cause, detail)
    for pending in batch:
        resolve(pending, failure)
