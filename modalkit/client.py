"""`Client` and `AsyncClient`: call any modalkit deployment (local or on Modal) with retries and deadlines.

from modalkit.client import Client

with Client("http://127.0.0.1:8000", api_key="...") as client:
    client.predict({"text": "hello"})["embedding"]
    job = client.submit({"text": "later"}, success_queue="embeddings")
    client.result(job)                       # waits for the job
    client.cancel(job)                       # 409 (ClientError) once it has finished
    client.list_jobs(status="succeeded")     # {"jobs": [...], "next_cursor": ...}: this key's jobs, newest first
    client.predict({"top_k": 3}, files={"image": "cat.png"})   # an upload: multipart/form-data
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import mimetypes
import os
import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias
from urllib.parse import quote

import httpx

from modalkit.exceptions import ClientError, DeadlineExceeded, JobFailed
from modalkit.files import File

__all__ = ["AsyncClient", "Client", "ClientError", "DeadlineExceeded", "FileValue", "JobFailed", "RetryPolicy"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})
REQUEST_ID_HEADER = "x-request-id"  # sent with each call (its tries share it), echoed by a modalkit server

logger = logging.getLogger("modalkit.client")

# A file to upload: a path (its content type guessed from its name), raw bytes, (filename, bytes, content type)
# with either name or type None to fill in, or a modalkit File.
FileValue: TypeAlias = "str | os.PathLike[str] | bytes | tuple[str | None, bytes, str | None] | File"
Part: TypeAlias = tuple[str, tuple[str, bytes, str]]
OCTET_STREAM = "application/octet-stream"


def file_part(field: str, value: FileValue) -> Part:
    """One multipart file part, `(field, (filename, bytes, content type))`, read now so that a retry sends the
    same bytes. Raw bytes are named after the field; a missing content type is guessed from the filename."""
    if isinstance(value, File):
        filename, data, content_type = value.filename, value.data, value.content_type
    elif isinstance(value, tuple):
        filename, data, content_type = value
    elif isinstance(value, bytes | bytearray | memoryview):
        filename, data, content_type = None, bytes(value), None
    else:
        path = Path(value)
        filename, data, content_type = path.name, path.read_bytes(), None
    filename = filename or field
    content_type = content_type or mimetypes.guess_type(filename)[0] or OCTET_STREAM
    return field, (filename, bytes(data), content_type)


def form_fields(data: Any) -> dict[str, str]:
    """The plain fields of a multipart body as text parts: a `str` as is, anything else as JSON text;
    a None is left out (the field's default applies)."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise TypeError(f"with files, the other fields are a mapping of field name to value, not {type(data).__name__}")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in data.items() if v is not None}


def shared_fields(items: Sequence[Any] | Mapping[str, Any], count: int) -> Any:
    """The plain fields of a batch of uploads, which every item shares: a mapping, or a list of equal items."""
    if isinstance(items, Mapping):
        return items
    if len(items) not in (0, 1, count) or any(item != items[0] for item in items):
        raise ValueError(
            "a batch of uploads shares its plain fields: pass them once (a mapping), or one equal item per file"
        )
    return items[0] if items else {}


@dataclass
class RetryPolicy:
    """Exponential backoff with full jitter; a server's Retry-After wins when it asks for longer."""

    attempts: int = 5
    first_delay: float = 0.2
    max_delay: float = 10.0

    def delays(self) -> Iterator[float]:
        for attempt in range(self.attempts - 1):
            yield random.uniform(0, min(self.max_delay, self.first_delay * 2**attempt))

    @staticmethod
    def wait_for(response: httpx.Response | None, planned: float) -> float:
        retry_after = response.headers.get("retry-after") if response is not None else None
        if retry_after is not None and retry_after.replace(".", "", 1).isdigit():
            return max(planned, float(retry_after))
        return planned


def _built(request: httpx.Request) -> httpx.Request:
    """The request with its body encoded once (a multipart body too, boundary and all) and its own request id:
    every try sends it, so the server's logs show the tries of one call under one id."""
    request.read()
    request.headers.setdefault(REQUEST_ID_HEADER, uuid.uuid4().hex)
    return request


class _ClientBase:
    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        api_key_header: str = "x-api-key",
        modal_key: str | None = None,
        modal_secret: str | None = None,
        timeout: float = 30.0,
        deadline: float = 120.0,
        retry: RetryPolicy | None = None,
    ) -> None:
        headers = {}
        if api_key is not None:
            headers[api_key_header] = api_key
        if modal_key is not None and modal_secret is not None:  # Modal proxy auth (deployment_config.secure)
            headers.update({"Modal-Key": modal_key, "Modal-Secret": modal_secret})
        self.base_url = base_url.rstrip("/")
        self._headers = headers
        self._timeout = timeout
        self.deadline = deadline
        self.retry = retry or RetryPolicy()
        self.counts: Counter[str] = Counter()

    def stats(self) -> dict[str, int]:
        """Calls sent, succeeded, failed and retried by this client."""
        return {key: self.counts[key] for key in ("sent", "succeeded", "failed", "retried")}

    def _answer_or_raise(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            self.counts["failed"] += 1
            raise self._failed(response)
        self.counts["succeeded"] += 1
        return response.json()

    @staticmethod
    def _failed(response: httpx.Response) -> ClientError:
        """The error of a failed answer, logged with the request id that finds it in the server's logs."""
        try:
            body = response.json()
        except ValueError:
            body = response.text
        detail = body.get("detail", body) if isinstance(body, dict) else body
        request = response.request
        request_id = response.headers.get(REQUEST_ID_HEADER) or request.headers.get(REQUEST_ID_HEADER)
        logger.warning(
            "%s %s failed: HTTP %d: %s (request id %s)",
            request.method,
            request.url.path,
            response.status_code,
            detail,
            request_id,
            extra={"fields": {"status": response.status_code, "request_id": request_id}},
        )
        return ClientError(response.status_code, detail, request_id)

    def _retry_after(
        self, plan: Iterator[float], give_up: float, request: httpx.Request, response: httpx.Response | None
    ) -> float | None:
        """Seconds to wait before trying again, or None when this response is the answer (retry or not).
        Raises DeadlineExceeded when nothing came back and there is no time left."""
        self.counts["sent"] += 1
        if response is not None and response.status_code not in RETRY_STATUSES:
            return None
        delay = self.retry.wait_for(response, next(plan, -1.0))
        if delay < 0 or time.monotonic() + delay > give_up:
            if response is not None:
                return None
            self.counts["failed"] += 1
            request_id = request.headers.get(REQUEST_ID_HEADER)
            raise DeadlineExceeded(f"no answer within {self.deadline:g} s (request id {request_id})")
        self.counts["retried"] += 1
        return delay

    def _stop_polling(self, job: dict[str, Any], give_up: float, wait: bool, poll_interval: float) -> bool:
        """True when `job` is the answer (succeeded, cancelled, or any state without `wait`); raises JobFailed, or
        DeadlineExceeded past the deadline."""
        if job["status"] == "failed":
            raise JobFailed(job)
        if job["status"] in ("succeeded", "cancelled") or not wait:  # a cancelled job never finishes otherwise
            return True
        if time.monotonic() + poll_interval > give_up:
            raise DeadlineExceeded(f"job {job['job_id']} still {job['status']} after {self.deadline:g} s")
        return False

    @staticmethod
    def _job_path(job_id: str) -> str:
        """The job's URL path, its id escaped: an id is one path segment, whatever characters it holds."""
        return f"/predict_async/{quote(job_id, safe='')}"

    @staticmethod
    def _model_query(model_name: str | None) -> dict[str, str]:
        return {"model_name": model_name} if model_name else {}

    @classmethod
    def _predict_args(cls, data: Any, files: Mapping[str, FileValue] | None, model_name: str | None) -> dict[str, Any]:
        """The request arguments of /predict: JSON, or multipart with one part per file and per plain field."""
        params = cls._model_query(model_name)
        if not files:
            return {"json": data, "params": params}
        parts = [file_part(name, value) for name, value in files.items()]
        return {"data": form_fields(data), "files": parts, "params": params}

    @classmethod
    def _batch_args(
        cls,
        items: Sequence[Any] | Mapping[str, Any],
        files: Mapping[str, Sequence[FileValue]] | None,
        model_name: str | None,
    ) -> dict[str, Any]:
        """The request arguments of /predict_batch: a JSON list, or multipart with one file part per item (the
        model's one file field, repeated) and the plain fields the items share."""
        params = cls._model_query(model_name)
        if not files:
            return {"json": list(items), "params": params}
        if len(files) != 1:
            raise ValueError(f"a batch of uploads has one file field, one file per item; got fields {sorted(files)}")
        ((name, values),) = files.items()
        parts = [file_part(name, value) for value in values]
        return {"data": form_fields(shared_fields(items, len(parts))), "files": parts, "params": params}

    @classmethod
    def _submit_args(
        cls,
        data: Any,
        files: Mapping[str, FileValue] | None,
        queues: tuple[str | None, str | None],
        meta: dict[str, Any] | None,
        model_name: str | None,
        webhook_url: str | None = None,
    ) -> dict[str, Any]:
        """The request arguments of /predict_async: JSON (the input, or an envelope with queues, meta and webhook),
        or multipart as /predict with `success_queue`, `failure_queue`, `webhook_url` and `meta` (JSON text) as
        text parts."""
        success_queue, failure_queue = queues
        args = cls._predict_args(data, files, model_name)
        envelope = {"success_queue": success_queue, "failure_queue": failure_queue, "webhook_url": webhook_url}
        if files:
            args["data"].update({k: v for k, v in envelope.items() if v is not None})
            if meta is not None:
                args["data"]["meta"] = json.dumps(meta)
        elif meta is not None or any(v is not None for v in envelope.values()):
            args["json"] = {"message": data, **{k: v for k, v in envelope.items() if v is not None}, "meta": meta}
        return args

    @staticmethod
    def _list_params(status: str | None, limit: int | None, cursor: str | None) -> dict[str, Any]:
        params = {"status": status, "limit": limit, "cursor": cursor}
        return {k: v for k, v in params.items() if v is not None}


class Client(_ClientBase):
    """Blocking client; a context manager."""

    def __init__(self, base_url: str, **options: Any) -> None:
        super().__init__(base_url, **options)
        self._http = httpx.Client(base_url=self.base_url, headers=self._headers, timeout=self._timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def predict(self, data: Any, model_name: str | None = None, *, files: Mapping[str, FileValue] | None = None) -> Any:
        """One input's answer. With `files` ({field: path, bytes, (filename, bytes, content type) or File}),
        a multipart upload whose other fields are `data`'s."""
        return self._request_with_retries("POST", "/predict", **self._predict_args(data, files, model_name))

    def predict_batch(
        self,
        items: Sequence[Any] | Mapping[str, Any],
        model_name: str | None = None,
        *,
        files: Mapping[str, Sequence[FileValue]] | None = None,
    ) -> list[Any]:
        """The answers to `items`, in order. With `files` ({field: [one file per item]}), a multipart upload of
        one item per file; `items` are then the plain fields they share (a mapping, or equal items)."""
        args = self._batch_args(items, files, model_name)
        outputs: list[Any] = self._request_with_retries("POST", "/predict_batch", **args)
        return outputs

    def submit(
        self,
        data: Any,
        *,
        success_queue: str | None = None,
        failure_queue: str | None = None,
        meta: dict[str, Any] | None = None,
        model_name: str | None = None,
        files: Mapping[str, FileValue] | None = None,
        webhook_url: str | None = None,
    ) -> str:
        """Start an async job; its id. `files` as for `predict`; `webhook_url` receives the finished job, signed."""
        args = self._submit_args(data, files, (success_queue, failure_queue), meta, model_name, webhook_url)
        answer = self._request_with_retries("POST", "/predict_async", **args)
        return str(answer["job_id"])

    def result(self, job_id: str, wait: bool = True, poll_interval: float = 0.2) -> dict[str, Any]:
        """The job's status; with wait=True, polls until it ended: succeeded, or cancelled (JobFailed if it failed)."""
        give_up = time.monotonic() + self.deadline
        while True:
            job: dict[str, Any] = self._request_with_retries("GET", self._job_path(job_id))
            if self._stop_polling(job, give_up, wait, poll_interval):
                return job
            time.sleep(poll_interval)

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; the job, now `cancelled`. A finished one raises ClientError (409)."""
        job: dict[str, Any] = self._request_with_retries("DELETE", self._job_path(job_id))
        return job

    def list_jobs(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of this key's jobs, newest first: `{"jobs": [...], "next_cursor"}`; pass `next_cursor` back
        as `cursor` for the next page (None: there is none)."""
        page: dict[str, Any] = self._request_with_retries(
            "GET", "/predict_async", params=self._list_params(status, limit, cursor)
        )
        return page

    def _request_with_retries(self, method: str, path: str, **kwargs: Any) -> Any:
        give_up, plan = time.monotonic() + self.deadline, self.retry.delays()
        request = _built(self._http.build_request(method, path, **kwargs))
        while True:
            response: httpx.Response | None = None
            with contextlib.suppress(httpx.TransportError):  # refused, reset, timed out: retried
                response = self._http.send(request)
            delay = self._retry_after(plan, give_up, request, response)
            if delay is None:
                assert response is not None
                return self._answer_or_raise(response)
            time.sleep(delay)


class AsyncClient(_ClientBase):
    """The same calls for asyncio code; an async context manager."""

    def __init__(self, base_url: str, **options: Any) -> None:
        super().__init__(base_url, **options)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self._headers, timeout=self._timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def predict(
        self, data: Any, model_name: str | None = None, *, files: Mapping[str, FileValue] | None = None
    ) -> Any:
        """One input's answer. With `files` ({field: path, bytes, (filename, bytes, content type) or File}),
        a multipart upload whose other fields are `data`'s."""
        return await self._request_with_retries("POST", "/predict", **self._predict_args(data, files, model_name))

    async def predict_batch(
        self,
        items: Sequence[Any] | Mapping[str, Any],
        model_name: str | None = None,
        *,
        files: Mapping[str, Sequence[FileValue]] | None = None,
    ) -> list[Any]:
        """The answers to `items`, in order. With `files` ({field: [one file per item]}), a multipart upload of
        one item per file; `items` are then the plain fields they share (a mapping, or equal items)."""
        args = self._batch_args(items, files, model_name)
        outputs: list[Any] = await self._request_with_retries("POST", "/predict_batch", **args)
        return outputs

    async def submit(
        self,
        data: Any,
        *,
        success_queue: str | None = None,
        failure_queue: str | None = None,
        meta: dict[str, Any] | None = None,
        model_name: str | None = None,
        files: Mapping[str, FileValue] | None = None,
        webhook_url: str | None = None,
    ) -> str:
        """Start an async job; its id. `files` as for `predict`; `webhook_url` receives the finished job, signed."""
        args = self._submit_args(data, files, (success_queue, failure_queue), meta, model_name, webhook_url)
        answer = await self._request_with_retries("POST", "/predict_async", **args)
        return str(answer["job_id"])

    async def result(self, job_id: str, wait: bool = True, poll_interval: float = 0.2) -> dict[str, Any]:
        give_up = time.monotonic() + self.deadline
        while True:
            job: dict[str, Any] = await self._request_with_retries("GET", self._job_path(job_id))
            if self._stop_polling(job, give_up, wait, poll_interval):
                return job
            await asyncio.sleep(poll_interval)

    async def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a queued or running job; the job, now `cancelled`. A finished one raises ClientError (409)."""
        job: dict[str, Any] = await self._request_with_retries("DELETE", self._job_path(job_id))
        return job

    async def list_jobs(
        self, status: str | None = None, limit: int | None = None, cursor: str | None = None
    ) -> dict[str, Any]:
        """One page of this key's jobs, newest first: `{"jobs": [...], "next_cursor"}`."""
        page: dict[str, Any] = await self._request_with_retries(
            "GET", "/predict_async", params=self._list_params(status, limit, cursor)
        )
        return page

    async def _request_with_retries(self, method: str, path: str, **kwargs: Any) -> Any:
        give_up, plan = time.monotonic() + self.deadline, self.retry.delays()
        request = _built(self._http.build_request(method, path, **kwargs))
        while True:
            response: httpx.Response | None = None
            with contextlib.suppress(httpx.TransportError):  # refused, reset, timed out: retried
                response = await self._http.send(request)
            delay = self._retry_after(plan, give_up, request, response)
            if delay is None:
                assert response is not None
                return self._answer_or_raise(response)
            await asyncio.sleep(delay)
