"""Standard Webhooks signatures (https://www.standardwebhooks.com/): what the service sends with
each job callback, and what a receiver checks. Pure hmac, no web imports, so the service, the
Python client and any receiver share these few lines.

A secret is `whsec_` followed by base64 key bytes. The signed content is
`{webhook-id}.{webhook-timestamp}.{body}`; `webhook-signature` is `v1,` and the base64
HMAC-SHA256 of it (several space-separated signatures may be sent while a secret rotates).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
import time
from collections.abc import Mapping

SECRET_PREFIX = "whsec_"
HEADERS = ("webhook-id", "webhook-timestamp", "webhook-signature")
#: how far a receiver lets `webhook-timestamp` stray from its clock (replays, clock skew)
DEFAULT_TOLERANCE = 300.0


class WebhookVerificationError(ValueError):
    """The request is not a genuine, fresh webhook of the holder of the secret."""


def secret_key(secret: str) -> bytes:
    """The key bytes of a `whsec_<base64>` secret (the prefix is optional, as in the spec's
    reference libraries)."""
    text = secret.removeprefix(SECRET_PREFIX)
    try:
        key = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("a webhook secret is `whsec_` followed by base64 key bytes") from None
    if not key:
        raise ValueError("a webhook secret must not be empty")
    return key


def new_secret(nbytes: int = 32) -> str:
    """A fresh random secret in the `whsec_` form."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(nbytes)).decode()


def signature(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{msg_id}.{timestamp}.{body}">`."""
    content = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(secret_key(secret), content, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """The three headers of one delivery."""
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(timestamp),
        "webhook-signature": signature(secret, msg_id, timestamp, body),
    }


def verify(
    headers: Mapping[str, str],
    body: bytes,
    secret: str,
    tolerance: float = DEFAULT_TOLERANCE,
    now: float | None = None,
) -> None:
    """Raise `WebhookVerificationError` unless `body` and `headers` were signed with `secret`
    within `tolerance` seconds of `now` (default: the clock). Header names are matched
    case-insensitively; `body` must be the raw bytes received, not re-serialised JSON."""
    lower = {k.lower(): v for k, v in headers.items()}
    missing = [
        h for h in ("webhook-id", "webhook-timestamp", "webhook-signature") if h not in lower
    ]
    if missing:
        raise WebhookVerificationError(f"missing header(s): {', '.join(missing)}")
    try:
        timestamp = int(lower["webhook-timestamp"])
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError(
            f"webhook-timestamp is {current - timestamp:+.0f} s from now, beyond the "
            f"{tolerance:g} s tolerance (a replay, or a clock out of sync)"
        )
    expected = signature(secret, lower["webhook-id"], timestamp, body)
    for candidate in lower["webhook-signature"].split():
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return
    raise WebhookVerificationError("no webhook-signature matches the body and the secret")
