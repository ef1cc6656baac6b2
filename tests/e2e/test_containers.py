"""Acceptance: a CUDA error or a killed worker recycles the container; nothing hangs; one bad item fails alone."""

from __future__ import annotations

import os
import signal
import threading

import httpx
import pytest

from tests.conftest import APPS, Server, wait_for


@pytest.fixture(scope="module")
def echo(serve, tmp_path_factory: pytest.TempPathFactory) -> tuple[Server, str]:
    load_log = str(tmp_path_factory.mktemp("echo") / "loads.txt")
    server = serve(APPS / "echo_app.py", APPS / "echo.yaml", env={"ECHO_LOAD_LOG": load_log})
    return server, load_log


def loads(load_log: str, model: str = "echo") -> int:
    with open(load_log) as f:
        return sum(1 for line in f if line.split()[0] == model)


def predict(server: Server, text: str, **params: str) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json={"text": text}, params=params, timeout=30)


def test_cuda_error_gets_503_and_recycles_the_container(echo: tuple[Server, str]) -> None:
    server, load_log = echo
    first_pid = predict(server, "hello").json()["pid"]
    assert loads(load_log) == 1

    response = predict(server, "cuda")
    assert response.status_code == 503
    assert "CUDA error" in response.json()["detail"]

    wait_for(lambda: server.model_health("echo")["ready_containers"] == 1 and loads(load_log) == 2)
    after = predict(server, "hello again")
    assert after.status_code == 200
    assert after.json()["pid"] != first_pid
    health = server.model_health("echo")
    assert health["restarts"] == {"cuda": 1}
    assert health["container_starts"] == 2


def test_sigkilled_worker_fails_its_batch_and_is_replaced(echo: tuple[Server, str]) -> None:
    server, load_log = echo
    before = loads(load_log)
    pid = predict(server, "who").json()["pid"]
    slow: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: slow.append(predict(server, "sleep:3")))
    thread.start()
    wait_for(lambda: os.path.exists(load_log + ".busy"))
    os.kill(pid, signal.SIGKILL)
    thread.join(timeout=30)
    assert not thread.is_alive(), "the in-flight request hung"
    assert slow[0].status_code == 503
    assert "signal 9" in slow[0].json()["detail"]

    wait_for(lambda: loads(load_log) == before + 1 and server.model_health("echo")["ready_containers"] == 1)
    assert predict(server, "still here").status_code == 200
    assert server.model_health("echo")["restarts"].get("crash") == 1


def test_one_bad_item_in_predict_batch_fails_alone(echo: tuple[Server, str]) -> None:
    server, _ = echo
    response = httpx.post(
        f"{server.url}/predict_batch",
        json=[{"text": "a"}, {"text": "bad"}, {"txt": "typo"}, {"text": "d"}],
        timeout=30,
    )
    assert response.status_code == 200
    a, bad, typo, d = response.json()
    assert a["text"] == "a" and d["text"] == "d"
    assert bad["error"]["status_code"] == 500
    assert "cannot echo 'bad'" in bad["error"]["detail"]
    assert typo["error"]["status_code"] == 422
    assert typo["error"]["detail"][0]["loc"] == ["body", 2, "text"]


def test_model_name_selects_an_entry_and_unknown_is_404(echo: tuple[Server, str]) -> None:
    server, _ = echo
    assert predict(server, "hi", model_name="shout").json()["text"] == "!hi"
    assert predict(server, "hi").json()["model"] == "echo"
    unknown = predict(server, "hi", model_name="nope")
    assert unknown.status_code == 404
    assert "nope" in unknown.json()["detail"]


def test_invalid_input_is_422_naming_the_field(echo: tuple[Server, str]) -> None:
    server, _ = echo
    response = httpx.post(f"{server.url}/predict", json={"txt": "x"}, timeout=10)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "text"]


def test_openapi_and_docs_are_served(echo: tuple[Server, str]) -> None:
    server, _ = echo
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    assert {"/predict", "/predict_sync", "/predict_batch", "/health"} <= set(spec["paths"])
    assert "EchoIn" in spec["components"]["schemas"]
    assert httpx.get(f"{server.url}/docs", timeout=10).status_code == 200
