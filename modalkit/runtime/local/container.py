"""The server's handle on one local container process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from typing import Any

from modalkit.app_loader import ServiceRef
from modalkit.runtime.local import frames


class ContainerLoadFailed(Exception):
    """`load_artefacts` raised, or the process died while loading."""


class ContainerDied(Exception):
    """The process ended while a batch was in flight (crash, OOM kill, SIGKILL)."""


class Container:
    def __init__(self, ref: ServiceRef, model_name: str, env: dict[str, str] | None = None) -> None:
        self.ref = ref
        self.model_name = model_name
        self.env = {**os.environ, **(env or {})}
        self._proc: asyncio.subprocess.Process | None = None
        self.load_seconds = 0.0

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "modalkit.runtime.local.worker",
            self.ref.app_path, self.ref.attribute, self.model_name,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=self.env,
        )  # fmt: skip
        try:
            kind, info = await self._read()
        except ContainerDied as exc:
            raise ContainerLoadFailed(f"container exited while loading ({exc})") from None
        if kind != "ready":
            await self.stop()
            raise ContainerLoadFailed(info)
        self.load_seconds = info["load_seconds"]

    async def run(self, items: list[Any], threads: int) -> tuple[list[Any], tuple[int, int]]:
        """Send one batch; its results and when inference started and ended (ns). `ContainerDied` if it goes."""
        assert self._proc is not None and self._proc.stdin is not None
        try:
            self._proc.stdin.write(frames.encode(("batch", items, threads)))
            await self._proc.stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            raise ContainerDied(await self._exit_reason()) from None
        _, results, inference_ns = await self._read()
        return results, inference_ns

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def wait(self) -> int:
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, grace: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(BrokenPipeError, ConnectionResetError, RuntimeError):
            assert proc.stdin is not None
            proc.stdin.write(frames.encode(("stop",)))
            await proc.stdin.drain()
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _read(self) -> Any:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            return await frames.read_async(self._proc.stdout)
        except (asyncio.IncompleteReadError, ConnectionResetError):
            raise ContainerDied(await self._exit_reason()) from None

    async def _exit_reason(self) -> str:
        assert self._proc is not None
        code = await self._proc.wait()
        return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
