"""`ModalRuntime`: the web function calls the service class of the same app on Modal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from modalkit.exceptions import JobExpired, NotSupported, ServiceUnavailable
from modalkit.jobs import AsyncRequest, Job, JobState, PageKey, job_outcome
from modalkit.observation import BatchTiming, Metered, Observation, PoolStats, Timed
from modalkit.outcome import Failure
from modalkit.runtime.modal_jobs import Entry, JobBook, job_dict

logger = logging.getLogger("modalkit.jobs")

_BATCHES_REMEMBERED = 4096  # batch keys kept to count each batch once: the items of one arrive close together


class ModalRuntime:
    def __init__(
        self,
        service: Any,
        model_names: list[str],
        function_call: Any = None,
        local: Any = None,
        observed: bool = True,
        job_book: JobBook | None = None,
    ) -> None:
        """`local`: the class as defined in app.py, when `service` is a deployed one (`modal.Cls.from_name`).

        `observed`: send each item `Metered`, so that its result comes back with its batch's timing, which
        `observe()` reports; off, items and results cross as they are (ModalKit's `sync_call`).
        `job_book`: where jobs' owners and states are kept; by default the app's `modal.Dict` (`job_dict`),
        or none for a class that carries no config (then jobs have no owner and cannot be listed).
        """
        import modal

        config = config_of(local if local is not None else service)
        self.job_book = job_book or (JobBook(job_dict(config)) if config is not None else None)
        bound = with_config_concurrency(service, local if local is not None else service)
        self._objects = {name: bound(model_name=name) for name in model_names}
        self._function_call = function_call or modal.FunctionCall
        self._shape = service_shape(local if local is not None else service)
        self._observed = observed
        self._stats = {name: PoolStats() for name in model_names}
        self._batches_seen: dict[tuple[str, int], None] = {}  # oldest first

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def submit(self, model_name: str, item: Any) -> Any:
        import modal.exception

        self._refuse_unless("batched", "/predict")
        sent_ns, started = time.time_ns(), time.perf_counter()
        try:
            answer = await self._objects[model_name].process_request.remote.aio(
                Metered(item) if self._observed else item
            )
        except modal.exception.Error as exc:
            return _unavailable(exc)
        if not isinstance(answer, Timed):
            return answer
        self._record(model_name, answer.timing, sent_ns, time.perf_counter() - started)
        return answer.value

    def _record(self, model_name: str, timing: BatchTiming, sent_ns: int, latency: float) -> None:
        """One item's answer: its batch counted once, whichever of its items comes back first; the item's wait
        from its sending to its batch's start (two clocks, this one and the container's: clamped at 0)."""
        stats = self._stats[model_name]
        key = (timing.container, timing.number)
        if key not in self._batches_seen:
            self._batches_seen[key] = None
            if len(self._batches_seen) > _BATCHES_REMEMBERED:
                del self._batches_seen[next(iter(self._batches_seen))]
            stats.batch_ran(timing.size, timing.cold, timing.seconds)
            if timing.cold:  # a container's first batch: it started for it
                stats.container_starts += 1
        stats.items_answered(timing.cold, [latency], [max(0, timing.started_ns - sent_ns) / 1e9])

    async def spawn(self, model_name: str, request: AsyncRequest) -> str:
        """The job id is the FunctionCall id; the container pushes the result to the request's queues. The job's
        entry is in the job book before the id is returned: if it cannot be written, the call is cancelled and
        the job refused (503), so no job is answered 202 that its client could not read."""
        import modal.exception

        self._refuse_unless("batched", "/predict_async")
        call = await self._objects[model_name].process_request.spawn.aio(request)
        job_id = str(call.object_id)
        if self.job_book is None:
            return job_id
        try:
            await self.job_book.record(job_id, model_name, request)
        except modal.exception.Error as exc:
            logger.error("job %s: its entry could not be written to the job book (%s); cancelling it", job_id, exc)
            with contextlib.suppress(modal.exception.Error):
                await self._function_call.from_id(job_id).cancel.aio()
            raise ServiceUnavailable(f"the job book cannot take the job ({exc}); retry later", retry_after=5) from None
        return job_id

    async def stream(self, model_name: str, item: Any) -> AsyncIterator[Any]:
        """The chunks of one input's answer as the container makes them (`stream_request.remote_gen.aio`).

        A `Failure` chunk ends the stream, and so does a Modal error (as `Failure("unavailable", ...)`). Closing
        this iterator early closes the remote generator, which stops the generation in the container.
        """
        import modal.exception

        self._refuse_unless("streaming", "/predict_stream")
        chunks = self._objects[model_name].stream_request.remote_gen.aio(item)
        try:
            async for chunk in chunks:
                yield chunk
                if isinstance(chunk, Failure):
                    return
        except modal.exception.Error as exc:
            yield _unavailable(exc)
        finally:
            close = getattr(chunks, "aclose", None)
            if close is not None:
                with contextlib.suppress(modal.exception.Error):  # the call is gone already: nothing left to stop
                    await close()

    def _refuse_unless(self, shape: str, route: str) -> None:
        """A streaming class has no `process_request`, a batched one no `stream_request`: say which route to use."""
        if self._shape is None or self._shape[1] == shape:
            return
        name, other = self._shape
        use = "/predict_stream" if other == "streaming" else "/predict, /predict_batch or /predict_async"
        raise NotSupported(f"{name} is a {other} service, which does not answer on {route}: use {use}")

    async def job(self, job_id: str) -> Job | None:
        """The call's state, with its owner and creation time from the job book (whose status it updates)."""
        entry = await self.job_book.entry(job_id) if self.job_book is not None else None
        if entry is not None and entry.status == "cancelled":
            return entry.as_job()
        try:
            job = await self._call_state(job_id)
        except JobExpired as exc:  # whose it was decides who is told so (anyone else: unknown)
            raise JobExpired(str(exc), entry.owner if entry is not None else None) from None
        if job is None or entry is None or self.job_book is None:
            return job
        update: dict[str, Any] = {"owner": entry.owner, "created_at": entry.created_at}
        if not job.pending:
            await self._note(entry, job.status)
            update["webhook"] = await self.job_book.webhook(entry)
        return job.model_copy(update=update)

    async def _call_state(self, job_id: str) -> Job | None:
        import modal.exception

        call = self._function_call.from_id(job_id)
        try:
            result = await call.get.aio(timeout=0)
        except modal.exception.OutputExpiredError:  # before TimeoutError: it is a subclass of modal's
            raise JobExpired(f"the result of job {job_id} has expired (Modal keeps results for a while)") from None
        except (TimeoutError, modal.exception.TimeoutError):
            return Job(job_id=job_id, status="running")  # Modal does not tell queued from running
        except modal.exception.NotFoundError:
            return None
        except modal.exception.InputCancellation:  # a BaseException: cancelled by another web container's book
            return Job(job_id=job_id, status="cancelled")
        except modal.exception.Error as exc:
            result = Failure("unavailable", f"{type(exc).__name__}: {exc}")
        status, outcome = job_outcome(result)
        if status == "failed":
            return Job(job_id=job_id, status="failed", error=outcome)
        return Job(job_id=job_id, status="succeeded", result=outcome)

    async def _note(self, entry: Entry, status: JobState) -> Entry:
        """Record a status seen, for listing; a failure to write it only leaves the book a step behind."""
        import modal.exception

        assert self.job_book is not None
        try:
            return await self.job_book.mark(entry, status)
        except modal.exception.Error as exc:
            logger.warning("job %s: its status %s could not be written to the job book: %s", entry.job_id, status, exc)
            return entry

    async def cancel(self, job_id: str) -> Job | None:
        """`FunctionCall.cancel()`: Modal stops the input, queued or running. The job book records it `cancelled`
        before this returns (a book write that fails is an error here, not a note)."""
        job = await self.job(job_id)
        if job is None or not job.pending:
            return job
        await self._function_call.from_id(job_id).cancel.aio()
        after = await self._call_state(job_id)  # a call that finished before the cancel reached it is left so
        if after is not None and after.status in ("succeeded", "failed"):
            return await self.job(job_id)
        if self.job_book is not None:
            entry = await self.job_book.entry(job_id)
            if entry is not None:
                return (await self.job_book.mark(entry, "cancelled")).as_job()
        return job.model_copy(update={"status": "cancelled"})

    async def list_jobs(
        self, owner: str | None, status: JobState | None, limit: int, after: PageKey | None
    ) -> list[Job]:
        """From the job book: every entry of `owner` is read, then those near the page whose call may have finished
        since it was last seen are asked for their state, `limit` at a time, until the page is full."""
        if self.job_book is None:
            raise NotSupported("listing jobs needs the job book, which a service class without modal_config lacks")
        candidates = await self.job_book.candidates(owner, after)
        page: list[Job] = []
        for start in range(0, len(candidates), limit):
            chunk = await asyncio.gather(*(self._fresh(entry) for entry in candidates[start : start + limit]))
            page.extend(entry.as_job() for entry in chunk if status is None or entry.status == status)
            if len(page) >= limit:
                break
        return page[:limit]

    async def _fresh(self, entry: Entry) -> Entry:
        """The entry with its call's state now, if it was pending when last seen."""
        if not entry.pending:
            return entry
        try:
            job = await self._call_state(entry.job_id)
        except JobExpired:
            return entry
        return await self._note(entry, job.status) if job is not None and not job.pending else entry

    def ready(self) -> bool:
        return True

    def not_ready(self) -> list[str]:
        """Nothing to wait for here: Modal routes an input only to a container that has loaded (`@modal.enter`)."""
        return []

    def observe(self) -> Observation:
        """The batches this web container's requests went into; Modal alone sees every container and queue."""
        return Observation(pools=dict(self._stats), container_phases=False)

    def health(self) -> dict[str, Any]:
        return {"runtime": "modal", "models": {name: {} for name in self._objects}}


