"""`LocalRuntime`: Modal's semantics on one machine, with worker processes as containers."""

from __future__ import annotations

import asyncio
from typing import Any

from modalkit.app_loader import service_ref
from modalkit.config import ModalConfig
from modalkit.runtime.local.pool import ContainerPool


class LocalRuntime:
    def __init__(self, service: Any, config: ModalConfig, model_names: list[str]) -> None:
        ref = service_ref(service)
        self.pools = {name: ContainerPool(ref, name, config) for name in model_names}

    async def start(self) -> None:
        for pool in self.pools.values():
            await pool.start()

    async def stop(self) -> None:
        await asyncio.gather(*(pool.stop() for pool in self.pools.values()))

    async def submit(self, model_name: str, item: Any) -> Any:
        return await self.pools[model_name].submit(item)

    def ready(self) -> bool:
        return all(pool.ready > 0 for pool in self.pools.values())

    def health(self) -> dict[str, Any]:
        return {"runtime": "local", "models": {name: pool.health() for name, pool in self.pools.items()}}
