"""Acceptance: `modalkit serve` POSTs each finished job to its webhook, signed so that `standardwebhooks` verifies
it, retried until the receiver takes it, refused (422) for a host the config does not allow, and still delivered
after the server is SIGKILLed between the job's end and the delivery."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import APPS, ROOT, Server, free_port, wait_for
from tests.webhook_receiver import SECRET, receiving

ECHO = APPS / "echo_app.py"
ENV = {"MODALKIT_WEBHOOK_SECRET": SECRET}


def config(tmp_path: Path, **webhook: Any) -> Path:
    """echo.yaml, with webhooks to loopback allowed and retried quickly."""
    settings = {"allowed_hosts": ["127.0.0.1"], "allow_private": True, "first_retry_seconds": 0.1, **webhook}
    path = tmp_path / "webhooks.yaml"
    echo = (APPS / "echo.yaml").read_text()
    path.write_text(echo.replace("app_settings:\n", f"app_settings:\n  webhook_config: {json.dumps(settings)}\n", 1))
    return path


@pytest.fixture(scope="module")
def server(serve, tmp_path_factory: pytest.TempPathFactory) -> Server:
    """The echo app with webhooks to loopback allowed; one for the tests that need nothing else."""
    return serve(ECHO, config(tmp_path_factory.mktemp("webhooks")), env=ENV)  # type: ignore[no-any-return]


def submit(server: Server, webhook_url: str, text: str = "hello", **extra: Any) -> httpx.Response:
    body = {"message": {"text": text}, "webhook_url": webhook_url, **extra}
    return httpx.post(f"{server.url}/predict_async", json=body, timeout=10)


def job(server: Server, job_id: str) -> dict[str, Any]:
    return httpx.get(f"{server.url}/predict_async/{job_id}", timeout=10).json()  # type: ignore[no-any-return]


def test_a_signed_webhook_reaches_a_receiver_that_failed_twice_on_its_third_try(server: Server) -> None:
    with receiving([500, 503]) as receiver:
        accepted = submit(server, receiver.url, meta={"doc": 42})
        assert accepted.status_code == 202, accepted.text
        job_id = accepted.json()["job_id"]
        wait_for(lambda: job(server, job_id).get("webhook", {}).get("state") == "delivered", timeout=20)
        tries = receiver.received()

    assert len(tries) == 3 and len({t.headers["webhook-id"] for t in tries}) == 1
    payload = tries[-1].verified()
    assert payload == {
        "job_id": job_id,
        "status": "succeeded",
        "attempts": 1,
        "result": job(server, job_id)["result"],
        "meta": {"doc": 42},
    }
    assert payload["result"]["text"] == "hello"
    assert job(server, job_id)["webhook"] == {"state": "delivered", "url": receiver.url, "attempts": 3}
    assert server.health()["webhooks"].get("delivered", 0) >= 1


def test_a_webhook_to_a_host_that_is_not_allowed_gets_422(serve, tmp_path: Path) -> None:
    server = serve(ECHO, config(tmp_path, allow_private=False, allowed_hosts=["127.0.0.1", "*.example.com"]), env=ENV)
    for url, said in [
        ("http://attacker.example.org/collect", "host 'attacker.example.org' is not allowed"),
        ("http://127.0.0.1:6379/", "resolves to 127.0.0.1, a loopback, private"),
        ("gopher://127.0.0.1/", "http:// or https://"),
    ]:
        refused = submit(server, url)
        assert refused.status_code == 422, refused.text
        [problem] = refused.json()["detail"]
        assert (problem["loc"], problem["type"]) == (["body", "webhook_url"], "webhook_not_allowed")
        assert said in problem["msg"]
    assert server.health()["jobs"]["pending"] == 0


def test_a_webhook_owed_when_the_server_is_sigkilled_is_delivered_after_restart(serve, tmp_path: Path) -> None:
    settings = config(tmp_path, max_attempts=100, max_retry_seconds=0.5)
    env = {**ENV, "MODALKIT_APP_SETTINGS__QUEUE_CONFIG__JOB_STORE": str(tmp_path / "jobs.sqlite3")}
    server = serve(ECHO, settings, env=env)
    with receiving([503] * 1000) as down:  # up, but failing every try until the restart
        job_id = submit(server, down.url, text="owed").json()["job_id"]
        wait_for(lambda: job(server, job_id).get("webhook", {}).get("attempts", 0) >= 2, timeout=20)
        assert job(server, job_id)["webhook"]["state"] == "pending"
        os.kill(server.process.pid, signal.SIGKILL)
        server.process.wait(timeout=10)
        port = down.port
    with receiving(port=port) as receiver:
        restarted = serve(ECHO, settings, env=env)
        wait_for(lambda: job(restarted, job_id).get("webhook", {}).get("state") == "delivered", timeout=20)
        [delivery] = receiver.received()
    assert delivery.verified()["job_id"] == job_id and delivery.verified()["result"]["text"] == "owed"
    assert delivery.headers["webhook-id"] == down.received()[0].headers["webhook-id"]  # the same message, again


DOCS = ROOT / "docs/async.md"


def webhook_examples() -> dict[str, list[str]]:
    """The code blocks of the Webhooks section of docs/async.md, by language."""
    section = DOCS.read_text().split("\n## Webhooks\n", 1)[1].split("\n## ", 1)[0]
    found: dict[str, list[str]] = {}
    for language, code in re.findall(r"```(\w+)\n(.*?)```", section, re.S):
        found.setdefault(language, []).append(code)
    return found


def test_the_docs_receiver_verifies_what_the_docs_curl_and_python_examples_send(server: Server) -> None:
    examples = webhook_examples()
    [receiver_code, client_code] = examples["python"]
    [curl] = [code for code in examples["bash"] if "curl" in code]
    port = free_port()

    def as_here(code: str) -> str:
        return code.replace("http://127.0.0.1:8000", server.url).replace("9000", str(port))

    receiver = subprocess.Popen(
        [sys.executable, "-c", as_here(receiver_code)],
        env={**os.environ, **ENV},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for(lambda: _listening(port, receiver), timeout=20)
        sent = subprocess.run(["bash", "-c", as_here(curl)], capture_output=True, text=True, timeout=30)
        assert sent.returncode == 0, sent.stderr
        curl_job = json.loads(sent.stdout)["job_id"]
        client = subprocess.run(
            [sys.executable, "-c", as_here(client_code)], capture_output=True, text=True, timeout=60
        )
        assert client.returncode == 0, client.stderr
        client_job = client.stdout.split()[0]
        for job_id in (curl_job, client_job):
            wait_for(
                lambda job_id=job_id: job(server, job_id).get("webhook", {}).get("state") == "delivered", timeout=20
            )
    finally:
        receiver.terminate()
        output = receiver.communicate(timeout=10)[0]
    assert f"verified {curl_job} succeeded" in output and f"verified {client_job} succeeded" in output, output


def _listening(port: int, process: subprocess.Popen[str]) -> bool:
    if process.poll() is not None:
        pytest.fail(f"the docs' receiver exited: {process.communicate()[0]}")
    try:
        httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
    except httpx.TransportError:
        return False
    return True
