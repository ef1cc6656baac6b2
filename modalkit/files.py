"""Inputs that are files: a field typed `bytes` or `File` makes the routes take uploads as well as JSON.

    class PhotoIn(BaseModel):
        image: Annotated[File, Upload(content_types=["image/*"], max_bytes=5_000_000)]
        top_k: int = 3

`POST /predict` then takes `multipart/form-data` (file parts and plain fields, validated by the same model), or,
for a model with one file field, the raw bytes as the body (`image/png`, `application/octet-stream`, ...).
JSON keeps working: a `File` is `{"data": <base64>, "filename", "content_type"}` there, a `bytes` field a
base64 string. Past the web edge the bytes travel as bytes: over the container pipe, to Modal, into the job store.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ConfigDict


class File(BaseModel):
    """An uploaded file: its bytes, and the filename and content type the client gave."""

    model_config = ConfigDict(frozen=True, ser_json_bytes="base64", val_json_bytes="base64")

    data: bytes
    filename: str | None = None
    content_type: str | None = None

    def __repr__(self) -> str:  # never print megabytes into a log
        return f"File(filename={self.filename!r}, content_type={self.content_type!r}, {len(self.data)} bytes)"


@dataclass(frozen=True)
class Upload:
    """Rules for one file field: the content types it accepts (`image/*` style patterns) and its largest size.
    Unset, they come from `app_settings.limits.file_content_types` and `max_file_bytes`."""

    content_types: Sequence[str] | None = None
    max_bytes: int | None = None


@dataclass(frozen=True)
class FileField:
    """A file field of an input model, as the routes, the client and bulk runs see it."""

    name: str
    as_file: bool  # typed `File` (filename and content type kept), else `bytes`
    required: bool
    content_types: Sequence[str] | None
    max_bytes: int | None

    def accepts(self, content_type: str, default_types: Sequence[str]) -> bool:
        return content_type_matches(content_type, self.content_types or default_types)

    def value(self, data: bytes, filename: str | None, content_type: str | None) -> Any:
        return File(data=data, filename=filename, content_type=content_type) if self.as_file else data


def file_fields(model: type[BaseModel]) -> dict[str, FileField]:
    """The fields of `model` that hold a file (`bytes` or `File`, optionally `| None`), by name."""
    found = {}
    for name, field in model.model_fields.items():
        kind = _file_kind(field.annotation)
        if kind is None:
            continue
        upload = next((m for m in field.metadata if isinstance(m, Upload)), Upload())
        found[name] = FileField(name, kind is File, field.is_required(), upload.content_types, upload.max_bytes)
    return found


def content_type_matches(content_type: str, patterns: Sequence[str]) -> bool:
    """Whether a media type (parameters ignored) matches one of `patterns`: exact, `type/*` or `*/*`."""
    media = content_type.partition(";")[0].strip().lower()
    major = media.partition("/")[0]
    return any(p in ("*/*", "*", media) or (p.endswith("/*") and p[:-2] == major) for p in patterns)


def _file_kind(annotation: Any) -> type | None:
    if annotation in (bytes, File):
        return annotation  # type: ignore[no-any-return]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        kinds = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(kinds) == 1 and kinds[0] in (bytes, File):
            return kinds[0]  # type: ignore[no-any-return]
    return None
