"""Cloud Logging's filter language and the sandbox's log store.

The sandbox answers ``entries:list`` for the real ``google.cloud.logging``
client, so the filters the runbook sends (and the ones a person types into
``gcloud logging read``) are parsed here: comparisons on dotted field paths,
severity and timestamp ordering, bare global terms, ``AND`` / ``OR`` / ``NOT`` /
``-``, implicit AND and parentheses, with Google's precedence.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from .wire import parse_time

__all__ = ["SEVERITIES", "FilterError", "LogStore", "Predicate", "compile_filter"]

# Cloud Logging's LogSeverity ranks: filters compare severities by rank, not by name.
SEVERITIES: dict[str, int] = {
    "DEFAULT": 0,
    "DEBUG": 100,
    "INFO": 200,
    "NOTICE": 300,
    "WARNING": 400,
    "ERROR": 500,
    "CRITICAL": 600,
    "ALERT": 700,
    "EMERGENCY": 800,
}


class FilterError(ValueError):
    """A Cloud Logging filter that does not parse (Google answers 400 INVALID_ARGUMENT)."""


Predicate = Callable[[Mapping[str, Any]], bool]

_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lpar>\()|(?P<rpar>\))|
        (?P<op>>=|<=|!=|=~|!~|=|<|>|:)|
        (?P<str>"(?:[^"\\]|\\.)*")|
        (?P<word>[^\s()"<>=!:]+)
    )""",
    re.VERBOSE,
)


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"unexpected character {text[pos:].strip()[:1]!r} at offset {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
    return tokens


def _lookup(entry: Mapping[str, Any], path: str) -> Any:
    node: Any = entry
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _compare(field_name: str, actual: Any, op: str, expected: str) -> bool:
    if actual is None:
        return False
    if op == ":":
        return expected.lower() in _flatten(actual).lower()
    if op in ("=~", "!~"):
        try:
            found = re.search(expected, _flatten(actual)) is not None
        except re.error:
            return False
        return found if op == "=~" else not found
    left: Any
    right: Any
    if field_name == "severity":
        left = SEVERITIES.get(str(actual).upper(), 0)
        right = SEVERITIES.get(expected.upper())
        if right is None:
            return False
    elif field_name.endswith("timestamp") or field_name.endswith("Timestamp"):
        try:
            left, right = parse_time(str(actual)), parse_time(expected)
        except ValueError:
            return False
    elif isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            left, right = actual, float(expected)
        except ValueError:
            left, right = str(actual), expected
    else:
        # Google: "String comparisons aren't case sensitive" (= and != included).
        left, right = str(actual).lower(), expected.lower()
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]


