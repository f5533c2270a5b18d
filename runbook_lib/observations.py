"""What the observers saw: the frozen inputs of the judges (``runbook_lib.checks``).

The I/O modules (``http_checks``, ``ws_checks``, ``commands``) produce these; the pure
judges consume them. Nothing here does I/O or imports a network library, so the
judging core sits *below* the network code, as in a sans-I/O design. Value objects
owned by other adapters (Cloud Run's service and revisions, log entries, the load
report, the source checkout) are described by the small read-only protocols at the
end: the judges need only those attributes, and their tests can build them freely.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol
from urllib.parse import urlsplit

from .redaction import redact

__all__ = [
    "AppRoutesView",
    "AuthAttempt",
    "AuthObservation",
    "CommandObservation",
    "ConnectOutcome",
    "GitView",
    "HandshakeObservation",
    "HoldObservation",
    "HttpObservation",
    "JUnitSummary",
    "LoadReportView",
    "LogEntryView",
    "MonitorObservation",
    "MonitorTick",
    "OperationView",
    "ReadinessTimeline",
    "RevisionView",
    "ServiceView",
    "TimelinePoint",
    "TrafficView",
]


# ---------------------------------------------------------------- HTTP


@dataclass(frozen=True, slots=True)
class HttpObservation:
    """One HTTP request and what came back.

    Attributes:
        url: the URL requested.
        status: HTTP status, None when no response arrived.
        latency_s: time to the full response (or to the failure).
        json: the parsed JSON body (None when not JSON).
        text: body excerpt when not JSON (redacted).
        headers: selected response headers (lowercase names).
        http_version: e.g. ``HTTP/1.1``.
        error: ``refused``, ``timeout``, ``tls``, ``dns``, ``closed``, ``protocol``,
            ``connect`` or ``other``; None on any HTTP response.
        error_detail: the underlying message (redacted).
    """

    url: str
    status: int | None = None
    latency_s: float = 0.0
    json: Any = None
    text: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    http_version: str = ""
    error: str | None = None
    error_detail: str = ""

    @property
    def ok(self) -> bool:
        """True on a 2xx response."""
        return self.status is not None and 200 <= self.status < 300

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "url": redact(self.url),
            "status": self.status,
            "latency_s": round(self.latency_s, 4),
            "error": self.error,
            "error_detail": self.error_detail,
        }


@dataclass(frozen=True, slots=True)
class TimelinePoint:
    """One poll: seconds since polling began, status or error, latency."""

    t: float
    status: int | None
    error: str | None
    latency_s: float

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "t": round(self.t, 3),
            "status": self.status,
            "error": self.error,
            "latency_s": round(self.latency_s, 4),
        }


@dataclass(frozen=True, slots=True)
class ReadinessTimeline:
    """Polls of one URL until it answered 200 or the deadline passed.

    Attributes:
        url: the URL polled.
        points: every poll in order.
        ready_at: seconds until the first 200 (None if never).
        deadline_s: how long polling was allowed to go on.
        interval_s: pause between polls.
    """

    url: str
    points: tuple[TimelinePoint, ...]
    ready_at: float | None
    deadline_s: float
    interval_s: float

    @property
    def ready(self) -> bool:
        """True when a 200 arrived before the deadline."""
        return self.ready_at is not None

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per poll (for a DataFrame or a plot)."""
        return [p.to_record() for p in self.points]


# ---------------------------------------------------------------- WebSocket


@dataclass(frozen=True, slots=True)
class HandshakeObservation:
    """One raw WebSocket upgrade attempt.

    Attributes:
        url: the WebSocket URL (without credentials in the query).
        status: HTTP status of the answer (101, or the refusing status); None if none.
        reason: the status line's reason phrase.
        http_version: e.g. ``1.1``.
        headers: response headers (lowercase names; credentials redacted).
        body_excerpt: body of a refused upgrade (redacted, truncated).
        accept_valid: ``Sec-WebSocket-Accept`` matches the key (None unless 101).
        subprotocol: the subprotocol the server selected (redacted when it carries a token).
        latency_s: time from connect to the response head (or to the failure).
        error: refused, timeout, tls, dns, closed, protocol, connect or other; None on answer.
        error_detail: the underlying message.
    """

    url: str
    status: int | None = None
    reason: str = ""
    http_version: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body_excerpt: str = ""
    accept_valid: bool | None = None
    subprotocol: str | None = None
    latency_s: float = 0.0
    error: str | None = None
    error_detail: str = ""

    @property
    def upgraded(self) -> bool:
        """True for a 101 with a valid ``Sec-WebSocket-Accept``."""
        return self.status == 101 and bool(self.accept_valid)

    @property
    def path(self) -> str:
        """The URL's path."""
        return urlsplit(self.url).path or "/"

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "url": self.url,
            "status": self.status,
            "accept_valid": self.accept_valid,
            "latency_s": round(self.latency_s, 4),
            "error": self.error,
            "error_detail": self.error_detail,
            "body_excerpt": self.body_excerpt[:200],
        }


