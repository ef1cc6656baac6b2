"""`StreamingService`: a service whose model yields its answer in chunks, on Modal and in local containers."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

# Imported at run time, not under TYPE_CHECKING: Modal evaluates the service class's annotations.
from modalkit.config import ModalConfig
from modalkit.cuda import is_cuda_error
from modalkit.exceptions import InferenceError
from modalkit.outcome import Failure
from modalkit.service import ModalService, name_as_method_of, unwrapped

logger = logging.getLogger("modalkit.service")
_MIN_STREAM_THREADS = 64


class StreamingService(ModalService):
    """A service whose model streams: `InferenceBase.predict_stream(item)` yields the chunks of one answer.

    On Modal a class with `@modal.batched` may have no other method, so a streaming service is a class of its
    own: its one method, `stream_request`, is a generator `@modal.method` that the web function calls with
    `remote_gen.aio`; `deployment_config.max_concurrent_inputs` streams share a container. Locally, a container
    runs as many streams at once and sends each chunk as it is made. Subclass it as you would `ModalService`.
    """

    @classmethod
    def _add_inference_method(cls, config: ModalConfig) -> None:
        import modal

        async def stream_request(self: StreamingService, item: Any) -> AsyncIterator[Any]:
            async for chunk in self.stream_chunks(item):
                yield chunk

        name_as_method_of(cls, stream_request)
        cls.stream_request = modal.method()(stream_request)  # type: ignore[attr-defined]

    @classmethod
    def open_local(cls, model_name: str) -> StreamingService:
        """A loaded instance outside Modal, as `@modal.enter` would leave it (the local runtime's containers).

        Modal 1.6's `.local()` cannot call an async generator method, so the container calls `stream_chunks`.
        """
        instance = cls.__new__(cls)
        instance.model_name = model_name
        instance._load()
        instance._warm_up()
        return instance

    async def stream_chunks(self, item: Any) -> AsyncIterator[Any]:
        """The chunks of one input's answer; a failure, at the start or midway, ends the stream with a `Failure`."""
        if self._stream_threads is None:
            # One thread per stream that may run at once. `@modal.concurrent` on the class may allow more than the
            # YAML says, and this instance cannot see it: the pool only starts threads as streams need them, so
            # its bound need not be tight, only never below the streams a container runs.
            concurrency = self.modal_config.app_settings.deployment_config.max_concurrent_inputs
            self._stream_threads = ThreadPoolExecutor(max(_MIN_STREAM_THREADS, concurrency), "modalkit-stream")
        chunks = self._model.stream(unwrapped(item), self._stream_threads)
        try:
            async for chunk in chunks:
                yield chunk
        except Exception as exc:
            yield self._stream_failure(exc)
        finally:  # closed early (the caller left): close the model's generator now, not when it is collected
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()

    _stream_threads: ThreadPoolExecutor | None = None

    def streams_in_threads(self) -> bool:
        """Whether the model's `predict_stream` is a plain generator (a local container steps those in a thread)."""
        return not inspect.isasyncgenfunction(self._model.predict_stream)

    def open_generation(self, item: Any) -> Iterator[Any]:
        """The model's plain generator for one input, for a caller that steps it itself (the local container)."""
        return iter(self._model.predict_stream(unwrapped(item)))  # type: ignore[arg-type]

    def failure_of(self, exc: Exception) -> Failure:
        """What an exception raised by a generation means for its stream (a CUDA error also recycles)."""
        return self._stream_failure(exc)

    def _stream_failure(self, exc: Exception) -> Failure:
        if is_cuda_error(exc):
            failure: Failure = self._recycle(exc, 1)[0]
            return failure
        if not isinstance(exc, InferenceError):  # a refused input is the caller's, as in a batch: not logged
            logger.exception("a stream failed")
        return Failure.from_exception(exc)
