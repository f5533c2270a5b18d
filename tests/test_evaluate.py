"""Pure judges: table tests over hand-built observations."""

from __future__ import annotations

import pytest

from runbook_lib.evaluate import (
    INCIDENT_SIGNATURE,
    cross_user_frames,
    explain_close,
    explain_status,
    judge_agent_response,
    judge_auth_config,
    judge_auth_health,
    judge_auth_rejects_invalid,
    judge_auth_ws_authenticated,
    judge_chat_flow,
    judge_critical_delivered,
    judge_events_latency,
    judge_events_order,
    judge_events_structure,
    judge_health_backend,
    judge_http_latency,
    judge_isolation_no_cross_user,
    judge_isolation_sessions,
    judge_monitor_avg_response,
    judge_monitor_hold,
    judge_monitor_uptime,
    judge_monitor_ws_404,
    judge_monitor_ws_failure_rate,
    judge_no_5xx_during_warmup,
    judge_ready_within,
    judge_tests_duration,
    judge_url_reachable,
    judge_ws_health,
    judge_ws_roundtrip,
    judge_ws_routes_probe,
    judge_ws_test_endpoint,
    judge_ws_upgrade,
    order_violation,
)
from runbook_lib.http_checks import HttpObservation, ReadinessTimeline, TimelinePoint
from runbook_lib.protocol import Frame, FrameKind
from runbook_lib.results import Status
from runbook_lib.settings import ProtocolSettings
from runbook_lib.ws_checks import (
    AgentRunObservation,
    AuthAttempt,
    AuthObservation,
    ConnectOutcome,
    HandshakeObservation,
    HoldObservation,
    IsolationObservation,
    MonitorObservation,
    MonitorTick,
    RoundTripObservation,
)

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
    types=CRIT, user="u1", run="r1", gap=0.1, ended="completed", connect=OK, frames=None, **kw
) -> AgentRunObservation:
    fs = (
        tuple(frames)
        if frames is not None
        else tuple(ev(t, gap * (i + 1), user, run) for i, t in enumerate(types))
    )
    return AgentRunObservation(
        url="ws://x/ws",
        user_id=user,
        run_id=run,
        thread_id="t",
        template="agent_request",
        connect=connect,
        sent=connect.connected,
        frames=fs,
        ended=ended,
        **kw,
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


# ---------------------------------------------------------------- cause mapping


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (404, "not registered"),
        (403, "IAM"),
        (400, "handshake headers"),
        (426, "Upgrade"),
        (429, "max instances"),
        (500, "no ready instance"),
        (503, "readiness"),
        (502, "HTTP/2"),
        (200, "plain GET"),
        (301, "redirect"),
        (None, "no HTTP answer"),
        (599, "no ready instance"),
    ],
)
def test_explain_status(code, words) -> None:
    assert words in explain_status(code)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (1006, "request timeout"),
        (1008, "auth"),
        (1011, "server error"),
        (1003, "subprotocol"),
        (4001, "application-defined"),
        (None, "not closed"),
    ],
)
def test_explain_close(code, words) -> None:
    assert words in explain_close(code)


# ---------------------------------------------------------------- phase 1


@pytest.mark.parametrize(
    ("obs", "status"),
    [
        (http(200), Status.PASS),
        (http(503), Status.FAIL),
        (http(None, error="refused"), Status.FAIL),
        (http(None, error="timeout"), Status.ERROR),
    ],
)
def test_health_backend(obs, status) -> None:
    assert judge_health_backend(obs).status is status


def test_url_reachable() -> None:
    assert judge_url_reachable(http(404)).status is Status.PASS
    r = judge_url_reachable(http(None, error="dns"))
    assert r.status is Status.FAIL and "dns" in r.detail


def test_routes_probe_names_incident_signature() -> None:
    r = judge_ws_routes_probe(http(200), [hs("/websocket", 404), hs("/ws/test", 404)])
    assert r.status is Status.FAIL and INCIDENT_SIGNATURE in r.detail
    assert r.data["incident_signature"] is True and r.observed == {
        "/websocket": 404,
        "/ws/test": 404,
    }


def test_routes_probe_other_failures_and_pass() -> None:
    r = judge_ws_routes_probe(http(503), [hs("/websocket", 404)])
    assert r.status is Status.FAIL and INCIDENT_SIGNATURE not in r.detail
    r = judge_ws_routes_probe(http(200), [hs("/websocket", 426)])
    assert "Upgrade" in r.detail
    assert judge_ws_routes_probe(http(200), [hs("/websocket")]).status is Status.PASS
    assert judge_ws_routes_probe(http(200), []).status is Status.ERROR


