"""Redaction removes registered secrets, JWTs and credential header values."""

from __future__ import annotations

import base64
import contextlib
import html
import json
import random
import re
import time
import urllib.parse

import pytest

from runbook_lib.redaction import (
    REDACTED,
    count_secrets,
    find_secrets,
    redact,
    redact_obj,
    register_secret,
    registered_secrets,
    secret_forms,
)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXZhbHVl"


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


# ------------------------------------------------------------------ secrets in any encoding

SECRETS = ("sk-TESTSECRET-123456", 'Pa55/w+rd?&"<x>=Z~Z')
_B64_RUN = re.compile(r"[A-Za-z0-9+/_-]{4,}=*")


def _decodes_to(text: str, secret: str) -> bool:
    """True when some base64 run of ``text``, at some character offset, decodes to bytes
    holding ``secret``: an independent check of what the redaction left."""
    raw = secret.encode()
    for m in _B64_RUN.finditer(text):
        run = m.group(0).rstrip("=").replace("-", "+").replace("_", "/")
        for start in range(4):
            chunk = run[start:]
            if len(chunk) % 4 == 1:
                chunk = chunk[:-1]
            with contextlib.suppress(ValueError):
                if raw in base64.b64decode(chunk + "=" * (-len(chunk) % 4), validate=True):
                    return True
    return False


def _encodings(secret: str) -> dict[str, str]:
    raw = secret.encode()
    rng = random.Random(7)
    out = {
        "raw": secret,
        "upper": secret.upper(),
        "lower": secret.lower(),
        "swapcase": secret.swapcase(),
        "percent": urllib.parse.quote(secret, safe=""),
        "percent_plus": urllib.parse.quote_plus(secret),
        "percent_every_byte": "".join(f"%{b:02x}" for b in raw),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
        "json": json.dumps({"k": secret}),
        "html": html.escape(secret),
    }
    for offset in (0, 1, 2):
        for tail in (0, 1, 2):
            blob = bytes(rng.randrange(256) for _ in range(offset)) + raw + b"!" * tail
            std = base64.b64encode(blob).decode()
            url = base64.urlsafe_b64encode(blob).decode()
            out[f"b64_off{offset}_tail{tail}"] = std
            out[f"b64_off{offset}_tail{tail}_nopad"] = std.rstrip("=")
            out[f"b64url_off{offset}_tail{tail}"] = url
            out[f"b64url_off{offset}_tail{tail}_nopad"] = url.rstrip("=")
    # Embedded in a longer base64 stream (a JSON document, base64-encoded whole).
    doc = json.dumps({"echo": secret, "n": 1}).encode()
    out["b64_document"] = base64.b64encode(doc).decode()
    return out


def _needles(secret: str) -> list[str]:
    raw = secret.encode()
    return [
        secret,
        secret.upper(),
        secret.lower(),
        urllib.parse.quote(secret, safe=""),
        raw.hex(),
        raw.hex().upper(),
        html.escape(secret),
    ]


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("form", sorted(_encodings(SECRETS[0])))
def test_every_encoding_of_a_registered_secret_is_redacted(secret, form):
    register_secret(secret)
    encoded = _encodings(secret)[form]
    text = f"server said: {encoded} (end)"
    assert find_secrets(text), form
    assert count_secrets(text.encode()) >= 1
    out = redact(text)
    assert REDACTED in out
    assert out.startswith("server said: ") and out.endswith(" (end)")
    low = out.lower()
    for needle in _needles(secret):
        assert needle.lower() not in low, (form, needle)
    assert not _decodes_to(out, secret), (form, out)
    assert find_secrets(out) == [] and count_secrets(out.encode()) == 0
    assert redact(out) == out  # idempotent


def test_the_review_case_base64_and_upper_case():
    """reliability.md 7a/7b: the base64 echo and an upper-cased copy of the token."""
    register_secret("sk-TESTSECRET-123456")
    text = (
        "bad credentials: authorization='Bearer sk-TESTSECRET-123456' protocol='' "
        "b64=c2stVEVTVFNFQ1JFVC0xMjM0NTY= | debug_env exited 1. Last output: "
        "upper=SK-TESTSECRET-123456"
    )
    out = redact(text)
    assert "c2stVEVTVFNFQ1JFVC0xMjM0NTY" not in out and "SK-TESTSECRET" not in out
    assert "]]" not in out
    assert redact(out) == out


