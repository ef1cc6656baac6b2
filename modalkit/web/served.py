"""`Served`: what every route of one app needs, built once by `create_web_endpoints` (the composition root)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fastapi import HTTPException, Request
from pydantic import BaseModel

from modalkit.app_loader import user_class
from modalkit.config import ModalConfig
from modalkit.config.schema import AppSettings, LimitsConfig
from modalkit.exceptions import AppLoadError
from modalkit.runtime import Runtime, select_runtime
from modalkit.service import ModalService
from modalkit.streaming import StreamingService
from modalkit.web.body import unsupported_body_type
from modalkit.web.uploads import UploadRules

UPLOAD_PATHS = frozenset({"/predict", "/predict_sync", "/predict_batch", "/predict_async"})


@dataclass(frozen=True)
class Served:
    """One service behind one web app: its runtime, config, models and input/output types."""

    service: Any  # the class as app.py gives it: a `modal.Cls` (or the Python class itself)
    config: ModalConfig
    runtime: Runtime
    input_model: type[BaseModel]
    output_model: type[BaseModel]
    model_names: tuple[str, ...]
    default_model: str
    uploads: UploadRules  # how the input model's file fields (if any) take multipart and raw bodies

    @classmethod
    def build(
        cls, service: Any, input_model: type[BaseModel], output_model: type[BaseModel], runtime: Runtime | None
    ) -> Served:
        """The service's config and model entries, and its runtime: `runtime`, else the one for where this runs."""
        python_class: type[ModalService] = user_class(service)
        config = python_class.modal_config
        default_model = python_class.default_model_name()
        names = tuple(config.model_names() or [default_model])
        chosen = runtime or select_runtime(service, config, list(names), input_model)
        uploads = UploadRules.of(input_model, config.app_settings.limits)
        return cls(service, config, chosen, input_model, output_model, names, default_model, uploads)

    @property
    def streaming(self) -> bool:
        """A `StreamingService`: it answers /predict_stream and the OpenAI generation routes, not /predict."""
        return issubclass(user_class(self.service), StreamingService)

    def body_type_problem(self, path: str, content_type: bytes | None) -> str | None:
        """Why a POST body of this type is refused on `path` before it is read (415), or None: JSON everywhere,
        and uploads on the predict routes of an input model with file fields."""
        if content_type is None or not self.uploads.enabled or path not in UPLOAD_PATHS:
            return unsupported_body_type(content_type)
        return self.uploads.body_type_problem(content_type.decode("latin-1"))

    @property
    def settings(self) -> AppSettings:
        return self.config.app_settings

    @property
    def max_body_bytes(self) -> int:
        """The largest body a predict route reads: an upload's, when the input takes files."""
        limits = self.config.app_settings.limits
        return max(limits.max_body_bytes, limits.max_upload_bytes) if self.uploads.enabled else limits.max_body_bytes

    @property
    def limits(self) -> LimitsConfig:
        return self.config.app_settings.limits

    def requested_model(self, request: Request) -> str:
        """The `model_name` query parameter (default: the service's model); 404 for an entry that is not served."""
        query = request.scope.get("query_string")
        name = (query and request.query_params.get("model_name")) or self.default_model  # no query: none to parse
        if name not in self.model_names:
            raise HTTPException(404, f"unknown model_name {name!r}; known: {', '.join(self.model_names)}")
        return name

    def model_check(self, name: str | None) -> str:
        """`name` (default: the service's model) if the app serves it; `AppLoadError` naming the known ones if not."""
        chosen = name or self.default_model
        if chosen not in self.model_names:
            raise AppLoadError(f"unknown model entry {chosen!r}; known: {', '.join(self.model_names)}")
        return chosen


def served_by(app: Any) -> Served | None:
    """The `Served` of an app made by `create_web_endpoints`; None for any other ASGI app."""
    served = getattr(getattr(app, "state", None), "served", None)
    return served if isinstance(served, Served) else None
