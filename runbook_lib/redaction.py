"""Secret registry and redaction.

Every secret value the runbook reads (tokens, JWT secrets, minted JWTs) is
registered here the moment it is read; everything written to a run folder,
a log or a cell output passes through :func:`redact` first, and the final scan
of a run folder (``manifest.scan_secrets``) counts what :func:`count_secrets`
finds.

A secret is found in every form a service or a command may echo it back in
(:func:`secret_forms`): raw and case-folded (``upper``/``lower``/mixed), base64
(standard and URL-safe, padded or not, embedded in a longer base64 stream at any
of the three byte alignments) and base64 of that base64, base32, percent-encoded,
hex (lower/upper) of the UTF-8 and of the UTF-16 bytes, JSON- and HTML-escaped
(including every character as ``\\uXXXX`` or as a numeric entity), reversed and
spaced out. A secret split over several frames of one conversation is found by the
flow runner, which looks at the joined stream. JWT-shaped strings and credential header values are redacted
whatever their value. The forms of all registered secrets are compiled once (per
change of the registry) into one regular expression whose alternatives share
prefixes, so a pass over a text is linear in its length.
"""

from __future__ import annotations

import base64
import html
import json
import re
import threading
from collections.abc import Iterable
from functools import lru_cache
from typing import Any
from urllib.parse import quote, quote_plus

__all__ = [
    "JWT_PATTERN",
    "REDACTED",
    "clear_secrets",
    "count_secrets",
    "find_secrets",
    "redact",
    "redact_excerpt",
    "redact_obj",
    "register_secret",
    "registered_secrets",
    "secret_forms",
]

REDACTED = "[REDACTED]"

# Three base64url segments, the first starting like a JSON object header ("eyJ").
JWT_PATTERN = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}")
# Header-shaped secrets, whatever the value. The lookahead keeps an already redacted
# value as it is (redacting twice changes nothing, no "[REDACTED]]" debris).
_NOT_DONE = r"(?!\[REDACTED\])"
_HEADER_PATTERNS = [
    re.compile(
        r"(?i)(authorization['\"]?\s*[:=,]\s*['\"]?\s*(?:bearer|basic)\s+)"
        + _NOT_DONE
        + r"([^\s'\",})\]]+)"
    ),
    re.compile(
        r"(?i)(sec-websocket-protocol['\"]?\s*[:=,]\s*['\"]?[^'\"\n]*?jwt\.)"
        + _NOT_DONE
        + r"([^\s'\",})\]]+)"
    ),
    re.compile(r"(?i)([?&](?:token|access_token|jwt|auth)=)" + _NOT_DONE + r"([^&\s'\"#]+)"),
]

_lock = threading.Lock()
_secrets: dict[str, None] = {}  # an ordered set: chunks of it are compiled once (see _chunks)
_MIN_LEN = 6  # shorter values would redact ordinary words
# Case-insensitive matching of a short value would hit ordinary text and image data:
# below this length only the exact, upper- and lower-case spellings are matched.
_FOLD_MIN_LEN = 10
# A base64 core shorter than this could occur by chance inside an embedded image.
_B64_MIN_LEN = 10


def register_secret(value: str | None) -> str | None:
    """Remember ``value`` as secret (ignored when empty or very short) and return it."""
    if value and len(value) >= _MIN_LEN:
        with _lock:
            _secrets.setdefault(value, None)
    return value


def registered_secrets() -> frozenset[str]:
    """The secret values registered so far in this process."""
    with _lock:
        return frozenset(_secrets)


def clear_secrets() -> None:
    """Forget every registered secret (tests only)."""
    with _lock:
        _secrets.clear()


# ------------------------------------------------------------------ forms


