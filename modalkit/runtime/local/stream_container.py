"""The server's handle on one streaming container process: many streams share its pipes.

One reader task sorts the process's frames into each open stream's queue. A stream holds its slot from `claim`
until the worker says it ended (or failed): a stream closed early sends ("cancel", id), and its slot is free when
the worker's ("end", id) arrives. If the process dies, every open stream ends with `Failure("crash", ...)`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass, field
from typing import Any

from modalkit.app_loader import ServiceRef
from modalkit.outcome import Encoded, Failure
from modalkit.runtime.local import frames
from modalkit.runtime.local.container import EXIT_WAIT_S, Container, exit_reason
from modalkit.runtime.local.template import ContainerTemplate

logger = logging.getLogger("modalkit.pool")


@dataclass(eq=False)
class StreamSlot:
    """One stream's place in a container, from `claim` until the worker reports its end."""

    id: int
    pieces: asyncio.Queue[Encoded | Failure | None] = field(default_factory=asyncio.Queue)  # None: the end
    begun: bool = False  # its "start" frame was sent
    left: bool = False  # its reader closed it early: "cancel" was sent, and its chunks are dropped


class StreamContainer(Container):
    """A container process in stream mode (`stream_worker`); `claim` a slot, then `open_stream`."""

    def __init__(
        self,
        ref: ServiceRef,
        model_name: str,
        env: dict[str, str] | None = None,
        template: ContainerTemplate | None = None,
    ) -> None:
        super().__init__(ref, model_name, env, template)
        self.recycling = False  # it reported a CUDA failure: it takes no new stream, and exits
        self.on_change: Callable[[], None] = lambda: None  # a slot freed, or the container can no longer serve
        self._streams: dict[int, StreamSlot] = {}
        self._ids = itertools.count()
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await super().start()
        self._reader = asyncio.create_task(self._sort_frames())

    @property
    def closed(self) -> asyncio.Task[None]:
        """Done once the process has ended and every frame it sent was read (its open streams failed)."""
        assert self._reader is not None, "the container is not started"
        return self._reader

    @property
    def open_streams(self) -> int:
        """Slots taken: streams claimed or running whose end the worker has not yet reported."""
        return len(self._streams)

    @property
    def accepting(self) -> bool:
        """Whether it may take a new stream: running, and not being recycled."""
        return self._reader is not None and not self.exited.done() and not self._reader.done() and not self.recycling

    def claim(self) -> StreamSlot:
        """Take a slot for a stream about to open (counted at once), for `open_stream`."""
        slot = StreamSlot(next(self._ids))
        self._streams[slot.id] = slot
        return slot

    def release(self, slot: StreamSlot) -> None:
        """Give back a claimed slot whose stream never began."""
        if not slot.begun and self._streams.pop(slot.id, None) is not None:
            self.on_change()

    async def open_stream(self, item: Any, slot: StreamSlot | None = None) -> AsyncGenerator[Encoded | Failure, None]:
        """One input's chunks as the container makes them; a `Failure` ends it. Closing it early cancels the
        stream in the container, whose slot is free once the container says it stopped."""
        slot = self.claim() if slot is None else slot
        try:
            if self._streams.get(slot.id) is slot:  # else it ended before it began: its Failure is queued
                slot.begun = True
                self._write(slot, ("start", slot.id, item))
            while (piece := await slot.pieces.get()) is not None:
                yield piece
                if isinstance(piece, Failure):
                    return
        finally:
            if self._streams.get(slot.id) is slot:  # the worker has not ended it: stop it there
                slot.left = True
                self._write(slot, ("cancel", slot.id))

    def fail_open(self, failure: Failure) -> None:
        """End every open stream with `failure` (the process is gone, or the server is stopping)."""
        streams, self._streams = self._streams, {}
        for stream in streams.values():
            stream.pieces.put_nowait(failure)
        self.on_change()

    def _write(self, slot: StreamSlot, message: Any) -> None:
        """Send one frame; one that cannot go (the process is ending) is dropped: the reader sees the end."""
        assert self._proc is not None and self._proc.stdin is not None
        try:
            data = frames.encode(message)
        except Exception as exc:  # an input that cannot be pickled fails its stream, not the container
            self._streams.pop(slot.id, None)
            slot.pieces.put_nowait(Failure("error", f"the input cannot be sent: {type(exc).__name__}: {exc}"))
            self.on_change()
            return
        with contextlib.suppress(OSError, RuntimeError):
            self._proc.stdin.write(data)

    async def _sort_frames(self) -> None:
        """Read frames into the streams until the process ends; then fail the streams still open."""
        reading = asyncio.ensure_future(self._read_all())
        await asyncio.wait((reading, self.exited), return_when=asyncio.FIRST_COMPLETED)
        if not reading.done():  # it exited: what it wrote before is still in the pipe (a recycle's failures)
            await asyncio.wait((reading,), timeout=EXIT_WAIT_S)  # a child it forked may hold the pipe open
            reading.cancel()
        elif not self.exited.done():  # the pipe ended or broke first: the process is ending; if not, it is broken
            await asyncio.wait((self.exited,), timeout=EXIT_WAIT_S)
            if not self.exited.done():
                self.kill()
                await self.exited
        reason = exit_reason(self.exited.result())
        if self._streams:
            logger.warning("container of %r (pid %s) ended while streaming (%s)", self.model_name, self.pid, reason)
        self.fail_open(Failure("crash", f"the container ended ({reason}) while streaming; retry"))

    async def _read_all(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        try:
            while True:
                self._deliver(await frames.read_async(self._proc.stdout))
        except (asyncio.IncompleteReadError, OSError):
            return  # the end of the pipe: the process has gone
        except Exception:
            logger.exception("container of %r (pid %s) sent a broken frame; killed", self.model_name, self.pid)
            self.kill()

    def _deliver(self, message: Any) -> None:
        kind, stream_id = message[0], message[1]
        stream = self._streams.get(stream_id)
        if stream is None:
            return  # already ended here (failed when the server stopped)
        if kind == "chunk":
            if not stream.left:
                stream.pieces.put_nowait(Encoded(message[2]))
            return
        failure: Failure | None = message[2] if kind == "failed" else None
        if failure is not None and failure.recycles_container:
            self.recycling = True
        del self._streams[stream_id]
        stream.pieces.put_nowait(failure)
        self.on_change()
