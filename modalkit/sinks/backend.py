"""`BackendSink`: a ModalKit-style `QueueBackend` (`async send_message(queue, message: str) -> bool`) as a sink."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, Protocol, TypeVar

from modalkit.exceptions import BackendError
from modalkit.sinks.failures import json_message

T = TypeVar("T")


class QueueBackend(Protocol):
    """ModalKit's queue backend: send one JSON string to a queue, True when it was accepted."""

    async def send_message(self, queue_name: str, message: str) -> bool: ...


class LoopThread:
    """One event loop in a daemon thread: clients bound to the loop they were made on keep working."""

    def __init__(self, name: str) -> None:
        self._name = name
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def run(self, coroutine: Coroutine[Any, Any, T], timeout: float) -> T:
        """Run `coroutine` on the loop from any other thread and wait for its result."""
        future = asyncio.run_coroutine_threadsafe(coroutine, self._started())
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        with self._lock:
            loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):  # a send still running (one that timed out) is cancelled first
            asyncio.run_coroutine_threadsafe(_cancel_tasks(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        if not thread.is_alive():
            loop.close()

    def _started(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                self._loop = asyncio.new_event_loop()
                self._thread = threading.Thread(target=self._loop.run_forever, name=self._name, daemon=True)
                self._thread.start()
            return self._loop


async def _cancel_tasks() -> None:
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


class BackendSink:
    """Pushes each message as its JSON text; a False return or an exception makes `push` raise, so the push is
    retried (unless the backend raised `DeliveryRefused`). Calls run on one long-lived loop, whatever thread pushes."""

    def __init__(self, backend: QueueBackend, timeout: float = 30.0) -> None:
        self.backend = backend
        self.timeout = timeout
        self._loop = LoopThread(f"modalkit-queue-{type(backend).__name__}")

    def push(self, queue: str, message: dict[str, Any]) -> None:
        self.send(queue, json_message(message))

    def send(self, queue: str, message: str) -> None:
        accepted = self._loop.run(self.backend.send_message(queue, message), self.timeout)
        if not accepted:
            name = type(self.backend).__name__
            raise BackendError(f"{name}.send_message refused the message for queue {queue!r} (returned {accepted!r})")

    def close(self) -> None:
        """Shut the backend down (its `shutdown()` or `close()`, if it has one) and stop the loop."""
        closer = getattr(self.backend, "shutdown", None) or getattr(self.backend, "close", None)
        try:
            if callable(closer):
                result = closer()
                if asyncio.iscoroutine(result):
                    self._loop.run(result, self.timeout)
        finally:
            self._loop.close()