def _b64_cores(data: bytes) -> list[str]:
    """The base64 characters that ``data`` alone determines, at each byte alignment.

    Embedded at offset ``a`` (mod 3) in a longer stream, ``data`` fills base64
    characters ``ceil(8a/6)`` to ``floor(8(a+n)/6)`` of the encoding of
    ``a`` filler bytes + ``data``, whatever the bytes around it; the padded and
    unpadded encodings of ``data`` alone contain the alignment-0 core.
    """
    out: list[str] = []
    for a in (0, 1, 2):
        enc = base64.b64encode(b"\0" * a + data).decode("ascii")
        start, end = -(-8 * a // 6), (8 * (a + len(data))) // 6
        out.append(enc[start:end])
    return out


def _case_forms(secret: str) -> list[str]:
    """Forms matched case-insensitively (or as exact/upper/lower when the value is short)."""
    data = secret.encode("utf-8")
    # Every character escaped: JSON \uXXXX, HTML numeric entities (decimal, hex).
    uescaped = "".join(f"\\u{ord(c):04x}" for c in secret if ord(c) < 0x10000)
    decimal = "".join(f"&#{ord(c)};" for c in secret)
    hexadecimal = "".join(f"&#x{ord(c):x};" for c in secret)
    forms = [
        secret,
        quote(secret, safe=""),
        quote(secret),
        quote_plus(secret),
        "".join(f"%{b:02X}" for b in data),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        html.escape(secret),
        html.escape(secret, quote=False),
        data.hex(),
        uescaped,
        decimal,
        hexadecimal,
        # UTF-16 code units in hex (little- and big-endian), reversed, spaced out.
        secret.encode("utf-16-le").hex(),
        secret.encode("utf-16-be").hex(),
        secret[::-1],
        " ".join(secret),
        # Those escapes as they look once written into a JSON file (.ipynb) or HTML page.
        json.dumps(uescaped)[1:-1],
        html.escape(decimal),
        html.escape(hexadecimal),
    ]
    return list(dict.fromkeys(f for f in forms if f))


def _exact_forms(secret: str) -> list[str]:
    """Forms matched exactly: the base64 cores (standard and URL-safe alphabets) of the
    raw value and of its escaped spellings (a JSON document or a URL, base64-encoded whole)."""
    spellings = dict.fromkeys(
        (secret, json.dumps(secret)[1:-1], quote(secret, safe=""), html.escape(secret))
    )
    out: list[str] = []
    for spelling in spellings:
        whole = base64.b64encode(spelling.encode("utf-8")).decode("ascii")
        # The whole encoding first (padded), so a lone echo leaves no trailing character.
        for core in (whole, *_b64_cores(spelling.encode("utf-8"))):
            if len(core) >= _B64_MIN_LEN:
                out += [core, core.translate(str.maketrans("+/", "-_"))]
    data = secret.encode("utf-8")
    # Base64 of the base64 (padded and not), as a service that wraps a blob twice sends it.
    for inner in dict.fromkeys((base64.b64encode(data), base64.b64encode(data).rstrip(b"="))):
        for core in (base64.b64encode(inner).decode("ascii"), *_b64_cores(inner)):
            if len(core) >= _B64_MIN_LEN:
                out += [core, core.translate(str.maketrans("+/", "-_"))]
    # Base32 (RFC 4648), upper and lower case, at each of the five byte alignments.
    for core in (base64.b32encode(data).decode("ascii"), *_b32_cores(data)):
        if len(core) >= _B64_MIN_LEN:
            out += [core, core.lower()]
    return list(dict.fromkeys(out))


def _b32_cores(data: bytes) -> list[str]:
    """The base32 characters that ``data`` alone determines, at each byte alignment (as
    :func:`_b64_cores`, with 5-bit characters in 5-byte groups)."""
    out: list[str] = []
    for a in range(5):
        enc = base64.b32encode(b"\0" * a + data).decode("ascii")
        start, end = -(-8 * a // 5), (8 * (a + len(data))) // 5
        out.append(enc[start:end])
    return out


def secret_forms(secret: str) -> list[str]:
    """Every spelling of ``secret`` that :func:`redact` removes and the scan looks for.

    Raw, upper and lower case, percent-encoded (reserved characters only, every byte,
    ``+`` for spaces), JSON- and HTML-escaped (also every character as ``\\uXXXX`` or
    ``&#N;``/``&#xH;``), hex of UTF-8 and UTF-16, reversed, spaced out, the base64 cores
    (standard and URL-safe) at byte alignments 0, 1 and 2, of the value and of its
    base64, and base32 at every alignment. Case-insensitive matching applies to every
    form but the base64 ones when the value has at least 10 characters.
    """
    if not secret:
        return []
    forms = []
    for f in _case_forms(secret):
        forms += [f, f.upper(), f.lower()]
    forms += _exact_forms(secret)
    return [f for f in dict.fromkeys(forms) if f and f.lower() not in REDACTED.lower()]


def _trie_regex(words: Iterable[str]) -> str:
    """One regex matching any of ``words`` (longest first), alternatives sharing prefixes."""
    root: dict[str, Any] = {}
    for w in words:
        node = root
        for ch in w:
            node = node.setdefault(ch, {})
        node[""] = {}

    def build(node: dict[str, Any]) -> str:
        alts = []
        for ch, sub in sorted(node.items()):
            if not ch:
                continue
            # Follow a chain of single children iteratively: recursion only at branches.
            run = [ch]
            while len(sub) == 1 and "" not in sub:
                ((nxt, sub),) = sub.items()
                run.append(nxt)
            alts.append(re.escape("".join(run)) + build(sub))
        if not alts:
            return ""
        body = alts[0] if len(alts) == 1 else "(?:" + "|".join(alts) + ")"
        if "" in node:
            body = "(?:" + body + ")?"
        return body

    return build(root) if root else ""


@lru_cache(maxsize=4096)
def _forms_of(v: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(forms matched case-insensitively, in lower case; forms matched exactly) of one
    secret, computed once per secret however often its chunk is recompiled."""
    case = _case_forms(v)
    keep = REDACTED.lower()
    if len(v) >= _FOLD_MIN_LEN:
        folded = {f.lower() for f in case}
        exact: set[str] = set()
    else:
        folded = set()
        exact = {x for f in case for x in (f, f.upper(), f.lower())}
    exact.update(_exact_forms(v))
    return (
        tuple(f for f in folded if f and f not in keep),
        tuple(f for f in exact if f and f.lower() not in keep),
    )


def _pattern_source(values: frozenset[str]) -> str:
    folded: set[str] = set()
    exact: set[str] = set()
    for v in values:
        if v and len(v) >= _MIN_LEN:
            f, e = _forms_of(v)
            folded.update(f)
            exact.update(e)
    parts = []
    if folded:
        parts.append("(?i:" + _trie_regex(folded) + ")")
    if exact:
        parts.append(_trie_regex(exact))
    return "|".join(parts)


@lru_cache(maxsize=512)
def _text_regex(values: frozenset[str]) -> re.Pattern[str] | None:
    src = _pattern_source(values)
    return re.compile(src) if src else None


@lru_cache(maxsize=512)
def _bytes_regex(values: frozenset[str]) -> re.Pattern[bytes] | None:
    src = _pattern_source(values)
    return re.compile(src.encode("utf-8")) if src else None


# Secrets are compiled in chunks, in registration order: full chunks of _CHUNK, then
# the rest split by powers of two (43 = 32 + 8 + 2 + 1). A new secret changes only the
# small trailing chunks (the others stay compiled), so registering n secrets (a token
# per simulated user, redacting between registrations) costs about O(n log n)
# compilation, and a text is searched by at most n / _CHUNK + log2(_CHUNK) patterns.
_CHUNK = 64


def _chunks(extra: Iterable[str]) -> list[frozenset[str]]:
    with _lock:
        values = dict(_secrets)
    for v in extra:
        if v and len(v) >= _MIN_LEN:
            values.setdefault(v, None)
    order = list(values)
    full = len(order) - len(order) % _CHUNK
    out = [frozenset(order[i : i + _CHUNK]) for i in range(0, full, _CHUNK)]
    i = full
    for bit in reversed(range(_CHUNK.bit_length())):
        size = 1 << bit
        if (len(order) - full) & size:
            out.append(frozenset(order[i : i + size]))
            i += size
    return out


def _text_regexes(extra: Iterable[str] = ()) -> list[re.Pattern[str]]:
    return [rx for c in _chunks(extra) if (rx := _text_regex(c)) is not None]


def find_secrets(text: str, extra: Iterable[str] = ()) -> list[str]:
    """Every occurrence, in any form, of a registered secret (or one of ``extra``) in ``text``."""
    if not text:
        return []
    return [m.group(0) for rx in _text_regexes(extra) for m in rx.finditer(text)]


def secret_spans(text: str) -> list[tuple[int, int]]:
    """(start, end) of every occurrence, in any form, of a registered secret in ``text``."""
    if not text:
        return []
    return [m.span() for rx in _text_regexes() for m in rx.finditer(text)]


def count_secrets(data: bytes | str, extra: Iterable[str] = ()) -> int:
    """How many occurrences, in any form, of a registered secret (or one of ``extra``).

    Bytes are searched as they are (a file of the run folder, binary or text).
    """
    if not data:
        return 0
    if isinstance(data, str):
        return len(find_secrets(data, extra))
    regexes = [rx for c in _chunks(extra) if (rx := _bytes_regex(c)) is not None]
    return sum(1 for rx in regexes for _ in rx.finditer(data))


# ------------------------------------------------------------------ redaction


def redact(text: str) -> str:
    """``text`` with every registered secret (any form), JWT and credential header value replaced.

    Idempotent: ``redact(redact(t)) == redact(t)``.
    """
    if not text:
        return text
    for rx in _text_regexes():
        text = rx.sub(REDACTED, text)
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
