"""API-key auth for the web app: every route but the public ones needs a client's key in a header.

Each configured client has its own key; a request is marked with the client's name (for metrics) and its key's
fingerprint (which owns the jobs it makes, see `job_owner`). The single-key forms are the client "default".
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping

from starlette.types import ASGIApp, Receive, Scope, Send

from modalkit import aws
from modalkit.config.schema import DEFAULT_CLIENT, AuthConfig
from modalkit.exceptions import ConfigError
from modalkit.web.body import send_error


def resolve_api_key(config: AuthConfig) -> str | None:
    """The key to expect, or None when auth is off; a configured but missing key is an error (fail closed).

    An `ssm_key` is read from AWS SSM Parameter Store once, here: when the web app is built.
    """
    if config.api_key is not None:
        return config.api_key.get_secret_value()
    if config.ssm_key is not None:
        return aws.ssm_parameter(config.ssm_key, "app_settings.auth_config.ssm_key")
    if config.api_key_env is None:
        return None
    key = os.environ.get(config.api_key_env)
    if not key:
        hint = f" (is the Modal secret {config.api_key_secret!r} attached?)" if config.api_key_secret else ""
        raise ConfigError(
            [f"app_settings.auth_config.api_key_env: the environment variable {config.api_key_env} is not set{hint}"]
        )
    return key


def resolve_clients(config: AuthConfig) -> dict[str, str]:
    """Every client's key by client name: the single-key form as "default", then `clients`; empty when auth is
    off. A configured but missing key is an error (fail closed), and so are two clients with one key."""
    keys: dict[str, str] = {}
    single = resolve_api_key(config)
    if single is not None:
        keys[DEFAULT_CLIENT] = single
    for name, client in config.clients.items():
        key = os.environ.get(client.api_key_env)
        where = f"app_settings.auth_config.clients.{name}.api_key_env"
        if not key:
            hint = f" (is the Modal secret {client.api_key_secret!r} attached?)" if client.api_key_secret else ""
            raise ConfigError([f"{where}: the environment variable {client.api_key_env} is not set{hint}"])
        same = next((other for other, known in keys.items() if known == key), None)
        if same is not None:
            raise ConfigError([f"{where}: client {name!r} has the same key as {same!r}; each client needs its own"])
        keys[name] = key
    return keys


def key_fingerprint(key: str | bytes) -> str:
    """What a job stores of the key that made it: SHA-256 under a fixed label, the same in every process and web
    container (a job made through one is read through another), and never the key itself."""
    raw = key.encode() if isinstance(key, str) else key
    return hashlib.sha256(b"modalkit job owner\x00" + raw).hexdigest()


_AUTHENTICATED = "modalkit.authenticated"
_CLIENT = "modalkit.client"
_OWNER = "modalkit.owner"
ANONYMOUS = "anonymous"  # the client, and the owner, of a request without a key on a public route


def authenticated(scope: Scope) -> bool:
    """Whether the request carried a client's API key (public routes are called with and without one)."""
    return scope.get(_AUTHENTICATED) is True


def client_name(scope: Scope) -> str:
    """The name of the client that made the request: a configured name, or "anonymous" (no key or a wrong one, or
    auth off): the names a metric's `client` label takes are bounded by the config."""
    return str(scope.get(_CLIENT, ANONYMOUS))


def job_owner(scope: Scope) -> str | None:
    """Who owns the jobs this request makes and which jobs it sees: its key's fingerprint; None with auth off
    (every job is everyone's)."""
    owner = scope.get(_OWNER)
    return str(owner) if owner is not None else None


class ApiKeyAuth:
    """Pure ASGI, so it guards every route (docs included unless public) without a task per request.

    A request with a client's key is marked `authenticated`, with its client's name and its key's fingerprint,
    on public routes too: `/health` shows more to it. Only the keys' fingerprints are kept; the given key's is
    compared with every one of them in constant time (`hmac.compare_digest`), so how long it takes tells nothing
    of which key, or how much of one, matched.
    """

    def __init__(self, app: ASGIApp, clients: Mapping[str, str], header: str, public_routes: frozenset[str]) -> None:
        self.app = app
        self._clients = [(key_fingerprint(key), name) for name, key in clients.items()]
        self._header = header.lower().encode()
        self._public = frozenset(public_routes)
        self._name = header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _given_key(scope, self._header)
        owner = key_fingerprint(given) if given is not None else None
        client = self._client_of(owner) if owner is not None else None
        if client is not None:
            scope.update({_AUTHENTICATED: True, _CLIENT: client, _OWNER: owner})
            await self.app(scope, receive, send)
            return
        if scope["path"] in self._public:
            scope.update({_CLIENT: ANONYMOUS, _OWNER: ANONYMOUS})
            await self.app(scope, receive, send)
            return
        scope[_CLIENT] = ANONYMOUS
        detail = (
            f"missing API key: send it in the {self._name} header (or as Authorization: Bearer <key>)"
            if given is None
            else "invalid API key"
        )
        await send_error(scope, send, 401, detail, ((b"www-authenticate", self._name.encode()),))

    def _client_of(self, owner: str) -> str | None:
        """The client whose key has this fingerprint: every client's is compared, none skipped once one matched."""
        found = None
        for fingerprint, name in self._clients:
            if hmac.compare_digest(fingerprint, owner):
                found = name
        return found


def _given_key(scope: Scope, header: bytes) -> bytes | None:
    """The key a request carries: in the configured header, or as `Authorization: Bearer <key>` (how the
    `openai` package and most HTTP clients send one)."""
    bearer = None
    for name, value in scope["headers"]:
        if name == header:
            return bytes(value)
        if name == b"authorization" and value[:7].lower() == b"bearer ":
            bearer = bytes(value[7:]).strip()
    return bearer
