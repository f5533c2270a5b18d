"""Hand-built observations for the judges' table tests (tests/test_checks_*.py).

Only ``runbook_lib.observations`` and pure modules are imported: the judge tests run
without any network library, as the judges do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from runbook_lib.flows import FlowFrame, FlowObservation, StepOutcome
from runbook_lib.observations import (
    AuthAttempt,
    ConnectOutcome,
    HandshakeObservation,
    HttpObservation,
    MonitorObservation,
    MonitorTick,
    ReadinessTimeline,
    TimelinePoint,
)
from runbook_lib.protocol import Frame, FrameKind, ProtocolSettings

P = ProtocolSettings()


CRIT = P.critical_events


OK = ConnectOutcome(True, status=101)


FIELDS = {
    "agent_started": "agent_name",
    "agent_thinking": "reasoning",
    "tool_executing": "tool_name",
    "tool_completed": "tool_name",
    "agent_completed": "final_response",
}


def ev(etype: str, t: float, user: str = "u1", run: str = "r1", **extra) -> Frame:
    data = {
        "type": etype,
        "user_id": user,
        "run_id": run,
        "timestamp": "x",
        FIELDS.get(etype, "x"): "v",
        **extra,
    }
    if etype == "tool_completed":
        data["results"] = []
    return Frame(
        t=t, size=10, kind=FrameKind.EVENT, event_type=etype, user_id=user, run_id=run, data=data
    )


def run_of(
    types=CRIT, user="u1", run="r1", gap=0.1, ended="completed", connect=OK, frames=None
) -> FlowObservation:
    """One user's agent flow (send the request, expect the final event) as the runner
    records it: frames ``gap`` apart after the send; ``ended`` is ``completed``,
    ``timeout``, ``error_frame`` or ``connect_failed``; frames carrying another user's id
    are flagged foreign, as the runner flags them."""
    fs = (
        tuple(frames)
        if frames is not None
        else tuple(ev(t, gap * (i + 1), user, run) for i, t in enumerate(types))
    )
    connected = connect.connected and ended != "connect_failed"
    completed = connected and ended == "completed"
    last = max((f.t for f in fs), default=0.0)
    detail = {
        "timeout": "nothing matching arrived before the timeout",
        "error_frame": "the server answered with an error frame: "
        + next((f.excerpt for f in fs if f.is_error), ""),
    }
    steps = (
        StepOutcome(0, "send", "sent" if connected else "not_reached", "send request", 0.0, 0.0),
        StepOutcome(
            1,
            "expect",
            "matched" if completed else ("timeout" if connected else "not_reached"),
            "expect the final event",
            0.0,
            last,
            30,
            detail="" if completed else detail.get(ended, ended),
        ),
    )
    return FlowObservation(
        url="ws://x/ws",
        flow="agent",
        user_id=user,
        marker="",
        run_id=run,
        connected=connected,
        status=101 if connected else connect.status,
        connect_error=None if connected else (connect.error or "refused"),
        connect_detail=connect.error_detail,
        frames=tuple(
            FlowFrame(
                f,
                "",
                foreign=f.user_id not in (None, user),
                attributed=bool(f.user_id or f.run_id),
            )
            for f in fs
        ),
        steps=steps,
        stopped_at=None if completed else (1 if connected else 0),
        stop_reason="" if completed else ("connect_failed" if not connected else ended),
    )


def http(status=200, json=None, latency=0.1, error=None, url="http://x/health"):
    return HttpObservation(url=url, status=status, latency_s=latency, json=json, error=error)


def hs(path: str, status: int | None = 101, accept=True, error=None) -> HandshakeObservation:
    return HandshakeObservation(
        url=f"ws://x{path}",
        status=status,
        accept_valid=accept if status == 101 else None,
        error=error,
    )


def tl(statuses, ready_at=None, deadline=30.0) -> ReadinessTimeline:
    pts = tuple(
        TimelinePoint(t=float(i), status=s, error=None if s else "refused", latency_s=0.01)
        for i, s in enumerate(statuses)
    )
    return ReadinessTimeline(
        url="http://x/health", points=pts, ready_at=ready_at, deadline_s=deadline, interval_s=1.0
    )


def ping_flow(pong=True, connected=True, stop="", frames=(), status=None, close_code=None):
    """The ``load`` flow (send ping, expect pong) as a FlowObservation."""
    steps = (
        StepOutcome(0, "send", "sent" if connected else "not_reached", "send ping", 0.0, 0.0),
        StepOutcome(
            1,
            "expect",
            "matched" if pong else ("timeout" if connected else "not_reached"),
            "expect pong",
            0.0,
            0.01,
            5,
        ),
    )
    return FlowObservation(
        url="ws://x/ws/test",
        flow="load",
        user_id="u",
        marker="m",
        connected=connected,
        status=101 if connected else status,
        connect_error=None if connected else "http_status",
        frames=tuple(FlowFrame(f, "") for f in frames),
        steps=steps,
        stopped_at=None if pong else 1,
        stop_reason="" if pong else (stop or ("timeout" if connected else "connect_failed")),
        close_code=close_code,
    )


def att(case, accepted, how="x", produced=True, sub=None) -> AuthAttempt:
    return AuthAttempt(case=case, produced=produced, accepted=accepted, how=how, subprotocol=sub)


NEG_OK = tuple(
    att(c, False, "close 1008") for c in ("missing", "malformed", "wrong_signature", "expired")
)


def tick(h=200, w=101, up=True, lat=0.1, ping=None) -> MonitorTick:
    return MonitorTick(
        t=0,
        health_status=h,
        health_latency_s=lat,
        health_error=None,
        ws_status=w,
        ws_latency_s=0.01,
        ws_error=None,
        ws_upgraded=up,
        ping_ok=ping,
    )


def mon(ticks) -> MonitorObservation:
    return MonitorObservation("http://x/health", "ws://x/ws", 60, 2, tuple(ticks))


@dataclass(frozen=True)
class LoadReportStub:
    """The attributes the load judges read of ``load.LoadReport`` (``LoadReportView``)."""

    planned: int = 10
    succeeded: int = 10
    failed: int = 0
    errors_by_kind: dict[str, int] = field(default_factory=dict)
    handshake_statuses: dict[int, int] = field(default_factory=lambda: {101: 10})
    p50_s: float | None = 0.1
    p95_s: float | None = 0.2
    saturated: bool = False
    saturation_reason: str = ""
    schedule_reason: str = ""

    @property
    def trusted(self) -> bool:
        return not self.saturated

    def success_rate(self) -> float:
        return self.succeeded / self.planned if self.planned else 0.0

    def server_error_count(self) -> int:
        server = ("closed_1011", "closed_1012", "closed_1013", "closed_1014")
        return sum(
            n for k, n in self.errors_by_kind.items() if k.startswith("handshake_5") or k in server
        )


def load_report(**kw) -> LoadReportStub:
    return LoadReportStub(**kw)


@dataclass(frozen=True)
class LogEntryStub:
    """One log line (``logs.LogEntry``'s shape, ``LogEntryView``)."""

    severity: str = "INFO"
    status: int | None = None
    path: str = ""
    text: str = "x"
    revision: str = "rev-1"
    timestamp: datetime = datetime(2026, 1, 1, tzinfo=UTC)
    method: str = "GET"


def entry(sev="INFO", status=None, path="", text="x") -> LogEntryStub:
    return LogEntryStub(severity=sev, status=status, path=path, text=text)
