"""Signed webhooks: the signature `standardwebhooks` verifies, which URLs are allowed (no SSRF), one POST, retries,
the durable local delivery, and the Modal container's delivery from `.local()`; each against a real receiver."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from fastapi.testclient import TestClient
from standardwebhooks import Webhook, WebhookVerificationError

from modalkit.app_loader import import_app
from modalkit.config.schema import QueueConfig, WebhookConfig
from modalkit.exceptions import ConfigError, DeliveryRefused, WebhookFailed, WebhookNotAllowed
from modalkit.jobs import AsyncRequest, webhook_payload
from modalkit.runtime.local.delivery import Deliveries
from modalkit.runtime.local.job_store import JobStore
from modalkit.runtime.modal import ModalRuntime
from modalkit.sinks import MemorySink
from modalkit.web import create_web_endpoints
from modalkit.webhooks import (
    check_url,
    deliver_once,
    host_allowed,
    next_try_in,
    post,
    secret_key,
    send,
    signed_headers,
    signing_key,
)
from tests.conftest import APPS, wait_for
from tests.webhook_receiver import SECRET, receiving

LOOPBACK = WebhookConfig(allowed_hosts=["127.0.0.1"], allow_private=True, first_retry_seconds=0.05)


@pytest.fixture(autouse=True)
def secret(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("MODALKIT_WEBHOOK_SECRET", SECRET)
    return SECRET


def test_the_signature_is_what_standardwebhooks_verifies() -> None:
    body = b'{"job_id": "j1", "status": "succeeded", "result": {"text": "\\u00e9"}}'
    headers = signed_headers(signing_key(SECRET), "msg_1", body)
    assert Webhook(SECRET).verify(body, headers)["job_id"] == "j1"
    assert headers["webhook-id"] == "msg_1" and abs(int(headers["webhook-timestamp"]) - time.time()) < 2
    assert headers["webhook-signature"].startswith("v1,")
    with pytest.raises(WebhookVerificationError):  # another body, or a try signed more than 5 minutes ago
        Webhook(SECRET).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(SECRET).verify(body, signed_headers(signing_key(SECRET), "msg_1", body, now=time.time() - 600))


def test_a_secret_is_whsec_base64_of_at_least_16_bytes(monkeypatch: pytest.MonkeyPatch) -> None:
    assert signing_key(SECRET) == signing_key(SECRET.removeprefix("whsec_")) == b"modalkit test webhook secret 32b"
    for bad in ("whsec_not base64!", "whsec_c2hvcnQ="):
        with pytest.raises(ValueError):
            signing_key(bad)
    monkeypatch.delenv("MODALKIT_WEBHOOK_SECRET")
    with pytest.raises(ConfigError, match=r"webhook_config\.secret_env: the environment variable MODALKIT_WEBHOOK"):
        secret_key(WebhookConfig())


def test_allowed_hosts_are_exact_names_subdomain_wildcards_or_any() -> None:
    allowed = ["hooks.example.com", "*.tenant.io", "[::1]"]
    assert host_allowed("HOOKS.example.com.", allowed) and host_allowed("a.b.tenant.io", allowed)
    assert host_allowed("::1", allowed)
    assert not host_allowed("tenant.io", allowed) and not host_allowed("evil-tenant.io", allowed)
    assert not host_allowed("hooks.example.com.evil.io", allowed) and not host_allowed("x", [])
    assert host_allowed("anything.org", ["*"])


@pytest.mark.parametrize(
    ("url", "said"),
    [
        ("ftp://127.0.0.1/x", "http:// or https://"),
        ("/relative", "http:// or https://"),
        ("http://user:pw@127.0.0.1/", "credentials"),
        ("http://evil.example.org/", "not allowed; app_settings.webhook_config.allowed_hosts: 127.0.0.1, localhost"),
        ("http://127.0.0.1:9/", "loopback, private, link-local or reserved address; set app_settings.webhook_config"),
        ("http://localhost/", "resolves to"),
        ("http://169.254.169.254/latest/meta-data", "resolves to 169.254.169.254"),
        ("http://10.1.2.3/", "resolves to 10.1.2.3"),
    ],
)
def test_a_url_outside_the_rules_is_refused(url: str, said: str) -> None:
    config = WebhookConfig(allowed_hosts=["127.0.0.1", "localhost", "169.254.169.254", "10.1.2.3"])
    with pytest.raises(WebhookNotAllowed, match=said.replace(".", r"\.").replace("(", r"\(")):
        check_url(url, config)


def test_private_addresses_pass_only_with_allow_private_and_public_ones_always() -> None:
    assert check_url("http://127.0.0.1:8123/hook", LOOPBACK).address == "127.0.0.1"
    public = check_url("https://93.184.216.34/hook", WebhookConfig(allowed_hosts=["93.184.216.34"]))
    assert (public.address, public.url.port) == ("93.184.216.34", None)
    with pytest.raises(WebhookFailed, match="does not resolve"):  # may be passing: a delivery retries it
        check_url("http://no-such-host.invalid/", WebhookConfig(allowed_hosts=["*"]))


def resolving(monkeypatch: pytest.MonkeyPatch, answers: list[str]) -> None:
    """DNS that answers `answers` in turn for every name but the loopback ones."""
    real = socket.getaddrinfo

    def getaddrinfo(host: str, port: int, *args: Any, **kwargs: Any) -> Any:
        if host in ("127.0.0.1", "localhost"):
            return real(host, port, *args, **kwargs)
        address = answers.pop(0) if len(answers) > 1 else answers[0]
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)


def test_a_host_that_rebinds_to_a_private_address_after_acceptance_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = WebhookConfig(allowed_hosts=["hooks.example.com"])
    resolving(monkeypatch, ["93.184.216.34", "127.0.0.1"])
    assert check_url("http://hooks.example.com/x", config).address == "93.184.216.34"  # when the job is accepted
    with pytest.raises(WebhookNotAllowed, match=r"resolves to 127\.0\.0\.1"):  # when it is delivered
        deliver_once("http://hooks.example.com/x", "msg_1", b"{}", config)


def test_the_post_goes_to_the_checked_address_with_the_url_host(monkeypatch: pytest.MonkeyPatch) -> None:
    with receiving() as receiver:
        resolving(monkeypatch, ["127.0.0.1"])
        config = WebhookConfig(allowed_hosts=["*.example.com"], allow_private=True)
        deliver_once(f"http://hooks.example.com:{receiver.port}/in?x=1", "msg_2", b'{"a": 1}', config)
        [got] = receiver.received()
    assert got.path == "/in?x=1" and got.headers["host"] == f"hooks.example.com:{receiver.port}"
    assert got.verified() == {"a": 1} and got.headers["content-type"] == "application/json"


def test_a_post_fails_for_good_on_410_or_a_redirect_and_for_now_on_anything_else() -> None:
    with receiving([410, 302, 500, 429]) as receiver:
        target = check_url(receiver.url, LOOPBACK)
        for expected, said in [(DeliveryRefused, "410 Gone"), (DeliveryRefused, "redirect")]:
            with pytest.raises(expected, match=said):
                post(target, b"{}", {}, 5)
        for said in ("answered 500", "answered 429"):
            with pytest.raises(WebhookFailed, match=said):
                post(target, b"{}", {}, 5)
        assert len(receiver.received()) == 4  # the redirect was not followed
    with pytest.raises(WebhookFailed, match="ConnectError"):  # the receiver is gone
        post(target, b"{}", {}, 5)


def test_retries_double_up_to_a_cap_within_attempts_and_window() -> None:
    config = WebhookConfig(max_attempts=6, first_retry_seconds=1, max_retry_seconds=5, retry_window_seconds=20)
    assert [next_try_in(config, tries, 0) for tries in range(1, 7)] == [1, 2, 4, 5, 5, None]
    assert next_try_in(config, 2, 17.5) == 2 and next_try_in(config, 2, 18.5) is None  # past the window: no try


def test_send_retries_until_the_receiver_takes_it_with_one_webhook_id() -> None:
    with receiving([500, 503]) as receiver:
        assert send(receiver.url, "msg_3", b'{"n": 3}', LOOPBACK)
        tries = receiver.received()
    assert len(tries) == 3 and {t.headers["webhook-id"] for t in tries} == {"msg_3"}
    assert tries[2].verified() == {"n": 3}
    with receiving([500] * 5) as receiver:
        assert not send(receiver.url, "msg_4", b"{}", LOOPBACK.model_copy(update={"max_attempts": 2}))
        assert len(receiver.received()) == 2
    with receiving([410]) as receiver:
        assert not send(receiver.url, "msg_5", b"{}", LOOPBACK)
        assert len(receiver.received()) == 1


def finished_job(store: JobStore, job_id: str, url: str, meta: dict[str, Any] | None = None) -> None:
    store.insert(job_id, "echo", '{"text": "x"}', AsyncRequest(None, meta=meta).with_webhook(url))
    store.claim(job_id)
    store.finish(job_id, "succeeded", {"text": "x"}, ttl_seconds=60, deliver=False)


def test_the_store_owes_a_finished_jobs_webhook_until_it_is_settled(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    finished_job(store, "j1", "http://127.0.0.1:9/hook")
    stored = store.get("j1")
    assert stored is not None and stored.request.webhook_id is not None and stored.webhook == "pending"
    assert store.owed_webhooks() == [("j1", "http://127.0.0.1:9/hook")] and store.owed() == []
    store.delivery_retried("j1", "ConnectError", "webhook")
    assert store.view("j1").answer()["webhook"] == {  # type: ignore[union-attr]
        "state": "pending",
        "url": "http://127.0.0.1:9/hook",
        "attempts": 1,
        "error": "ConnectError",
    }
    store.delivered("j1", "webhook")
    assert store.owed_webhooks() == [] and store.delivery_counts("webhook") == {"delivered": 1}
    assert store.get("j1").request.webhook_id == stored.request.webhook_id  # type: ignore[union-attr]


def test_an_owed_webhook_keeps_its_job_past_the_time_to_live(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    finished_job(store, "j1", "http://127.0.0.1:9/hook")
    store._db.execute("UPDATE jobs SET expires_at = 0")
    assert store.purge_expired() == 0
    store.delivery_failed("j1", "gave up", "webhook")
    assert store.purge_expired() == 1


def test_the_payload_is_the_job_as_get_shows_it_with_its_meta() -> None:
    assert webhook_payload("j1", "succeeded", {"t": 1}, 1, {"doc": 4}) == {
        "job_id": "j1",
        "status": "succeeded",
        "attempts": 1,
        "result": {"t": 1},
        "meta": {"doc": 4},
    }
    failed = webhook_payload(None, "failed", {"status_code": 422, "detail": "no"}, 2, None)
    assert failed == {"job_id": None, "status": "failed", "attempts": 2, "error": {"status_code": 422, "detail": "no"}}


async def settle(store: JobStore, config: WebhookConfig, job_id: str) -> dict[str, Any]:
    deliveries = Deliveries(store, MemorySink(), QueueConfig(), config)
    deliveries.start()  # the owed webhook is picked up from the store, as after a restart
    try:
        while deliveries.backlog:
            await asyncio.sleep(0.02)
    finally:
        await deliveries.stop()
    return store.view(job_id).answer()  # type: ignore[union-attr]


def test_deliveries_post_an_owed_webhook_retrying_until_it_is_taken(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    with receiving([500, 502]) as receiver:
        finished_job(store, "j1", receiver.url, meta={"doc": 7})
        answer = asyncio.run(asyncio.wait_for(settle(store, LOOPBACK, "j1"), 10))
        tries = receiver.received()
    assert answer["webhook"] == {"state": "delivered", "url": receiver.url, "attempts": 3}
    assert len(tries) == 3 and len({t.headers["webhook-id"] for t in tries}) == 1
    assert tries[2].verified() == {
        "job_id": "j1",
        "status": "succeeded",
        "attempts": 1,
        "result": {"text": "x"},
        "meta": {"doc": 7},
    }


def test_deliveries_give_a_webhook_up_after_max_attempts_and_say_why(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs.sqlite3")
    with receiving([500] * 5) as receiver:
        finished_job(store, "j1", receiver.url)
        config = LOOPBACK.model_copy(update={"max_attempts": 2})
        answer = asyncio.run(asyncio.wait_for(settle(store, config, "j1"), 10))
    webhook = answer["webhook"]
    assert (webhook["state"], webhook["attempts"]) == ("failed", 2)
    assert webhook["error"].startswith("webhook_config's retries ran out after 2 failed tries; the last: WebhookFailed")


@pytest.fixture
def echo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    config = tmp_path / "modal.yaml"
    config.write_text(
        "app_settings:\n  app_prefix: echo-webhooks\n"
        "  webhook_config: {allowed_hosts: ['127.0.0.1'], first_retry_seconds: 0.05}\n"
        "model_settings:\n  model_entries: {echo: {}, shout: {prefix: '!'}}\n"
    )
    monkeypatch.setenv("MODALKIT_CONFIG", str(config))
    monkeypatch.delitem(sys.modules, "echo_app", raising=False)
    return import_app(APPS / "echo_app.py")


def test_a_modal_container_posts_each_finished_jobs_webhook(echo: Any) -> None:
    settings = echo.EchoService.modal_config.app_settings
    settings.webhook_config.allow_private = True  # the receiver is on loopback
    with receiving([503]) as receiver:
        batch = [
            AsyncRequest(echo.EchoIn(text="hi"), meta={"id": 1}).with_webhook(receiver.url),
            AsyncRequest(echo.EchoIn(text="bad"), meta={"id": 2}).with_webhook(receiver.url),
            echo.EchoIn(text="a sync item in the same batch"),
        ]
        echo.EchoService(model_name="shout").process_request.local(batch)
        wait_for(lambda: len({d.headers["webhook-id"] for d in receiver.received()}) == 2, timeout=10)
        wait_for(lambda: len(receiver.received()) == 3, timeout=10)  # the 503 was retried
        by_id = {d.headers["webhook-id"]: d for d in receiver.received()}
    succeeded, failed = (by_id[request.webhook_id].verified() for request in batch[:2])
    assert succeeded == {
        "job_id": None,
        "status": "succeeded",
        "attempts": 1,
        "result": succeeded["result"],
        "meta": {"id": 1},
    }
    assert succeeded["result"]["text"] == "!hi"
    assert (
        failed["status"] == "failed"
        and "cannot echo 'bad'" in failed["error"]["detail"]
        and failed["meta"] == {"id": 2}
    )


def test_the_web_function_refuses_a_webhook_it_does_not_allow_with_422(
    echo: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawned: list[AsyncRequest] = []

    async def spawn(request: AsyncRequest) -> Any:  # stands in for `process_request.spawn.aio`
        spawned.append(request)
        return SimpleNamespace(object_id=f"fc-{len(spawned)}")

    def service(model_name: str) -> Any:
        return SimpleNamespace(process_request=SimpleNamespace(spawn=SimpleNamespace(aio=spawn)))

    runtime = ModalRuntime(service, ["echo"])
    app = create_web_endpoints(echo.EchoService, echo.EchoIn, echo.EchoOut, runtime=runtime)
    body = {"message": {"text": "x"}, "meta": {"k": 1}}
    with TestClient(app) as client:
        for url, said in [
            ("http://127.0.0.1:9/hook", "loopback, private"),  # allow_private is off: no SSRF by default
            ("http://evil.example.org/hook", "is not allowed"),
            ("file:///etc/passwd", "http:// or https://"),
        ]:
            refused = client.post("/predict_async", json={**body, "webhook_url": url})
            assert refused.status_code == 422, refused.text
            [problem] = refused.json()["detail"]
            assert problem["loc"] == ["body", "webhook_url"] and problem["type"] == "webhook_not_allowed"
            assert said in problem["msg"]
        assert spawned == []
        echo.EchoService.modal_config.app_settings.webhook_config.allow_private = True
        accepted = client.post("/predict_async", json={**body, "webhook_url": "http://127.0.0.1:9/hook"})
        assert accepted.status_code == 202
        monkeypatch.delenv("MODALKIT_WEBHOOK_SECRET")  # nothing could sign its webhook: refused, not lost later
        unsigned = client.post("/predict_async", json={**body, "webhook_url": "http://127.0.0.1:9/hook"})
        assert unsigned.status_code == 503 and "no webhook secret" in unsigned.json()["detail"]
    [request] = spawned
    assert request.webhook_url == "http://127.0.0.1:9/hook" and request.webhook_id.startswith("msg_")
