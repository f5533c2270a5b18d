"""The environment file's rules that are not types: numeric ranges, the cell budget,
placeholders, patterns and flows (SPEC sections 4 and 8).

``settings_load`` builds the dataclasses; this module says which values make sense. Every
rule raises :class:`ConfigError` naming the file and the dotted key, so a bad value
stops ``runbook run`` with exit 2 before any kernel starts instead of turning into a
hang (``inf``), a false failure (``nan``, ``0``) or a cell timeout that names nothing
(``monitor_window_s = 60000``, milliseconds typed as seconds).
"""

from __future__ import annotations

import difflib
import math
import os
import re
import shutil
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .exceptions import ConfigError
from .flows import Flow, FlowStep
from .protocol import pattern_error

if TYPE_CHECKING:
    from .protocol import ProtocolSettings
    from .settings import SourceSettings, Thresholds

__all__ = [
    "BUILTIN_PLACEHOLDERS",
    "CELL_TIMEOUT_S",
    "RANGES",
    "Range",
    "check_cell_budget",
    "check_number",
    "check_placeholders",
    "check_regex",
    "checks_table",
    "closest",
    "closest_name",
    "parse_flows",
    "placeholders",
    "resolve_source",
    "validate_message_auth",
    "validate_protocol",
    "validate_thresholds",
]

# The runner's per-cell timeout (``runbook run --cell-timeout`` default). Every wait a
# single notebook cell makes must fit in it, or the cell dies naming no setting.
CELL_TIMEOUT_S = 600.0

# Placeholders every template may use; captured names are added per flow.
BUILTIN_PLACEHOLDERS = ("marker", "user_id", "run_id", "thread_id", "text")
_PLACEHOLDER = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class Range:
    """Allowed values of a numeric key: ``lo < v`` (``lo_open``) or ``lo <= v``, ``v <= hi``."""

    lo: float
    hi: float
    lo_open: bool = False
    integer: bool = False

    def text(self) -> str:
        """The range as written in ``docs/configuration.md``, e.g. ``(0, 600]``."""
        lo, hi = (f"{int(x)}" if float(x).is_integer() else f"{x:g}" for x in (self.lo, self.hi))
        return f"{'(' if self.lo_open else '['}{lo}, {hi}]"


def _dur(hi: float, *, zero: bool = False) -> Range:
    return Range(0.0, hi, lo_open=not zero)


def _count(lo: int, hi: int) -> Range:
    return Range(lo, hi, integer=True)


_RATE = Range(0.0, 1.0)
_DAY = 86_400.0

