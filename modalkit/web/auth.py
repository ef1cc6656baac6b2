"""API-key auth for the web app: every route but the public ones needs the key in a header."""

from __future__ import annotations

import hmac
import os

from starlette.types import ASGIApp, Receive, Scope, Send

from modalkit import aws
from modalkit.config.schema import AuthConfig
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


_AUTHENTICATED = "modalkit.authenticated"


def authenticated(scope: Scope) -> bool:
    """Whether the request carried the right API key (public routes are called with and without it)."""
    return scope.get(_AUTHENTICATED) is True


class ApiKeyAuth:
    """Pure ASGI, so it guards every route (docs included unless public) without a task per request.

    A request with the right key is marked `authenticated`, on public routes too: `/health` shows more to it.
    """

    def __init__(self, app: ASGIApp, key: str, header: str, public_routes: frozenset[str]) -> None:
        self.app = app
        self._key = key.encode()
        self._header = header.lower().encode()
        self._public = frozenset(public_routes)
        self._name = header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = _given_key(scope, self._header)
        if given is not None and hmac.compare_digest(given, self._key):
            scope[_AUTHENTICATED] = True
            await self.app(scope, receive, send)
            return
        if scope["path"] in self._public:
            await self.app(scope, receive, send)
            return
        detail = (
            f"missing API key: send it in the {self._name} header (or as Authorization: Bearer <key>)"
            if given is None
            else "invalid API key"
        )
        await send_error(scope, send, 401, detail, ((b"www-authenticate", self._name.encode()),))


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
