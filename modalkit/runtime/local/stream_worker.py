"""A streaming container's process (`worker.py` hands it a loaded `StreamingService`): many streams at once.

Frames in: ("start", id, item), ("cancel", id), ("stop",). Frames out: ("chunk", id, json_bytes) as each chunk is
made, ("end", id) when a stream ran to its end or was cancelled, ("failed", id, Failure) when it failed. The server
decides how many streams run here (`deployment_config.max_concurrent_inputs`); this process runs all it is sent,
each on the event loop (a plain generator's steps run in the service's threads). stdin is read on a thread of its
own, so the loop never waits for it; frames are written whole from the loop's thread, so they never interleave.
After a CUDA failure the other streams fail the same way, and the process exits once it has said so (recycled).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from typing import IO, Any

from modalkit.outcome import Failure, encode
from modalkit.runtime.local import frames
from modalkit.runtime.local.stepper import Stepper


def is_streaming(service_class: type) -> bool:
    """Whether the service is a `modalkit.streaming.StreamingService`, known by its methods (the runtime must not
    import the service layer: the service imports the runtime)."""
    return callable(getattr(service_class, "open_local", None)) and callable(
        getattr(service_class, "stream_chunks", None)
    )


def serve(instance: Any, frames_in: IO[bytes], frames_out: IO[bytes]) -> int:
    """Run streams for the server until it says stop, closes stdin, or a CUDA failure recycles this container."""
    return asyncio.run(_Streams(instance, frames_out).serve(frames_in))


class _Streams:
    def __init__(self, instance: Any, frames_out: IO[bytes]) -> None:
        self._instance = instance
        self._out = frames_out
        self._running: dict[int, asyncio.Task[None]] = {}
        self._recycled: Failure | None = None  # the CUDA failure that ends this container
        self._recycle = asyncio.Event()
        self._in_threads = bool(instance.streams_in_threads())
        self._stepper: Stepper | None = None
        self._ends: dict[int, asyncio.Future[Failure | None]] = {}  # plain-generator streams, until they end
        self._writing = threading.Lock()

    async def serve(self, frames_in: IO[bytes]) -> int:
        loop = self._loop = asyncio.get_running_loop()
        if self._in_threads:
            instance = self._instance
            self._stepper = Stepper(
                instance.open_generation, instance.failure_of, self._stepped_chunk, self._stepped_end
            )
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        reader = threading.Thread(
            target=_read_frames, args=(frames_in, loop, inbox), name="modalkit-frames", daemon=True
        )
        reader.start()
        recycle = asyncio.ensure_future(self._recycle.wait())
        while True:
            received = asyncio.ensure_future(inbox.get())
            await asyncio.wait((received, recycle), return_when=asyncio.FIRST_COMPLETED)
            if not received.done():  # a stream failed with a CUDA error: the others fail too, then exit
                received.cancel()
                break
            message = received.result()
            if message is None or message[0] == "stop":
                break
            if message[0] == "start":
                _, stream_id, item = message
                self._running[stream_id] = asyncio.create_task(self._run(stream_id, item))
            elif message[0] == "cancel" and message[1] in self._running:
                self._running[message[1]].cancel()
        recycle.cancel()
        await self._cancel_all()
        return 0

    async def _cancel_all(self) -> None:
        tasks = list(self._running.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._stepper is not None:
            await asyncio.to_thread(self._stepper.close)

    async def _run(self, stream_id: int, item: Any) -> None:
        if self._in_threads:
            await self._run_in_thread(stream_id, item)
        else:
            await self._run_on_loop(stream_id, item)

    async def _run_in_thread(self, stream_id: int, item: Any) -> None:
        """A plain generator: the stepper thread steps it in turn with the others and sends each chunk as it is made
        (the event loop is not woken per token); a cancel stops it at its next turn, and it ends once stopped."""
        loop = asyncio.get_running_loop()
        ended = self._ends[stream_id] = loop.create_future()
        assert self._stepper is not None
        self._stepper.add(stream_id, item)
        try:
            failure = await asyncio.shield(ended)
        except asyncio.CancelledError:
            self._stepper.stop(stream_id)
            await asyncio.wait([ended])  # it ends at its next turn, before "end" is said
            failure = ended.result() or self._recycled
        finally:
            self._ends.pop(stream_id, None)
        self._end(stream_id, failure)

    def _stepped_chunk(self, stream_id: int, chunk: Any) -> None:
        """In the stepper thread: send one chunk (a chunk that is not JSON fails its stream, by raising)."""
        self._send(("chunk", stream_id, encode(chunk)))

    def _stepped_end(self, stream_id: int, failure: Failure | None) -> None:
        """In the stepper thread: a stream ended; its task, on the loop, says so."""
        ended = self._ends.get(stream_id)
        if ended is not None:
            self._loop.call_soon_threadsafe(_resolve, ended, failure)

    async def _run_on_loop(self, stream_id: int, item: Any) -> None:
        """An async generator: its chunks as they come, then its end or its failure; cancelled, it ends at once."""
        try:
            async with contextlib.aclosing(self._instance.stream_chunks(item)) as chunks:
                async for chunk in chunks:
                    if isinstance(chunk, Failure):
                        self._end(stream_id, chunk)
                        return
                    try:
                        data = encode(chunk)
                    except Exception as exc:
                        self._end(stream_id, Failure("error", f"a chunk is not JSON: {type(exc).__name__}: {exc}"))
                        return
                    self._send(("chunk", stream_id, data))
            self._end(stream_id, None)
        except asyncio.CancelledError:
            self._end(stream_id, self._recycled)  # cancelled by the server, or failed with the recycled container
        except Exception as exc:  # the service's own streaming broke: the stream fails, the container serves on
            self._end(stream_id, Failure("error", f"the stream broke: {type(exc).__name__}: {exc}"))

    def _end(self, stream_id: int, failure: Failure | None) -> None:
        if self._running.pop(stream_id, None) is None:
            return  # said already
        self._send(("end", stream_id) if failure is None else ("failed", stream_id, failure))
        if failure is not None and failure.recycles_container and self._recycled is None:
            self._recycled = failure
            self._recycle.set()

    def _send(self, message: Any) -> None:
        """Write one frame, from the loop or from a stream's thread: whole frames only, one at a time."""
        data = frames.encode(message)
        try:
            with self._writing:
                self._out.write(data)
                self._out.flush()
        except OSError:  # the server closed the pipe: it is gone, and no one is left to tell
            os._exit(1)


def _read_frames(frames_in: IO[bytes], loop: asyncio.AbstractEventLoop, inbox: asyncio.Queue[Any]) -> None:
    """Feed the loop each frame from the server; None at the end of stdin."""
    while True:
        message = frames.read_blocking(frames_in)
        try:
            loop.call_soon_threadsafe(inbox.put_nowait, message)
        except RuntimeError:  # the loop has closed: the process is exiting
            return
        if message is None or message[0] == "stop":
            return


def _resolve(future: asyncio.Future[Failure | None], failure: Failure | None) -> None:
    if not future.done():
        future.set_result(failure)
