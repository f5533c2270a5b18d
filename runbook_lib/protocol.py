"""Protocol profiles: render outgoing messages, classify incoming frames.

Real services differ in where they put an event's type, user and run ids (flat
at the root, under ``data`` or under ``payload``), in the frames they send that
are not events (welcome, heartbeat, ack, pong) and in their message shapes.
All of that is :class:`ProtocolSettings` (``[protocol]``); this module is
the one place that reads it. Parsing never raises: a binary, non-JSON or
oversized frame is a :class:`Frame` of the matching :class:`FrameKind`.

Text protocols (``[protocol] format = "text"``) are classified by regular
expressions: ``pong_pattern`` (an ignorable pong), ``error_pattern`` (an error
frame) and ``event_patterns`` (event type -> regex). Patterns may hold
placeholders: ``{marker}`` and friends are replaced by the escaped value when
the caller knows it, otherwise they become a named group that captures it
(``"^\\[(?P<room>\\S+)\\] {user_id}: "`` attributes a chat line to its user).
Named groups ``user_id``/``run_id``/``marker`` of the matching pattern fill the
frame's ids; every named group is kept in :attr:`Frame.fields`.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, cast

from .redaction import redact_excerpt

__all__ = [
    "MAX_PARSE_BYTES",
    "PLACEHOLDERS",
    "Frame",
    "FrameKind",
    "ProtocolSettings",
    "compile_pattern",
    "first_path",
    "frame_text",
    "get_path",
    "has_path",
    "parse_frame",
    "pattern_error",
    "placeholder_names",
    "placeholder_re",
    "render_message",
    "render_pattern",
    "render_template",
    "render_values",
]


@dataclass(frozen=True, slots=True)
class ProtocolSettings:
    """``[protocol]``: message templates and where fields live in frames."""

    ping: Any = field(default_factory=lambda: {"type": "ping"})
    pong_types: tuple[str, ...] = ("pong",)
    agent_request: Any = field(
        default_factory=lambda: {
            "type": "agent_execute",
            "data": {"message": "{text}", "thread_id": "{thread_id}", "run_id": "{run_id}"},
        }
    )
    chat_message: Any = field(
        default_factory=lambda: {
            "type": "chat_message",
            "data": {"message": "{text}", "thread_id": "{thread_id}", "run_id": "{run_id}"},
        }
    )
    event_type: tuple[str, ...] = ("type", "data.type", "payload.type")
    user_id: tuple[str, ...] = ("user_id", "data.user_id", "payload.user_id")
    run_id: tuple[str, ...] = ("run_id", "data.run_id", "payload.run_id")
    ignore: tuple[str, ...] = ("welcome", "connected", "heartbeat", "ack", "pong")
    error_types: tuple[str, ...] = ("error",)
    # SPEC section 8: frame format, subprotocols offered on every connect, text patterns.
    format: str = "json"
    subprotocols: tuple[str, ...] = ()
    pong_pattern: str = ""
    error_pattern: str = ""
    event_patterns: Mapping[str, str] = field(default_factory=dict)
    shared_room: bool = False
    critical_events: tuple[str, ...] = (
        "agent_started",
        "agent_thinking",
        "tool_executing",
        "tool_completed",
        "agent_completed",
    )
    required_fields: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: {
            "agent_started": ("type", "user_id", "run_id", "timestamp", "agent_name"),
            "agent_thinking": ("type", "user_id", "run_id", "timestamp", "reasoning"),
            "tool_executing": ("type", "user_id", "run_id", "timestamp", "tool_name"),
            "tool_completed": ("type", "user_id", "run_id", "timestamp", "tool_name", "results"),
            "agent_completed": ("type", "user_id", "run_id", "timestamp", "final_response"),
        }
    )


# Frames above this size are classified, not parsed: a 10 MB JSON blob is not an event
# any agent protocol sends, and parsing it would stall the observer.
MAX_PARSE_BYTES = 1_000_000
PLACEHOLDERS = ("text", "user_id", "thread_id", "run_id", "marker")
# ``{name}`` where name is an identifier: never a regex quantifier, never JSON (``{"``).
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_EXCERPT = 200
_MISSING = object()


class FrameKind(StrEnum):
    """What a received frame turned out to be."""

    EVENT = "event"  # JSON with a type that is neither ignorable nor an error
    IGNORED = "ignored"  # welcome / heartbeat / ack / pong
    ERROR = "error"  # a frame whose type is one of ``error_types``
    UNTYPED = "untyped"  # JSON without a type at any path; text matching no pattern
    NON_JSON = "non_json"  # text that is not JSON
    BINARY = "binary"  # bytes that are not UTF-8 JSON
    OVERSIZED = "oversized"  # larger than MAX_PARSE_BYTES: not parsed


@dataclass(frozen=True, slots=True)
class Frame:
    """One received frame, classified.

    Attributes:
        t: arrival time in seconds since the reference moment (usually the send).
        size: raw size in bytes.
        kind: classification (see :class:`FrameKind`).
        event_type: the type found at the first matching ``event_type`` path.
        user_id: the user id found at the first matching ``user_id`` path.
        run_id: the run id found at the first matching ``run_id`` path.
        binary: True when the frame arrived as a binary frame.
        data: the parsed JSON value (None unless JSON).
        excerpt: the first characters of the frame, redacted (for the record).
        fields: named groups of the text pattern that classified the frame (text format).
        marker: the ``marker`` group of that pattern, when it has one.
    """

    t: float
    size: int
    kind: FrameKind
    event_type: str | None = None
    user_id: str | None = None
    run_id: str | None = None
    binary: bool = False
    data: Any = None
    excerpt: str = ""
    fields: Mapping[str, str] = field(default_factory=dict)
    marker: str | None = None

    @property
    def is_event(self) -> bool:
        """True for a typed, non-ignorable, non-error JSON frame."""
        return self.kind is FrameKind.EVENT

    @property
    def is_error(self) -> bool:
        """True for an error frame."""
        return self.kind is FrameKind.ERROR

    @property
    def ignorable(self) -> bool:
        """True for welcome, heartbeat, ack and pong frames."""
        return self.kind is FrameKind.IGNORED

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary (no payload beyond the redacted excerpt)."""
        return {
            "t": round(self.t, 4),
            "size": self.size,
            "kind": str(self.kind),
            "event_type": self.event_type,
            "user_id": self.user_id,
            "run_id": self.run_id,
            "binary": self.binary,
            "excerpt": self.excerpt,
            "marker": self.marker,
        }


