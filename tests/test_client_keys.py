"""Several API keys (`auth_config.clients`): validated naming the YAML key, resolved from the environment (never
the YAML), each client's Modal secret attached to the web function, and a key stored only as its fingerprint."""

from __future__ import annotations

import asyncio
import hmac
from pathlib import Path

import pytest
from starlette.types import Message, Receive, Scope, Send

from modalkit.config import ModalConfig
from modalkit.config.schema import AuthConfig
from modalkit.exceptions import ConfigError
from modalkit.web.auth import ApiKeyAuth, key_fingerprint, resolve_clients
from tests.test_config_to_modal import BASE, build

CLIENTS = "  auth_config: {clients: {alice: {api_key_env: ALICE_KEY, api_key_secret: alice-key}, bob: {api_key_env: BOB_KEY, api_key_secret: bob-key}}}\n"


def test_each_clients_secret_is_attached_to_the_web_function_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    built = build(tmp_path, monkeypatch, CLIENTS)
    for secret in ("alice-key", "bob-key"):
        assert any(secret in s for s in built.web.secrets), built.web.secrets
        assert not any(secret in s for s in built.info.secrets)  # the service class needs no client's key


@pytest.mark.parametrize(
    ("section", "path", "said"),
    [
        (
            "  auth_config: {clients: {alice: {api_key: k-literal}}}\n",
            "app_settings.auth_config.clients.alice",
            "never written in the YAML",
        ),
        ("  auth_config: {clients: {alice: {}}}\n", "app_settings.auth_config.clients.alice.api_key_env", "required"),
        (
            "  auth_config: {clients: {alice: {api_key_env: 'no-dash'}}}\n",
            "app_settings.auth_config.clients.alice.api_key_env",
            "",
        ),
        ("  auth_config: {clients: {'a b': {api_key_env: K}}}\n", "app_settings.auth_config", "not a client name"),
        ("  auth_config: {clients: {anonymous: {api_key_env: K}}}\n", "app_settings.auth_config", "anonymous"),
        (
            "  auth_config: {api_key_env: K, clients: {default: {api_key_env: J}}}\n",
            "app_settings.auth_config",
            "clients.default",
        ),
    ],
)
def test_a_bad_client_names_its_yaml_key(section: str, path: str, said: str, tmp_path: Path) -> None:
    config = tmp_path / "modalkit.yaml"
    config.write_text(BASE.format(body=section))
    with pytest.raises(ConfigError) as info:
        ModalConfig(config)
    assert f"{config}: {path}" in str(info.value) and said in str(info.value)


def test_clients_resolve_from_the_environment_with_the_single_key_as_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ALICE_KEY", "k-alice")
    monkeypatch.setenv("BOB_KEY", "k-bob")
    config = AuthConfig.model_validate(
        {"api_key": "k-default", "clients": {"alice": {"api_key_env": "ALICE_KEY"}, "bob": {"api_key_env": "BOB_KEY"}}}
    )
    assert resolve_clients(config) == {"default": "k-default", "alice": "k-alice", "bob": "k-bob"}
    assert resolve_clients(AuthConfig()) == {}  # auth off
    assert resolve_clients(AuthConfig(api_key="only")) == {"default": "only"}  # the single key, as today


def test_a_client_without_its_key_or_with_anothers_fails_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ABSENT_KEY", raising=False)
    missing = AuthConfig.model_validate({"clients": {"bob": {"api_key_env": "ABSENT_KEY", "api_key_secret": "bob"}}})
    with pytest.raises(ConfigError, match=r"clients\.bob\.api_key_env: the environment variable ABSENT_KEY is not set"):
        resolve_clients(missing)
    monkeypatch.setenv("SHARED_KEY", "k-same")
    shared = AuthConfig.model_validate({"api_key": "k-same", "clients": {"bob": {"api_key_env": "SHARED_KEY"}}})
    with pytest.raises(ConfigError, match=r"clients\.bob\.api_key_env: client 'bob' has the same key as 'default'"):
        resolve_clients(shared)


def test_a_key_is_stored_as_a_fingerprint_that_is_stable_and_not_the_key() -> None:
    fingerprint = key_fingerprint("k-alice")
    assert fingerprint == key_fingerprint(b"k-alice") and len(fingerprint) == 64
    assert "k-alice" not in fingerprint and fingerprint != key_fingerprint("k-bob")


def test_a_key_is_compared_in_constant_time_with_every_clients_and_only_its_fingerprint_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compared: list[tuple[str, str]] = []
    constant_time = hmac.compare_digest

    def compare_digest(a: str, b: str) -> bool:
        compared.append((a, b))
        return constant_time(a, b)

    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    keys = {"default": "k-default", "alice": "k-alice", "bob": "k-bob"}
    auth = ApiKeyAuth(app, keys, "x-api-key", frozenset({"/health"}))
    assert not any(key in repr(vars(auth)) for key in keys.values())  # fingerprints only
    monkeypatch.setattr("modalkit.web.auth.hmac.compare_digest", compare_digest)
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async def receive() -> Message:
        return {"type": "http.request", "body": b""}

    def call(key: bytes) -> None:
        scope: Scope = {"type": "http", "path": "/predict", "method": "POST", "headers": [(b"x-api-key", key)]}
        asyncio.run(auth(scope, receive, send))

    call(b"k-default")  # the first client's key: the others are compared all the same
    assert len(compared) == 3 and seen[-1]["modalkit.client"] == "default"
    assert seen[-1]["modalkit.owner"] == key_fingerprint("k-default")
    compared.clear()
    call(b"k-wrong")
    assert len(compared) == 3 and len(seen) == 1 and sent[0]["status"] == 401
