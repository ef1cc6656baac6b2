"""`ModalRuntime`: the web function calls the service class of the same app on Modal."""

from __future__ import annotations

from typing import Any

from modalkit.outcome import Failure


class ModalRuntime:
    def __init__(self, service: Any, model_names: list[str]) -> None:
        self._service = service
        self._objects = {name: service(model_name=name) for name in model_names}

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def submit(self, model_name: str, item: Any) -> Any:
        import modal.exception

        try:
            return await self._objects[model_name].process_request.remote.aio(item)
        except modal.exception.Error as exc:
            return Failure(503, f"the model container failed: {type(exc).__name__}: {exc}", "unavailable")

    def ready(self) -> bool:
        return True

    def health(self) -> dict[str, Any]:
        return {"runtime": "modal", "models": {name: {} for name in self._objects}}
