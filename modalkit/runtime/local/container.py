"""The server's handle on one local container process."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import sys
from asyncio.subprocess import PIPE
from collections.abc import Coroutine
from typing import Any, TypeVar

from modalkit.app_loader import ServiceRef
from modalkit.exceptions import ContainerDied, ContainerLoadFailed
from modalkit.runtime.local import frames
from modalkit.runtime.local.template import ContainerTemplate, ForkedProcess

T = TypeVar("T")

_PIPE_BYTES = 1 << 20
EXIT_WAIT_S = 2.0  # after a pipe error, how long the process may take to exit before it is killed


class Container:
    """A container process: forked from `template` when it can, else spawned (`python -m ...worker`)."""

    def __init__(
        self,
        ref: ServiceRef,
        model_name: str,
        env: dict[str, str] | None = None,
        template: ContainerTemplate | None = None,
    ) -> None:
        self.ref = ref
        self.model_name = model_name
        self.env = {**os.environ, **(env or {})}
        self.template = template
        self._proc: asyncio.subprocess.Process | ForkedProcess | None = None
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
            self._proc = await self._launch()
        except Exception as exc:  # out of file descriptors or memory, interpreter gone: not the model's fault
            raise ContainerLoadFailed(f"the container process could not start: {type(exc).__name__}: {exc}") from None
        self._exit = asyncio.ensure_future(self._proc.wait())
        for pipe in (self._proc.stdin, self._proc.stdout):
            _widen(pipe)
        try:
            kind, info = await self._read()
        except ContainerDied as exc:
            raise ContainerLoadFailed(f"container exited while loading ({exc})") from None
        if kind != "ready":
            await self.stop()
            raise ContainerLoadFailed(info)

    async def _launch(self) -> asyncio.subprocess.Process | ForkedProcess:
        forked = await self.template.fork(self.ref, self.model_name, self.env) if self.template else None
        if forked is not None:
            return forked
        # A session of its own: a SIGINT or SIGTERM to the server's process group (Ctrl-C, killpg) leaves
        # the container running, so the server can drain it; the worker exits when the server dies.
        return await asyncio.create_subprocess_exec(
            *self._command(), stdin=PIPE, stdout=PIPE, env=self.env, start_new_session=True
        )

    def _command(self) -> tuple[str, ...]:
        worker = "modalkit.runtime.local.worker"
        return (sys.executable, "-m", worker, self.ref.app_path, self.ref.attribute, self.model_name)

    async def send(self, items: list[Any], threads: int, trace_id: str | None = None) -> None:
        """Send one batch, to run after those sent before it; `ContainerDied` if the container goes. Lines the
        model logs while it runs carry `trace_id`."""
        await self._send_frame(("batch", items, threads, trace_id))

    async def unhealthy(self) -> str | None:
        """Ask the model's `health()`, with no batch in flight: None when it can serve, else why not."""
        await self._send_frame(("health",))
        _, reason = await self._read()
        return str(reason) if reason is not None else None

    async def _send_frame(self, message: Any) -> None:
        assert self._proc is not None and self._proc.stdin is not None
        self._proc.stdin.write(frames.encode(message))
        await self._until_exit(self._proc.stdin.drain())

    async def receive(self) -> tuple[list[Any], tuple[int, int]]:
        """The results of the oldest batch sent and not yet answered, and when its inference started and ended
        (ns); `ContainerDied` if the container goes first."""
        _, results, inference_ns = await self._read()
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


def _widen(stream: asyncio.StreamWriter | asyncio.StreamReader | None) -> None:
    """Grow a pipe to 1 MiB (Linux; 64 KiB by default): a batch of images then crosses in a few writes rather
    than a hundred turns of the event loop. Where the system refuses, the pipe stays as it was."""
    transport = getattr(stream, "transport", None) or getattr(stream, "_transport", None)
    pipe = transport.get_extra_info("pipe") if transport is not None else None
    if pipe is not None and hasattr(fcntl, "F_SETPIPE_SZ"):
        with contextlib.suppress(OSError):
            fcntl.fcntl(pipe.fileno(), fcntl.F_SETPIPE_SZ, _PIPE_BYTES)


def exit_reason(code: int) -> str:
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"
