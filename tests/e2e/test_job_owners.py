"""Acceptance: several API keys against `modalkit serve`. Each client sees (reads, cancels, lists) only the jobs its
key made, another's job is 404 like an unknown one, listing pages with a cursor, and requests are counted by
client in `/metrics` and `/stats`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from modalkit.client import Client, ClientError
from tests.conftest import APPS, MODALKIT, Server, wait_for

KEYS = {"default": "k-default-51c2", "alice": "k-alice-9f31", "bob": "k-bob-0d7e"}
ENV = {"DEFAULT_KEY": KEYS["default"], "ALICE_KEY": KEYS["alice"], "BOB_KEY": KEYS["bob"]}


def config(folder: Path) -> Path:
    """echo.yaml with a single key (the client "default") and two named clients."""
    auth = {
        "api_key_env": "DEFAULT_KEY",
        "clients": {"alice": {"api_key_env": "ALICE_KEY"}, "bob": {"api_key_env": "BOB_KEY"}},
    }
    path = folder / "clients.yaml"
    echo = (APPS / "echo.yaml").read_text()
    path.write_text(echo.replace("app_settings:\n", f"app_settings:\n  auth_config: {json.dumps(auth)}\n", 1))
    return path


@pytest.fixture(scope="module")
def server(serve: Any, tmp_path_factory: pytest.TempPathFactory) -> Server:
    return serve(APPS / "echo_app.py", config(tmp_path_factory.mktemp("clients")), env=ENV)  # type: ignore[no-any-return]


def as_client(server: Server, name: str) -> httpx.Client:
    return httpx.Client(base_url=server.url, headers={"x-api-key": KEYS[name]}, timeout=10)


def submit(client: httpx.Client, text: str) -> str:
    accepted = client.post("/predict_async", json={"text": text})
    assert accepted.status_code == 202, accepted.text
    return str(accepted.json()["job_id"])


def test_client_b_gets_404_for_client_a_job(server: Server) -> None:
    with as_client(server, "alice") as alice, as_client(server, "bob") as bob:
        job_id = submit(alice, "alice's")
        wait_for(lambda: alice.get(f"/predict_async/{job_id}").status_code == 200, timeout=60)
        unknown = bob.get(f"/predict_async/{'0' * 32}")
        for answer in (bob.get(f"/predict_async/{job_id}"), bob.delete(f"/predict_async/{job_id}")):
            assert answer.status_code == 404
            assert answer.json()["detail"] == unknown.json()["detail"].replace("0" * 32, job_id)  # the same text
        assert alice.get(f"/predict_async/{job_id}").json()["result"]["text"] == "alice's"
        with as_client(server, "default") as default:  # the single key is a client of its own
            assert default.get(f"/predict_async/{job_id}").status_code == 404
            mine = submit(default, "the default key's")
            assert wait_for(lambda: default.get(f"/predict_async/{mine}").status_code == 200, timeout=60)
        assert alice.get(f"/predict_async/{mine}").status_code == 404


def test_listing_shows_only_the_callers_jobs_newest_first_a_page_at_a_time(server: Server) -> None:
    with Client(server.url, api_key=KEYS["bob"]) as bob, Client(server.url, api_key=KEYS["alice"]) as alice:
        alices = {alice.submit({"text": "not bob's"}) for _ in range(2)}
        made = [bob.submit({"text": f"bob {i}"}) for i in range(5)]
        for job_id in made:
            bob.result(job_id)
        pages, cursor = [], None
        while True:
            page = bob.list_jobs(limit=2, cursor=cursor)
            pages.append(page["jobs"])
            cursor = page["next_cursor"]
            if cursor is None:
                break
        listed = [job["job_id"] for jobs in pages for job in jobs]
        assert [len(jobs) for jobs in pages] == [2, 2, 1]
        assert listed == list(reversed(made))  # newest first, each once, none of alice's
        assert not alices & set(listed)
        first = pages[0][0]
        assert set(first) == {"job_id", "status", "attempts", "created_at"} and first["status"] == "succeeded"
        assert [job["job_id"] for job in bob.list_jobs(status="succeeded", limit=100)["jobs"]] == listed
        assert bob.list_jobs(status="queued")["jobs"] == []
        assert alices <= {job["job_id"] for job in alice.list_jobs(limit=100)["jobs"]}


def test_listing_refuses_a_bad_status_limit_or_cursor_naming_it(server: Server) -> None:
    with as_client(server, "bob") as bob:
        for query, field in (
            ({"status": "done"}, "status"),
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "limit"),
            ({"cursor": "not-a-cursor"}, "cursor"),
        ):
            refused = bob.get("/predict_async", params=query)
            assert refused.status_code == 422, (query, refused.text)
            assert refused.json()["detail"][0]["loc"] == ["query", field]
    assert httpx.get(f"{server.url}/predict_async", timeout=10).status_code == 401


def test_requests_are_counted_by_client_in_metrics_and_stats(server: Server) -> None:
    with as_client(server, "alice") as alice:
        assert alice.post("/predict", json={"text": "counted"}).status_code == 200
        metrics = alice.get("/metrics").text
        stats = alice.get("/stats").json()
    assert httpx.post(f"{server.url}/predict", json={"text": "x"}, timeout=10).status_code == 401
    samples = [
        sample
        for family in text_string_to_metric_families(metrics)
        for sample in family.samples
        if sample.name == "modalkit_requests_total"
    ]
    clients = {sample.labels["client"] for sample in samples}
    assert "alice" in clients and clients <= {"default", "alice", "bob", "anonymous"}
    alice_predicts = [s for s in samples if s.labels["client"] == "alice" and s.labels["route"] == "/predict"]
    assert alice_predicts and alice_predicts[0].value >= 1
    assert stats["clients"]["alice"] >= 2 and set(stats["clients"]) <= {"default", "alice", "bob", "anonymous"}


def test_a_client_whose_key_is_not_set_stops_the_server_naming_the_yaml_key(tmp_path: Path) -> None:
    env = {k: v for k, v in ENV.items() if k != "BOB_KEY"}
    run = subprocess.run(
        [MODALKIT, "serve", str(APPS / "echo_app.py"), "--config", str(config(tmp_path)), "--port", "1"],
        env={**os.environ, **env, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert "app_settings.auth_config.clients.bob.api_key_env: the environment variable BOB_KEY is not set" in (
        run.stdout + run.stderr
    )


def test_the_client_library_gets_404_for_another_clients_job(server: Server) -> None:
    with Client(server.url, api_key=KEYS["alice"]) as alice, Client(server.url, api_key=KEYS["bob"]) as bob:
        job_id = alice.submit({"text": "private"})
        with pytest.raises(ClientError) as hidden:
            bob.result(job_id, wait=False)
        assert hidden.value.status_code == 404
        with pytest.raises(ClientError) as refused:
            bob.cancel(job_id)
        assert refused.value.status_code == 404
        assert alice.result(job_id)["result"]["text"] == "private"
