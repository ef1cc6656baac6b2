"""`InferenceBase`: what a user writes. The constructor loads; `predict` maps a batch to outputs."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Iterator
from concurrent.futures import Executor
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
        """`predict_stream(item)` as an async iterator. A plain generator steps in `executor`'s threads, so several
        streams run at once and the event loop never waits for a step; closing this iterator early closes the
        generator (after the step in flight), which is how a client that leaves stops its generation."""
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
        async with contextlib.aclosing(_stepped_in_threads(iter(produced), executor)) as chunks:
            async for chunk in chunks:
                yield chunk


_END = object()


async def _stepped_in_threads(generator: Iterator[Any], executor: Executor | None) -> AsyncGenerator[Any, None]:
    loop = asyncio.get_running_loop()
    step: asyncio.Future[Any] | None = None
    try:
        while True:
            step = loop.run_in_executor(executor, next, generator, _END)
            # shielded: a cancelled consumer leaves the step running (a thread cannot be stopped), so the close
            # below sees it still running and waits for it, rather than closing a generator that is executing
            chunk = await asyncio.shield(step)
            if chunk is _END:
                return
            yield chunk
    finally:
        close = getattr(generator, "close", None)
        if close is not None:
            if step is not None and not step.done():  # a generator cannot be closed while it runs: after the step
                step.add_done_callback(lambda _: loop.run_in_executor(executor, close))
            else:
                await loop.run_in_executor(executor, close)
