"""Uploads: `multipart/form-data` and raw bodies for an input model with file fields (`modalkit.files`).

A multipart body has one part per field: file fields as file parts, the others as text (JSON text for a field
that is not a `str`). A raw body (`image/png`, `application/octet-stream`, ...) is the one file of a model with
one file field; its other fields come from the query string. Sizes are checked from `Content-Length` before
anything is read (413), and again while reading; a content type a field does not accept gets 415.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import pydantic_core
from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import FormData, UploadFile

from modalkit.config.schema import LimitsConfig
from modalkit.files import FileField, content_type_matches, file_fields
from modalkit.web.body import errors_at

MULTIPART = "multipart/form-data"
_FORM_FIELD_BYTES = 1024 * 1024  # one text part of a form
_FILENAME = re.compile(r'filename="?([^";]+)"?')
Envelope = tuple[str, ...]  # text parts that are not the input's: an async job's queues and meta


@dataclass(frozen=True)
class UploadRules:
    """How one app takes uploads: its input model's file fields and the limits that apply."""

    input_model: type[BaseModel]
    fields: dict[str, FileField]
    limits: LimitsConfig

    @classmethod
    def of(cls, input_model: type[BaseModel], limits: LimitsConfig) -> UploadRules:
        return cls(input_model, file_fields(input_model), limits)

    @property
    def enabled(self) -> bool:
        return bool(self.fields)

    @property
    def raw_field(self) -> FileField | None:
        """The one file field a raw body fills, if the model has exactly one."""
        return next(iter(self.fields.values())) if len(self.fields) == 1 else None

    def max_file_bytes(self, field: FileField) -> int:
        return field.max_bytes or self.limits.max_file_bytes

    def body_type_problem(self, content_type: str) -> str | None:
        """Why an upload route refuses a body of this type before reading it (415), or None."""
        media = content_type.partition(";")[0].strip().lower()
        if media == MULTIPART or media == "application/json" or media.endswith("+json"):
            return None
        raw = self.raw_field
        if raw is not None and raw.accepts(media, self.limits.file_content_types):
            return None
        accepted = ", ".join(raw.content_types or self.limits.file_content_types) if raw else "none"
        return (
            f"unsupported content type {media[:100]!r}: send JSON, {MULTIPART}"
            f"{', or the file itself as one of: ' + accepted if raw else ''}"
        )

    def ceiling(self, items: int = 1) -> int:
        """The largest body that can be valid: every file at its largest, plus room for the text parts."""
        files = sum(self.max_file_bytes(f) for f in self.fields.values()) * items + _FORM_FIELD_BYTES
        return min(self.limits.max_upload_bytes, files)


def is_upload(request: Request) -> bool:
    media = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    return media != "" and media != "application/json" and not media.endswith("+json")