# ---------------------------------------------------------------- phase 2


def tl(statuses, ready_at=None, deadline=30.0) -> ReadinessTimeline:
    pts = tuple(
        TimelinePoint(t=float(i), status=s, error=None if s else "refused", latency_s=0.01)
        for i, s in enumerate(statuses)
    )
    return ReadinessTimeline(
        url="http://x/health", points=pts, ready_at=ready_at, deadline_s=deadline, interval_s=1.0
    )


@pytest.mark.parametrize(
    ("timeline", "limit", "status"),
    [
        (tl([None, 503, 200], ready_at=2.01), 30, Status.PASS),
        (tl([503] * 5 + [200], ready_at=40.0, deadline=60), 30, Status.FAIL),
        (tl([503, 503]), 30, Status.FAIL),
        (tl([]), 30, Status.ERROR),
    ],
)
def test_ready_within(timeline, limit, status) -> None:
    r = judge_ready_within(timeline, check_id="ws.health_ready_within", limit_s=limit)
    assert r.status is status and r.id == "ws.health_ready_within" and r.phase == 2


def test_no_5xx_during_warmup() -> None:
    assert judge_no_5xx_during_warmup([tl([None, 200])]).status is Status.PASS
    r = judge_no_5xx_during_warmup([tl([None, 200]), tl([502, 503, 200])])
    assert r.status is Status.FAIL and r.observed == 2 and "502/503" in r.detail
    assert judge_no_5xx_during_warmup([]).status is Status.ERROR


# ---------------------------------------------------------------- phase 3


def test_ws_upgrade() -> None:
    assert judge_ws_upgrade([hs("/a"), hs("/b")]).status is Status.PASS
    r = judge_ws_upgrade([hs("/a"), hs("/b", 101, accept=False)])
    assert r.status is Status.FAIL and "Accept" in r.detail
    r = judge_ws_upgrade([hs("/a", None, error="timeout")])
    assert "timeout" in r.detail


@pytest.mark.parametrize(
    ("obs", "status"),
    [
        (http(200, {"connections": {"active": 0}}), Status.PASS),
        (http(200, {"status": "ok"}), Status.FAIL),
        (http(404), Status.FAIL),
    ],
)
def test_ws_health(obs, status) -> None:
    assert judge_ws_health(obs).status is status


def rt(pong=True, connected=True, ended="pong", frames=(), status=None):
    c = OK if connected else ConnectOutcome(False, status=status, error="http_status")
    return RoundTripObservation(
        url="ws://x/ws/test",
        connect=c,
        sent=connected,
        pong=pong,
        latency_s=0.01 if pong else None,
        frames=frames,
        ended=ended,
    )


def test_ws_roundtrip_and_test_endpoint() -> None:
    pong = Frame(t=0.01, size=5, kind=FrameKind.IGNORED, event_type="pong")
    assert judge_ws_roundtrip(rt(frames=(pong,))).status is Status.PASS
    r = judge_ws_roundtrip(rt(pong=False, ended="timeout"))
    assert r.status is Status.FAIL and "timeout" in r.detail
    r = judge_ws_roundtrip(rt(connected=False, status=404))
    assert r.status is Status.FAIL and "not registered" in r.detail
    assert judge_ws_test_endpoint(rt(frames=(pong,))).status is Status.PASS
    assert judge_ws_test_endpoint(rt(pong=False, ended="timeout")).status is Status.FAIL
    assert judge_ws_test_endpoint(http(200, {"status": "ok"})).status is Status.PASS
    assert judge_ws_test_endpoint(http(404)).status is Status.FAIL


def test_http_latency() -> None:
    assert judge_http_latency([http(latency=0.2)] * 3, limit_s=1).status is Status.PASS
    assert (
        judge_http_latency([http(latency=0.2), http(latency=1.5)], limit_s=1).status is Status.FAIL
    )
    assert judge_http_latency([http(latency=0.2), http(503)], limit_s=1).status is Status.FAIL
    assert judge_http_latency([], limit_s=1).status is Status.ERROR


# ---------------------------------------------------------------- agent runs


def test_agent_response() -> None:
    assert judge_agent_response(run_of(), timeout_s=30).status is Status.PASS
    r = judge_agent_response(run_of(gap=10), timeout_s=30)
    assert r.status is Status.FAIL and "only after" in r.detail
    r = judge_agent_response(run_of(CRIT[:2], ended="timeout"), timeout_s=30)
    assert r.status is Status.FAIL and "never completed" in r.detail
    r = judge_agent_response(run_of((), ended="timeout"), timeout_s=30)
    assert r.status is Status.FAIL and "no agent event" in r.detail
    refused = run_of(connect=ConnectOutcome(False, status=404, error="http_status"))
    r = judge_agent_response(refused, timeout_s=30)
    assert r.status is Status.FAIL and "404" in r.detail


