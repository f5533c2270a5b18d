"""Flows: a service's conversation as data (SPEC section 8).

A flow is an ordered list of steps; each step either sends a rendered template or
waits, within a bounded time, for a frame that matches. Values captured from one
frame can be used in later templates (subscribe -> publish -> notification,
GraphQL ``connection_init`` -> ``subscribe`` -> ``next``). The checks that talk to
a service run named flows: ``agent`` (``e2e.agent_response``, ``events.*``),
``chat`` (``chat.flow``), ``load`` (each load session), ``isolation`` (each
simulated user) and ``auth`` (``auth.*``: the conversation that proves a token is
accepted; with ``[auth] mode = "message"`` it sends ``{token}`` and runs first in
every other flow that does not send it itself). The seed's protocol gives the default flows.

This module is pure (no I/O): the model (``settings_rules`` parses ``[flows.NAME]``
tables into :class:`Flow`), the engine that renders a step's template
(:func:`render_step`), matches a received frame against an expect step
(:func:`match_step`) and captures values, the seed's default flows
(:func:`default_flows`; ``settings.resolve_flow`` picks the user's flow or the
default), and the record of one run of a flow
(:class:`FlowObservation`) that the I/O side (``flow_runner.run_flow``) fills.

Matching rules (all must hold for a frame to satisfy an expect step):

* ``expect``: every dotted path of the parsed JSON frame holds the rendered value
  (strings compare as text, so ``"1"`` matches ``1``); never a text-format frame.
* ``expect_pattern``: the rendered regex is found in the frame's text (values are
  escaped; a placeholder without a value captures what stands there).
* ``expect_event``: the frame's event type (``[protocol] event_type`` paths for
  JSON, ``event_patterns`` for text) equals the rendered value; ``"*"`` = any event.
* every ``capture`` is found (a JSON path, or a named group of the pattern).

An error frame (``error_types`` / ``error_pattern``) that the step does not expect
ends the step (``error_frame``), as the seed's agent run did. A frame that carries
another user's id, another run's id (once ours was echoed) or another user's marker
never satisfies a step.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .protocol import (
    PLACEHOLDERS,
    Frame,
    FrameKind,
    LinearPattern,
    PatternMatch,
    compile_pattern,
    get_path,
    placeholder_names,
    placeholder_re,
    render_values,
)

if TYPE_CHECKING:
    from .protocol import ProtocolSettings

__all__ = [
    "FLOW_NAMES",
    "LOAD_SESSION_NAMES",
    "Flow",
    "FlowFrame",
    "FlowObservation",
    "FlowStep",
    "LoadMatcher",
    "SessionTemplate",
    "StepOutcome",
    "default_flows",
    "describe_step",
    "flow_values",
    "is_foreign",
    "load_flow_problem",
    "load_session_names",
    "match_step",
    "new_marker",
    "render_step",
]

# The flows the checks run, by name. Users may define others; these are the ones read.
FLOW_NAMES = ("agent", "chat", "load", "isolation", "auth")


@dataclass(frozen=True, slots=True)
class FlowStep:
    """One step of a flow: exactly one of ``send``, ``expect``, ``expect_pattern``, ``expect_event``.

    Attributes:
        send: a template to send: a string (sent as a text frame) or a table (sent as
            JSON). Placeholders: ``{marker}``, ``{user_id}``, ``{run_id}``,
            ``{thread_id}``, ``{text}`` and any name captured earlier.
        expect: dotted path -> value; a JSON frame matches when every path holds the
            (rendered) value.
        expect_pattern: a regular expression searched in the frame's text (text or JSON).
        expect_event: an event type, found at the ``[protocol] event_type`` paths (JSON)
            or by ``[protocol] event_patterns`` (text).
        capture: name -> dotted path (JSON) or regex group name (with ``expect_pattern``);
            the captured value is usable as ``{name}`` in later steps.
        timeout_s: how long an expect step waits; ``None`` = the one default,
            :func:`reply_timeout_s` (``[thresholds] event_timeout_s``).
    """

    send: str | Mapping[str, Any] | None = None
    expect: Mapping[str, Any] | None = None
    expect_pattern: str | None = None
    expect_event: str | None = None
    capture: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None

    @property
    def kind(self) -> str:
        """``"send"`` or ``"expect"``."""
        return "send" if self.send is not None else "expect"


@dataclass(frozen=True, slots=True)
class Flow:
    """A named, ordered list of steps."""

    name: str
    steps: tuple[FlowStep, ...]


# ---------------------------------------------------------------- values and rendering


def new_marker() -> str:
    """A unique marker for one simulated user in one run (``mk`` + 12 hex digits)."""
    return "mk" + uuid.uuid4().hex[:12]


def flow_values(
    *,
    user_id: str = "runbook-user",
    run_id: str | None = None,
    thread_id: str | None = None,
    marker: str | None = None,
    text: str = "runbook end-to-end check",
    extra: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The placeholder values of one run of a flow (fresh run/thread ids and marker)."""
    values = {
        "user_id": user_id,
        "run_id": run_id or f"run-{uuid.uuid4().hex[:12]}",
        "thread_id": thread_id or f"thread-{uuid.uuid4().hex[:12]}",
        "marker": marker or new_marker(),
        "text": text,
    }
    values.update({str(k): str(v) for k, v in (extra or {}).items()})
    return values


