"""A runtime runs the service's batches: `ModalRuntime` on Modal, `LocalRuntime` everywhere else."""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any, Protocol

from pydantic import BaseModel

from modalkit.config import ModalConfig
from modalkit.jobs import AsyncRequest, JobView
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

    async def job(self, job_id: str) -> JobView | None:
        """The job's state, None if unknown; may raise `JobExpired`."""
        ...

    def ready(self) -> bool: ...
    def health(self) -> dict[str, Any]: ...
    def observe(self) -> Observation:
        """Figures for /metrics and /stats."""
        ...


def select_runtime(service: Any, config: ModalConfig, model_names: list[str], input_model: type[BaseModel]) -> Runtime:
    import modal

    if not modal.is_local():
        from modalkit.runtime.modal import ModalRuntime

        return ModalRuntime(service, model_names)
    from modalkit.runtime.local import LocalRuntime

    return LocalRuntime(service, config, model_names, input_model)


__all__ = ["Runtime", "select_runtime"]