def test_chat_flow() -> None:
    assert judge_chat_flow(run_of()).status is Status.PASS
    err = Frame(t=0.1, size=5, kind=FrameKind.ERROR, event_type="error", excerpt="denied")
    r = judge_chat_flow(run_of(frames=[err], ended="error_frame"))
    assert r.status is Status.FAIL and "error frame" in r.detail
    assert judge_chat_flow(run_of((), ended="timeout")).status is Status.FAIL


@pytest.mark.parametrize(
    ("types", "minimum", "status"),
    [
        (CRIT, 5, Status.PASS),
        (CRIT[:1] + CRIT[-1:], 5, Status.FAIL),
        (CRIT[:1] + CRIT[-1:], 2, Status.PASS),
        ((), 1, Status.FAIL),
    ],
)
def test_critical_delivered(types, minimum, status) -> None:
    r = judge_critical_delivered(run_of(types), critical=CRIT, minimum=minimum)
    assert r.status is status


S, T, E, C, D = CRIT


@pytest.mark.parametrize(
    ("types", "ok"),
    [
        ((S, T, E, C, D), True),
        ((S, T, D), True),
        ((S, T, E, C, E, C, D), True),
        ((S, E, T, C, D), False),
        ((T, S, E, C, D), False),
        ((S, T, E, D), False),
        ((S, T, E, C), False),
        ((S, T, E, C, D, E), False),
        ((S,), False),
    ],
)
def test_order_violation(types, ok) -> None:
    assert (order_violation(types, CRIT) is None) is ok


def test_events_order_judge() -> None:
    assert judge_events_order(run_of(), critical=CRIT).status is Status.PASS
    r = judge_events_order(run_of((S, E, T, C, D)), critical=CRIT)
    assert r.status is Status.FAIL and "expected agent_thinking" in r.detail
    assert judge_events_order(run_of(()), critical=CRIT).status is Status.FAIL


def test_events_structure() -> None:
    assert judge_events_structure(run_of(), required_fields=P.required_fields).status is Status.PASS
    bare = [
        Frame(
            t=0.1,
            size=5,
            kind=FrameKind.EVENT,
            event_type=S,
            user_id="u1",
            data={"type": S, "user_id": "u1"},
        )
    ]
    r = judge_events_structure(run_of(frames=bare), required_fields=P.required_fields)
    assert r.status is Status.FAIL and "run_id" in r.detail and "agent_name" in r.detail
    nested = [
        Frame(
            t=0.1,
            size=5,
            kind=FrameKind.EVENT,
            event_type=S,
            user_id="u1",
            data={
                "type": S,
                "data": {"user_id": "u1", "run_id": "r", "timestamp": 1, "agent_name": "a"},
            },
        )
    ]
    assert (
        judge_events_structure(run_of(frames=nested), required_fields=P.required_fields).status
        is Status.PASS
    )
    assert (
        judge_events_structure(run_of(()), required_fields=P.required_fields).status is Status.FAIL
    )


def test_events_latency() -> None:
    r = judge_events_latency(run_of(), timeout_s=30)
    assert r.status is Status.PASS and r.data["max_gap_s"] == pytest.approx(0.1)
    assert judge_events_latency(run_of(gap=10), timeout_s=30).status is Status.FAIL
    assert judge_events_latency(run_of(()), timeout_s=30).status is Status.FAIL


# ---------------------------------------------------------------- isolation


def test_isolation_sessions() -> None:
    good = IsolationObservation(runs=tuple(run_of(user=f"u{i}", run=f"r{i}") for i in range(5)))
    assert judge_isolation_sessions(good, success_rate=0.8, response_s=5).status is Status.PASS
    slow = IsolationObservation(
        runs=(*good.runs[:3], run_of(user="u8", gap=6), run_of((), user="u9", ended="timeout"))
    )
    r = judge_isolation_sessions(slow, success_rate=0.8, response_s=5)
    assert r.status is Status.FAIL and r.observed == 0.6
    assert (
        judge_isolation_sessions(
            IsolationObservation(runs=()), success_rate=0.8, response_s=5
        ).status
        is Status.ERROR
    )


