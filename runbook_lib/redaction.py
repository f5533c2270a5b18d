"""Secret registry and redaction.

Every secret value the runbook reads (tokens, JWT secrets, minted JWTs) is
registered here the moment it is read; everything written to a run folder,
a log or a cell output passes through :func:`redact` first.
"""

from __future__ import annotations

import re
import threading
from typing import Any

__all__ = [
    "JWT_PATTERN",
    "REDACTED",
    "clear_secrets",
    "redact",
    "redact_excerpt",
    "redact_obj",
    "register_secret",
    "registered_secrets",
]

REDACTED = "[REDACTED]"

# Three base64url segments, the first starting like a JSON object header ("eyJ").
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
# Header-shaped secrets, whatever the value.
_HEADER_PATTERNS = [
    re.compile(r"(?i)(authorization['\"]?\s*[:=,]\s*['\"]?\s*(?:bearer|basic)\s+)([^\s'\",})\]]+)"),
    re.compile(
        r"(?i)(sec-websocket-protocol['\"]?\s*[:=,]\s*['\"]?[^'\"\n]*?jwt\.)([^\s'\",})\]]+)"
    ),
    re.compile(r"(?i)([?&](?:token|access_token|jwt|auth)=)([^&\s'\"#]+)"),
]

_lock = threading.Lock()
_secrets: set[str] = set()
_MIN_LEN = 6  # shorter values would redact ordinary words


def register_secret(value: str | None) -> str | None:
    """Remember ``value`` as secret (ignored when empty or very short) and return it."""
    if value and len(value) >= _MIN_LEN:
        with _lock:
            _secrets.add(value)
    return value


def registered_secrets() -> frozenset[str]:
    """The secret values registered so far in this process."""
    with _lock:
        return frozenset(_secrets)


def clear_secrets() -> None:
    """Forget every registered secret (tests only)."""
    with _lock:
        _secrets.clear()


def redact(text: str) -> str:
    """``text`` with every registered secret, JWT and credential header value replaced."""
    if not text:
        return text
    with _lock:
        values = sorted(_secrets, key=len, reverse=True)
    for value in values:
        if value in text:
            text = text.replace(value, REDACTED)
    text = JWT_PATTERN.sub(REDACTED, text)
    for pattern in _HEADER_PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text)
    return text


# How far past an excerpt's end we still read, so a secret crossing the cut is seen whole.
_EXCERPT_MARGIN = 4096


def redact_excerpt(text: str, limit: int, suffix: str = "") -> str:
    """The first ``limit`` characters of ``text``, redacted *before* the cut.

    Cutting first and redacting after would leave the beginning of a secret that
    crosses the cut in clear (no longer recognisable as the registered value);
    ``suffix`` (e.g. ``"…"``) marks a cut.
    """
    if not text:
        return text
    clean = redact(text[: limit + _EXCERPT_MARGIN])
    return clean if len(clean) <= limit else clean[:limit] + suffix


def redact_obj(value: Any) -> Any:
    """Deep copy of a JSON-like value with every string passed through :func:`redact`."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): redact_obj(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [redact_obj(v) for v in value]
    return value
