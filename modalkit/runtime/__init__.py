"""A runtime runs the service's batches: `ModalRuntime` on Modal, `LocalRuntime` everywhere else."""

from __future__ import annotations

from typing import Any, Protocol

from modalkit.config import ModalConfig


class Runtime(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def submit(self, model_name: str, item: Any) -> Any:
        """One item's output, or a `modalkit.outcome.Failure`."""
        ...

    def ready(self) -> bool: ...
    def health(self) -> dict[str, Any]: ...


def select_runtime(service: Any, config: ModalConfig, model_names: list[str]) -> Runtime:
    import modal

    if not modal.is_local():
        from modalkit.runtime.modal import ModalRuntime

        return ModalRuntime(service, model_names)
    from modalkit.runtime.local import LocalRuntime

    return LocalRuntime(service, config, model_names)


__all__ = ["Runtime", "select_runtime"]