def render_step(step: FlowStep, values: Mapping[str, str]) -> str:
    """The frame text a send step sends (a table is serialised as compact JSON).

    Raises:
        ValueError: ``step`` is not a send step.
    """
    if step.send is None:
        raise ValueError("not a send step")
    return render_values(step.send, values)


def describe_step(step: FlowStep) -> str:
    """One line saying what the step does (for reports; templates unrendered)."""
    if step.send is not None:
        shown = (
            step.send if isinstance(step.send, str) else json.dumps(dict(step.send), default=str)
        )
        return f"send {shown[:120]}"
    parts = []
    if step.expect:
        parts.append("fields " + ", ".join(f"{k} = {v!r}" for k, v in step.expect.items()))
    if step.expect_pattern:
        parts.append(f"pattern /{step.expect_pattern}/")
    if step.expect_event:
        parts.append(f"event {step.expect_event}")
    return "expect " + (" and ".join(parts) or "any frame")


# ---------------------------------------------------------------- matching


def _same(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, str):
        if actual is None or isinstance(actual, (Mapping, list)):
            return False
        if isinstance(actual, bool):
            return wanted.lower() == str(actual).lower()
        return str(actual) == wanted
    return bool(actual == wanted)


def _render_value(value: Any, values: Mapping[str, str]) -> Any:
    if isinstance(value, str):
        return render_values(value, values)
    if isinstance(value, Mapping):
        return json.loads(render_values(value, values))
    return value


def is_foreign(
    frame: Frame,
    text: str,
    values: Mapping[str, str],
    history: Sequence[Frame] = (),
    *,
    other_markers: Sequence[str] = (),
) -> bool:
    """True when ``frame`` belongs to someone else: another user's id, another run's id
    (once the server has echoed ours) or one of ``other_markers`` in its text."""
    uid, rid = values.get("user_id", ""), values.get("run_id", "")
    if (
        frame.user_id is not None
        and uid
        and frame.user_id != uid
        and any(f.user_id == uid for f in history)
    ):
        return True
    if (
        frame.run_id is not None
        and rid
        and frame.run_id != rid
        and any(f.run_id == rid for f in history)
    ):
        return True
    if frame.marker is not None and values.get("marker") and frame.marker != values["marker"]:
        return True
    return any(m and m != values.get("marker") and m in text for m in other_markers)


