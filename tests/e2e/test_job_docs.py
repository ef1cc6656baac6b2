"""docs/async.md's cancel and listing examples, and docs/client.md's job examples, run as written (curl and the
Python clients) against `modalkit serve` with the YAML of async.md's "Who sees a job" section (and webhooks to
loopback allowed), while a slow job holds the one container, so the examples' jobs are still pending when they
are cancelled."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
from typing import Any

import httpx
import pytest
import yaml

from modalkit.config.schema import AuthConfig
from tests.conftest import APPS, ROOT, Server, wait_for
from tests.webhook_receiver import SECRET, receiving

DOCS = ROOT / "docs/async.md"
CLIENT_DOCS = ROOT / "docs/client.md"
ALICE_KEY = "k-docs-alice-7d1e"
HOOK = "http://127.0.0.1:9000/hooks/jobs"  # the receiver the examples name; a test's own takes its place
WEBHOOKS = {"allowed_hosts": ["127.0.0.1"], "allow_private": True, "first_retry_seconds": 0.1}


def section(title: str) -> str:
    return DOCS.read_text().split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def client_section(title: str) -> str:
    return re.split(r"\n##+ ", CLIENT_DOCS.read_text().split(f"\n### {title}\n", 1)[1], maxsplit=1)[0]


def blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.S)


@pytest.fixture(scope="module")
def server(serve: Any, tmp_path_factory: pytest.TempPathFactory) -> Server:
    folder = tmp_path_factory.mktemp("job-docs")
    [clients_yaml] = blocks(section("Who sees a job: several API keys"), "yaml")
    auth = yaml.safe_load(clients_yaml)["app_settings"]["auth_config"]
    config = folder / "docs.yaml"
    recorder = (APPS / "recorder.yaml").read_text()
    settings = f"app_settings:\n  auth_config: {json.dumps(auth)}\n  webhook_config: {json.dumps(WEBHOOKS)}\n"
    config.write_text(recorder.replace("app_settings:\n", settings, 1))
    env = {"ALICE_KEY": ALICE_KEY, "BOB_KEY": "k-docs-bob-2a90", "RECORDER_FILE": str(folder / "seen.txt")}
    env["MODALKIT_WEBHOOK_SECRET"] = SECRET
    return serve(APPS / "recorder_app.py", config, env=env)  # type: ignore[no-any-return]


def hold_the_container(server: Server) -> None:
    """A slow job in the one container: the examples' jobs wait behind it."""
    headers = {"x-api-key": ALICE_KEY}
    held = httpx.post(f"{server.url}/predict_async", json={"text": "sleep:3"}, headers=headers, timeout=10)
    assert held.status_code == 202
    status = f"{server.url}/predict_async/{held.json()['job_id']}"
    wait_for(lambda: httpx.get(status, headers=headers, timeout=10).json()["status"] == "running", timeout=30)


def run(code: str, server: Server, shell: list[str]) -> str:
    here = code.replace("http://127.0.0.1:8000", server.url)
    done = subprocess.run(
        [*shell, here],
        env={**os.environ, "ALICE_KEY": ALICE_KEY, "API_KEY": ALICE_KEY},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def json_values(text: str) -> list[Any]:
    decoder, found, at = json.JSONDecoder(), [], 0
    while at < len(text.strip()):
        value, at = decoder.raw_decode(text, at)
        found.append(value)
        while at < len(text) and text[at].isspace():
            at += 1
    return found


def test_the_docs_yaml_is_a_valid_auth_config() -> None:
    [clients_yaml] = blocks(section("Who sees a job: several API keys"), "yaml")
    config = AuthConfig.model_validate(yaml.safe_load(clients_yaml)["app_settings"]["auth_config"])
    assert set(config.clients) == {"alice", "bob"}


def test_the_docs_curl_example_cancels_a_job_and_lists_it(server: Server) -> None:
    [curl] = [code for code in blocks(section("Listing jobs"), "bash") if "curl" in code]
    hold_the_container(server)
    job, page = json_values(run(curl, server, ["bash", "-c"]))  # curl prints the two answers back to back
    assert job["status"] == "cancelled"
    assert page["jobs"][0]["job_id"] == job["job_id"] and page["jobs"][0]["status"] == "cancelled"
    assert {j["status"] for j in page["jobs"]} == {"cancelled"}


def test_the_docs_python_example_cancels_a_job_and_reads_every_page(server: Server) -> None:
    [client_code] = blocks(section("Listing jobs"), "python")
    hold_the_container(server)
    first, *listed = run(client_code, server, [sys.executable, "-c"]).splitlines()
    job_id, status = first.split()
    assert status == "cancelled"
    assert f"{job_id} cancelled" in listed and all(line.endswith(" cancelled") for line in listed)
    headers = {"x-api-key": ALICE_KEY}
    every = httpx.get(f"{server.url}/predict_async", params={"status": "cancelled"}, headers=headers, timeout=10)
    assert [line.split()[0] for line in listed] == [j["job_id"] for j in every.json()["jobs"]]


def test_the_client_docs_example_cancels_lists_and_names_a_webhook(server: Server) -> None:
    [sync_code, _] = blocks(client_section("Async jobs: cancel, list, webhooks"), "python")
    hold_the_container(server)
    with receiving() as receiver:
        printed = run(sync_code.replace(HOOK, receiver.url), server, [sys.executable, "-c"]).splitlines()
        cancelled, result, finished, refused, listed = printed
        job_id, status = cancelled.split()
        assert status == "cancelled" and result == "cancelled" and refused == "409"
        done, done_status = finished.split()
        assert done_status == "succeeded"
        assert ast.literal_eval(listed)[0] == job_id and done not in ast.literal_eval(listed)
        wait_for(receiver.received, timeout=30)
        [delivery] = receiver.received()  # the finished job's; the cancelled one sends none
        assert delivery.verified() == {
            "job_id": done,
            "status": "succeeded",
            "attempts": 1,
            "result": {"text": "now"},
            "meta": {"doc": 8},
        }


def test_the_client_docs_async_example_cancels_and_reads_every_page(server: Server) -> None:
    [_, async_code] = blocks(client_section("Async jobs: cancel, list, webhooks"), "python")
    hold_the_container(server)
    with receiving() as receiver:
        first, *listed = run(async_code.replace(HOOK, receiver.url), server, [sys.executable, "-c"]).splitlines()
    job_id, status = first.split()
    assert status == "cancelled" and listed[0] == f"{job_id} cancelled"
    headers = {"x-api-key": ALICE_KEY}
    every = httpx.get(f"{server.url}/predict_async", params={"limit": 100}, headers=headers, timeout=10).json()
    assert every["next_cursor"] is None  # fewer than 100: one page holds them all
    assert [line.split()[0] for line in listed] == [job["job_id"] for job in every["jobs"]]
