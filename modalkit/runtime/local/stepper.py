"""One thread that steps every plain-generator stream of a container in turn.

Threads per stream would contend for Python's global lock at every torch call of every step (a plain generator's
steps are mostly small calls that each release and retake it); one thread taking one step of each stream in turn
makes the same tokens without that contention, and sends each chunk the moment it is made. A new stream joins
at the next turn; a stopped one is closed at its turn, in this thread (a generator cannot be closed from another
thread while it runs).
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from modalkit.outcome import Failure

Open = Callable[[Any], Iterator[Any]]  # an input's generator (the service's `open_generation`)
FailureOf = Callable[[Exception], Failure]  # what an exception of a generation means (the service's `failure_of`)
Emit = Callable[[int, Any], None]  # send one chunk of a stream; it may raise to fail that stream
Ended = Callable[[int, Failure | None], None]  # a stream ended: ran out, stopped (None), or failed


@dataclass
class _Stream:
    stream_id: int
    item: Any
    generator: Iterator[Any] | None = None
    stopped: threading.Event = field(default_factory=threading.Event)


class Stepper:
    def __init__(self, open_generation: Open, failure_of: FailureOf, emit: Emit, ended: Ended) -> None:
        self._open = open_generation
        self._failure_of = failure_of
        self._emit = emit
        self._ended = ended
        self._arrivals: queue.SimpleQueue[_Stream | None] = queue.SimpleQueue()
        self._streams: dict[int, _Stream] = {}  # every stream not yet ended, by id (read by stop())
        self._thread = threading.Thread(target=self._run, name="modalkit-stepper", daemon=True)
        self._thread.start()

    def add(self, stream_id: int, item: Any) -> None:
        stream = _Stream(stream_id, item)
        self._streams[stream_id] = stream
        self._arrivals.put(stream)

    def stop(self, stream_id: int) -> None:
        """End the stream at its next turn (after the step in flight); `ended` says when."""
        stream = self._streams.get(stream_id)
        if stream is not None:
            stream.stopped.set()

    def close(self) -> None:
        """Stop every stream and the thread, once each has ended."""
        for stream in list(self._streams.values()):
            stream.stopped.set()
        self._arrivals.put(None)
        self._thread.join(timeout=30)

    def _run(self) -> None:
        active: list[_Stream] = []
        closing = False
        while active or not closing:
            closing = self._admit(active, wait=not active) or closing
            for stream in list(active):
                if self._step(stream):
                    continue
                active.remove(stream)

    def _admit(self, active: list[_Stream], wait: bool) -> bool:
        """Take the streams that arrived (waiting for one when none runs); True once told to close."""
        closing = False
        try:
            arrived = self._arrivals.get() if wait else self._arrivals.get_nowait()
            while True:
                if arrived is None:
                    closing = True
                else:
                    active.append(arrived)
                arrived = self._arrivals.get_nowait()
        except queue.Empty:
            return closing

    def _step(self, stream: _Stream) -> bool:
        """One step of one stream: make and send its next chunk; False once it has ended."""
        if stream.stopped.is_set():
            self._end(stream, None)
            return False
        try:
            if stream.generator is None:
                stream.generator = self._open(stream.item)
            chunk = next(stream.generator)
            self._emit(stream.stream_id, chunk)
        except StopIteration:
            self._end(stream, None)
            return False
        except Exception as exc:
            self._end(stream, self._failure_of(exc))
            return False
        return True

    def _end(self, stream: _Stream, failure: Failure | None) -> None:
        close = getattr(stream.generator, "close", None)
        try:
            if close is not None:
                close()
        finally:
            self._streams.pop(stream.stream_id, None)
            self._ended(stream.stream_id, failure)
