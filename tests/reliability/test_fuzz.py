"""Schemathesis against the running server's own OpenAPI document: no 5xx, and every error in FastAPI's
`{"detail": ...}` shape (OpenAI's `{"error": ...}` on /v1/*), with and without the API key."""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.conftest import APPS

KEY = "fuzz-key-7f3c"
EXAMPLES = 30
PUBLIC = ("/health", "/docs", "/openapi.json", "/livez", "/readyz")  # the probes are always open


def check(case: Any) -> int:
    for headers in ({"x-api-key": KEY}, {}):
        response = case.call(headers=headers, timeout=30)
        case.validate_response(response, checks=(not_a_server_error,))
        if response.status_code >= 400:
            body = response.json()
            if case.path.startswith("/v1/"):  # OpenAI's shape, so the `openai` package raises its own errors
                assert isinstance(body, dict) and set(body["error"]) == {"message", "type", "code", "request_id"}, (
                    case.path,
                    body,
                )
            else:
                assert isinstance(body, dict) and "detail" in body and body["request_id"], (case.path, body)
        if not headers and case.path not in PUBLIC:
            assert response.status_code == 401, (case.method, case.path, response.status_code)
    return 2


def test_every_route_fuzzed_without_server_errors(serve) -> None:
    env = {"MODALKIT_APP_SETTINGS__AUTH_CONFIG__API_KEY_ENV": "FUZZ_KEY", "FUZZ_KEY": KEY}
    server = serve(APPS / "echo_app.py", APPS / "echo.yaml", env=env)
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    calls = 0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/predict_batch", "/predict_async", "/predict_async/{job_id}"}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def fuzz(case: Any) -> None:
            nonlocal calls
            calls += check(case)

        fuzz()
    assert calls >= len(operations) * 2
    print(f"fuzzed {len(operations)} operations with {calls} requests")