# Every numeric key of the schema and its range (a test keeps this table complete).
# Upper bounds catch milliseconds typed as seconds; waits made inside one notebook cell
# are bounded by the cell timeout (and checked together by check_cell_budget).
RANGES: dict[str, Range] = {
    "auth.ttl_s": _count(1, 7 * 86_400),
    "logging.lookback_s": _count(1, 30 * 86_400),
    "logging.ingestion_wait_s": _dur(CELL_TIMEOUT_S / 2, zero=True),
    "thresholds.health_ready_s": _dur(CELL_TIMEOUT_S),
    "thresholds.ws_health_ready_s": _dur(CELL_TIMEOUT_S),
    "thresholds.http_latency_s": _dur(60.0),
    "thresholds.http_latency_samples": _count(1, 1000),
    "thresholds.load_connections": _count(1, 5000),
    "thresholds.load_messages": _count(1, 1000),
    "thresholds.load_ramp_s": _dur(CELL_TIMEOUT_S, zero=True),
    "thresholds.load_success_rate": _RATE,
    "thresholds.load_p95_s": _dur(300.0),
    "thresholds.isolation_users": _count(2, 1000),
    "thresholds.isolation_success_rate": _RATE,
    "thresholds.isolation_response_s": _dur(300.0),
    "thresholds.event_timeout_s": _dur(CELL_TIMEOUT_S),
    "thresholds.critical_events_min": _count(0, 100),
    "thresholds.tests_max_s": _dur(_DAY),
    "thresholds.monitor_window_s": _dur(CELL_TIMEOUT_S),
    "thresholds.monitor_interval_s": _dur(60.0),
    "thresholds.monitor_uptime": _RATE,
    "thresholds.monitor_ws_failure_rate": _RATE,
    "thresholds.monitor_avg_response_s": _dur(60.0),
    "thresholds.monitor_min_samples": _count(1, 10_000),
    "thresholds.hold_s": _dur(CELL_TIMEOUT_S),
    "thresholds.poll_interval_s": _dur(60.0),
    # Cloud Run Jobs: at most 10,000 tasks per execution; a task's timeout at most 24 h,
    # but the wait happens inside one notebook cell.
    "load.tasks": _count(1, 10_000),
    "load.sessions_per_task": _count(0, 100_000),
    "load.parallelism": _count(0, 10_000),
    "load.max_retries": _count(0, 10),
    "load.timeout_s": _dur(CELL_TIMEOUT_S - 60.0),
    "timeouts.connect_s": _dur(300.0),
    "timeouts.read_s": _dur(300.0),
    "timeouts.cloudrun_s": _dur(CELL_TIMEOUT_S),
    "timeouts.operation_s": _dur(CELL_TIMEOUT_S),
    "timeouts.command_s": _dur(CELL_TIMEOUT_S),
    "commands.timeout_s": _dur(CELL_TIMEOUT_S),
    "flows.timeout_s": _dur(CELL_TIMEOUT_S),
}


def closest_name(name: str, known: Iterable[str], cutoff: float = 0.6) -> str | None:
    """The known name closest to ``name`` (difflib), or None."""
    match = difflib.get_close_matches(name, list(known), n=1, cutoff=cutoff)
    return match[0] if match else None


def closest(name: str, known: Iterable[str]) -> str:
    """`` (did you mean X?)`` for the closest known name, or ''."""
    match = closest_name(name, known)
    return f" (did you mean {match}?)" if match else ""


def check_number(key: str, value: Any, source: str, name: str = "") -> float | int:
    """``value`` checked against ``RANGES[key]``: finite, in range, whole when a count.

    ``name`` is the key as the user wrote it when it differs (``commands.predeploy[0].timeout_s``).
    """
    rng = RANGES[key]
    key = name or key
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key} must be a number, got {value!r}", source)
    if not math.isfinite(value):
        raise ConfigError(f"{key} = {value!r}: must be a finite number in {rng.text()}", source)
    if rng.integer and not float(value).is_integer():
        # A count (connections, users, samples) used as range(2.5) would crash a step.
        raise ConfigError(f"{key} must be a whole number, got {value!r}", source)
    if value < 0 and rng.lo >= 0:
        raise ConfigError(f"{key} must not be negative, got {value!r}", source)
    below = value <= rng.lo if rng.lo_open else value < rng.lo
    if below or value > rng.hi:
        hint = ""
        if value > rng.hi and key.endswith("_s") and value >= 1000 and value / 1000 <= rng.hi:
            hint = f"; was it typed in milliseconds? {value:g} ms = {value / 1000:g} s"
        elif value > rng.hi and rng.hi == CELL_TIMEOUT_S:
            hint = f"; a wait must fit the notebook cell timeout ({CELL_TIMEOUT_S:g} s)"
        elif rng.lo_open and value == 0:
            hint = "; 0 would make every wait fail at once and blame the service"
        raise ConfigError(
            f"{key} = {value!r} is outside the allowed range {rng.text()}{hint}", source
        )
    return int(value) if rng.integer else float(value)


