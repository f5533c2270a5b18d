"""Redaction removes registered secrets, JWTs and credential header values."""

from __future__ import annotations

import pytest

from runbook_lib.redaction import REDACTED, clear_secrets, redact, redact_obj, register_secret

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXZhbHVl"


@pytest.fixture(autouse=True)
def _fresh():
    clear_secrets()
    yield
    clear_secrets()


@pytest.mark.parametrize(
    ("text", "leak"),
    [
        (f"token={JWT}", JWT),
        ("Authorization: Bearer opaque-token-xyz", "opaque-token-xyz"),
        ("{'authorization': 'Bearer opaque-token-xyz'}", "opaque-token-xyz"),
        ("Sec-WebSocket-Protocol: jwt.opaque-token-xyz", "opaque-token-xyz"),
        ("wss://h/websocket?token=opaque-token-xyz&x=1", "opaque-token-xyz"),
    ],
)
def test_patterns_are_redacted_without_registration(text, leak):
    out = redact(text)
    assert leak not in out
    assert REDACTED in out


def test_registered_secret_redacted_anywhere():
    register_secret("s3cr3t-value")
    assert redact("abc s3cr3t-value def") == f"abc {REDACTED} def"
    assert redact_obj({"k": ["s3cr3t-value", 1]}) == {"k": [REDACTED, 1]}


def test_short_values_are_not_registered():
    register_secret("abc")
    assert redact("abc") == "abc"
