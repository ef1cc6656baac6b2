"""Telling a push that can never succeed from one worth retrying, and refusing a message that is not JSON."""

from __future__ import annotations

import json
from typing import Any

from modalkit.exceptions import DeliveryRefused

# Redis errors about the key or the message, not the server: the same push fails again, whenever it is retried.
_REDIS_REFUSALS = ("WRONGTYPE", "NOPERM", "ERR Protocol error", "ERR string exceeds maximum allowed size")
# AWS answers 4xx for a bad request, but these go away by waiting or by fixing credentials: keep the result.
_AWS_RETRYABLE = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "RequestThrottled",
        "RequestThrottledException",
        "TooManyRequestsException",
        "AWS.SimpleQueueService.RequestThrottled",
        "KmsThrottled",
        "RequestTimeout",
        "RequestTimeoutException",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "RequestExpired",
        "AccessDenied",
        "AccessDeniedException",
    }
)
_MODAL_REFUSALS = frozenset({"RequestSizeError", "InvalidError", "SerializationError"})


def json_message(message: dict[str, Any]) -> str:
    """The message as JSON text; NaN and Infinity are not JSON, so a message holding them is refused for good."""
    try:
        return json.dumps(message, allow_nan=False)
    except (ValueError, TypeError) as exc:
        raise DeliveryRefused(f"the message is not JSON ({exc})") from None


def permanent_reason(exc: BaseException) -> str | None:
    """Why retrying this failed push cannot help, or None when it may (a connection error, a timeout, throttling)."""
    if isinstance(exc, DeliveryRefused):
        return str(exc)
    return _redis_reason(exc) or _aws_reason(exc) or _modal_reason(exc)


def _redis_reason(exc: BaseException) -> str | None:
    try:
        from redis.exceptions import DataError, ResponseError
    except ImportError:  # pragma: no cover - redis is a dependency
        return None
    if isinstance(exc, DataError) or (isinstance(exc, ResponseError) and str(exc).startswith(_REDIS_REFUSALS)):
        return f"Redis refused the push: {exc}"
    return None


def _aws_reason(exc: BaseException) -> str | None:
    try:
        from botocore.exceptions import ClientError, ParamValidationError
    except ImportError:  # without boto3 there is no SQS sink
        return None
    if isinstance(exc, ParamValidationError):
        return f"SQS refused the message: {exc}"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = int(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
        if 400 <= status < 500 and code not in _AWS_RETRYABLE:
            return f"SQS refused the message ({code}): {exc}"
    return None


def _modal_reason(exc: BaseException) -> str | None:
    module = type(exc).__module__
    if module.startswith("modal") and type(exc).__name__ in _MODAL_REFUSALS:
        return f"modal.Queue refused the message: {type(exc).__name__}: {exc}"
    return None
