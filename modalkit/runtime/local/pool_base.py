"""What the batched pool (`pool.py`) and the streaming pool (`stream_pool.py`) share: the lives of one model
entry's containers, one task each; the figures kept of them (`PoolStats`); the environment containers start with;
and what follows from those alone (load failure, idling out, pids, the common part of `health()`)."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import itertools
import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from modalkit.app_loader import ServiceRef
from modalkit.observation import PoolStats
from modalkit.runtime.local.lifecycle import Life
from modalkit.runtime.local.scaling import may_stop_one

L = TypeVar("L", bound=Life[Any])


class LifePool(Generic[L]):
    def __init__(
        self,
        ref: ServiceRef,
        model_name: str,
        min_containers: int,
        max_containers: int,
        threads_per_container: int | None,
        container_factory: Callable[[ServiceRef, str, dict[str, str]], Any],
    ) -> None:
        self.ref = ref
        self.model_name = model_name
        self.min_containers = min_containers
        self.max_containers = max_containers
        self.stats = PoolStats()
        self._cores = os.cpu_count() or 1
        # A container's first threads: its share of the cores when the minimum runs (a batch may re-share them).
        threads = threads_per_container or max(1, self._cores // max(1, min_containers))
        self._env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self._container_factory = container_factory
        self._lives: dict[int, tuple[L, asyncio.Task[None]]] = {}
        self._keys = itertools.count()

    def failed(self) -> bool:
        """The model failed to load and no container serves it."""
        return self.stats.load_error is not None and self.stats.ready == 0

    def not_ready(self) -> str | None:
        """Why this model cannot answer now, or None when it can.

        It can when a container is ready and its model's `health()` did not say no; or, with `min_containers: 0`,
        when a container of this server has loaded it before (the next request starts one, as on Modal). A model
        no container has loaded yet is not ready: asking starts one, so that scale-to-zero still gets ready.
        """
        name = self.model_name
        if self.failed():
            return f"model {name!r} failed to load: {self.stats.load_error}"
        ready = [life for life, _ in self._lives.values() if life.container is not None]
        unhealthy = [life.unhealthy for life in ready if life.unhealthy is not None]
        if len(unhealthy) < len(ready) or (not ready and self.min_containers == 0 and self.stats.loads):
            return None
        if unhealthy:
            return f"model {name!r}: {'; '.join(sorted(set(unhealthy)))}"
        if not self._lives:
            self._start_life()
        return f"model {name!r}: no container has loaded it yet"

    def _start_life(self) -> None:
        raise NotImplementedError

    def _new_container(self, env: dict[str, str] | None = None) -> Any:
        return self._container_factory(self.ref, self.model_name, {**self._env, **(env or {})})

    def _pids(self) -> list[int]:
        return [life.container.pid for life, _ in self._lives.values() if life.container is not None]

    def _may_idle_out(self) -> bool:
        return may_stop_one(self.stats.live, self.stats.leaving, self.min_containers)

    def _launch(self, make_life: Callable[[int], L]) -> None:
        """Start a container's life; it counts as starting from now, so the next scaling decision sees it."""
        key = next(self._keys)
        life = make_life(key)
        self.stats.enter(key, "starting")
        # A fresh context: a container started on a request's behalf must not log under its request id and trace.
        self._lives[key] = (life, asyncio.create_task(self._run_life(life), context=contextvars.Context()))

    async def _run_life(self, life: L) -> None:
        try:
            await life.run()
        finally:
            self.stats.end(life.key)
            del self._lives[life.key]

    async def _stop_lives(self, *others: asyncio.Task[None] | None) -> None:
        """Cancel every life (and `others`), and wait for them to end."""
        tasks = [task for task in (*others, *(task for _, task in self._lives.values())) if task is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def _health(self, queued: int) -> dict[str, Any]:
        stats = self.stats
        return {
            "containers": stats.live,
            "ready_containers": stats.ready,
            "min_containers": self.min_containers,
            "max_containers": self.max_containers,
            "queued": queued,
            "load_error": stats.load_error,
            "pids": self._pids(),
            "container_starts": stats.container_starts,
            "restarts": dict(stats.restarts),
        }