def match_step(
    step: FlowStep,
    frame: Frame,
    text: str,
    values: Mapping[str, str],
) -> dict[str, str] | None:
    """Captured values when ``frame`` satisfies the expect ``step``, else None.

    Args:
        step: an expect step.
        frame: the received frame, parsed.
        text: the frame's text (what ``expect_pattern`` searches).
        values: placeholder values so far (seed names, marker, earlier captures).
    """
    if step.send is not None:
        return None
    captured: dict[str, str] = {}
    if step.expect:
        if frame.data is None:
            return None
        for path, wanted in step.expect.items():
            if not _same(get_path(frame.data, str(path)), _render_value(wanted, values)):
                return None
    match: PatternMatch | None = None
    if step.expect_pattern:
        rx = compile_pattern(step.expect_pattern, values)
        match = rx.search(text) if rx is not None else None
        if match is None:
            return None
        captured.update({k: v for k, v in match.groupdict().items() if v is not None})
    if step.expect_event:
        wanted_type = render_values(step.expect_event, values)
        if wanted_type == "*":
            if not frame.is_event:
                return None
        elif frame.event_type != wanted_type:
            return None
    for name, path in step.capture.items():
        if match is not None and path in match.groupindex:
            value = match.group(path)
        elif frame.data is not None:
            value = get_path(frame.data, str(path))
        else:
            value = frame.fields.get(str(path))
        if value is None or isinstance(value, (Mapping, list)):
            return None
        captured[str(name)] = str(value)
    return captured


# ---------------------------------------------------------------- reply deadlines

# Without settings (a bare ProtocolSettings), the seed's 30 s.
DEFAULT_REPLY_TIMEOUT_S = 30.0


def reply_timeout_s(settings: Any = None) -> float:
    """The one reply deadline of an expect step that has no ``timeout_s`` of its own:
    ``[thresholds] event_timeout_s`` (default 30 s), in every check that runs a flow
    (``ws.roundtrip``, ``load.*``, the monitoring pings, agent, chat, isolation)."""
    thresholds = getattr(settings, "thresholds", None)
    return float(thresholds.event_timeout_s) if thresholds is not None else DEFAULT_REPLY_TIMEOUT_S


# ---------------------------------------------------------------- default flows


def default_flows(
    protocol: ProtocolSettings, event_timeout_s: float | None = None
) -> dict[str, Flow]:
    """The seed's flows, derived from ``[protocol]`` and the thresholds.

    * ``agent``: send ``agent_request``, expect the last critical event (``"*"``, any
      event, when no critical event is configured);
    * ``chat``: the same with ``chat_message``;
    * ``load``: send ``ping``, expect a pong (``pong_types`` for JSON, ``pong_pattern``
      for text);
    * ``isolation``: as ``agent``.
    """
    # The default flows' expect steps carry no deadline of their own: every check that
    # runs them waits the one default (reply_timeout_s), unless a caller names another.
    final = protocol.critical_events[-1] if protocol.critical_events else "*"
    done = FlowStep(expect_event=final, timeout_s=event_timeout_s)
    if protocol.format == "text" and protocol.pong_pattern:
        pong = FlowStep(expect_pattern=protocol.pong_pattern)
    else:
        pong = FlowStep(expect_event=protocol.pong_types[0] if protocol.pong_types else "pong")
    agent = Flow("agent", (FlowStep(send=protocol.agent_request), done))
    return {
        "agent": agent,
        "chat": Flow("chat", (FlowStep(send=protocol.chat_message), done)),
        "load": Flow("load", (FlowStep(send=protocol.ping), pong)),
        "isolation": Flow("isolation", agent.steps),
    }


# ---------------------------------------------------------------- the load engine's view

# Values that differ from one load session to the next: each session gets its own
# marker (a pub/sub topic per session, not one shared by thousands) and the token is
# never part of a plan. Captured names are per session too.
LOAD_SESSION_NAMES = ("marker", "token")


def _mentions(template: Any, names: frozenset[str]) -> bool:
    if template is None:
        return False
    return any(n in names for n in placeholder_names(template))


