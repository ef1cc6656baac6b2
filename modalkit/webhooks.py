"""Signed webhooks of async jobs, as the Standard Webhooks spec (https://www.standardwebhooks.com) says.

- `check_url`: which URLs a client may name: http(s), a host in `webhook_config.allowed_hosts`, and no address
  that is loopback, private, link-local or reserved unless `allow_private`. Checked when the job is accepted and
  again before every try, whose POST goes to the address that was checked (a DNS answer cannot change under it).
- `signed_headers`: `webhook-id`, `webhook-timestamp` and `webhook-signature` (`v1,<base64 HMAC-SHA256>`).
- `deliver_once`: one try; `send`: tries with backoff over `retry_window_seconds`, as a Modal container sends.
  The local runtime retries durably instead (`modalkit.runtime.local.delivery`).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import httpx

from modalkit.exceptions import ConfigError, DeliveryRefused, WebhookFailed, WebhookNotAllowed
from modalkit.sinks.failures import permanent_reason

if TYPE_CHECKING:
    from modalkit.config.schema import WebhookConfig

logger = logging.getLogger("modalkit.webhooks")

SECRET_PREFIX = "whsec_"
_NAT64 = ipaddress.ip_network("64:ff9b::/96")  # an IPv4 address behind a NAT64 gateway


@dataclass(frozen=True)
class Target:
    """A webhook URL that passed `check_url`, and the address its host resolved to then."""

    url: httpx.URL
    address: str


def signing_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_<base64>` secret (the prefix may be left out, as `standardwebhooks` allows)."""
    encoded = secret.strip().removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
    except binascii.Error:
        raise ValueError("a webhook secret is whsec_ followed by base64") from None
    if len(key) < 16:
        raise ValueError(f"a webhook secret needs at least 16 bytes of key; this one has {len(key)}")
    return key


def secret_key(config: WebhookConfig) -> bytes:
    """The signing key, from the environment variable `secret_env` (on Modal, the secret `modal_secret` sets it)."""
    where = f"app_settings.webhook_config.secret_env: the environment variable {config.secret_env}"
    secret = os.environ.get(config.secret_env)
    if not secret:
        raise ConfigError([f"{where} is not set; webhooks are signed with the whsec_<base64> secret it holds"])
    try:
        return signing_key(secret)
    except ValueError as exc:
        raise ConfigError([f"{where}: {exc}"]) from None


