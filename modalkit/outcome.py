"""What one item's inference produced when it did not produce an output; crosses process and Modal boundaries."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from modalkit.exceptions import InferenceError

Cause = Literal["item", "cuda", "crash", "timeout", "load", "unavailable"]


@dataclass(frozen=True, slots=True)
class Failure:
    """One item failed; `status_code` is the HTTP status its request gets."""

    status_code: int
    detail: str
    cause: Cause = "item"

    @classmethod
    def from_exception(cls, exc: BaseException) -> Failure:
        if isinstance(exc, InferenceError):
            return cls(exc.status_code, exc.detail)
        return cls(500, f"inference failed: {type(exc).__name__}: {exc}")

    @property
    def transient(self) -> bool:
        """Not the item's fault (its container crashed, hung, broke or was not there): worth trying again."""
        return self.cause != "item"

    @property
    def recycles_container(self) -> bool:
        return self.cause == "cuda"


class Encoded(bytes):
    """An output a local container already serialised to JSON: the server sends it as it is."""


class Reported(Encoded):
    """An encoded output that reports its own failure (ModalKit's `status` other than "success")."""