def test_no_cross_user_flags_foreign_user_and_run() -> None:
    a = run_of(user="a", run="ra")
    b = run_of(
        user="b",
        run="rb",
        frames=[*run_of(user="b", run="rb").frames, ev(S, 0.2, user="a", run="ra")],
    )
    c = run_of(
        user="c",
        run="rc",
        frames=[*run_of(user="c", run="rc").frames, ev(S, 0.3, user=None, run="ra")],
    )
    leaks = cross_user_frames([a, b, c])
    assert set(leaks) == {"b", "c"}
    r = judge_isolation_no_cross_user(IsolationObservation(runs=(a, b, c)))
    assert r.status is Status.FAIL and r.observed == 2 and "leak" in r.detail
    ok = IsolationObservation(runs=(a, run_of(user="b", run="rb")))
    assert judge_isolation_no_cross_user(ok).status is Status.PASS
    lonely = IsolationObservation(runs=(a, run_of((), user="b", ended="connect_failed")))
    assert judge_isolation_no_cross_user(lonely).status is Status.FAIL


def test_own_events_ignore_leaked_frames() -> None:
    b = run_of(user="b", run="rb", frames=[ev(S, 0.1, "b", "rb"), ev(S, 0.2, "a", "ra")])
    assert len(b.events) == 1


# ---------------------------------------------------------------- auth


def att(case, accepted, how="x", produced=True, sub=None) -> AuthAttempt:
    return AuthAttempt(case=case, produced=produced, accepted=accepted, how=how, subprotocol=sub)


NEG_OK = tuple(
    att(c, False, "close 1008") for c in ("missing", "malformed", "wrong_signature", "expired")
)


def test_auth_ws_authenticated() -> None:
    ok = AuthObservation("bearer", att("valid", True), NEG_OK)
    assert judge_auth_ws_authenticated(ok).status is Status.PASS
    no_echo = AuthObservation("subprotocol", att("valid", True), NEG_OK)
    assert judge_auth_ws_authenticated(no_echo).status is Status.FAIL
    echo = AuthObservation("subprotocol", att("valid", True, sub="jwt.[REDACTED]"), NEG_OK)
    assert judge_auth_ws_authenticated(echo).status is Status.PASS
    refused = AuthObservation(
        "bearer", AuthAttempt("valid", accepted=False, how="HTTP 403", status=403), NEG_OK
    )
    assert "IAM" in judge_auth_ws_authenticated(refused).detail
    assert (
        judge_auth_ws_authenticated(AuthObservation("bearer", None, token_error="x")).status
        is Status.ERROR
    )


def test_auth_rejects_invalid() -> None:
    assert judge_auth_rejects_invalid(AuthObservation("query", None, NEG_OK)).status is Status.PASS
    bypass = (*NEG_OK[:2], att("wrong_signature", True), att("expired", True))
    r = judge_auth_rejects_invalid(AuthObservation("query", None, bypass))
    assert r.status is Status.FAIL and "wrong_signature, expired" in r.detail
    partial = (
        *NEG_OK[:2],
        att("wrong_signature", None, produced=False),
        att("expired", None, produced=False),
    )
    assert (
        judge_auth_rejects_invalid(AuthObservation("bearer", None, partial)).status is Status.WARN
    )
    silent = (*NEG_OK[:3], att("expired", None, "socket stayed open"))
    assert judge_auth_rejects_invalid(AuthObservation("bearer", None, silent)).status is Status.FAIL
    assert judge_auth_rejects_invalid(AuthObservation("none", None)).status is Status.SKIP


def test_auth_http_endpoints() -> None:
    assert judge_auth_config(http(200, {"a": 1})).status is Status.PASS
    assert judge_auth_config(http(200, None)).status is Status.FAIL
    assert judge_auth_health(http(200)).status is Status.PASS
    assert judge_auth_health(http(None, error="refused")).status is Status.FAIL


def test_tests_duration() -> None:
    assert judge_tests_duration({"a": 10, "b": 20}, limit_s=300).status is Status.PASS
    r = judge_tests_duration({"a": 100, "b": 250}, limit_s=300)
    assert r.status is Status.FAIL and "slowest b" in r.detail
    assert judge_tests_duration({}, limit_s=300).status is Status.SKIP


# ---------------------------------------------------------------- phase 7


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