def load_session_names(steps: Sequence[FlowStep]) -> frozenset[str]:
    """The placeholder names whose value is per load session (marker, token, captures)."""
    names = set(LOAD_SESSION_NAMES)
    for s in steps:
        names.update(str(k) for k in s.capture)
        if s.expect_pattern:  # a named group captures too (match_step keeps it)
            names.update(re.findall(r"\(\?P<([A-Za-z_][A-Za-z0-9_]*)>", s.expect_pattern))
    return frozenset(names)


class SessionTemplate:
    """A template rendered once with the run's values; the per-session names left in it
    are filled by plain replacement (JSON-escaped inside a JSON frame), which renders
    what :func:`render_values` would, at a fraction of its cost per session."""

    __slots__ = ("is_json", "names", "text")

    def __init__(self, template: Any, values: Mapping[str, str], session: frozenset[str]):
        keep = {n: "{" + n + "}" for n in session}
        self.is_json = not isinstance(template, str)
        self.text = render_values(template, {**values, **keep})
        self.names = tuple(sorted(n for n in session if "{" + n + "}" in self.text))

    def render(self, values: Mapping[str, str]) -> str:
        text = self.text
        for name in self.names:
            value = values.get(name)
            if value is None:
                if name not in PLACEHOLDERS:
                    continue  # as render_values: an unknown name stays as written
                value = ""
            if self.is_json:
                value = json.dumps(value)[1:-1]
            text = text.replace("{" + name + "}", value)
        return text


def _walk(obj: Any, parts: tuple[str, ...]) -> Any:
    # get_path on a pre-split path (the load engine's hot path).
    cur = obj
    for part in parts:
        if isinstance(cur, dict):
            if part not in cur:
                return None
            cur = cur[part]
        elif isinstance(cur, list) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            return None
    return cur