def _flatten(value: Any) -> str:
    if isinstance(value, Mapping):
        return " ".join(_flatten(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return " ".join(_flatten(v) for v in value)
    return str(value)


class _Parser:
    """Recursive descent over Cloud Logging's query language subset.

    Precedence as documented by Google: NOT binds tightest, then OR, then AND
    (so ``a OR b AND c`` means ``(a OR b) AND c``); juxtaposition is AND.
    """

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise FilterError("unexpected end of filter")
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        if not self.tokens:
            return lambda _e: True
        pred = self.and_expr()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def and_expr(self) -> Predicate:
        parts = [self.or_expr()]
        while (tok := self.peek()) is not None and tok[0] != "rpar":
            if tok == ("word", "AND"):
                self.take()
            parts.append(self.or_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda e: all(p(e) for p in parts)

    def or_expr(self) -> Predicate:
        parts = [self.unary()]
        while self.peek() == ("word", "OR"):
            self.take()
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        return lambda e: any(p(e) for p in parts)

    def unary(self) -> Predicate:
        tok = self.peek()
        if tok == ("word", "NOT"):
            self.take()
            inner = self.unary()
            return lambda e: not inner(e)
        if tok is not None and tok[0] == "word" and tok[1].startswith("-") and len(tok[1]) > 1:
            self.tokens[self.i] = ("word", tok[1][1:])
            inner = self.unary()
            return lambda e: not inner(e)
        return self.primary()

    def primary(self) -> Predicate:
        kind, value = self.take()
        if kind == "lpar":
            inner = self.and_expr()
            if self.peek() is None or self.take()[0] != "rpar":
                raise FilterError("missing ')'")
            return inner
        if kind in ("rpar", "op"):
            raise FilterError(f"unexpected {value!r}")
        if value in ("AND", "OR") and kind == "word":
            raise FilterError(f"{value} needs an expression on both sides")
        nxt = self.peek()
        if kind == "word" and nxt is not None and nxt[0] == "op":
            op = self.take()[1]
            vkind, expected = self.take()
            if vkind not in ("word", "str"):
                raise FilterError(f"expected a value after {value}{op}")
            name = value
            return lambda e: _compare(name, _lookup(e, name), op, expected)
        # A bare value is a global restriction: a substring of any field.
        needle = value.lower()
        return lambda e: needle in _flatten(e).lower()


def compile_filter(text: str) -> Predicate:
    """Compile a Cloud Logging filter into a predicate over LogEntry JSON dicts.

    Supports comparisons (``= != < <= > >= : =~ !~``) on dotted field paths,
    severity and timestamp ordering, bare global terms, ``AND`` / ``OR`` / ``NOT``
    / ``-``, implicit AND and parentheses.

    Raises:
        FilterError: the filter is malformed.
    """
    return _Parser(_tokenize(text or "")).parse()


class LogStore:
    """Every log entry the sandbox produced, as Cloud Logging LogEntry JSON.

    Args:
        limit: entries kept (the oldest are dropped first).
        delay_s: ingestion delay: an entry is listed only ``delay_s`` seconds after its
            ``timestamp``, as real entries arrive seconds to minutes late.
        clock: wall-clock seconds (injected in tests).
    """

    def __init__(
        self, limit: int = 50_000, *, delay_s: float = 0.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._entries: list[dict[str, Any]] = []
        self._visible_at: list[float] = []
        self._limit = limit
        self._seq = 0
        self.delay_s = max(0.0, float(delay_s))
        self._clock = clock

    def append(self, entry: dict[str, Any]) -> None:
        """Store one entry (an ``insertId`` is assigned when missing)."""
        self._seq += 1
        entry.setdefault("insertId", f"{self._seq:012d}")
        try:
            written = parse_time(str(entry["timestamp"])).timestamp()
        except (KeyError, ValueError):
            written = self._clock()
        self._entries.append(entry)
        self._visible_at.append(written)
        if len(self._entries) > self._limit:
            # Bounded memory: a long sandbox session drops its oldest entries first.
            del self._entries[: len(self._entries) - self._limit]
            del self._visible_at[: len(self._visible_at) - self._limit]

    def __len__(self) -> int:
        return len(self._entries)

    def query(
        self,
        *,
        resource_names: Iterable[str] = (),
        filter_text: str = "",
        order_by: str = "",
        page_size: int = 50,
        page_token: str = "",
    ) -> dict[str, Any]:
        """Answer an ``entries:list`` request body (see the Cloud Logging REST reference).

        Raises:
            FilterError: malformed filter, order or page token.
        """
        pred = compile_filter(filter_text)
        projects = {n.split("/", 1)[1] for n in resource_names if n.startswith("projects/")}
        cutoff = self._clock() - self.delay_s
        rows = [
            e
            for e, at in zip(self._entries, self._visible_at, strict=True)
            if at <= cutoff and (not projects or e["logName"].split("/")[1] in projects) and pred(e)
        ]
        order = order_by.strip().lower()
        if order not in ("", "timestamp", "timestamp asc", "timestamp desc"):
            raise FilterError(f"invalid orderBy {order_by!r}: use 'timestamp asc|desc'")
        rows.sort(
            key=lambda e: (parse_time(e["timestamp"]), e["insertId"]),
            reverse=order.endswith("desc"),
        )
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode()) if page_token else 0
        except ValueError as exc:
            raise FilterError(f"invalid pageToken {page_token!r}") from exc
        size = max(1, min(int(page_size or 50), 1000))
        page = rows[start : start + size]
        out: dict[str, Any] = {"entries": page}
        if start + size < len(rows):
            out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return out
