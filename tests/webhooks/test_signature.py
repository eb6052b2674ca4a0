"""synflow/webhooks.py against the Standard Webhooks published test vector, and verify()'s
refusals: tampered body, wrong secret, stale or future timestamp, missing headers."""

from __future__ import annotations

import base64
import hashlib
import hmac

import pytest

from synflow.webhooks import (
    WebhookVerificationError,
    new_secret,
    secret_key,
    sign,
    signature,
    verify,
)

# the vector of the spec's reference libraries (standard-webhooks, svix)
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
MSG_ID = "msg_p5jXN8AQM9LWM0D4loKWxJek"
TIMESTAMP = 1614265330
BODY = b'{"test": 2432232314}'
EXPECTED = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_the_published_vector():
    assert signature(SECRET, MSG_ID, TIMESTAMP, BODY) == EXPECTED
    assert signature(SECRET.removeprefix("whsec_"), MSG_ID, TIMESTAMP, BODY) == EXPECTED


def test_the_signature_is_hmac_sha256_of_id_timestamp_body():
    """The construction spelled out once more, from the spec's prose."""
    key = base64.b64decode(SECRET.removeprefix("whsec_"))
    content = f"{MSG_ID}.{TIMESTAMP}.{BODY.decode()}".encode()
    digest = base64.b64encode(hmac.new(key, content, hashlib.sha256).digest()).decode()
    assert signature(SECRET, MSG_ID, TIMESTAMP, BODY) == f"v1,{digest}"


def test_sign_then_verify():
    secret = new_secret()
    headers = sign(secret, "msg_1", 1_700_000_000, b"{}")
    assert set(headers) == {"webhook-id", "webhook-timestamp", "webhook-signature"}
    verify(headers, b"{}", secret, now=1_700_000_010)
    # header names are case-insensitive, as HTTP's
    verify({k.title(): v for k, v in headers.items()}, b"{}", secret, now=1_700_000_000)


def test_verify_accepts_any_of_several_signatures():
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": f"v1,bm9wZQ== {EXPECTED}",
    }
    verify(headers, BODY, SECRET, now=TIMESTAMP)


@pytest.mark.parametrize(
    ("body", "secret", "now", "message"),
    [
        (b'{"test": 2432232315}', SECRET, TIMESTAMP, "no webhook-signature matches"),
        (BODY, new_secret(), TIMESTAMP, "no webhook-signature matches"),
        (BODY, SECRET, TIMESTAMP + 301, "beyond the 300 s tolerance"),
        (BODY, SECRET, TIMESTAMP - 301, "beyond the 300 s tolerance"),
    ],
)
def test_verify_refuses(body, secret, now, message):
    headers = {
        "webhook-id": MSG_ID,
        "webhook-timestamp": str(TIMESTAMP),
        "webhook-signature": EXPECTED,
    }
    with pytest.raises(WebhookVerificationError, match=message):
        verify(headers, body, secret, now=now)


def test_verify_names_missing_and_malformed_headers():
    with pytest.raises(WebhookVerificationError, match="webhook-id, webhook-signature"):
        verify({"webhook-timestamp": "1"}, BODY, SECRET)
    bad = {"webhook-id": MSG_ID, "webhook-timestamp": "soon", "webhook-signature": EXPECTED}
    with pytest.raises(WebhookVerificationError, match="not an integer"):
        verify(bad, BODY, SECRET)


def test_secrets():
    assert len(secret_key(new_secret(24))) == 24
    for bad in ("whsec_", "whsec_not base64!", ""):
        with pytest.raises(ValueError, match="secret"):
            secret_key(bad)