@dataclass(frozen=True, slots=True)
class ConnectOutcome:
    """How a ``websockets`` connect went.

    Attributes:
        connected: the handshake completed.
        status: the refusing HTTP status (or 101 when connected).
        latency_s: time to open (or to the failure).
        subprotocol: the subprotocol the server selected (redacted).
        error: refused, timeout, tls, dns, closed, protocol, http_status, connect, other.
        error_detail: the underlying message (redacted).
        body_excerpt: body of a refused upgrade.
    """

    connected: bool
    status: int | None = None
    latency_s: float = 0.0
    subprotocol: str | None = None
    error: str | None = None
    error_detail: str = ""
    body_excerpt: str = ""


@dataclass(frozen=True, slots=True)
class AuthAttempt:
    """One connect with a given credential and what the server did with it.

    Attributes:
        case: ``valid`` or a negative case name.
        produced: False when the case could not be produced from the configuration.
        reason: how the case was produced or why not.
        accepted: True (the socket worked), False (refused), None (undecided: the
            target was unreachable or the socket stayed silent).
        how: the evidence in words: ``HTTP 401``, ``close 1008``, ``error frame``, ...
        status: refusing HTTP status, if any.
        close_code: close code, if the server closed.
        subprotocol: subprotocol the server selected (redacted).
        offered_subprotocol: whether a subprotocol was offered.
        excerpt: error frame or refusal body excerpt (redacted).
        latency_s: time to the decision.
    """

    case: str
    produced: bool = True
    reason: str = ""
    accepted: bool | None = None
    how: str = ""
    status: int | None = None
    close_code: int | None = None
    subprotocol: str | None = None
    offered_subprotocol: bool = False
    excerpt: str = ""
    latency_s: float = 0.0


@dataclass(frozen=True, slots=True)
class AuthObservation:
    """The authenticated connect and every negative case.

    Attributes:
        mode: the configured auth mode.
        authenticated: the connect with a valid token (None when no token could be had).
        negatives: one attempt per negative case.
        token_error: why no valid token could be obtained ('' otherwise).
    """

    mode: str
    authenticated: AuthAttempt | None
    negatives: tuple[AuthAttempt, ...] = ()
    token_error: str = ""


@dataclass(frozen=True, slots=True)
class HoldObservation:
    """A socket held open for ``hold_s``.

    Attributes:
        url: the WebSocket URL.
        connect: how the connect went.
        hold_s: how long the socket was meant to stay open.
        outcome: ``held`` (open for the whole hold, then closed normally),
            ``server_closed``, ``abrupt``, ``too_big``, ``protocol_error`` or ``connect_failed``.
        ended_at_s: seconds after open when the socket ended (or was closed by us).
        close_code: close code (1006 for an abrupt end).
        close_reason: close reason.
        clean_close: our close at the end completed with a close handshake.
        pings_sent: application pings sent during the hold.
        pongs: pongs received.
        frames: frames received.
        last_send_s: when the last ping before the end went out (seconds after open;
            None when none was sent).
        last_sent: that ping, as sent (an excerpt).
    """

    url: str
    connect: ConnectOutcome
    hold_s: float
    outcome: str
    ended_at_s: float = 0.0
    close_code: int | None = None
    close_reason: str = ""
    clean_close: bool = False
    pings_sent: int = 0
    pongs: int = 0
    frames: int = 0
    last_send_s: float | None = None
    last_sent: str = ""