def get_path(obj: Any, path: str, default: Any = None) -> Any:
    """Value at dotted ``path`` (``"data.type"``) inside nested mappings, else ``default``.

    Integer segments index into lists (``"items.0.id"``).
    """
    cur = obj
    for part in path.split("."):
        if isinstance(cur, Mapping) and part in cur:
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return default
    return cur


def has_path(obj: Any, path: str) -> bool:
    """True when ``path`` exists in ``obj`` (even if its value is null)."""
    return get_path(obj, path, _MISSING) is not _MISSING


def first_path(obj: Any, paths: Iterable[str]) -> str | None:
    """First non-empty scalar found at any of ``paths``, as a string (None if none)."""
    for path in paths:
        value = get_path(obj, path)
        if value is None or isinstance(value, (Mapping, list)):
            continue
        text = str(value)
        if text:
            return text
    return None


def placeholder_re() -> re.Pattern[str]:
    """The regex of a ``{name}`` placeholder (group 1 = the name)."""
    return _PLACEHOLDER


def placeholder_names(template: Any) -> set[str]:
    """Every ``{name}`` placeholder of ``template`` (a string, or every string of a table)."""
    if isinstance(template, str):
        return set(_PLACEHOLDER.findall(template))
    if isinstance(template, Mapping):
        return set().union(*(placeholder_names(v) for v in template.values()))
    if isinstance(template, (list, tuple)):
        return set().union(*(placeholder_names(v) for v in template))
    return set()