def signature(key: bytes, webhook_id: str, timestamp: int, body: bytes) -> str:
    digest = hmac.new(key, f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def signed_headers(key: bytes, webhook_id: str, body: bytes, now: float | None = None) -> dict[str, str]:
    """The headers of one try: its timestamp is the time of the try, so a receiver's 5-minute tolerance holds."""
    timestamp = int(time.time() if now is None else now)
    return {
        "content-type": "application/json",
        "webhook-id": webhook_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(key, webhook_id, timestamp, body),
    }


def host_allowed(host: str, allowed: Iterable[str]) -> bool:
    """Whether `allowed_hosts` lists `host`: exactly, as a subdomain of a `*.domain` entry, or by `*`."""
    host = host.lower().rstrip(".")
    for entry in allowed:
        pattern = entry.lower().strip("[]").rstrip(".")
        if pattern == "*" or host == pattern or (pattern.startswith("*.") and host.endswith(pattern[1:])):
            return True
    return False


def is_public(address: str) -> bool:
    """Whether an IP address is on the public internet: not loopback, private, link-local, shared or reserved."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])  # an IPv6 scope (fe80::1%eth0) is not part of the address
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = (
            ip.ipv4_mapped or ip.sixtofour or (ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF) if ip in _NAT64 else None)
        )
        if embedded is not None:
            ip = embedded
    return ip.is_global and not ip.is_multicast


def check_url(url: str, config: WebhookConfig) -> Target:
    """The URL as a `Target`, or `WebhookNotAllowed` saying why not (`WebhookFailed` if the host does not resolve).
    Resolves the host: it blocks."""
    parsed = _parsed(url)
    host = parsed.host
    if not host_allowed(host, config.allowed_hosts):
        listed = ", ".join(config.allowed_hosts) or "none: webhooks are off"
        raise WebhookNotAllowed(f"host {host!r} is not allowed; app_settings.webhook_config.allowed_hosts: {listed}")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    return Target(parsed, _resolved(host, port, config.allow_private))


def _parsed(url: str) -> httpx.URL:
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as exc:
        raise WebhookNotAllowed(f"not a URL: {exc}") from None
    if parsed.scheme not in ("http", "https"):
        raise WebhookNotAllowed(f"a webhook URL is http:// or https://, not {parsed.scheme or 'relative'}")
    if not parsed.host:
        raise WebhookNotAllowed("the webhook URL has no host")
    if parsed.userinfo:
        raise WebhookNotAllowed("a webhook URL may not hold credentials; the signature tells the receiver who sent it")
    return parsed


def _resolved(host: str, port: int, allow_private: bool) -> str:
    """The first address of `host`; every address it has must be public unless `allow_private`."""
    try:
        found = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError) as exc:
        raise WebhookFailed(f"host {host!r} does not resolve: {exc}") from None  # may be passing: retried
    addresses = [str(info[4][0]) for info in found]
    if not allow_private:
        for address in addresses:
            if not is_public(address):
                raise WebhookNotAllowed(
                    f"host {host!r} resolves to {address}, a loopback, private, link-local or reserved address;"
                    " set app_settings.webhook_config.allow_private to allow it"
                )
    return addresses[0]


def post(target: Target, body: bytes, headers: dict[str, str], timeout: float) -> None:
    """One POST to the checked address, with the URL's host in `Host` (and TLS's SNI); redirects are not followed.

    Raises `WebhookFailed` when it may succeed later, `DeliveryRefused` when it cannot (410 Gone, a redirect).
    """
    url = target.url.copy_with(host=target.address)
    extensions = {"sni_hostname": target.url.host} if target.url.scheme == "https" else {}
    host_header = target.url.netloc.decode("ascii")
    with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False) as client:
        try:
            answer = client.post(url, content=body, headers={**headers, "host": host_header}, extensions=extensions)
        except httpx.HTTPError as exc:
            raise WebhookFailed(f"{type(exc).__name__}: {exc}") from None
    if answer.is_success:
        return
    if answer.status_code == 410:
        raise DeliveryRefused("the receiver answered 410 Gone: it takes no more deliveries")
    if answer.is_redirect:
        raise DeliveryRefused(f"the receiver answered {answer.status_code}, a redirect, which is not followed")
    raise WebhookFailed(f"the receiver answered {answer.status_code}")


def deliver_once(url: str, webhook_id: str, body: bytes, config: WebhookConfig) -> None:
    """One try: check the URL again (its host may resolve elsewhere by now), sign with the time now, POST."""
    target = check_url(url, config)
    post(target, body, signed_headers(secret_key(config), webhook_id, body), config.timeout_seconds)


def next_try_in(config: WebhookConfig, tries: int, since_end: float) -> float | None:
    """Seconds to wait after `tries` failed tries, `since_end` seconds after the job ended; None: give up.

    The wait doubles from `first_retry_seconds` up to `max_retry_seconds`; no try starts past `max_attempts` or
    `retry_window_seconds` after the job ended.
    """
    if tries >= config.max_attempts:
        return None
    delay: float = min(config.max_retry_seconds, config.first_retry_seconds * 2.0 ** min(tries - 1, 30))
    if since_end + delay > config.retry_window_seconds:
        return None
    return delay


def send(
    url: str, webhook_id: str, body: bytes, config: WebhookConfig, sleep: Callable[[float], None] = time.sleep
) -> bool:
    """Try until delivered, refused for good, or out of tries or window; False (and logged) unless delivered."""
    started, tries = time.monotonic(), 0
    while True:
        tries += 1
        try:
            deliver_once(url, webhook_id, body, config)
            return True
        except Exception as exc:
            error = permanent_reason(exc)
            delay = None if error is not None else next_try_in(config, tries, time.monotonic() - started)
            if delay is None:
                logger.error(
                    "webhook %s to %s failed for good after %d tries: %s", webhook_id, url, tries, error or exc
                )
                return False
            logger.warning("webhook %s to %s: try %d failed, next in %.1f s: %s", webhook_id, url, tries, delay, exc)
            sleep(delay)
