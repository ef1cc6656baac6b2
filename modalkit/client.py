"""`Client` and `AsyncClient`: call any modalkit deployment (local or on Modal) with retries and deadlines.

from modalkit.client import Client

with Client("http://127.0.0.1:8000", api_key="...") as client:
    client.predict({"text": "hello"})["embedding"]
    job = client.submit({"text": "later"}, success_queue="embeddings")
    client.result(job)                       # waits for the job
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx

from modalkit.exceptions import ClientError, DeadlineExceeded, JobFailed

__all__ = ["AsyncClient", "Client", "ClientError", "DeadlineExceeded", "JobFailed", "RetryPolicy"]

RETRY_STATUSES = frozenset({429, 502, 503, 504})


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
            try:
                detail = response.json().get("detail")
            except ValueError:
                detail = response.text
            raise ClientError(response.status_code, detail)
        self.counts["succeeded"] += 1
        return response.json()

    def _retry_after(self, plan: Iterator[float], give_up: float, response: httpx.Response | None) -> float | None:
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
            raise DeadlineExceeded(f"no answer within {self.deadline:g} s")
        self.counts["retried"] += 1
        return delay

    def _stop_polling(self, job: dict[str, Any], give_up: float, wait: bool, poll_interval: float) -> bool:
        """True when `job` is the answer; raises JobFailed, or DeadlineExceeded past the deadline."""
        if job["status"] == "failed":
            raise JobFailed(job)
        if job["status"] == "succeeded" or not wait:
            return True
        if time.monotonic() + poll_interval > give_up:
            raise DeadlineExceeded(f"job {job['job_id']} still {job['status']} after {self.deadline:g} s")
        return False

    @staticmethod
    def _model_query(model_name: str | None) -> dict[str, str]:
        return {"model_name": model_name} if model_name else {}

    @staticmethod
    def _async_body(
        data: Any, success_queue: str | None, failure_queue: str | None, meta: dict[str, Any] | None
    ) -> Any:
        if success_queue is None and failure_queue is None and meta is None:
            return data
        return {"message": data, "success_queue": success_queue, "failure_queue": failure_queue, "meta": meta}


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

    def predict(self, data: Any, model_name: str | None = None) -> Any:
        return self._request_with_retries("POST", "/predict", json=data, params=self._model_query(model_name))

    def predict_batch(self, items: list[Any], model_name: str | None = None) -> list[Any]:
        outputs: list[Any] = self._request_with_retries(
            "POST", "/predict_batch", json=items, params=self._model_query(model_name)
        )
        return outputs

    def submit(
        self,
        data: Any,
        *,
        success_queue: str | None = None,
        failure_queue: str | None = None,
        meta: dict[str, Any] | None = None,
        model_name: str | None = None,
    ) -> str:
        body = self._async_body(data, success_queue, failure_queue, meta)
        answer = self._request_with_retries("POST", "/predict_async", json=body, params=self._model_query(model_name))
        return str(answer["job_id"])

    def result(self, job_id: str, wait: bool = True, poll_interval: float = 0.2) -> dict[str, Any]:
        """The job's status; with wait=True, polls until it finished (JobFailed if it failed)."""
        give_up = time.monotonic() + self.deadline
        while True:
            job: dict[str, Any] = self._request_with_retries("GET", f"/predict_async/{job_id}")
            if self._stop_polling(job, give_up, wait, poll_interval):
                return job
            time.sleep(poll_interval)

    def _request_with_retries(self, method: str, path: str, **kwargs: Any) -> Any:
        give_up, plan = time.monotonic() + self.deadline, self.retry.delays()
        while True:
            response: httpx.Response | None = None
            with contextlib.suppress(httpx.TransportError):  # refused, reset, timed out: retried
                response = self._http.request(method, path, **kwargs)
            delay = self._retry_after(plan, give_up, response)
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

    async def predict(self, data: Any, model_name: str | None = None) -> Any:
        return await self._request_with_retries("POST", "/predict", json=data, params=self._model_query(model_name))

    async def predict_batch(self, items: list[Any], model_name: str | None = None) -> list[Any]:
        outputs: list[Any] = await self._request_with_retries(
            "POST", "/predict_batch", json=items, params=self._model_query(model_name)
        )
        return outputs

    async def submit(
        self,
        data: Any,
        *,
        success_queue: str | None = None,
        failure_queue: str | None = None,
        meta: dict[str, Any] | None = None,
        model_name: str | None = None,
    ) -> str:
        body = self._async_body(data, success_queue, failure_queue, meta)
        answer = await self._request_with_retries(
            "POST", "/predict_async", json=body, params=self._model_query(model_name)
        )
        return str(answer["job_id"])

    async def result(self, job_id: str, wait: bool = True, poll_interval: float = 0.2) -> dict[str, Any]:
        give_up = time.monotonic() + self.deadline
        while True:
            job: dict[str, Any] = await self._request_with_retries("GET", f"/predict_async/{job_id}")
            if self._stop_polling(job, give_up, wait, poll_interval):
                return job
            await asyncio.sleep(poll_interval)

    async def _request_with_retries(self, method: str, path: str, **kwargs: Any) -> Any:
        give_up, plan = time.monotonic() + self.deadline, self.retry.delays()
        while True:
            response: httpx.Response | None = None
            with contextlib.suppress(httpx.TransportError):  # refused, reset, timed out: retried
                response = await self._http.request(method, path, **kwargs)
            delay = self._retry_after(plan, give_up, response)
            if delay is None:
                assert response is not None
                return self._answer_or_raise(response)
            await asyncio.sleep(delay)