def _substitute(text: str, values: Mapping[str, str]) -> str:
    # Plain replacement (not str.format) so literal JSON braces in templates survive. The
    # seed's placeholders always render (empty when unknown); other names (captures) only
    # when given, so a template's own ``{word}`` text is never eaten.
    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in values:
            return str(values[name])
        return "" if name in PLACEHOLDERS else m.group(0)

    return _PLACEHOLDER.sub(one, text)


def _render_obj(template: Any, values: Mapping[str, str]) -> Any:
    if isinstance(template, str):
        return _substitute(template, values)
    if isinstance(template, Mapping):
        return {str(k): _render_obj(v, values) for k, v in template.items()}
    if isinstance(template, (list, tuple)):
        return [_render_obj(v, values) for v in template]
    return template


def render_values(template: Any, values: Mapping[str, str]) -> str:
    """Render a template with any placeholder values (seed names, ``marker``, captures).

    A string template becomes the text frame itself; a table (or list) has its string
    leaves substituted and is serialised as compact JSON.
    """
    if isinstance(template, str):
        return _substitute(template, values)
    return json.dumps(_render_obj(template, values), separators=(",", ":"))


def render_pattern(pattern: str, values: Mapping[str, str]) -> str:
    """``pattern`` with placeholders replaced by their escaped values.

    A placeholder without a value becomes a named group that captures it (the first
    occurrence ``(?P<name>.+?)``, later ones a back-reference), so an unknown marker or
    user id is read from the frame instead of breaking the match.
    """
    seen: set[str] = set()

    def one(m: re.Match[str]) -> str:
        name = m.group(1)
        if name in values and values[name] != "":
            return re.escape(str(values[name]))
        if name in seen:
            return f"(?P={name})"
        seen.add(name)
        return f"(?P<{name}>.+?)"

    return _PLACEHOLDER.sub(one, pattern)


# What render_pattern writes for a placeholder's second occurrence (a back-reference).
_BACKREF = re.compile(r"\(\?P=([A-Za-z_][A-Za-z0-9_]*)\)")


def _re2_options() -> Any:
    import re2

    opts = re2.Options()
    opts.log_errors = False  # a refused pattern is reported to the user, not printed by RE2
    return opts


class PatternMatch:
    """A match of a :class:`LinearPattern` (the subset of ``re.Match`` the runbook reads)."""

    __slots__ = ("_m",)

    def __init__(self, m: Any) -> None:
        self._m = m

    def groupdict(self) -> dict[str, str | None]:
        return cast("dict[str, str | None]", self._m.groupdict())

    def group(self, name: str | int = 0) -> str | None:
        return cast("str | None", self._m.group(name))

    @property
    def groupindex(self) -> Mapping[str, int]:
        return cast("Mapping[str, int]", self._m.re.groupindex)


class LinearPattern:
    """A regular expression that runs in time linear in the text (RE2: no backtracking).

    A catastrophic pattern such as ``^(a+)+$`` cannot hold the process: RE2 has no
    exponential case. Back-references and lookarounds have no linear-time algorithm, so
    a user's pattern using them is refused (:func:`pattern_error`). The one
    back-reference :func:`render_pattern` writes itself (a placeholder that occurs twice)
    is matched in two linear passes: find the first value, then require it again.
    """

    __slots__ = ("_rx", "_same", "pattern")

    def __init__(self, rendered: str) -> None:
        """Compile ``rendered`` (a pattern from :func:`render_pattern`).

        Raises:
            ValueError: RE2 refuses the pattern (invalid, or a construct it cannot run).
        """
        self.pattern = rendered
        self._same = tuple(dict.fromkeys(_BACKREF.findall(rendered)))
        self._rx = _re2(_BACKREF.sub(".+?", rendered) if self._same else rendered)

    @property
    def groupindex(self) -> Mapping[str, int]:
        """Named groups of the pattern -> their index (as ``re.Pattern.groupindex``)."""
        return cast("Mapping[str, int]", self._rx.groupindex)

    def search(self, text: str) -> PatternMatch | None:
        """The first match in ``text`` (None when there is none)."""
        m = self._rx.search(text)
        if m is None or not self._same:
            return None if m is None else PatternMatch(m)
        exact = self.pattern
        for name in self._same:
            value = m.group(name)
            if value is None:
                return None
            literal = re.escape(value)
            exact = exact.replace(f"(?P={name})", literal).replace(
                f"(?P<{name}>.+?)", f"(?P<{name}>{literal})", 1
            )
        m = _re2(exact).search(text)
        return None if m is None else PatternMatch(m)