def refuse_oversized(request: Request, ceiling: int, limit: str = "limits.max_file_bytes") -> None:
    """413 from `Content-Length`, before a byte of the body is read."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > ceiling:
        raise HTTPException(413, f"the body is {int(length)} bytes; at most {ceiling} here ({limit})")


async def read_upload(
    request: Request, rules: UploadRules, envelope: Envelope = ()
) -> tuple[BaseModel, dict[str, str]]:
    """The input of one multipart or raw `/predict` (or `/predict_async`) body, and the text parts (or query
    parameters, for a raw body) named in `envelope`, which are not the input's (an async job's queues)."""
    if request.headers.get("content-type", "").lower().startswith(MULTIPART):
        refuse_oversized(request, rules.ceiling())
        form = await _form(request, rules)
        try:
            kept = {k: v for k, v in form.multi_items() if k in envelope and isinstance(v, str)}
            values = _values(rules, FormData([(k, v) for k, v in form.multi_items() if k not in envelope]), {})
        finally:
            await form.close()
        return validate(rules, values), kept
    kept = {k: v for k, v in request.query_params.items() if k in envelope}
    return await _read_raw(request, rules, envelope), kept


async def _read_raw(request: Request, rules: UploadRules, envelope: Envelope) -> BaseModel:
    raw = rules.raw_field
    if raw is None:
        raise HTTPException(415, f"send {MULTIPART}: the input has {len(rules.fields)} file fields")
    most = rules.max_file_bytes(raw)
    refuse_oversized(request, most)
    data = await read_limited(request, most, f"the file is more than {most} bytes")
    filename = _filename(request.headers.get("content-disposition", ""))
    query = {k: v for k, v in request.query_params.items() if k != "model_name" and k not in envelope}
    values = {name: _text_value(rules.input_model, name, value) for name, value in query.items()}
    values[raw.name] = raw.value(data, filename, request.headers.get("content-type"))
    return validate(rules, values)


async def read_upload_batch(request: Request, rules: UploadRules) -> list[BaseModel | list[dict[str, Any]]]:
    """The items of a multipart `/predict_batch`: one per file part of the model's one file field; the text parts
    apply to every item. An item that does not validate stands as its 422 detail, as in a JSON batch."""
    raw = rules.raw_field
    if raw is None or not request.headers.get("content-type", "").lower().startswith(MULTIPART):
        raise HTTPException(415, f"a batch of uploads is {MULTIPART} with one file part per item")
    refuse_oversized(request, rules.limits.max_upload_bytes)
    form = await _form(request, rules, max_files=rules.limits.max_batch_items)
    try:
        return _batch_items(rules, raw, form)
    finally:
        await form.close()


def _batch_items(rules: UploadRules, raw: FileField, form: FormData) -> list[BaseModel | list[dict[str, Any]]]:
    files = form.getlist(raw.name)
    if not files or len(files) > rules.limits.max_batch_items:
        detail = f"{len(files)} {raw.name!r} parts; 1 to {rules.limits.max_batch_items} (limits.max_batch_items)"
        raise HTTPException(413 if files else 422, detail)
    shared = [(k, v) for k, v in form.multi_items() if k != raw.name]
    items: list[BaseModel | list[dict[str, Any]]] = []
    for index, upload in enumerate(files):
        values = _values(rules, FormData([*shared, (raw.name, upload)]), {})
        try:
            items.append(rules.input_model.model_validate(values))
        except ValidationError as exc:
            items.append(errors_at(exc, ["body", index]))
    return items


def validate(rules: UploadRules, values: dict[str, Any]) -> BaseModel:
    try:
        return rules.input_model.model_validate(values)
    except ValidationError as exc:
        raise HTTPException(422, errors_at(exc, ["body"])) from None


async def _form(request: Request, rules: UploadRules, max_files: int = 1000) -> FormData:
    try:
        return await request.form(max_files=max_files, max_fields=1000, max_part_size=_FORM_FIELD_BYTES)
    except HTTPException:
        raise
    except Exception as exc:  # a malformed multipart body, or a part past its limits
        raise HTTPException(400, f"the multipart body cannot be read: {exc}") from None


def _values(rules: UploadRules, form: FormData, values: dict[str, Any]) -> dict[str, Any]:
    """The input's field values from a form: files checked and read, text parts as their fields want them."""
    for name, part in form.multi_items():
        field = rules.fields.get(name)
        if field is None:
            if isinstance(part, str):
                values[name] = _text_value(rules.input_model, name, part)
            continue
        if isinstance(part, str):
            raise HTTPException(422, [{"type": "missing_file", "loc": ["body", name], "msg": "expected a file part"}])
        values[name] = _file_value(rules, field, part)
    return values


def _file_value(rules: UploadRules, field: FileField, part: UploadFile) -> Any:
    content_type = part.content_type or "application/octet-stream"
    if not field.accepts(content_type, rules.limits.file_content_types):
        accepted = ", ".join(field.content_types or rules.limits.file_content_types)
        raise HTTPException(
            415, f"{field.name}: content type {content_type!r} is not accepted; send one of: {accepted}"
        )
    most = rules.max_file_bytes(field)
    if part.size is not None and part.size > most:
        raise HTTPException(413, f"{field.name}: {part.size} bytes; at most {most}")
    part.file.seek(0)
    data = part.file.read(most + 1)
    if len(data) > most:
        raise HTTPException(413, f"{field.name}: more than {most} bytes")
    return field.value(data, part.filename, content_type)


async def read_limited(request: Request, most: int, too_large: str) -> bytes:
    """The body, refused with 413 `too_large` as soon as what arrives passes `most` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > most:
            raise HTTPException(413, too_large)
        chunks.append(chunk)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _text_value(model: type[BaseModel], name: str, text: str) -> Any:
    """A text part as its field wants it: as is for a `str` field, else read as JSON when it is JSON."""
    field = model.model_fields.get(name)
    if field is None or field.annotation is str:
        return text
    try:
        return pydantic_core.from_json(text)
    except ValueError:
        return text


def _filename(disposition: str) -> str | None:
    found = _FILENAME.search(disposition)
    return found.group(1) if found else None


def multipart_schema(rules: UploadRules) -> dict[str, Any]:
    """The OpenAPI schema of the multipart form: file fields as binary strings, so /docs can upload a file."""
    schema = rules.input_model.model_json_schema(ref_template="#/components/schemas/{model}")
    properties = dict(schema.get("properties", {}))
    for name in rules.fields:
        properties[name] = {"type": "string", "format": "binary"}
    return {"type": "object", "properties": properties, "required": schema.get("required", [])}


def upload_content(rules: UploadRules, json_schema: dict[str, Any], batch: bool = False) -> dict[str, Any]:
    """The request body content types a route takes, with their schemas."""
    content: dict[str, Any] = {
        "application/json": {"schema": json_schema},
        MULTIPART: {"schema": multipart_schema(rules)},
    }
    raw = rules.raw_field
    if raw is not None and not batch:
        for media in _raw_types(raw.content_types or rules.limits.file_content_types):
            content[media] = {"schema": {"type": "string", "format": "binary"}}
    return content


def _raw_types(patterns: Iterable[str]) -> list[str]:
    return ["application/octet-stream" if p in ("*/*", "*") else p for p in patterns]


__all__ = ["UploadRules", "content_type_matches", "is_upload", "read_upload", "read_upload_batch"]