@dataclass(frozen=True, slots=True)
class MonitorTick:
    """One monitoring sample: a health GET and a WebSocket handshake (and ping)."""

    t: float
    health_status: int | None
    health_latency_s: float
    health_error: str | None
    ws_status: int | None
    ws_latency_s: float
    ws_error: str | None
    ws_upgraded: bool
    ping_ok: bool | None = None
    ping_error: str | None = None

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary."""
        return {
            "t": round(self.t, 3),
            "health_status": self.health_status,
            "health_latency_s": round(self.health_latency_s, 4),
            "health_error": self.health_error,
            "ws_status": self.ws_status,
            "ws_latency_s": round(self.ws_latency_s, 4),
            "ws_error": self.ws_error,
            "ws_upgraded": self.ws_upgraded,
            "ping_ok": self.ping_ok,
            "ping_error": self.ping_error,
        }


@dataclass(frozen=True, slots=True)
class MonitorObservation:
    """Samples taken every ``interval_s`` over ``window_s``."""

    health_url: str
    ws_url: str
    window_s: float
    interval_s: float
    ticks: tuple[MonitorTick, ...]

    def to_records(self) -> list[dict[str, Any]]:
        """One dict per tick (for a DataFrame or the monitoring plot)."""
        return [t.to_record() for t in self.ticks]


# ---------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class JUnitSummary:
    """Counts from a JUnit XML report.

    Attributes:
        tests, failures, errors, skipped: totals over every test suite.
        time_s: total time the report states.
        failed_cases: ``classname.name`` of failed or errored cases (first 20).
    """

    tests: int
    failures: int
    errors: int
    skipped: int
    time_s: float = 0.0
    failed_cases: tuple[str, ...] = ()

    @property
    def passed(self) -> int:
        """Tests that neither failed, errored nor were skipped."""
        return self.tests - self.failures - self.errors - self.skipped


@dataclass(frozen=True, slots=True)
class CommandObservation:
    """One command run.

    Attributes:
        name: the configured name.
        command: the command line (redacted).
        exit_code: the exit code (None when it could not start).
        duration_s: wall time.
        timed_out: the timeout fired and the process group was killed.
        timeout_s: the timeout that applied.
        output_tail: the last lines of stdout+stderr (redacted).
        junit: parsed report when ``junit`` is configured and readable.
        junit_error: why the report could not be read ('' otherwise).
        error: why the command could not start ('' otherwise).
    """

    name: str
    command: str
    exit_code: int | None
    duration_s: float
    timed_out: bool = False
    timeout_s: float = 0.0
    output_tail: str = ""
    junit: JUnitSummary | None = None
    junit_error: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        """Exit code 0, no timeout, and no failures in the JUnit report."""
        if self.exit_code != 0 or self.timed_out:
            return False
        return self.junit is None or (self.junit.failures == 0 and self.junit.errors == 0)


# ---------------------------------------------------------------- other adapters' values
# Read-only views: ``cloudrun.ServiceInfo``/``RevisionInfo``/``OperationOutcome``,
# ``logs.LogEntry``, ``load.engine.LoadReport`` and ``source.GitObservation``/
# ``AppRoutesObservation`` satisfy them without this module importing their adapters
# (Google clients, numpy, subprocesses).


class TrafficView(Protocol):
    """One traffic target (``cloudrun_plans.TrafficTarget``)."""

    @property
    def type(self) -> str: ...


class ServiceView(Protocol):
    """A Cloud Run service as the judges read it (``cloudrun.ServiceInfo``)."""

    @property
    def latest_ready_revision(self) -> str: ...
    @property
    def latest_created_revision(self) -> str: ...
    @property
    def traffic(self) -> Sequence[TrafficView]: ...
    @property
    def timeout_s(self) -> float | None: ...
    @property
    def concurrency(self) -> int | None: ...
    @property
    def min_instances(self) -> int | None: ...
    @property
    def max_instances(self) -> int | None: ...
    @property
    def session_affinity(self) -> bool: ...
    @property
    def use_http2(self) -> bool: ...
    @property
    def ingress(self) -> str: ...
    @property
    def serving_revisions(self) -> dict[str, int]: ...


class RevisionView(Protocol):
    """One revision (``cloudrun.RevisionInfo``)."""

    @property
    def name(self) -> str: ...
    @property
    def ready(self) -> bool: ...
    @property
    def ready_message(self) -> str: ...


class OperationView(Protocol):
    """How a long-running update ended (``cloudrun.OperationOutcome``)."""

    @property
    def name(self) -> str: ...
    @property
    def succeeded(self) -> bool: ...
    @property
    def error(self) -> str: ...
    @property
    def revision(self) -> str: ...
    @property
    def duration_s(self) -> float: ...


class LogEntryView(Protocol):
    """One log line (``logs.LogEntry``)."""

    @property
    def timestamp(self) -> datetime: ...
    @property
    def severity(self) -> str: ...
    @property
    def revision(self) -> str: ...
    @property
    def text(self) -> str: ...
    @property
    def status(self) -> int | None: ...
    @property
    def path(self) -> str: ...
    @property
    def method(self) -> str: ...


class LoadReportView(Protocol):
    """What the load judges read of a ``load.engine.LoadReport``."""

    @property
    def planned(self) -> int: ...
    @property
    def succeeded(self) -> int: ...
    @property
    def errors_by_kind(self) -> dict[str, int]: ...
    @property
    def handshake_statuses(self) -> Mapping[Any, int]: ...
    @property
    def p50_s(self) -> float | None: ...
    @property
    def p95_s(self) -> float | None: ...
    @property
    def trusted(self) -> bool: ...
    @property
    def saturation_reason(self) -> str: ...
    @property
    def schedule_reason(self) -> str: ...
    def success_rate(self) -> float: ...
    def server_error_count(self) -> int: ...


class GitView(Protocol):
    """Branch and cleanliness of a checkout (``source.GitObservation``)."""

    @property
    def is_repo(self) -> bool: ...
    @property
    def branch(self) -> str: ...
    @property
    def head(self) -> str: ...
    @property
    def changed(self) -> tuple[str, ...]: ...
    @property
    def untracked(self) -> tuple[str, ...]: ...
    @property
    def error(self) -> str: ...


class AppRoutesView(Protocol):
    """The routes an ASGI app registers (``source.AppRoutesObservation``)."""

    @property
    def error(self) -> str: ...
    @property
    def timed_out(self) -> bool: ...
    @property
    def ws_paths(self) -> tuple[str, ...]: ...
    @property
    def http_paths(self) -> tuple[str, ...]: ...
    @property
    def unlisted(self) -> tuple[str, ...]: ...