@functools.lru_cache(maxsize=512)
def _re2(pattern: str) -> Any:
    import re2

    try:
        return re2.compile(pattern, _re2_options())
    except re2.error as exc:
        raise ValueError(_re2_words(exc)) from exc


def _re2_words(exc: Exception) -> str:
    raw = exc.args[0] if exc.args else exc
    words = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
    if "invalid perl operator" in words or "invalid escape" in words:
        words += (
            " (lookarounds and back-references are refused: they have no linear-time "
            "matcher, and a pattern must not be able to hold the runbook on a hostile frame)"
        )
    return words


@functools.lru_cache(maxsize=512)
def _compile(pattern: str) -> LinearPattern | None:
    try:
        return LinearPattern(pattern)
    except ValueError:
        return None


def compile_pattern(pattern: str, values: Mapping[str, str] | None = None) -> LinearPattern | None:
    """The compiled, rendered ``pattern`` (None when it is not a valid regex); cached.

    Matching runs in linear time (RE2), whatever the pattern and the frame.
    """
    return _compile(render_pattern(pattern, values or {}))


def pattern_error(pattern: str) -> str:
    """Why ``pattern`` (placeholders allowed) cannot be used ('' when it can)."""
    try:
        re.compile(render_pattern(pattern, {}))
    except (re.error, RecursionError, OverflowError) as exc:
        return str(exc)
    try:
        LinearPattern(render_pattern(pattern, {}))
    except ValueError as exc:
        return str(exc)
    return ""


def frame_text(message: str | bytes | bytearray | memoryview, limit: int | None = None) -> str:
    """The text of a frame for pattern matching (bytes decoded leniently), cut at ``limit``."""
    if isinstance(message, str):
        return message if limit is None else message[:limit]
    raw = bytes(message) if limit is None else bytes(message[:limit])
    return raw.decode("utf-8", "replace")


def render_template(
    template: Any,
    *,
    text: str = "",
    user_id: str = "",
    thread_id: str = "",
    run_id: str = "",
    marker: str = "",
) -> str:
    """Render a message template to the text frame to send.

    A table template (dict) has ``{text}`` ``{user_id}`` ``{thread_id}`` ``{run_id}``
    ``{marker}`` substituted in its string leaves and is serialised as JSON; a string
    template has only those placeholders replaced (other braces are kept verbatim).
    """
    values = {
        "text": text,
        "user_id": user_id,
        "thread_id": thread_id,
        "run_id": run_id,
        "marker": marker,
    }
    return render_values(template, values)


def render_message(protocol: ProtocolSettings, name: str, **values: str) -> str:
    """Render the configured template ``name`` (``ping``, ``agent_request``, ``chat_message``).

    Raises:
        ValueError: ``name`` is not a template of the protocol.
    """
    if name not in ("ping", "agent_request", "chat_message"):
        raise ValueError(f"unknown message template {name!r}")
    return render_template(getattr(protocol, name), **values)


def _excerpt(text: str) -> str:
    return redact_excerpt(text, _EXCERPT, "…")


