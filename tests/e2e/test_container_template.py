"""`modalkit serve` forks its containers from the container template: each is the server's child, in a session of
its own, with torch already imported; a killed one is replaced by another fork."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import APPS, Server, wait_for


@pytest.fixture(scope="module")
def probe(serve: Any) -> Server:
    return serve(APPS / "fork_probe_app.py", APPS / "fork_probe.yaml")  # type: ignore[no-any-return]


def facts(server: Server) -> dict[str, Any]:
    response = httpx.post(f"{server.url}/predict", json={"text": "facts"}, timeout=60)
    assert response.status_code == 200, response.text
    return json.loads(response.json()["facts"])  # type: ignore[no-any-return]


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_text().replace("\0", " ")


def test_containers_fork_from_the_template(probe: Server) -> None:
    seen = facts(probe)
    assert seen["argv0"].endswith("template_process.py")  # a fork of the template, not a new interpreter
    assert seen["ppid"] == probe.process.pid
    assert seen["sid"] == seen["pid"]
    assert seen["torch_before_load"] is True
    assert seen["cuda_initialised_at_load"] is False
    assert "template_process" not in command_line(probe.process.pid)


def test_a_killed_container_is_replaced_by_a_new_fork(probe: Server) -> None:
    first = facts(probe)["pid"]
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: probe.model_health("probe")["restarts"].get("crash") == 1)
    after = facts(probe)
    assert after["pid"] != first
    assert after["argv0"].endswith("template_process.py")
