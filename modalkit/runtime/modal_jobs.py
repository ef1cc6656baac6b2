"""`JobBook`: what Modal does not keep of a job, kept in a `modal.Dict`: who made it, when, its last known status,
and how its webhook went.

Modal keeps a job's input and result (its `FunctionCall`); the book adds an entry per job id, written by the web
function when it spawns the job and updated when the job is read, listed or cancelled. It is what lets a client
see only its own jobs, list them, and read a job as `cancelled`. The container that sends a job's webhook does
not know the job's id: it records the delivery under the webhook's id (`webhook:<id>`), which the entry names.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, replace
from typing import Any

from modalkit.config import ModalConfig
from modalkit.config.schema import WebhookConfig
from modalkit.jobs import PENDING_STATES, AsyncRequest, Delivery, Job, JobState, PageKey
from modalkit.webhooks import send

logger = logging.getLogger("modalkit.jobs")
WEBHOOK_KEY = "webhook:"  # + a webhook's id: its delivery state, written by the container that sends it


def job_dict(config: ModalConfig) -> Any:
    """The app's job book on Modal: `modal.Dict.from_name("<app_name>-jobs", create_if_missing=True)`. A reference
    only: nothing is sent to Modal until it is first used."""
    import modal

    return modal.Dict.from_name(f"{config.app_name}-jobs", create_if_missing=True)


@dataclass(frozen=True)
class Entry:
    """One job's entry: a plain dict in the Dict, so any modalkit version reads it."""

    job_id: str
    owner: str | None
    created_at: float
    status: JobState
    model_name: str = ""
    webhook_url: str | None = None
    webhook_id: str | None = None

    def as_job(self) -> Job:
        return Job(job_id=self.job_id, status=self.status, owner=self.owner, created_at=self.created_at)

    def key(self) -> PageKey:
        return self.created_at, self.job_id

    @property
    def pending(self) -> bool:
        return self.status in PENDING_STATES

    def stored(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "created_at": self.created_at,
            "status": self.status,
            "model_name": self.model_name,
            "webhook_url": self.webhook_url,
            "webhook_id": self.webhook_id,
        }

    @classmethod
    def read(cls, job_id: str, value: Any) -> Entry | None:
        if not isinstance(value, dict):
            return None
        return cls(
            job_id=job_id,
            owner=value.get("owner"),
            created_at=float(value.get("created_at") or 0.0),
            status=value.get("status", "running"),
            model_name=value.get("model_name", ""),
            webhook_url=value.get("webhook_url"),
            webhook_id=value.get("webhook_id"),
        )


class JobBook:
    """The entries of one app's jobs in a `modal.Dict` (or anything with its `put`/`get`/`items` `.aio` methods).

    Modal tells a pending call only as pending: an entry is `running` from its spawn until it is seen finished.
    Modal expires a Dict entry after 7 days without a read or write, so a job's entry lives that long at least.
    """

    def __init__(self, store: Any) -> None:
        self.store = store

    async def record(self, job_id: str, model_name: str, request: AsyncRequest) -> Entry:
        entry = Entry(
            job_id, request.owner, time.time(), "running", model_name, request.webhook_url, request.webhook_id
        )
        await self.store.put.aio(job_id, entry.stored())
        return entry

    async def entry(self, job_id: str) -> Entry | None:
        if job_id.startswith(WEBHOOK_KEY):  # a webhook's record, never a job's entry
            return None
        return Entry.read(job_id, await self.store.get.aio(job_id))

    async def mark(self, entry: Entry, status: JobState) -> Entry:
        """The entry with its new status, written (a no-op when it already has it)."""
        if entry.status == status:
            return entry
        marked = replace(entry, status=status)
        await self.store.put.aio(entry.job_id, marked.stored())
        return marked

    async def candidates(self, owner: str | None, after: PageKey | None) -> list[Entry]:
        """Every entry `owner` made (every entry when None) that comes after `after`, newest first.

        The Dict has no order and no index, so this reads all of it: a listing costs one pass over the app's jobs.
        """
        found = []
        async for job_id, value in self.store.items.aio():
            if str(job_id).startswith(WEBHOOK_KEY):
                continue
            entry = Entry.read(str(job_id), value)
            if entry is None or (owner is not None and entry.owner != owner):
                continue
            if after is None or entry.key() < after:
                found.append(entry)
        found.sort(key=Entry.key, reverse=True)
        return found

    async def webhook(self, entry: Entry) -> Delivery | None:
        """The job's webhook as the container that sends it recorded it (`pending` until it has begun)."""
        if entry.webhook_id is None:
            return None
        found = await self.store.get.aio(WEBHOOK_KEY + entry.webhook_id)
        state = found if isinstance(found, dict) else {}
        return Delivery(
            state=state.get("state", "pending"),
            url=entry.webhook_url,
            attempts=int(state.get("attempts", 0)),
            error=state.get("error"),
        )


def send_and_record(url: str, webhook_id: str, body: bytes, config: WebhookConfig, book: Any | None) -> bool:
    """Send a job's webhook (`modalkit.webhooks.send`, from a thread of the container), recording its state in the
    job book (`book`: the `modal.Dict`, None locally) before the first try, after each failed one, and at the end."""
    tries = 0

    def record(state: str) -> None:
        if book is None:
            return
        try:
            book.put(WEBHOOK_KEY + webhook_id, {"state": state, "attempts": tries})
        except Exception as exc:  # the webhook matters more than its record
            logger.warning("webhook %s: its state could not be written to the job book: %s", webhook_id, exc)

    def sleep(seconds: float) -> None:  # `send` sleeps after each failed try
        nonlocal tries
        tries += 1
        record("pending")
        time.sleep(seconds)

    record("pending")
    delivered = send(url, webhook_id, body, config, sleep)
    tries += 1
    record("delivered" if delivered else "failed")
    return delivered