def test_monitor_judges() -> None:
    good = mon([tick()] * 100)
    assert judge_monitor_uptime(good, min_uptime=0.999).status is Status.PASS
    assert judge_monitor_ws_failure_rate(good, max_rate=0.01).status is Status.PASS
    assert judge_monitor_avg_response(good, limit_s=2).status is Status.PASS
    assert judge_monitor_ws_404(good).status is Status.PASS
    bad = mon([tick()] * 98 + [tick(h=503, w=404, up=False)] * 2)
    assert judge_monitor_uptime(bad, min_uptime=0.999).status is Status.FAIL
    r = judge_monitor_ws_failure_rate(bad, max_rate=0.01)
    assert r.status is Status.FAIL and r.observed == 0.02
    r = judge_monitor_ws_404(bad)
    assert r.status is Status.FAIL and r.observed == 2 and "not registered" in r.detail
    assert judge_monitor_avg_response(mon([tick(lat=3)]), limit_s=2).status is Status.FAIL
    assert (
        judge_monitor_ws_failure_rate(mon([tick(ping=False)]), max_rate=0.01).status is Status.FAIL
    )
    empty = mon([])
    assert {
        judge_monitor_uptime(empty, min_uptime=0.9).status,
        judge_monitor_ws_404(empty).status,
    } == {Status.ERROR}


@pytest.mark.parametrize(
    ("outcome", "clean", "code", "status", "words"),
    [
        ("held", True, 1000, Status.PASS, "held"),
        ("held", False, 1006, Status.FAIL, "did not complete"),
        ("abrupt", False, 1006, Status.FAIL, "request timeout"),
        ("server_closed", False, 1011, Status.FAIL, "server error"),
        ("connect_failed", False, None, Status.FAIL, "could not connect"),
    ],
)
def test_monitor_hold(outcome, clean, code, status, words) -> None:
    c = OK if outcome != "connect_failed" else ConnectOutcome(False, error="refused")
    obs = HoldObservation(
        url="ws://x",
        connect=c,
        hold_s=30,
        outcome=outcome,
        ended_at_s=12,
        close_code=code,
        clean_close=clean,
    )
    r = judge_monitor_hold(obs)
    assert r.status is status and words in r.detail


# ---------------------------------------------------------------- load and logs


def load_report(**kw):
    import numpy as np

    from runbook_lib.load import LoadReport

    base = dict(
        planned=10,
        attempted=10,
        succeeded=10,
        failed=0,
        errors_by_kind={},
        handshake_statuses={101: 10},
        rtt_s=np.array([0.1] * 10),
        p50_s=0.1,
        p95_s=0.2,
        p99_s=0.3,
    )
    base.update(kw)
    return LoadReport(**base)


def test_judge_load() -> None:
    from runbook_lib.evaluate import judge_load

    ok = judge_load(load_report(), success_rate=0.8, p95_s=3)
    assert [(r.id, r.status) for r in ok] == [
        ("load.success_rate", Status.PASS),
        ("load.latency_p95", Status.PASS),
        ("load.no_server_errors", Status.PASS),
    ]
    bad = judge_load(
        load_report(
            succeeded=5, failed=5, errors_by_kind={"handshake_404": 3, "closed_1011": 2}, p95_s=4.0
        ),
        success_rate=0.8,
        p95_s=3,
    )
    by = {r.id: r for r in bad}
    assert by["load.success_rate"].status is Status.FAIL
    assert "not registered" in by["load.success_rate"].detail
    assert by["load.latency_p95"].status is Status.FAIL
    assert by["load.no_server_errors"].status is Status.FAIL
    assert by["load.no_server_errors"].observed == 2
    sat = judge_load(
        load_report(p95_s=4.0, saturated=True, saturation_reason="cpu 100%"),
        success_rate=0.8,
        p95_s=3,
    )
    assert sat[1].status is Status.WARN
    none = judge_load(load_report(planned=0, succeeded=0, p95_s=None), success_rate=0.8, p95_s=3)
    assert none[0].status is Status.ERROR and none[1].status is Status.FAIL


def test_judge_log_entries() -> None:
    from datetime import UTC, datetime

    from runbook_lib.evaluate import judge_log_entries
    from runbook_lib.logs import LogEntry

    def entry(sev="INFO", status=None, path="", text="x") -> LogEntry:
        return LogEntry(
            datetime(2026, 1, 1, tzinfo=UTC), sev, "rev-1", text, status, "GET", path, 0.01
        )

    clean = [entry(), entry(status=200, path="/health"), entry(status=404, path="/favicon.ico")]
    r = judge_log_entries(
        clean,
        check_id="logs.no_routing_errors",
        what="routing errors",
        phase=3,
        ws_paths=["/websocket"],
    )
    assert r.status is Status.PASS and r.phase == 3
    bad = [
        *clean,
        entry("WARNING", 404, "/websocket", "GET /websocket 404"),
        entry("ERROR", text="Traceback"),
    ]
    r = judge_log_entries(
        bad, check_id="monitor.log_errors", what="errors", phase=7, ws_paths=["/websocket"]
    )
    assert r.status is Status.FAIL and r.observed == 2 and "not registered" in r.detail