class LoadMatcher:
    """An expect step compiled once for the load engine's hot path.

    Same rules as :func:`match_step` (fields compare as text, a pattern is searched in
    the frame's text, captures by path or by named group), on a frame's raw payload and
    its parsed JSON, without building a :class:`Frame`. Parts that name no per-session
    value are rendered once; the others per session, from that session's values.
    """

    __slots__ = (
        "any_frame",
        "cacheable",
        "capture",
        "event",
        "fields",
        "literal",
        "literal_template",
        "needs_json",
        "pattern",
        "pattern_rx",
        "timeout_s",
    )

    def __init__(
        self, step: FlowStep, values: Mapping[str, str], session: frozenset[str], timeout_s: float
    ) -> None:
        if step.send is not None:
            raise ValueError("not an expect step")
        self.timeout_s = step.timeout_s if step.timeout_s is not None else timeout_s
        self.event: str | None = None
        if step.expect_event:
            self.event = render_values(step.expect_event, values)
        self.fields = tuple(
            (
                tuple(str(path).split(".")),
                SessionTemplate(wanted, values, session)
                if isinstance(wanted, str) and _mentions(wanted, session)
                else wanted
                if _mentions(wanted, session)
                else _render_value(wanted, values),
                _mentions(wanted, session),
            )
            for path, wanted in (step.expect or {}).items()
        )
        self.capture = tuple((str(k), str(v)) for k, v in step.capture.items())
        self.pattern = step.expect_pattern or ""
        self.pattern_rx: LinearPattern | None = None
        self.literal = False
        self.literal_template: SessionTemplate | None = None
        dynamic_pattern = bool(self.pattern) and _mentions(self.pattern, session)
        if self.pattern:
            bare = placeholder_re().sub("", self.pattern)
            if compile_pattern(self.pattern, values) is None:
                raise ValueError(
                    f"expect_pattern {self.pattern!r} is not a valid regular expression"
                )
            if dynamic_pattern and re.escape(bare) == bare and not self.capture:
                # A literal with the session's values in it: a substring test, no regex
                # compiled per session.
                self.literal = True
                self.literal_template = SessionTemplate(self.pattern, values, session)
            elif not dynamic_pattern:
                self.pattern_rx = compile_pattern(self.pattern, values)
        self.any_frame = not (self.event or self.fields or self.pattern)
        self.needs_json = bool(self.event or self.fields or self.any_frame) or any(
            self.pattern_rx is None or p not in self.pattern_rx.groupindex for _, p in self.capture
        )
        self.cacheable = not (dynamic_pattern or any(d for _, _, d in self.fields) or self.capture)

    def match(
        self,
        text: str,
        obj: Any,
        kind: str | None,
        values: Mapping[str, str],
        ignore: frozenset[str],
    ) -> dict[str, str] | None:
        """Captured values (possibly empty) when the frame satisfies the step, else None.

        Args:
            text: the frame's text.
            obj: its parsed JSON (None when not JSON or not parsed).
            kind: its event type (None when it has none).
            values: the session's placeholder values.
            ignore: frame types that never satisfy a step without conditions.
        """
        if self.any_frame:
            return {} if kind is None or kind not in ignore else None
        if self.event is not None:
            if self.event == "*":
                if kind is None or kind in ignore:
                    return None
            elif kind != self.event:
                return None
        for parts, wanted, dynamic in self.fields:
            if obj is None:
                return None
            if dynamic:
                if isinstance(wanted, SessionTemplate):
                    wanted = wanted.render(values)
                else:
                    wanted = _render_value(wanted, values)
            if not _same(_walk(obj, parts), wanted):
                return None
        match: PatternMatch | None = None
        if self.pattern:
            if self.literal:
                assert self.literal_template is not None
                if self.literal_template.render(values) not in text:
                    return None
            else:
                rx = self.pattern_rx or compile_pattern(self.pattern, values)
                match = rx.search(text) if rx is not None else None
                if match is None:
                    return None
        if not self.capture:
            return {}
        captured: dict[str, str] = {}
        if match is not None:
            captured.update({k: v for k, v in match.groupdict().items() if v is not None})
        for name, path in self.capture:
            if match is not None and path in match.groupindex:
                value = match.group(path)
            else:
                value = get_path(obj, path) if obj is not None else None
            if value is None or isinstance(value, (Mapping, list)):
                return None
            captured[name] = str(value)
        return captured


def load_flow_problem(flow: Flow) -> str:
    """Why the load engine cannot run ``flow`` ('' when it can)."""
    if not any(s.send is not None for s in flow.steps):
        return (
            f"the {flow.name!r} flow sends nothing, so a load session would measure no "
            f"reply: give [flows.{flow.name}] at least one send step and one expect step"
        )
    if not any(s.send is None for s in flow.steps):
        return (
            f"the {flow.name!r} flow expects nothing, so no reply time can be measured: "
            f"give [flows.{flow.name}] an expect step"
        )
    for i, s in enumerate(flow.steps):
        if s.expect_pattern and compile_pattern(s.expect_pattern, {}) is None:
            return (
                f"the {flow.name!r} flow's step {i + 1} expect_pattern is not a valid "
                "regular expression"
            )
    return ""


# ---------------------------------------------------------------- the record of a run


