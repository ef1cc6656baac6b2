"""`ModalService`: the one place user inference runs, on Modal and in local containers alike."""

from __future__ import annotations

import logging
import threading
import time
import typing
from typing import Any, ClassVar

# Imported at run time, not under TYPE_CHECKING: Modal evaluates the service class's annotations.
from modalkit.config import ModalConfig
from modalkit.cuda import is_cuda_error
from modalkit.exceptions import ConfigError
from modalkit.inference import InferenceBase
from modalkit.jobs import AsyncRequest, JobState, jsonable, sink_message
from modalkit.outcome import Failure
from modalkit.queues import deliver, make_sink

logger = logging.getLogger("modalkit.service")


class ModalService:
    """Subclass with `inference_implementation`, `modal_config` and a `model_name` parameter; decorate with `@app.cls`.

    Each concrete subclass gets `load_artefacts` as `@modal.enter()` and `process_request` as
    `@modal.batched(...)`, built from that subclass's own `modal_config` when the class is created.
    """

    inference_implementation: ClassVar[type[InferenceBase]]
    modal_config: ClassVar[ModalConfig]
    model_name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "modal_config" not in cls.__dict__:
            return  # an intermediate base class: the leaf class brings the config
        import modal

        _check_parameters(cls)
        config = cls.modal_config

        def load_artefacts(self: ModalService) -> None:
            self._load()
            if not config.app_settings.deployment_config.enable_memory_snapshot:
                self._ready()

        def restore_artefacts(self: ModalService) -> None:
            self._ready()

        def process_request(self: ModalService, batch: list[Any]) -> list[Any]:
            return self._process(batch)

        for method in (load_artefacts, restore_artefacts, process_request):
            method.__qualname__ = f"{cls.__qualname__}.{method.__name__}"
            method.__module__ = cls.__module__
        cls.load_artefacts = modal.enter(**config.get_enter_settings())(load_artefacts)  # type: ignore[attr-defined]
        if config.app_settings.deployment_config.enable_memory_snapshot:
            # CPU-side loading is captured in the snapshot; GPU work runs after each restore.
            cls.restore_artefacts = modal.enter(snap=False)(restore_artefacts)  # type: ignore[attr-defined]
        cls.process_request = modal.batched(**config.get_batched_settings())(process_request)  # type: ignore[attr-defined]

    @classmethod
    def default_model_name(cls) -> str:
        declared = cls.__dict__.get("model_name", getattr(cls, "model_name", None))
        default = getattr(declared, "default", declared)
        if isinstance(default, str):
            return default
        names = cls.modal_config.model_names()
        if not names:
            raise ConfigError(["model_settings.model_entries: no entries, and the service declares no model_name"])
        return names[0]

    def _load(self) -> None:
        settings = self.modal_config.model_settings
        name = self._model_name()
        if settings.model_entries and name not in settings.model_entries:
            known = ", ".join(settings.model_entries)
            raise ConfigError([f"model_settings.model_entries: no entry {name!r} (known: {known})"])
        entry = settings.model_entries.get(name, {})
        logger.info("loading model %r with %s", name, self.inference_implementation.__name__)
        self._model = self.inference_implementation(
            model_name=name,
            model_dir=settings.local_model_repository_folder,
            common_settings=dict(settings.common),
            **entry,
        )

    def _ready(self) -> None:
        self._model.on_restore()
        self._model.warmup()
        interval = self.modal_config.app_settings.deployment_config.volume_reload_interval_seconds
        if interval is not None:
            threading.Thread(target=self._reload_volumes, args=(interval,), daemon=True).start()

    def _reload_volumes(self, interval: float) -> None:
        """Every `interval` seconds: reload the volumes (on Modal) and tell the model."""
        import modal

        names = list(self.modal_config.app_settings.deployment_config.volumes.values())
        while True:
            time.sleep(interval)
            try:
                if not modal.is_local():
                    for name in names:
                        modal.Volume.from_name(name).reload()
                self._model.on_volume_reload()
            except Exception:
                logger.exception("volume reload failed; retrying in %ss", interval)

    def _model_name(self) -> str:
        name = getattr(self, "model_name", None)
        return name if isinstance(name, str) else self.default_model_name()

    def _process(self, batch: list[Any]) -> list[Any]:
        if not batch:
            return []
        # On Modal, `spawn` sends the whole AsyncRequest: run its message, then push to its queues here.
        requests = [item if isinstance(item, AsyncRequest) else None for item in batch]
        inputs = [r.message if r is not None else item for r, item in zip(requests, batch, strict=True)]
        results = self._infer(inputs)
        if any(requests):
            self._push_results(requests, inputs, results)
        return results

    def _infer(self, inputs: list[Any]) -> list[Any]:
        try:
            outputs = self._model.run(inputs)
        except Exception as exc:
            if is_cuda_error(exc):
                return self._recycle(exc, len(inputs))
            logger.exception("batch of %d failed", len(inputs))
            return [Failure.from_exception(exc)] * len(inputs)
        return [Failure.from_exception(o) if isinstance(o, BaseException) else o for o in outputs]

    def _push_results(self, requests: list[AsyncRequest | None], inputs: list[Any], results: list[Any]) -> None:
        sink = getattr(self, "_sink", None)
        if sink is None:  # one per container: a Redis sink keeps its connection pool between batches
            sink = self._sink = make_sink(self.modal_config.app_settings.queue_config)
        for request, item, result in zip(requests, inputs, results, strict=True):
            if request is None:
                continue
            failed = isinstance(result, Failure)
            queue = request.failure_queue if failed else request.success_queue
            if queue is None:
                continue
            outcome = {"status_code": result.status_code, "detail": result.detail} if failed else jsonable(result)
            status: JobState = "failed" if failed else "succeeded"
            deliver(sink, queue, sink_message(None, request, status, outcome, jsonable(item)))

    def _recycle(self, exc: BaseException, size: int) -> list[Any]:
        import modal

        logger.error("CUDA error, recycling this container: %s", exc)
        if not modal.is_local():
            from modal.experimental import stop_fetching_inputs

            stop_fetching_inputs()
        # Locally the worker process sees cause="cuda" and exits once it has replied.
        failure = Failure(503, f"container recycled after a CUDA error: {exc}; retry the request", "cuda")
        return [failure] * size


_PARAMETER_TYPES = (int, str, bytes, bool)


def _check_parameters(cls: type) -> None:
    """Modal parameters may only be int, str, bytes or bool; say so when the class is defined."""
    hints = typing.get_type_hints(cls)
    for name, value in vars(cls).items():
        if type(value).__name__ == "_Parameter" and hints.get(name) not in _PARAMETER_TYPES:
            raise ConfigError(
                [f"{cls.__qualname__}.{name}: modal.parameter must be int, str, bytes or bool, not {hints.get(name)}"]
            )