def config_of(service: Any) -> Any:
    """The `ModalConfig` a service class carries (`modal_config`), None when it carries none."""
    from modalkit.app_loader import user_class

    try:
        return getattr(user_class(service), "modal_config", None)
    except AssertionError:  # a deployed class looked up by name carries no Python class
        return None


def with_config_concurrency(service: Any, local: Any = None) -> Any:
    """The service class as it must be called for the YAML's `max_concurrent_inputs` to hold on Modal.

    A class decorated with `@modal.concurrent` keeps its own setting. Without the decorator (ModalKit's
    deployment guide has none), `Cls.with_concurrency` carries the configured value with every call.
    `local` is the class as app.py defines it (default: `service` itself), which holds the config.
    """
    from modalkit.app_loader import user_class

    local = service if local is None else local
    try:
        config = getattr(user_class(local), "modal_config", None)
    except AssertionError:  # a deployed class looked up by name carries no Python class
        return service
    if config is None or not hasattr(service, "with_concurrency"):
        return service
    wanted = config.app_settings.deployment_config.max_concurrent_inputs
    if wanted <= 1 or declared_concurrency(local) is not None:
        return service
    return service.with_concurrency(max_inputs=wanted)


def declared_concurrency(service: Any) -> int | None:
    """`max_inputs` of the `@modal.concurrent` on a Modal class or function, None without one."""
    target = service._get_class_service_function() if hasattr(service, "_get_class_service_function") else service
    info = target.info().concurrency_info
    return None if info is None else int(info.max_inputs)


def service_shape(service: Any) -> tuple[str, str] | None:
    """`(class name, "streaming" or "batched")` for a service class (or the `modal.Cls` of one), by its Modal
    method: `stream_request` (a `StreamingService`) or `process_request`; None when the class cannot tell."""
    from modalkit.app_loader import user_class

    try:
        cls = user_class(service)
    except AssertionError:  # a deployed class looked up by name carries no Python class
        return None
    streams, batches = hasattr(cls, "stream_request"), hasattr(cls, "process_request")
    if streams == batches:
        return None
    return cls.__name__, "streaming" if streams else "batched"


def _unavailable(exc: BaseException) -> Failure:
    return Failure("unavailable", f"the model container failed: {type(exc).__name__}: {exc}")
