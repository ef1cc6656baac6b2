"""`ModalService`: the one place user inference runs, on Modal and in local containers alike."""

from __future__ import annotations

import itertools
import logging
import threading
import time
import typing
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

# Imported at run time, not under TYPE_CHECKING: Modal evaluates the service class's annotations.
from modalkit.config import ModalConfig
from modalkit.cuda import is_cuda_error
from modalkit.exceptions import ConfigError, DeliveryRefused, InferenceError
from modalkit.inference import InferenceBase
from modalkit.iomodel import AsyncInputModel, AsyncOutputModel, SyncInputModel
from modalkit.jobs import AsyncRequest, job_outcome, jsonable, new_webhook_id, sink_message, webhook_payload
from modalkit.observation import BatchTiming, Metered, Timed
from modalkit.outcome import Failure, http_status
from modalkit.runtime.modal_jobs import job_dict, send_and_record
from modalkit.sinks import deliver, make_sink
from modalkit.sinks.failures import json_message

logger = logging.getLogger("modalkit.service")


class ModalService:
    """Subclass with `inference_implementation`, `modal_config` and a `model_name` parameter; decorate with `@app.cls`.

    Each concrete subclass gets `load_artefacts` as `@modal.enter()` and `process_request` as
    `@modal.batched(...)`, built from that subclass's own `modal_config` when the class is created.
    ModalKit's name for the config, `modal_utils`, works too, and so does `self.modal_utils.settings`.
    """

    inference_implementation: ClassVar[type[InferenceBase]]
    modal_config: ClassVar[ModalConfig]
    modal_utils: ClassVar[ModalConfig]
    # A ModalKit-style queue backend (`async send_message(queue_name, message) -> bool`) for async results.
    queue_backend: ClassVar[Any] = None
    model_name: str

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "__init__" in cls.__dict__:  # ModalKit's docs inject queue_backend this way; Modal 1.6 refuses it
            raise ConfigError(
                [
                    f"{cls.__qualname__}.__init__: Modal 1.6 classes take no constructor. Put `queue_backend = ...` "
                    "in the class body and declare inputs as `model_name: str = modal.parameter(default=...)`"
                ]
            )
        config = _declared_config(cls)
        if config is None:
            return  # an intermediate base class: the leaf class brings the config
        import modal

        _check_parameters(cls)
        cls.modal_config = cls.modal_utils = config

        def load_artefacts(self: ModalService) -> None:
            self._load()
            if not config.app_settings.deployment_config.enable_memory_snapshot:
                self._warm_up()

        def restore_artefacts(self: ModalService) -> None:
            self._warm_up()

        for method in (load_artefacts, restore_artefacts):
            name_as_method_of(cls, method)
        cls.load_artefacts = modal.enter(**config.get_enter_settings())(load_artefacts)  # type: ignore[attr-defined]
        if config.app_settings.deployment_config.enable_memory_snapshot:
            # CPU-side loading is captured in the snapshot; GPU work runs after each restore.
            cls.restore_artefacts = modal.enter(snap=False)(restore_artefacts)  # type: ignore[attr-defined]
        cls._add_inference_method(config)

    @classmethod
    def _add_inference_method(cls, config: ModalConfig) -> None:
        """`process_request`, batched as `batch_config` says: the one Modal method of a batched class."""
        import modal

        def process_request(self: ModalService, batch: list[Any]) -> list[Any]:
            return self._process(batch)

        name_as_method_of(cls, process_request)
        cls.process_request = modal.batched(**config.get_batched_settings())(process_request)  # type: ignore[attr-defined]

    @staticmethod
    def sync_call(cls: Any) -> Callable[..., Awaitable[Any]]:
        """ModalKit's `MyApp.sync_call(MyApp)`: an async function `(model_name, input_data) -> output` that
        runs one input in the deployed service (`process_request.remote.aio`), batched with other callers."""
        from modalkit.runtime.modal import ModalRuntime

        async def call(model_name: str, input_data: Any) -> Any:
            runtime = ModalRuntime(cls, [model_name], observed=False)  # nothing here reads its figures
            result = await runtime.submit(model_name, unwrapped(input_data))
            if isinstance(result, Failure):
                raise InferenceError(result.detail, http_status(result))
            return result

        return call

    @staticmethod
    def async_call(cls: Any) -> Callable[..., Awaitable[Any]]:
        """ModalKit's `MyApp.async_call(MyApp)`: an async function `(model_name, input_data) -> AsyncOutputModel`
        that spawns the input (an `AsyncInputModel` routes the result to its queues) and returns its job id."""
        from modalkit.runtime.modal import ModalRuntime

        async def call(model_name: str, input_data: Any) -> AsyncOutputModel:
            job_id = await ModalRuntime(cls, [model_name]).spawn(model_name, async_request(input_data))
            return AsyncOutputModel(job_id=job_id)

        return call

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
        implementation = self.inference_implementation
        logger.info("loading model %r with %s", name, implementation.__name__)
        folder = getattr(implementation, "model_folder_argument", "model_dir")
        self._model = implementation(
            model_name=name,
            common_settings=dict(settings.common),
            **{folder: settings.local_model_repository_folder},
            **entry,
        )
        # ModalKit's names for the same things, which its users' code reads.
        self._model_inference_instance = self._model
        self._model_inference_kwargs = entry

    def _warm_up(self) -> None:
        self._model.on_restore()
        self._model.warmup()
        interval = self.modal_config.app_settings.deployment_config.volume_reload_interval_seconds
        if interval is not None and interval > 0:
            threading.Thread(target=self._reload_volumes_every, args=(interval,), daemon=True).start()

    def _reload_volumes_every(self, interval: float) -> None:
        while True:
            time.sleep(interval)
            self._reload_volumes()

    def _reload_volumes(self) -> None:
        """Reload the volumes (on Modal) and tell the model; a failure is logged and retried next time."""
        import modal

        names = list(self.modal_config.app_settings.deployment_config.volumes.values())
        try:
            if not modal.is_local():
                for name in names:
                    modal.Volume.from_name(name).reload()
            self._model.on_volume_reload()
        except Exception:
            logger.exception("volume reload failed; retrying at the next interval")

    def _model_name(self) -> str:
        name = getattr(self, "model_name", None)
        return name if isinstance(name, str) else self.default_model_name()

    def _process(self, batch: list[Any]) -> list[Any]:
        if not batch:
            return []
        number = self._count_batch()
        interval = self.modal_config.app_settings.deployment_config.volume_reload_interval_seconds
        if interval is not None and interval <= 0:  # ModalKit's -1: reload before every batch
            self._reload_volumes()
        metered = [isinstance(item, Metered) for item in batch]
        batch = [item.item if isinstance(item, Metered) else item for item in batch]
        # On Modal, `spawn` sends the whole AsyncRequest: run its message, then push to its queues here.
        # ModalKit's callers send SyncInputModel / AsyncInputModel wrappers: the same, by other names.
        requests = [async_request(item) if _is_async(item) else None for item in batch]
        inputs = [r.message if r is not None else unwrapped(item) for r, item in zip(requests, batch, strict=True)]
        started_ns = time.time_ns()
        results = self._infer(inputs)
        timing = BatchTiming(self._container_token, number, len(batch), started_ns, time.time_ns())
        if any(requests):
            self._push_results(requests, inputs, results)
        return [Timed(r, timing) if m else r for r, m in zip(results, metered, strict=True)]

    def _count_batch(self) -> int:
        """How many batches this container ran before this one (0: its first). The counter and the container's
        token are made at its first batch, after any memory snapshot is restored: restored containers differ."""
        if "_batch_counter" not in self.__dict__:
            self._container_token = uuid.uuid4().hex
            self._batch_counter = itertools.count()
        return next(self._batch_counter)

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
        queue_config = self.modal_config.app_settings.queue_config
        sink = getattr(self, "_sink", None)
        if sink is None:  # one per container: a Redis sink keeps its connection pool between batches
            sink = self._sink = make_sink(queue_config, self.queue_backend)
        for request, item, result in zip(requests, inputs, results, strict=True):
            if request is None:
                continue
            status, outcome = job_outcome(result)
            queue = request.queue_for(status)
            if queue is not None:
                message = sink_message(None, request, status, outcome, jsonable(item), queue_config.message_format)
                deliver(sink, queue, message)
            if request.webhook_url is not None:
                self._send_webhook(request, webhook_payload(None, status, outcome, 1, request.meta))

    def _send_webhook(self, request: AsyncRequest, payload: dict[str, Any]) -> None:
        """POST the finished job to its webhook from a thread of this container, so that retries (over
        `webhook_config.retry_window_seconds`) do not hold up the batch's results."""
        import modal

        try:
            body = json_message(payload).encode()
        except DeliveryRefused as exc:
            logger.error("webhook %s to %s not sent: %s", request.webhook_id, request.webhook_url, exc)
            return
        config = self.modal_config.app_settings.webhook_config
        arguments = (request.webhook_url or "", request.webhook_id or new_webhook_id(), body, config)
        book = None if modal.is_local() else job_dict(self.modal_config)  # on Modal its state goes to the job book
        threading.Thread(target=send_and_record, args=(*arguments, book), name="modalkit-webhook", daemon=True).start()

    def _recycle(self, exc: BaseException, size: int) -> list[Any]:
        import modal

        logger.error("CUDA error, recycling this container: %s", exc)
        if not modal.is_local():
            from modal.experimental import stop_fetching_inputs

            stop_fetching_inputs()
        # Locally the worker process sees cause="cuda" and exits once it has replied.
        failure = Failure("cuda", f"container recycled after a CUDA error: {exc}; retry the request")
        return [failure] * size