def parse_frame(
    message: str | bytes | bytearray | memoryview,
    protocol: ProtocolSettings,
    *,
    t: float = 0.0,
    max_parse_bytes: int = MAX_PARSE_BYTES,
    values: Mapping[str, str] | None = None,
) -> Frame:
    """Classify one received frame; never raises.

    Args:
        message: the frame as received (``str`` for text frames, bytes for binary).
        protocol: where types and ids live, which types are ignorable or errors;
            ``format = "text"`` classifies by its patterns instead of JSON paths.
        t: arrival time to record (seconds since the reference moment).
        max_parse_bytes: frames larger than this are ``OVERSIZED`` and not parsed.
        values: placeholder values for text patterns (``marker``, ``user_id``...);
            placeholders without a value capture whatever stands there.
    """
    binary = not isinstance(message, str)
    raw: bytes = (
        message.encode("utf-8", "surrogatepass") if isinstance(message, str) else bytes(message)
    )
    size = len(raw)
    if size > max_parse_bytes:
        # Read past the cut so a secret crossing it is redacted whole (see redact_excerpt).
        head = raw[: _EXCERPT + 4096].decode("utf-8", "replace")
        return Frame(
            t=t, size=size, kind=FrameKind.OVERSIZED, binary=binary, excerpt=_excerpt(head)
        )
    if binary:
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return Frame(t=t, size=size, kind=FrameKind.BINARY, binary=True, excerpt=raw[:32].hex())
    else:
        text = message  # type: ignore[assignment]
    if protocol.format == "text":
        return _classify_text(text, protocol, values or {}, t=t, size=size, binary=binary)
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        kind = FrameKind.BINARY if binary else FrameKind.NON_JSON
        return Frame(t=t, size=size, kind=kind, binary=binary, excerpt=_excerpt(text))
    event_type = first_path(data, protocol.event_type) if isinstance(data, Mapping) else None
    user_id = first_path(data, protocol.user_id) if isinstance(data, Mapping) else None
    run_id = first_path(data, protocol.run_id) if isinstance(data, Mapping) else None
    if event_type is None:
        kind = FrameKind.UNTYPED
    elif event_type in protocol.error_types:
        kind = FrameKind.ERROR
    elif event_type in protocol.ignore or event_type in protocol.pong_types:
        kind = FrameKind.IGNORED
    else:
        kind = FrameKind.EVENT
    return Frame(
        t=t,
        size=size,
        kind=kind,
        event_type=event_type,
        user_id=user_id,
        run_id=run_id,
        binary=binary,
        data=data,
        excerpt=_excerpt(text),
    )


def _classify_text(
    text: str,
    protocol: ProtocolSettings,
    values: Mapping[str, str],
    *,
    t: float,
    size: int,
    binary: bool,
) -> Frame:
    """A text-format frame, classified by the first pattern that matches it."""
    candidates: list[tuple[str, str, FrameKind]] = []
    if protocol.error_pattern:
        candidates.append(("error", protocol.error_pattern, FrameKind.ERROR))
    if protocol.pong_pattern:
        candidates.append(("pong", protocol.pong_pattern, FrameKind.IGNORED))
    for etype, pattern in protocol.event_patterns.items():
        if etype in protocol.error_types:
            kind = FrameKind.ERROR
        elif etype in protocol.ignore or etype in protocol.pong_types:
            kind = FrameKind.IGNORED
        else:
            kind = FrameKind.EVENT
        candidates.append((str(etype), str(pattern), kind))
    for etype, pattern, kind in candidates:
        rx = compile_pattern(pattern, values)
        m = rx.search(text) if rx is not None else None
        if m is None:
            continue
        groups = {k: v for k, v in m.groupdict().items() if v is not None}
        return Frame(
            t=t,
            size=size,
            kind=kind,
            event_type=etype,
            user_id=groups.get("user_id") or _known(values, "user_id", pattern),
            run_id=groups.get("run_id") or _known(values, "run_id", pattern),
            binary=binary,
            excerpt=_excerpt(text),
            fields=groups,
            marker=groups.get("marker") or _known(values, "marker", pattern),
        )
    return Frame(t=t, size=size, kind=FrameKind.UNTYPED, binary=binary, excerpt=_excerpt(text))


def _known(values: Mapping[str, str], name: str, pattern: str) -> str | None:
    """``values[name]`` when ``pattern`` matched it as a literal placeholder."""
    if "{" + name + "}" in pattern and values.get(name):
        return values[name]
    return None