@pytest.mark.parametrize(
    "text",
    [
        "Authorization: Bearer opaque-token-xyz",
        "{'authorization': 'Bearer opaque-token-xyz'}",
        "Sec-WebSocket-Protocol: jwt.opaque-token-xyz",
        "wss://h/websocket?token=opaque-token-xyz&x=1",
        f"token={JWT} and Bearer {JWT}",
        "authorization='Bearer [REDACTED]' b64=[REDACTED]",
    ],
)
def test_redacting_twice_changes_nothing_and_leaves_no_debris(text):
    register_secret("opaque-token-xyz")
    once = redact(text)
    assert redact(once) == once
    assert redact(redact(once)) == once
    assert "[REDACTED]]" not in once and "[[REDACTED]" not in once


def test_secret_forms_cover_the_documented_encodings():
    secret = "sk-TESTSECRET-123456"
    forms = secret_forms(secret)
    assert secret in forms and secret.upper() in forms and secret.encode().hex() in forms
    assert "c2stVEVTVFNFQ1JFVC0xMjM0NTY=" in forms  # base64 of the value alone
    assert "c2stVEVTVFNFQ1JFVC0xMjM0NT" in forms  # its core, whatever follows it
    assert len({f for f in forms if f.isascii()}) == len(forms)
    assert secret_forms("") == []


def test_short_secrets_are_matched_exactly_not_case_folded_into_prose():
    register_secret("abcdef")  # 6 characters: registered, matched as written (and upper/lower)
    assert redact("x abcdef y ABCDEF") == f"x {REDACTED} y {REDACTED}"
    assert redact("AbCdEf") == "AbCdEf"


def test_no_false_positive_in_random_base64_image_data():
    """Figures are embedded as base64 in HTML: redaction must not touch them."""
    for s in (*SECRETS, "abcdef", "short-1", JWT):
        register_secret(s)
    rng = random.Random(11)
    blob = base64.b64encode(bytes(rng.randrange(256) for _ in range(400_000))).decode()
    assert redact(blob) == blob
    assert count_secrets(blob.encode()) == 0


def test_redaction_stays_linear_on_large_outputs():
    for s in SECRETS:
        register_secret(s)
    for i in range(20):
        register_secret(f"minted-token-{i:04d}-" + "q" * 40)
    rng = random.Random(3)
    chunk = base64.b64encode(bytes(rng.randrange(256) for _ in range(300_000))).decode()
    small, large = chunk, chunk * 4
    redact("warm up the compiled pattern")
    t0 = time.perf_counter()
    redact(small)
    t1 = time.perf_counter()
    redact(large)
    t2 = time.perf_counter()
    assert t2 - t1 < 4.0  # 1.6 MB: well under a second unloaded
    assert (t2 - t1) < 12 * max(t1 - t0, 1e-3)  # 4x the text, not 16x the time


def test_extra_values_are_searched_without_registering_them():
    assert count_secrets(b"xx sk-TESTSECRET-123456 xx", ["sk-TESTSECRET-123456"]) == 1
    assert "sk-TESTSECRET-123456" not in registered_secrets()


def test_many_secrets_registered_between_redactions_stay_cheap_and_all_redacted():
    """A token per simulated user, redaction between registrations: no recompiling of
    everything per token (that was quadratic), and every token in every form is found."""
    tokens = [f"user-token-{i:04d}-" + "z" * 30 for i in range(150)]
    start = time.perf_counter()
    for tok in tokens:
        register_secret(tok)
        assert redact(f"echo {tok}") == f"echo {REDACTED}"
    assert time.perf_counter() - start < 30.0  # ~1 s unloaded; quadratic was ~10x that
    text = " ".join(base64.b64encode(t.encode()).decode() + " " + t.upper() for t in tokens)
    out = redact(text)
    assert all(t.upper() not in out for t in tokens)
    assert not any(_decodes_to(out, t) for t in tokens[::10])
    assert count_secrets(text.encode()) == 2 * len(tokens)