@dataclass(frozen=True, slots=True)
class FlowFrame:
    """One frame received during a flow.

    Attributes:
        frame: the parsed frame (``t`` = seconds since the connect completed).
        text: the frame's text, redacted and cut at the runner's cap ('' when binary
            and not UTF-8; the hex excerpt is in ``frame.excerpt``).
        step: index of the expect step this frame satisfied (None if none).
        foreign: it carries another user's id or marker (see :func:`is_foreign`).
        attributed: it carries a user id, a run id or a marker (its own user's or
            another's), so isolation can tell whose it is.
    """

    frame: Frame
    text: str = ""
    step: int | None = None
    foreign: bool = False
    attributed: bool = False

    @property
    def t(self) -> float:
        return self.frame.t

    @property
    def kind(self) -> FrameKind:
        return self.frame.kind

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary (excerpt only, redacted)."""
        return {
            **self.frame.to_record(),
            "step": self.step,
            "foreign": self.foreign,
            "attributed": self.attributed,
        }


# Outcomes of one step: send steps end ``sent`` or ``send_failed``; expect steps end
# ``matched``, ``timeout``, ``closed`` or ``error_frame``; steps after the stop ``not_reached``.
STEP_OUTCOMES = (
    "sent",
    "send_failed",
    "matched",
    "timeout",
    "closed",
    "error_frame",
    "not_reached",
)


@dataclass(frozen=True, slots=True)
class StepOutcome:
    """How one step went.

    Attributes:
        index: position in the flow.
        kind: ``send`` or ``expect``.
        outcome: one of ``STEP_OUTCOMES``.
        description: what the step does (:func:`describe_step`).
        started_s: when the step started, seconds since the connect completed.
        duration_s: how long it took (for an expect step: until the match or the end).
        timeout_s: the bound that applied (expect steps).
        frame_index: index in :attr:`FlowObservation.frames` of the matching frame.
        captured: values this step captured.
        detail: why it ended that way, in words.
    """

    index: int
    kind: str
    outcome: str
    description: str = ""
    started_s: float = 0.0
    duration_s: float = 0.0
    timeout_s: float | None = None
    frame_index: int | None = None
    captured: Mapping[str, str] = field(default_factory=dict)
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("sent", "matched")

    def to_record(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "kind": self.kind,
            "outcome": self.outcome,
            "description": self.description,
            "started_s": round(self.started_s, 4),
            "duration_s": round(self.duration_s, 4),
            "timeout_s": self.timeout_s,
            "frame_index": self.frame_index,
            "captured": sorted(self.captured),
            "detail": self.detail,
        }


@dataclass(frozen=True, slots=True)
class FlowObservation:
    """One run of a flow by one simulated user: the connect, every frame, every step.

    Attributes:
        url: the WebSocket URL (no credentials).
        flow: the flow's name.
        user_id: the simulated user.
        marker: the user's unique marker in this run.
        run_id: the run id used in templates.
        connected: the upgrade completed.
        status: HTTP status of a refused upgrade (101 when connected, None if no answer).
        subprotocol: the subprotocol the server selected (redacted).
        connect_error: refused, timeout, http_status, protocol, closed, ... (None when connected).
        connect_detail: the underlying message (redacted).
        body_excerpt: body of a refused upgrade.
        connect_s: time to open the socket (or to the failure).
        frames: the frames received, in order (``t`` since the connect completed); past
            the runner's caps only evidence (matches, errors, foreign frames) is kept.
        frames_dropped: frames received but not kept (an endless or very chatty stream).
        steps: one outcome per step of the flow (``not_reached`` after a stop).
        captured: every value captured (names only are safe to show; values may be ids).
        stopped_at: index of the step where the flow stopped (None when it completed).
        stop_reason: ``connect_failed``, ``send_failed``, ``timeout``, ``closed``,
            ``error_frame`` ('' when completed).
        close_code: close code when the server ended the socket.
        close_reason: its reason.
        closed_s: when the server's close (or the drop) was seen, seconds since the
            connect completed (None when the runbook closed the socket itself).
        duration_s: connect start -> end of the observation.
        values: the placeholder values used (marker, ids, captures; no secrets).
    """

    url: str
    flow: str
    user_id: str
    marker: str
    run_id: str = ""
    connected: bool = False
    status: int | None = None
    subprotocol: str | None = None
    connect_error: str | None = None
    connect_detail: str = ""
    body_excerpt: str = ""
    connect_s: float = 0.0
    frames: tuple[FlowFrame, ...] = ()
    frames_dropped: int = 0
    steps: tuple[StepOutcome, ...] = ()
    captured: Mapping[str, str] = field(default_factory=dict)
    stopped_at: int | None = None
    stop_reason: str = ""
    close_code: int | None = None
    close_reason: str = ""
    closed_s: float | None = None
    duration_s: float = 0.0
    values: Mapping[str, str] = field(default_factory=dict)

    def last_send_before(self, t: float) -> StepOutcome | None:
        """The last send step that went out at or before ``t`` (None if none did)."""
        sent = [
            s for s in self.steps if s.kind == "send" and s.outcome == "sent" and s.started_s <= t
        ]
        return sent[-1] if sent else None

    @property
    def completed(self) -> bool:
        """Every step succeeded."""
        return self.connected and self.stopped_at is None and all(s.ok for s in self.steps)

    @property
    def events(self) -> tuple[Frame, ...]:
        """Event frames that are not foreign, in arrival order."""
        return tuple(f.frame for f in self.frames if f.frame.is_event and not f.foreign)

    @property
    def event_types(self) -> tuple[str, ...]:
        return tuple(f.event_type or "" for f in self.events)

    @property
    def foreign_frames(self) -> tuple[FlowFrame, ...]:
        """Frames carrying another user's id or marker (a leak, unless the room is shared)."""
        return tuple(f for f in self.frames if f.foreign)

    @property
    def first_send_s(self) -> float | None:
        """When the first send step started (seconds since the connect; None if none ran)."""
        sends = [s.started_s for s in self.steps if s.kind == "send" and s.outcome != "not_reached"]
        return sends[0] if sends else None

    @property
    def first_event_s(self) -> float | None:
        """Seconds from the first send to the first own event (None if none arrived)."""
        events = self.events
        if not events:
            return None
        return events[0].t - (self.first_send_s or 0.0)

    @property
    def unattributed_frames(self) -> tuple[FlowFrame, ...]:
        """Non-ignorable frames carrying no user id, run id or marker: isolation cannot
        tell whose they are (configure ``user_id`` paths or put ``{marker}`` in messages)."""
        return tuple(f for f in self.frames if not f.attributed and not f.frame.ignorable)

    @property
    def response_s(self) -> float | None:
        """Seconds from the first send to the last matched step (None unless completed)."""
        if not self.completed:
            return None
        sends = [s.started_s for s in self.steps if s.kind == "send"]
        start = sends[0] if sends else 0.0
        last = self.steps[-1]
        return last.started_s + last.duration_s - start

    @property
    def stop_detail(self) -> str:
        """Why the flow stopped, in words ('' when it completed)."""
        if not self.connected:
            why = self.connect_detail or self.connect_error or "no answer"
            return f"{self.flow} flow could not connect to {self.url}: {why}"
        if self.stopped_at is None:
            return ""
        step = self.steps[self.stopped_at] if self.stopped_at < len(self.steps) else None
        where = f"step {self.stopped_at + 1} ({step.description})" if step else "connect"
        why = step.detail if step and step.detail else self.connect_detail or self.stop_reason
        return f"{self.flow} flow stopped at {where}: {why}"

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary of the run (no frame payloads beyond redacted excerpts)."""
        return {
            "url": self.url,
            "flow": self.flow,
            "user_id": self.user_id,
            "marker": self.marker,
            "connected": self.connected,
            "status": self.status,
            "subprotocol": self.subprotocol,
            "connect_error": self.connect_error,
            "completed": self.completed,
            "stopped_at": self.stopped_at,
            "stop_reason": self.stop_reason,
            "stop_detail": self.stop_detail,
            "close_code": self.close_code,
            "closed_s": None if self.closed_s is None else round(self.closed_s, 4),
            "frames": len(self.frames) + self.frames_dropped,
            "frames_dropped": self.frames_dropped,
            "foreign_frames": len(self.foreign_frames),
            "response_s": None if self.response_s is None else round(self.response_s, 4),
            "duration_s": round(self.duration_s, 4),
            "steps": [s.to_record() for s in self.steps],
        }

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per frame, with the user (for a delivery-timeline plot)."""
        return [{"user": self.user_id, **f.to_record()} for f in self.frames]
