"""`InferenceBase`: what a user writes. The constructor loads; `predict` maps a batch to outputs."""

from __future__ import annotations

import asyncio
import functools
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from modalkit.cuda import is_cuda_error
from modalkit.exceptions import ModalkitError


class InferenceBase:
    """Subclass this with your model.

    `__init__` runs once per container (inside `load_artefacts`) and receives the model entry
    from `model_settings.model_entries.<name>` as keyword arguments. `predict` takes a list of
    inputs and returns one output per input, in order. To fail a single item, put an exception in
    its place (or raise `InferenceError` from a one-item batch).

        class Upper(InferenceBase):
            def predict(self, inputs):
                return [Out(text=i.text.upper()) for i in inputs]
    """

    # The keyword under which the service passes `local_model_repository_folder` to the constructor.
    model_folder_argument = "model_dir"

    def __init__(
        self, model_name: str = "", model_dir: str = "", common_settings: dict[str, Any] | None = None, **entry: Any
    ) -> None:
        self.model_name = model_name
        self.model_dir = model_dir
        self.common_settings = common_settings or {}

    def preprocess(self, inputs: list[Any]) -> list[Any]:
        return inputs

    def predict(self, inputs: list[Any]) -> list[Any]:
        raise NotImplementedError(f"{type(self).__name__} must implement predict(inputs) -> outputs")

    def postprocess(self, outputs: list[Any]) -> list[Any]:
        return outputs

    def predict_stream(self, item: Any) -> Iterator[Any] | AsyncIterator[Any]:
        """For a `StreamingService`: yield the chunks of one input's answer as they are made (a generator, or an
        async generator). A chunk is a str, a pydantic model or JSON-able data; for the OpenAI routes, a str or
        something with a `text` field. Raise `InferenceError` to end the stream with an error."""
        raise NotImplementedError(f"{type(self).__name__} must implement predict_stream(item) to stream")

    def on_restore(self) -> None:
        """Runs once the container is ready for GPU work: after loading, or after a memory snapshot is
        restored when `enable_memory_snapshot` is on (load on the CPU in __init__, move to the GPU here)."""

    def warmup(self) -> None:
        """Runs once after loading, before the first request: compile, allocate, fill caches."""

    def on_volume_reload(self) -> None:
        """Runs after the container's volumes are reloaded."""

    def health(self) -> bool | str:
        """Whether this container can serve now: True, or False or a sentence saying why not.

        Asked on each ready local container at most every `local_config.health_check_interval_seconds`, between
        batches; while every ready container says no, `/readyz` answers 503 (with the reason, to callers with
        the API key). Keep it cheap: it runs in the container, and a batch waits for it.
        """
        return True

    def run(self, inputs: list[Any]) -> list[Any]:
        """The whole pipeline on one batch; an item whose inference raised comes back as its exception.

        A failing batch is retried item by item so that one bad input fails alone. CUDA errors
        are not retried here: they propagate so the container can be recycled.
        """
        try:
            return self._run_checked(inputs)
        except Exception as exc:
            if is_cuda_error(exc):
                raise
            if len(inputs) == 1:
                return [exc]
        return [self._run_item(item) for item in inputs]

    def _run_item(self, item: Any) -> Any:
        try:
            return self._run_checked([item])[0]
        except Exception as exc:
            if is_cuda_error(exc):
                raise
            return exc

    def _run_checked(self, inputs: list[Any]) -> list[Any]:
        outputs = self._run_steps(inputs)
        if len(outputs) != len(inputs):
            raise ModalkitError(
                f"{type(self).__name__}.predict returned {len(outputs)} outputs for {len(inputs)} inputs"
            )
        return list(outputs)

    def _run_steps(self, inputs: list[Any]) -> list[Any]:
        return self.postprocess(self.predict(self.preprocess(inputs)))

    async def stream(self, item: Any, executor: Executor | None = None) -> AsyncIterator[Any]:
        """`predict_stream(item)` as an async iterator. A plain generator runs in one of `executor`'s threads for
        the whole stream, a step ahead of the reader (it never waits for the event loop between tokens); closing
        this iterator early stops it after the step in flight, which is how a client that leaves stops its
        generation, and returns once it has stopped."""
        produced = self.predict_stream(item)
        # When this iterator is closed early, the one inside is closed then, not whenever it is collected.
        if isinstance(produced, AsyncIterator):
            try:
                async for chunk in produced:
                    yield chunk
            finally:
                aclose = getattr(produced, "aclose", None)
                if aclose is not None:
                    await aclose()
            return
        pump = GeneratorPump(iter(produced), asyncio.get_running_loop())
        done = asyncio.wrap_future((executor or _default_executor()).submit(pump.run))
        try:
            while True:
                chunk = await pump.next_chunk()
                if chunk is _END:
                    return
                yield chunk
        finally:
            pump.stop()
            await asyncio.shield(done)  # the generator has stopped (and is closed) before the stream ends


_END = object()
_AHEAD = 64  # chunks a generator may run ahead of its reader


class GeneratorPump:
    """Runs a plain generator in a thread and hands its chunks to an event loop as they are made.

    The thread never waits for the loop between steps (only when `_AHEAD` chunks are unread); the loop wakes once
    per chunk. `stop()` makes the thread close the generator after its current step, in its own thread (a
    generator cannot be closed from another thread while it runs).
    """

    def __init__(self, generator: Iterator[Any], loop: asyncio.AbstractEventLoop) -> None:
        self._generator = generator
        self._loop = loop
        self._chunks: asyncio.Queue[tuple[Any, BaseException | None]] = asyncio.Queue()
        self._room = threading.Semaphore(_AHEAD)
        self._stopped = threading.Event()

    def run(self) -> None:
        """In the worker thread: step the generator until it ends, fails or is stopped."""
        try:
            for chunk in self._generator:
                if not self._hand_over(chunk, None):
                    return
            self._hand_over(_END, None)
        except BaseException as exc:  # handed to the reader, which raises it where the stream is read
            self._hand_over(_END, exc)
        finally:
            close = getattr(self._generator, "close", None)
            if close is not None:
                close()

    def _hand_over(self, chunk: Any, error: BaseException | None) -> bool:
        while not self._room.acquire(timeout=0.1):
            if self._stopped.is_set():
                return False
        if self._stopped.is_set():
            return False
        try:
            self._loop.call_soon_threadsafe(self._chunks.put_nowait, (chunk, error))
        except RuntimeError:  # the loop has closed: nobody reads any more
            return False
        return True

    async def next_chunk(self) -> Any:
        chunk, error = await self._chunks.get()
        self._room.release()
        if error is not None:
            raise error
        return chunk

    def stop(self) -> None:
        self._stopped.set()
        self._room.release()  # a thread waiting for room sees the stop at once


@functools.cache
def _default_executor() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(64, thread_name_prefix="modalkit-stream")
