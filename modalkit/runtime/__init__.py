"""A runtime runs the service's batches and streams: `ModalRuntime` on Modal, `LocalRuntime` everywhere else."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable
from typing import Any, Protocol

from pydantic import BaseModel

from modalkit.config import ModalConfig
from modalkit.jobs import AsyncRequest, Job, JobState, PageKey
from modalkit.observation import Observation


class Runtime(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    def submit(self, model_name: str, item: Any) -> Awaitable[Any]:
        """Awaits one item's output, or a `modalkit.outcome.Failure`."""
        ...

    async def spawn(self, model_name: str, request: AsyncRequest) -> str:
        """Accept an async job durably; returns its id. May raise `QueueFull`."""
        ...

    async def job(self, job_id: str) -> Job | None:
        """The job's state, None if unknown; may raise `JobExpired`."""
        ...

    async def cancel(self, job_id: str) -> Job | None:
        """Cancel a queued or running job, durably; the job afterwards: `cancelled`, or as it was when it had already
        finished (succeeded or failed: left as it is). None if unknown."""
        ...

    async def list_jobs(
        self, owner: str | None, status: JobState | None, limit: int, after: PageKey | None
    ) -> list[Job]:
        """Up to `limit` jobs, newest first, after the job whose `PageKey` is `after`: only those `owner` (an API
        key's fingerprint) made, or every job when it is None (auth off); only those in `status` when given."""
        ...

    def stream(self, model_name: str, item: Any) -> AsyncIterator[Any]:
        """The chunks of one input's answer, as they are produced, for a `modalkit.streaming.StreamingService`.

        Locally each chunk is `modalkit.outcome.Encoded` JSON bytes (encoded in the container, `outcome.encode`).
        A failure, before the first chunk or midway, ends the stream with a `modalkit.outcome.Failure` as its last
        item (cause "load" when the model cannot load, "crash" when the container died, "cuda" when it is recycled).
        When the stream cannot start (too many streams wait for a container: `limits.max_queued_requests`; the
        server is stopping) the first step (`anext`) raises `ServiceUnavailable`, before any chunk. Closing the
        iterator early (`aclose()`) stops the generation in the container and frees its slot.
        """
        ...

    def ready(self) -> bool:
        """`/health`'s answer (ModalKit's): no model is failing to load."""
        ...

    def not_ready(self) -> list[str]:
        """`/readyz`'s: why the service cannot answer now, one reason per model that cannot; empty when it can."""
        ...

    def health(self) -> dict[str, Any]: ...
    def observe(self) -> Observation:
        """Figures for /metrics and /stats."""
        ...


def select_runtime(
    service: Any, config: ModalConfig, model_names: list[str], input_model: type[BaseModel], deployed: bool = False
) -> Runtime:
    """The runtime for where this process runs: Modal's inside a Modal container, the local one elsewhere.

    `deployed`: call the app deployed on Modal (`modal deploy`), looked up by app and class name, from anywhere.
    """
    import modal

    if deployed or not modal.is_local():
        from modalkit.runtime.modal import ModalRuntime

        if not deployed:
            return ModalRuntime(service, model_names)
        from modalkit.app_loader import user_class

        found = modal.Cls.from_name(config.app_name, user_class(service).__name__)
        # Plain items: nothing reads this runtime's figures, and an app deployed with another modalkit answers them.
        return ModalRuntime(found, model_names, local=service, observed=False)
    from modalkit.runtime.local import LocalRuntime

    return LocalRuntime(service, config, model_names, input_model)


__all__ = ["Runtime", "select_runtime"]
