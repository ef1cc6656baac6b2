"""ModalKit's request and response models, for apps and queue consumers written against ModalKit.

`InferenceOutputModel.status` other than "success" fails an async job (it goes to the failure queue);
the sync routes return such an output as it is, as ModalKit did.
"""

from __future__ import annotations

from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

T = TypeVar("T", bound=BaseModel)


class AsyncOutputModel(BaseModel):
    job_id: str


class AsyncInputModel(BaseModel, Generic[T]):
    """The `/predict_async` envelope; an empty queue name means "no queue"."""

    model_config = ConfigDict(extra="forbid")
    message: T
    success_queue: str = ""
    failure_queue: str = ""
    meta: dict[str, Any] = Field(default_factory=dict)


class SyncInputModel(BaseModel, Generic[T]):
    model_config = ConfigDict(extra="forbid")
    message: T


class InferenceOutputModel(BaseModel):
    """An output that says itself whether it succeeded; extra fields are kept."""

    model_config = ConfigDict(extra="allow")
    status: str
    error: str | None = None
    meta: dict[str, Any] = Field(default_factory=dict)


class DelayedFailureOutputModel(InferenceOutputModel):
    """What a failure queue receives (with `queue_config.message_format: modalkit`) when inference raised."""

    original_message: AsyncInputModel[Any]


def reported_error(output: Any) -> str | None:
    """The error an `InferenceOutputModel` reports about itself (status other than "success"), else None."""
    if isinstance(output, InferenceOutputModel) and output.status != "success":
        return output.error or f"status {output.status!r}"
    return None
