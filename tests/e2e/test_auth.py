"""Acceptance: with an API key configured, every route but the public ones answers 401 without the right key."""

from __future__ import annotations

import httpx
import pytest

from modalkit.config.schema import AuthConfig
from modalkit.exceptions import ConfigError
from modalkit.web.auth import resolve_api_key
from tests.conftest import APPS, Server, wait_for

KEY = "k-3f9a0c1e5b7d"
PUBLIC = {"/health", "/docs", "/openapi.json"}
PROBES = {"/livez", "/readyz"}  # open whatever public_routes says


@pytest.fixture(scope="module")
def server(serve) -> Server:
    env = {"MODALKIT_APP_SETTINGS__AUTH_CONFIG__API_KEY_ENV": "ECHO_API_KEY", "ECHO_API_KEY": KEY}
    return serve(APPS / "echo_app.py", APPS / "echo.yaml", env=env)


def call(server: Server, method: str, path: str, key: str | None) -> httpx.Response:
    headers = {"x-api-key": key} if key is not None else {}
    body = {"/predict_batch": [{"text": "a"}]}.get(path, {"text": "a"})
    path = path.replace("{job_id}", "0" * 32)
    return httpx.request(
        method, server.url + path, json=body if method == "POST" else None, headers=headers, timeout=30
    )


def routes(server: Server) -> list[tuple[str, str]]:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    return [(method.upper(), path) for path, item in spec["paths"].items() for method in item]


def test_every_private_route_needs_the_key(server: Server) -> None:
    private = [(m, p) for m, p in routes(server) if p not in PUBLIC | PROBES]
    assert {p for _, p in private} >= {
        "/predict",
        "/predict_sync",
        "/predict_batch",
        "/predict_async",
        "/metrics",
        "/stats",
    }
    for method, path in private:
        missing = call(server, method, path, None)
        assert missing.status_code == 401, (method, path)
        body = missing.json()  # OpenAI's error shape on /v1/*, FastAPI's elsewhere
        message = body["error"]["message"] if path.startswith("/v1/") else body["detail"]
        assert "x-api-key" in message and "Bearer" in message, (path, body)
        assert call(server, method, path, "wrong-key").status_code == 401, (method, path)
        assert call(server, method, path, KEY).status_code in (200, 202, 404), (method, path)  # 404: the unknown job


def test_public_routes_need_no_key(server: Server) -> None:
    for path in PUBLIC:
        assert httpx.get(server.url + path, timeout=10).status_code == 200, path


def test_the_probes_need_no_key_and_show_no_detail_without_it(server: Server) -> None:
    assert httpx.get(server.url + "/livez", timeout=10).json() == {"status": "alive"}
    readyz = wait_for(lambda: httpx.get(server.url + "/readyz", timeout=10), timeout=60)
    assert readyz.status_code in (200, 503) and set(readyz.json()) == {"status"}


def test_a_key_that_is_configured_but_missing_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ABSENT_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"auth_config\.api_key_env: the environment variable ABSENT_KEY is not set"):
        resolve_api_key(AuthConfig(api_key_env="ABSENT_KEY"))
    assert resolve_api_key(AuthConfig()) is None
    assert resolve_api_key(AuthConfig(api_key="literal")) == "literal"


def test_the_key_is_never_logged_and_errors_carry_no_stack_trace(server: Server) -> None:
    assert call(server, "POST", "/predict", "wrong-key").status_code == 401
    assert call(server, "POST", "/predict", KEY).status_code == 200
    log = server.log.read_text()
    assert KEY not in log and "wrong-key" not in log
    failed = call(server, "POST", "/predict_batch", KEY).json()
    assert "Traceback" not in str(failed)


def test_serve_binds_loopback_unless_told() -> None:
    from modalkit.cli import serve

    host = next(p for p in serve.params if p.name == "host")
    assert host.default == "127.0.0.1"


def test_the_key_is_taken_as_a_bearer_token_and_a_wrong_one_is_refused(server: Server) -> None:
    def predict(authorization: str) -> httpx.Response:
        headers = {"authorization": authorization, "x-request-id": "auth-check-1"}
        return httpx.post(f"{server.url}/predict", json={"text": "a"}, headers=headers, timeout=30)

    assert predict(f"Bearer {KEY}").status_code == 200
    assert predict(f"bearer {KEY}").status_code == 200  # the scheme is case-insensitive
    for wrong, detail in (("Bearer wrong-key", "invalid API key"), (f"Bearer {KEY}x", "invalid API key")):
        refused = predict(wrong)
        assert refused.status_code == 401 and refused.json() == {"detail": detail, "request_id": "auth-check-1"}
        assert refused.headers["x-request-id"] == "auth-check-1" and refused.headers["traceparent"].startswith("00-")
    basic = predict(f"Basic {KEY}")
    assert basic.status_code == 401 and basic.json()["detail"].startswith("missing API key")


def test_openapi_declares_the_key_in_its_header_and_as_a_bearer_token(server: Server) -> None:
    spec = httpx.get(f"{server.url}/openapi.json", timeout=10).json()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["x-api-key"] == {"type": "apiKey", "in": "header", "name": "x-api-key"}
    assert (schemes["bearer"]["type"], schemes["bearer"]["scheme"]) == ("http", "bearer") and len(schemes) == 2
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            if path in PUBLIC | {"/livez", "/readyz"}:  # the probes are open whatever public_routes says
                assert "security" not in operation, (method, path)
                continue
            assert operation["security"] == [{"x-api-key": []}, {"bearer": []}], (method, path)
            body = operation["responses"]["401"]["content"]["application/json"]["schema"]["$ref"]
            assert body.endswith("OpenAIErrorBody" if path.startswith("/v1/") else "/ErrorBody"), (method, path)
    docs = httpx.get(f"{server.url}/docs", timeout=10)
    assert docs.status_code == 200 and "/openapi.json" in docs.text  # Swagger UI, whose Authorize uses the schemes
