"""Probes (`/livez`, `/readyz` with the model's `health()` hook) and logs from inside local containers, against
`modalkit serve` of the echo app."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import APPS, Server, wait_for

ECHO, ECHO_CONFIG = APPS / "echo_app.py", APPS / "echo.yaml"
KEY = "probe-test-key"


@pytest.fixture(scope="module")
def sick_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("health") / "sick"


@pytest.fixture(scope="module")
def server(serve: Any, sick_file: Path) -> Server:
    env = {
        "ECHO_SICK_FILE": str(sick_file),
        "MODALKIT_APP_SETTINGS__LOCAL_CONFIG__HEALTH_CHECK_INTERVAL_SECONDS": "0.2",
        "MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__MIN_CONTAINERS": "1",
        "MODALKIT_APP_SETTINGS__AUTH_CONFIG__API_KEY": KEY,
    }
    return serve(ECHO, ECHO_CONFIG, env=env)


def readyz(server: Server, key: str | None = None) -> httpx.Response:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{server.url}/readyz", headers=headers, timeout=10)


def log_lines(server: Server) -> list[dict[str, Any]]:
    lines = []
    for line in server.log.read_text().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def test_livez_answers_without_the_key(server: Server) -> None:
    response = httpx.get(f"{server.url}/livez", timeout=10)
    assert (response.status_code, response.json()) == (200, {"status": "alive"})


def test_readyz_follows_the_models_health_hook(server: Server, sick_file: Path) -> None:
    wait_for(lambda: readyz(server).status_code == 200, timeout=60)
    sick_file.write_text("the GPU has no memory left")
    try:
        wait_for(lambda: readyz(server).status_code == 503, timeout=30)
        assert readyz(server).json() == {"status": "not ready"}  # no reason, no detail without the key
        reasons = readyz(server, KEY).json()["reasons"]
        assert any("the GPU has no memory left" in reason for reason in reasons)
    finally:
        sick_file.unlink()
    wait_for(lambda: readyz(server).status_code == 200, timeout=30)
    assert readyz(server).json() == {"status": "ready"}


def test_health_shows_no_pids_or_errors_without_the_key(server: Server) -> None:
    anonymous = httpx.get(f"{server.url}/health", timeout=10).json()
    assert anonymous == {"status": "ready"}
    detailed = httpx.get(f"{server.url}/health", headers={"x-api-key": KEY}, timeout=10).json()
    assert detailed["models"]["echo"]["pids"]


def test_a_models_log_line_reaches_the_server_output_as_json_with_the_batch_trace(server: Server) -> None:
    response = httpx.post(
        f"{server.url}/predict_batch",
        json=[{"text": "log:first line"}, {"text": "log:second line"}],
        headers={"x-api-key": KEY},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    found = wait_for(
        lambda: [line for line in log_lines(server) if line.get("message") == "echoing first line"], timeout=10
    )
    line = found[0]
    assert (line["level"], line["logger"], line["model"]) == ("info", "echo", "echo")
    assert line["container_id"] in {str(pid) for pid in server_pids(server)}
    assert line["trace_id"] and len(line["trace_id"]) == 32
    second = next(entry for entry in log_lines(server) if entry.get("message") == "echoing second line")
    assert second["trace_id"] == line["trace_id"]  # one batch, one trace


def test_modalkits_own_info_lines_from_the_container_appear(server: Server) -> None:
    loading = [line for line in log_lines(server) if line.get("logger") == "modalkit.service"]
    assert any(line["message"].startswith("loading model 'echo'") for line in loading)
    assert all("container_id" in line for line in loading)


def server_pids(server: Server) -> list[int]:
    body = httpx.get(f"{server.url}/health", headers={"x-api-key": KEY}, timeout=10).json()
    return [pid for model in body["models"].values() for pid in model["pids"]]
