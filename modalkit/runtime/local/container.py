"""The server's handle on one local container process."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import Coroutine
from typing import Any, TypeVar

from modalkit.app_loader import ServiceRef
from modalkit.exceptions import ContainerDied, ContainerLoadFailed
from modalkit.runtime.local import frames

T = TypeVar("T")

EXIT_WAIT_S = 2.0  # after a pipe error, how long the process may take to exit before it is killed


class Container:
    def __init__(self, ref: ServiceRef, model_name: str, env: dict[str, str] | None = None) -> None:
        self.ref = ref
        self.model_name = model_name
        self.env = {**os.environ, **(env or {})}
        self._proc: asyncio.subprocess.Process | None = None
        self._exit: asyncio.Task[int] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    @property
    def exited(self) -> asyncio.Task[int]:
        """Done with the exit status as soon as the process ends, whatever it was doing."""
        assert self._exit is not None, "the container is not started"
        return self._exit

    async def start(self) -> None:
        try:
            # A session of its own: a SIGINT or SIGTERM to the server's process group (Ctrl-C, killpg) leaves
            # the container running, so the server can drain it; the worker exits when the server dies.
            self._proc = await asyncio.create_subprocess_exec(
                *self._command(), stdin=PIPE, stdout=PIPE, env=self.env, start_new_session=True
            )
        except Exception as exc:  # out of file descriptors or memory, interpreter gone: not the model's fault
            raise ContainerLoadFailed(f"the container process could not start: {type(exc).__name__}: {exc}") from None
        self._exit = asyncio.ensure_future(self._proc.wait())
        try:
            kind, info = await self._read()
        except ContainerDied as exc:
            raise ContainerLoadFailed(f"container exited while loading ({exc})") from None
        if kind != "ready":
            await self.stop()
            raise ContainerLoadFailed(info)

    def _command(self) -> tuple[str, ...]:
        worker = "modalkit.runtime.local.worker"
        return (sys.executable, "-m", worker, self.ref.app_path, self.ref.attribute, self.model_name)

    async def run(self, items: list[Any], threads: int) -> tuple[list[Any], tuple[int, int]]:
        """Send one batch; its results and when inference started and ended (ns). `ContainerDied` if it goes."""
        data = frames.encode(("batch", items, threads))
        _, results, inference_ns = await self._until_exit(self._exchange(data))
        return results, inference_ns

    def kill(self) -> None:
        if self._proc is not None and self._proc.returncode is None:
            self._proc.kill()

    async def wait(self) -> int:
        return await self.exited

    async def stop(self, grace: float = 5.0) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(OSError, RuntimeError):  # the pipe is gone: the process is going too
            assert proc.stdin is not None
            proc.stdin.write(frames.encode(("stop",)))
            await proc.stdin.drain()
            proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), grace)
        except TimeoutError:
            proc.kill()
            await proc.wait()

    async def _exchange(self, data: bytes) -> Any:
        assert self._proc is not None and self._proc.stdin is not None and self._proc.stdout is not None
        self._proc.stdin.write(data)
        await self._proc.stdin.drain()
        return await frames.read_async(self._proc.stdout)

    async def _read(self) -> Any:
        assert self._proc is not None and self._proc.stdout is not None
        return await self._until_exit(frames.read_async(self._proc.stdout))

    async def _until_exit(self, step: Coroutine[Any, Any, T]) -> T:
        """`step`'s result, or `ContainerDied` once the process ends: whatever error the dead pipe raises (it
        differs between event loops), and even while a child it forked holds the pipe open."""
        task = asyncio.ensure_future(step)
        try:
            await asyncio.wait((task, self.exited), return_when=asyncio.FIRST_COMPLETED)
        finally:
            task.cancel()  # no-op once done; stops the step if the process ended or the caller was cancelled
        finished = task.done() and not task.cancelled()
        error = task.exception() if finished else None
        if finished and error is None:
            return task.result()  # a result that arrived as the process exited (a recycle) still counts
        if not self.exited.done():  # the pipe failed first: the process is usually ending; if not, it is broken
            await asyncio.wait((self.exited,), timeout=EXIT_WAIT_S)
        if not self.exited.done():
            self.kill()
            await self.exited
            raise ContainerDied(f"its pipe failed ({type(error).__name__}: {error}); killed") from None
        raise ContainerDied(exit_reason(self.exited.result())) from None


def exit_reason(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