def name_as_method_of(cls: type, method: Any) -> None:
    """Name a function made at class creation as the class's own method (Modal finds methods by these)."""
    method.__qualname__ = f"{cls.__qualname__}.{method.__name__}"
    method.__module__ = cls.__module__


_PARAMETER_TYPES = (int, str, bytes, bool)
_CONFIG_NAMES = ("modal_config", "modal_utils")


def _declared_config(cls: type) -> ModalConfig | None:
    """The config a service class declares in its own body (`modal_config`, or ModalKit's `modal_utils`).

    A class that names its model (`inference_implementation`) but has no config, or holds a config
    under another name, is an error now rather than a service without Modal methods later.
    """
    declared = {name: cls.__dict__[name] for name in _CONFIG_NAMES if name in cls.__dict__}
    for name, value in vars(cls).items():
        if isinstance(value, ModalConfig) and name not in _CONFIG_NAMES:
            raise ConfigError([f"{cls.__qualname__}.{name}: a ModalConfig must be named modal_config (or modal_utils)"])
    if len(declared) == 2 and declared["modal_config"] is not declared["modal_utils"]:
        raise ConfigError([f"{cls.__qualname__}: modal_config and modal_utils are both set; keep one"])
    for name, value in declared.items():
        if not isinstance(value, ModalConfig):
            raise ConfigError([f"{cls.__qualname__}.{name}: expected a ModalConfig(), got {type(value).__name__}"])
    if declared:
        config: ModalConfig = next(iter(declared.values()))
        return config
    if "inference_implementation" in cls.__dict__ and not isinstance(getattr(cls, "modal_config", None), ModalConfig):
        raise ConfigError(
            [
                f"{cls.__qualname__} has no config: add `modal_config = ModalConfig()` to its body "
                "(ModalKit's form: `modal_utils: ModalConfig = modal_config`)"
            ]
        )
    return None


def unwrapped(input_data: Any) -> Any:
    """ModalKit wrapped inputs in `SyncInputModel`/`AsyncInputModel`; the service takes the message itself."""
    return input_data.message if isinstance(input_data, (SyncInputModel, AsyncInputModel)) else input_data


def _is_async(item: Any) -> bool:
    return isinstance(item, AsyncRequest | AsyncInputModel)


def async_request(input_data: Any) -> AsyncRequest:
    """An async job from a bare input or ModalKit's `AsyncInputModel` (empty queue names mean no queue)."""
    if isinstance(input_data, AsyncRequest):
        return input_data
    if isinstance(input_data, AsyncInputModel):
        return AsyncRequest.from_envelope(input_data)
    return AsyncRequest(input_data)


def _check_parameters(cls: type) -> None:
    """Modal parameters may only be int, str, bytes or bool; say so when the class is defined."""
    hints = typing.get_type_hints(cls)
    for name, value in vars(cls).items():
        if type(value).__name__ == "_Parameter" and hints.get(name) not in _PARAMETER_TYPES:
            raise ConfigError(
                [f"{cls.__qualname__}.{name}: modal.parameter must be int, str, bytes or bool, not {hints.get(name)}"]
            )