def check_cell_budget(settings: Any, source: str, cell_timeout_s: float = CELL_TIMEOUT_S) -> None:
    """Every wait a single notebook cell makes fits in the cell timeout.

    Raises:
        ConfigError: naming the setting whose wait does not fit (with what the cell needs).
    """
    th, to = settings.thresholds, settings.timeouts
    cells: list[tuple[str, float, str]] = [
        (
            "thresholds.ws_health_ready_s"
            if th.ws_health_ready_s >= th.health_ready_s
            else "thresholds.health_ready_s",
            max(th.health_ready_s, th.ws_health_ready_s) + to.connect_s,
            "the warm-up poll (phase 2)",
        ),
        (
            "thresholds.monitor_window_s",
            # The last sample's ping waits the flows' reply deadline (event_timeout_s).
            th.monitor_window_s + to.connect_s + th.event_timeout_s,
            "the monitoring window (phase 7)",
        ),
        ("thresholds.hold_s", th.hold_s + 2 * to.connect_s, "the long-lived socket (phase 7)"),
        (
            "thresholds.event_timeout_s",
            th.event_timeout_s + to.connect_s,
            "the agent run (phases 4 and 5)",
        ),
        ("timeouts.operation_s", to.operation_s + to.cloudrun_s, "the deploy (phase 2)"),
        (
            "logging.ingestion_wait_s",
            settings.logging.ingestion_wait_s + 4 * to.cloudrun_s,
            "a log check's wait for this run's requests in the logs",
        ),
        ("timeouts.command_s", to.command_s, "the route listing (phase 1)"),
        (
            "commands.predeploy",
            sum(c.timeout_s for c in settings.predeploy),
            "the predeploy commands, run one after another (phase 2)",
        ),
        (
            "commands.mission_critical",
            sum(c.timeout_s for c in settings.mission_critical),
            "the mission-critical suites, run one after another (phase 4)",
        ),
    ]
    load = getattr(settings, "load", None)
    if load is not None and load.engine == "cloudrun-job":
        cells.append(
            (
                "load.timeout_s",
                load.timeout_s
                * (1 + load.max_retries)
                * -(-load.tasks // (load.parallelism or load.tasks))
                + 4 * to.cloudrun_s,
                "the load job: every wave of task attempts plus the API calls (phase 4)",
            )
        )
    for key, need, what in cells:
        if need > cell_timeout_s:
            raise ConfigError(
                f"{key}: {what} may take {need:g} s, more than the notebook cell timeout "
                f"({cell_timeout_s:g} s, runbook_lib.settings_rules.CELL_TIMEOUT_S); use seconds "
                f"and keep this wait (with its connect/read timeouts) under {cell_timeout_s:g} s",
                source,
            )


def placeholders(template: Any) -> list[str]:
    """The ``{name}`` placeholders of a template (a string, or every string of a table)."""
    if isinstance(template, str):
        return _PLACEHOLDER.findall(template)
    if isinstance(template, Mapping):
        return [n for k, v in template.items() for n in (*placeholders(str(k)), *placeholders(v))]
    if isinstance(template, list):
        return [n for v in template for n in placeholders(v)]
    return []


def check_placeholders(
    key: str, template: Any, allowed: Iterable[str], source: str, where: str = ""
) -> None:
    """Every placeholder of ``template`` is one of ``allowed``."""
    known = tuple(allowed)
    for name in placeholders(template):
        if name not in known:
            raise ConfigError(
                f"{key}: undefined placeholder {{{name}}}{where}{closest(name, known)}; "
                f"known here: {', '.join('{' + k + '}' for k in known)}",
                source,
            )


def check_regex(key: str, pattern: Any, source: str) -> None:
    """Refuse a ``pattern`` that is not a regex the runbook can run in linear time; names ``key``."""
    if not isinstance(pattern, str) or not pattern:
        raise ConfigError(f"{key} must be a non-empty regular expression string", source)
    why = pattern_error(pattern)
    if why:
        raise ConfigError(f"{key} = {pattern!r} is not a valid regular expression: {why}", source)


# A step's keys in the file are FlowStep's fields, one for one.
_STEP_KEYS = tuple(f.name for f in fields(FlowStep))
_ACTIONS = ("send", "expect", "expect_pattern", "expect_event")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def parse_flows(raw: Any, *, fmt: str, source: str) -> dict[str, Flow]:
    """``[flows.NAME]`` tables (``[[flows.NAME.steps]]`` arrays) parsed into :class:`Flow`.

    A step holds exactly one of ``send``, ``expect``, ``expect_pattern``, ``expect_event``;
    ``capture`` (name -> dotted path or group name) only on expect steps; ``timeout_s``
    finite and > 0, only on expect steps. Placeholders are the built-in ones and names
    captured by an earlier step of the same flow.
    """
    if not isinstance(raw, Mapping):
        raise ConfigError("[flows] must be a table of flows ([[flows.NAME.steps]])", source)
    out: dict[str, Flow] = {}
    for name, table in raw.items():
        key = f"flows.{name}"
        if not _NAME.match(str(name)):
            raise ConfigError(f"{key}: a flow name is letters, digits, '_' and '-'", source)
        if not isinstance(table, Mapping):
            raise ConfigError(f"{key} must be a table with a 'steps' array", source)
        for extra in table:
            if extra != "steps":
                raise ConfigError(
                    f"unknown key {key}.{extra}{closest(extra, ['steps'])}; a flow has only "
                    "'steps'",
                    source,
                )
        steps = table.get("steps")
        if not isinstance(steps, list) or not steps:
            raise ConfigError(f"{key}.steps must be a non-empty array of tables", source)
        known = [*BUILTIN_PLACEHOLDERS, "token"]
        parsed: list[FlowStep] = []
        for i, step in enumerate(steps):
            parsed.append(_step(step, key, i, known, fmt, source))
            known += [c for c in parsed[-1].capture if c not in known]
        if not any(s.kind == "send" for s in parsed):
            raise ConfigError(f"{key}: a flow needs at least one send step", source)
        out[str(name)] = Flow(name=str(name), steps=tuple(parsed))
    return out


def _step(step: Any, key: str, i: int, known: list[str], fmt: str, source: str) -> FlowStep:
    where = f"{key}.steps[{i}]"
    if not isinstance(step, Mapping):
        raise ConfigError(f"{where} must be a table", source)
    for k in step:
        if k not in _STEP_KEYS:
            raise ConfigError(f"unknown key {where}.{k}{closest(k, _STEP_KEYS)}", source)
    actions = [a for a in _ACTIONS if a in step]
    if len(actions) != 1:
        raise ConfigError(
            f"{where} must have exactly one of {', '.join(_ACTIONS)} (found "
            f"{', '.join(actions) or 'none'})",
            source,
        )
    action = actions[0]
    value = step[action]
    bad_placeholder = f" (flow {key.split('.', 1)[1]!r}, step {i})"
    if action == "send":
        if isinstance(value, Mapping):
            if fmt == "text":
                raise ConfigError(
                    f"{where}.send: a table is JSON; format = 'text' sends strings", source
                )
            value = dict(value)
        elif not isinstance(value, str) or not value:
            raise ConfigError(f"{where}.send must be a non-empty string or a table", source)
        check_placeholders(f"{where}.send", value, known, source, bad_placeholder)
    elif action == "expect":
        if fmt == "text":
            raise ConfigError(
                f"{where}.expect matches JSON fields; format = 'text' uses expect_pattern", source
            )
        if not isinstance(value, Mapping) or not value:
            raise ConfigError(f"{where}.expect must be a table: dotted path -> value", source)
        value = dict(value)
        check_placeholders(f"{where}.expect", list(value.values()), known, source, bad_placeholder)
    elif action == "expect_pattern":
        check_regex(f"{where}.expect_pattern", value, source)
        check_placeholders(f"{where}.expect_pattern", value, known, source, bad_placeholder)
    elif not isinstance(value, str) or not value:
        raise ConfigError(f"{where}.expect_event must be an event type (a string)", source)
    capture = step.get("capture", {})
    if not isinstance(capture, Mapping) or not all(
        isinstance(v, str) and v for v in capture.values()
    ):
        raise ConfigError(f"{where}.capture must be a table: name -> dotted path", source)
    for name in capture:
        if not re.match(r"^[A-Za-z_][A-Za-z0-9_]*$", str(name)):
            raise ConfigError(f"{where}.capture: {name!r} is not a usable placeholder name", source)
        if name in BUILTIN_PLACEHOLDERS:
            raise ConfigError(
                f"{where}.capture: {name!r} would hide the built-in {{{name}}}", source
            )
    timeout = step.get("timeout_s")
    if action == "send" and (capture or timeout is not None):
        raise ConfigError(f"{where}: capture and timeout_s belong to expect steps", source)
    if timeout is not None:
        timeout = check_number("flows.timeout_s", timeout, source, f"{where}.timeout_s")
    return FlowStep(
        send=value if action == "send" else None,
        expect=value if action == "expect" else None,
        expect_pattern=value if action == "expect_pattern" else None,
        expect_event=value if action == "expect_event" else None,
        capture={str(k): v for k, v in capture.items()},
        timeout_s=None if timeout is None else float(timeout),
    )


# ------------------------------------------------------------------ section rules

FORMATS = ("json", "text")
_CHECK_ID = re.compile(r"^[a-z][a-z0-9_]*\.[A-Za-z0-9_.-]+$")
_SUBPROTOCOL = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def validate_protocol(
    p: ProtocolSettings,
    table: Mapping[str, Any],
    source: str,
    warnings: list[str],
    not_applicable: Mapping[str, str] | None = None,
) -> ProtocolSettings:
    if p.format not in FORMATS:
        raise ConfigError(
            f"protocol.format = {p.format!r}: expected one of {FORMATS}{closest(p.format, FORMATS)}",
            source,
        )
    for sp in p.subprotocols:
        if not _SUBPROTOCOL.match(sp):
            raise ConfigError(
                f"protocol.subprotocols entry {sp!r} is not a valid subprotocol token "
                "(no spaces or commas)",
                source,
            )
    if p.format == "text" and "ping" in table and isinstance(p.ping, Mapping):
        raise ConfigError(
            "protocol.ping is a table (a JSON frame) but format = 'text': give a string", source
        )
    for key in ("ping", "agent_request", "chat_message"):
        check_placeholders(f"protocol.{key}", getattr(p, key), BUILTIN_PLACEHOLDERS, source)
    for key in ("pong_pattern", "error_pattern"):
        if key in table:
            check_regex(f"protocol.{key}", getattr(p, key), source)
            check_placeholders(f"protocol.{key}", getattr(p, key), BUILTIN_PLACEHOLDERS, source)
    if "critical_events" in table and not p.critical_events:
        warnings.append(
            "protocol.critical_events is empty: events.critical_delivered and events.order "
            "have nothing to check"
        )
    elif len(p.critical_events) < 2 and "events.order" not in (not_applicable or {}):
        warnings.append(
            f"protocol.critical_events has {len(p.critical_events)} event type(s): events.order "
            "needs at least two (the check reports it; declare it in [checks] not_applicable)"
        )
    if len(set(p.critical_events)) != len(p.critical_events):
        raise ConfigError("protocol.critical_events lists an event type twice", source)
    return p


def validate_thresholds(
    th: Thresholds, p: ProtocolSettings, source: str, warnings: list[str]
) -> None:
    if th.critical_events_min > len(p.critical_events):
        raise ConfigError(
            f"thresholds.critical_events_min = {th.critical_events_min} but "
            f"protocol.critical_events lists {len(p.critical_events)} event type(s): the check "
            "could never pass; lower the minimum or list the events",
            source,
        )
    if th.monitor_interval_s > th.monitor_window_s:
        raise ConfigError(
            f"thresholds.monitor_interval_s = {th.monitor_interval_s:g} is longer than "
            f"thresholds.monitor_window_s = {th.monitor_window_s:g}: the window holds no sample",
            source,
        )
    samples = int(th.monitor_window_s / th.monitor_interval_s)
    if samples < th.monitor_min_samples:
        warnings.append(
            f"thresholds.monitor_window_s / monitor_interval_s gives {samples} sample(s) per "
            f"window; monitoring needs at least {th.monitor_min_samples} "
            "(thresholds.monitor_min_samples) to judge"
        )


def resolve_source(src: SourceSettings, source: str) -> SourceSettings:
    # Relative paths in an environment file mean "relative to that file", whatever
    # directory the runbook (or a notebook kernel) happens to run in.
    base = Path(source).parent if source != "<dict>" else Path.cwd()
    repo_dir = src.repo_dir
    if repo_dir and not Path(repo_dir).is_absolute() and source != "<dict>":
        repo_dir = str((base / repo_dir).resolve())
    python = src.python
    if python:
        if os.sep in python or "/" in python:
            found = Path(python).expanduser()
            found = found if found.is_absolute() else (base / found)
            python_path: str | None = str(found.absolute()) if found.exists() else None
        else:
            python_path = shutil.which(python)
        if python_path is None:
            raise ConfigError(
                f"source.python = {src.python!r}: no such interpreter (relative paths are "
                f"relative to {base})",
                source,
            )
        if not os.access(python_path, os.X_OK) or Path(python_path).is_dir():
            raise ConfigError(f"source.python = {python_path!r} is not executable", source)
        python = python_path
    import_root = src.import_root
    if import_root:
        root = Path(repo_dir) if repo_dir else base
        resolved = Path(import_root).expanduser()
        resolved = resolved if resolved.is_absolute() else root / resolved
        if not resolved.is_dir():
            raise ConfigError(
                f"source.import_root = {import_root!r}: {resolved} is not a folder "
                "(relative to source.repo_dir)",
                source,
            )
        import_root = str(resolved.resolve())
    return replace(src, repo_dir=repo_dir, python=python, import_root=import_root)


def checks_table(table: Any, source: str) -> dict[str, str]:
    if not isinstance(table, Mapping):
        raise ConfigError("[checks] must be a table", source)
    for key in table:
        if key != "not_applicable":
            raise ConfigError(
                f"unknown key checks.{key}{closest(key, ['not_applicable'])}; [checks] holds "
                'not_applicable = { "check.id" = "reason" }',
                source,
            )
    na = table.get("not_applicable", {})
    if not isinstance(na, Mapping):
        raise ConfigError("checks.not_applicable must be a table: check id -> reason", source)
    out: dict[str, str] = {}
    for cid, reason in na.items():
        if not _CHECK_ID.match(str(cid)):
            raise ConfigError(
                f"checks.not_applicable: {cid!r} is not a check id (family.name, e.g. "
                '"ws.test_endpoint")',
                source,
            )
        if not isinstance(reason, str) or not reason.strip():
            raise ConfigError(
                f"checks.not_applicable.{cid!r} needs a non-empty reason (it is shown in "
                "the summary)",
                source,
            )
        out[str(cid)] = reason.strip()
    return out


def validate_message_auth(auth: Any, flows: Mapping[str, Any], source: str) -> None:
    """``{token}`` in a flow needs ``[auth] mode = "message"``, and that mode needs a
    flow that sends it (``[[flows.auth.steps]]``, the conversation proving acceptance)."""
    sending = sorted(
        name
        for name, flow in flows.items()
        if any(s.send is not None and "token" in placeholders(s.send) for s in flow.steps)
    )
    if auth.mode != "message" and sending:
        raise ConfigError(
            f"flows {', '.join(sending)} send {{token}} but auth.mode = {auth.mode!r}: set "
            '[auth] mode = "message" so the token travels in that frame',
            source,
        )
    if (
        auth.mode == "message"
        and "auth" not in sending
        and not ("auth" not in flows and "load" in sending)
    ):
        raise ConfigError(
            'auth.mode = "message" needs [[flows.auth.steps]]: the conversation that sends '
            "{token} in a frame (a login message, a GraphQL connection_init payload, a "
            "Socket.IO namespace connect) and expects the server's acknowledgement",
            source,
        )
