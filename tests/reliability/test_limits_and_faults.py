"""Limits and faults: oversized bodies, timeouts, hanging models, models that cannot load."""

from __future__ import annotations

import socket

import httpx

from tests.conftest import APPS, wait_for

ECHO, ECHO_CONFIG = APPS / "echo_app.py", APPS / "echo.yaml"


def test_oversized_body_is_413_before_it_is_read(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={"MODALKIT_APP_SETTINGS__LIMITS__MAX_BODY_BYTES": "1000"})
    too_big = httpx.post(f"{server.url}/predict", json={"text": "x" * 2000}, timeout=10)
    assert too_big.status_code == 413
    # Announce 50 MB and send only the headers: the answer comes without the body being read.
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 50000000\r\n\r\n"
        )
        assert conn.recv(200).startswith(b"HTTP/1.1 413")
    assert httpx.post(f"{server.url}/predict", json={"text": "small"}, timeout=10).status_code == 200


def test_hostile_json_is_rejected_cleanly(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={"MODALKIT_APP_SETTINGS__LIMITS__MAX_BATCH_ITEMS": "50"})
    nested = "[" * 5000 + "]" * 5000
    for path in ("/predict", "/predict_batch", "/predict_async"):
        response = httpx.post(
            f"{server.url}{path}", content=nested, headers={"content-type": "application/json"}, timeout=10
        )
        assert response.status_code == 422, path
        assert isinstance(response.json()["detail"], list)
    many = httpx.post(f"{server.url}/predict_batch", json=[{"text": "a"}] * 51, timeout=10)
    assert many.status_code == 413 and "max_batch_items" in many.json()["detail"]
    broken = httpx.post(
        f"{server.url}/predict", content=b'{"text": ', headers={"content-type": "application/json"}, timeout=10
    )
    assert broken.status_code == 422 and broken.json()["detail"][0]["loc"] == ["body"]


def test_request_timeout_is_504_and_the_late_result_is_dropped(serve) -> None:
    env = {"MODALKIT_APP_SETTINGS__LIMITS__REQUEST_TIMEOUT_SECONDS": "0.5",
           "MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__MIN_CONTAINERS": "1"}  # fmt: skip
    server = serve(ECHO, ECHO_CONFIG, env=env)
    wait_for(lambda: server.model_health("echo")["ready_containers"] == 1)
    slow = httpx.post(f"{server.url}/predict", json={"text": "sleep:1.5"}, timeout=10)
    assert slow.status_code == 504
    assert "request_timeout_seconds" in slow.json()["detail"]
    # The container finishes the slow batch (its result is dropped), then answers the next request.
    wait_for(lambda: sum(server.model_health("echo")["batch_sizes"].values()) == 1)
    assert httpx.post(f"{server.url}/predict", json={"text": "after"}, timeout=10).json()["text"] == "after"
    assert server.model_health("echo")["restarts"] == {}  # a slow answer is not a broken container


def test_a_hanging_model_is_killed_and_replaced(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={"MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__TIMEOUT": "1"})
    hung = httpx.post(f"{server.url}/predict", json={"text": "sleep:30"}, timeout=20)
    assert hung.status_code == 504
    assert "deployment_config.timeout" in hung.json()["detail"]
    wait_for(lambda: server.model_health("echo")["restarts"] == {"timeout": 1})
    assert httpx.post(f"{server.url}/predict", json={"text": "fine"}, timeout=20).status_code == 200


def test_a_model_that_cannot_load_is_503_with_the_error_and_backs_off(serve) -> None:
    server = serve(ECHO, ECHO_CONFIG, env={"ECHO_FAIL_LOAD": "1", "MODALKIT_APP_SETTINGS__DEPLOYMENT_CONFIG__MIN_CONTAINERS": "1"},
                   wait=False)  # fmt: skip

    def failing() -> bool:
        try:
            answer = httpx.get(f"{server.url}/health", timeout=5)
        except httpx.HTTPError:
            return False
        return answer.status_code == 503 and answer.json()["models"]["echo"]["load_error"] is not None

    wait_for(failing, timeout=60)
    health = httpx.get(f"{server.url}/health", timeout=5).json()
    assert "weights are missing" in health["models"]["echo"]["load_error"]
    answer = httpx.post(f"{server.url}/predict", json={"text": "x"}, timeout=10)
    assert answer.status_code == 503 and "weights are missing" in answer.json()["detail"]
    # Backoff, not a crash loop: 0.5 s, 1 s, 2 s, 4 s... so only a few attempts within ~4 s.
    first = health["models"]["echo"]["container_starts"]
    wait_for(lambda: httpx.get(f"{server.url}/health", timeout=5).json()["models"]["echo"]["container_starts"] >= first + 2,
             timeout=30)  # fmt: skip
    assert httpx.get(f"{server.url}/health", timeout=5).json()["models"]["echo"]["container_starts"] <= 6
