"""Pure judges: observations + thresholds -> :class:`CheckResult`.

No I/O and no clock here: every function takes what the observers recorded and
the thresholds from ``settings.thresholds`` and returns one result whose
``detail`` says, in words a person can act on, why it failed and what to do.
Missing evidence (no socket opened, no event arrived) is ``fail`` or ``error``,
never ``skip`` and never ``pass``. :func:`explain_status` and
:func:`explain_close` map handshake statuses and close codes to likely causes
(SPEC section 3).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from typing import Any

from .http_checks import HttpObservation, ReadinessTimeline
from .protocol import has_path
from .results import CheckResult, Status
from .ws_checks import (
    AgentRunObservation,
    AuthObservation,
    HandshakeObservation,
    HoldObservation,
    IsolationObservation,
    MonitorObservation,
    RoundTripObservation,
)

__all__ = [
    "CLOSE_CAUSES",
    "INCIDENT_SIGNATURE",
    "STATUS_CAUSES",
    "cross_user_frames",
    "explain_close",
    "explain_status",
    "judge_agent_response",
    "judge_auth_config",
    "judge_auth_health",
    "judge_auth_rejects_invalid",
    "judge_auth_ws_authenticated",
    "judge_chat_flow",
    "judge_critical_delivered",
    "judge_events_latency",
    "judge_events_order",
    "judge_events_structure",
    "judge_health_backend",
    "judge_http_latency",
    "judge_isolation_no_cross_user",
    "judge_isolation_sessions",
    "judge_load",
    "judge_log_entries",
    "judge_monitor_avg_response",
    "judge_monitor_hold",
    "judge_monitor_uptime",
    "judge_monitor_ws_404",
    "judge_monitor_ws_failure_rate",
    "judge_no_5xx_during_warmup",
    "judge_ready_within",
    "judge_tests_duration",
    "judge_url_reachable",
    "judge_ws_health",
    "judge_ws_roundtrip",
    "judge_ws_routes_probe",
    "judge_ws_test_endpoint",
    "judge_ws_upgrade",
    "order_violation",
]

INCIDENT_SIGNATURE = "WebSocket routes answer 404 while /health is 200"

STATUS_CAUSES: dict[int, str] = {
    400: "the server saw a request without the WebSocket handshake headers (Upgrade, "
    "Connection, Sec-WebSocket-Key/Version): a client or proxy dropped them",
    401: "the server requires credentials for this route: send a valid token",
    403: "IAM or ingress settings refuse the caller, or no WebSocket route matched and the "
    "framework answered 403: check `--ingress`/`--allow-unauthenticated` and the route table",
    404: "the WebSocket route is not registered in the serving revision (router not included, "
    "wrong path prefix) or a load-balancer path rule does not forward it: list the app's "
    "routes and deploy the revision that has them",
    405: "the path exists for another method only: the WebSocket route is not registered there",
    426: "a hop between client and service stripped the `Upgrade` header (proxy or load "
    "balancer without WebSocket support): enable WebSocket/HTTP-1.1 upgrade on that hop",
    429: "the service hit its max instances or concurrency: raise `--max-instances` or "
    "`--concurrency`, or reduce load",
    500: "no ready instance, a readiness guard answering before startup finished, or an "
    "exception in the handler: read the revision's logs",
    502: "HTTP/2 end-to-end is on (`--use-http2`) but the container speaks HTTP/1.1 "
    "WebSockets, or the container crashed mid-request: turn HTTP/2 end-to-end off",
    503: "no ready instance (cold start, crash loop, failed readiness) or a readiness guard "
    "refusing traffic: check the revision's readiness and min instances",
    504: "the request hit Cloud Run's request timeout before the container answered",
}

CLOSE_CAUSES: dict[int, str] = {
    1000: "normal close",
    1001: "the server is going away (instance shutdown or redeploy): reconnect",
    1002: "protocol error: one side sent a malformed frame",
    1003: "the server refused the subprotocol or data type it was sent: check the "
    "`Sec-WebSocket-Protocol` offer (e.g. `jwt.<token>`)",
    1006: "abrupt close without a close frame: Cloud Run's request timeout cut the socket, "
    "the instance was stopped, or a proxy idle timeout fired: raise `--timeout` above the "
    "session length and reconnect on close",
    1008: "policy violation, almost always authentication: the token is missing, expired, "
    "wrongly signed or for another audience",
    1009: "a frame exceeded the size limit",
    1011: "server error while handling the session: read the revision's logs",
    1012: "the service is restarting",
    1013: "try again later: the server is overloaded",
}


def explain_status(code: int | None) -> str:
    """Likely cause of a WebSocket upgrade answered with HTTP ``code``, in words."""
    if code is None:
        return "no HTTP answer at all: the host refused, timed out or spoke something else"
    if code == 101:
        return "101 Switching Protocols: the upgrade succeeded"
    if code in STATUS_CAUSES:
        return STATUS_CAUSES[code]
    if 300 <= code < 400:
        return "a redirect: WebSocket clients do not follow it; use the final URL (https/wss)"
    if 500 <= code < 600:
        return STATUS_CAUSES[500]
    if 200 <= code < 300:
        return (
            f"HTTP {code} instead of 101: a hop answered the upgrade as a plain GET "
            "(Upgrade stripped) or the path is an HTTP route, not a WebSocket route"
        )
    return f"HTTP {code}: unexpected answer to a WebSocket upgrade"


def explain_close(code: int | None) -> str:
    """Likely cause of a WebSocket closed with ``code``, in words."""
    if code is None:
        return "the socket was not closed by a close frame"
    if code in CLOSE_CAUSES:
        return CLOSE_CAUSES[code]
    if 4000 <= code < 5000:
        return f"application-defined close {code}: see the service's protocol documentation"
    return f"close code {code}"


def _r(
    check_id: str,
    phase: int,
    status: Status,
    detail: str,
    *,
    observed: Any = None,
    threshold: Any = None,
    data: dict[str, Any] | None = None,
) -> CheckResult:
    return CheckResult(
        id=check_id,
        phase=phase,
        status=status,
        observed=observed,
        threshold=threshold,
        detail=detail,
        data=data or {},
    )


def _http_failure(obs: HttpObservation) -> str:
    if obs.status is None:
        return f"no HTTP answer from {obs.url}: {obs.error} ({obs.error_detail})"
    return f"{obs.url} answered HTTP {obs.status}: {explain_status(obs.status)}"


# ---------------------------------------------------------------- phase 1


def judge_health_backend(
    obs: HttpObservation, *, phase: int = 1, check_id: str = "health.backend"
) -> CheckResult:
    """``health.backend``: the health endpoint answers 200."""
    cid = check_id
    if obs.status == 200:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{obs.url} answered 200 in {obs.latency_s:.3f}s",
            observed=200,
            threshold=200,
            data={"body": obs.json},
        )
    status = Status.ERROR if obs.status is None and obs.error == "timeout" else Status.FAIL
    return _r(
        cid, phase, status, _http_failure(obs), observed=obs.status or obs.error, threshold=200
    )


def judge_url_reachable(
    obs: HttpObservation, *, phase: int = 1, check_id: str = "status.url_reachable"
) -> CheckResult:
    """``status.url_reachable``: the service URL answers HTTP (any status below 500)."""
    cid = check_id
    if obs.status is not None and obs.status < 500:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{obs.url} answered HTTP {obs.status}",
            observed=obs.status,
            threshold="HTTP < 500",
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        _http_failure(obs) + ". Check the service URL, ingress "
        "settings and that a revision is serving.",
        observed=obs.status or obs.error,
        threshold="HTTP < 500",
    )


def judge_ws_routes_probe(
    health: HttpObservation,
    probes: Sequence[HandshakeObservation],
    *,
    phase: int = 1,
    check_id: str = "ws.routes_probe",
) -> CheckResult:
    """``ws.routes_probe``: every WebSocket path upgrades; names the incident signature."""
    cid = check_id
    observed = {p.path: (p.status if p.status is not None else p.error) for p in probes}
    data = {"probes": [p.to_record() for p in probes], "health_status": health.status}
    if not probes:
        return _r(
            cid,
            phase,
            Status.ERROR,
            "no WebSocket path was probed: set target.ws_paths",
            observed=observed,
        )
    bad = [p for p in probes if not p.upgraded]
    if not bad:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"all {len(probes)} WebSocket path(s) answered 101 with a valid Sec-WebSocket-Accept",
            observed=observed,
            threshold=101,
            data=data,
        )
    four04 = [p.path for p in bad if p.status == 404]
    if health.status == 200 and four04:
        detail = (
            f"Incident signature: {INCIDENT_SIGNATURE} ({', '.join(four04)} -> 404, "
            f"{health.url} -> 200). The serving revision does not have the WebSocket "
            "routes: it was built from code without them or the router is not included. "
            "Deploy the revision built from the fixed source (phase 2)."
        )
        return _r(
            cid,
            phase,
            Status.FAIL,
            detail,
            observed=observed,
            threshold=101,
            data={**data, "incident_signature": True},
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        "; ".join(_upgrade_words(p) for p in bad),
        observed=observed,
        threshold=101,
        data=data,
    )


def _upgrade_words(p: HandshakeObservation) -> str:
    if p.status is None:
        return f"{p.path}: no answer ({p.error}: {p.error_detail})"
    if p.status == 101:
        return f"{p.path}: 101 but Sec-WebSocket-Accept is wrong (a proxy rewrote the handshake)"
    return f"{p.path}: HTTP {p.status} - {explain_status(p.status)}"


# ---------------------------------------------------------------- phase 2


def judge_ready_within(
    timeline: ReadinessTimeline,
    *,
    check_id: str = "health.ready_within",
    limit_s: float,
    phase: int = 2,
) -> CheckResult:
    """``health.ready_within`` / ``ws.health_ready_within``: 200 within ``limit_s``."""
    points = [p.to_record() for p in timeline.points]
    if not timeline.points:
        return _r(check_id, phase, Status.ERROR, "no poll was made", threshold=limit_s)
    if timeline.ready_at is not None and timeline.ready_at <= limit_s:
        return _r(
            check_id,
            phase,
            Status.PASS,
            f"{timeline.url} answered 200 after {timeline.ready_at:.1f}s ({len(points)} poll(s))",
            observed=round(timeline.ready_at, 3),
            threshold=limit_s,
            data={"timeline": points},
        )
    last = timeline.points[-1]
    seen = sorted({str(p.status if p.status is not None else p.error) for p in timeline.points})
    if timeline.ready_at is not None:
        detail = (
            f"{timeline.url} became ready only after {timeline.ready_at:.1f}s "
            f"(limit {limit_s:g}s): slow startup; consider min instances or a lighter "
            "startup path"
        )
    else:
        cause = explain_status(last.status) if last.status is not None else last.error
        detail = (
            f"{timeline.url} never answered 200 within {timeline.deadline_s:g}s "
            f"(answers seen: {', '.join(seen)}); last: {cause}"
        )
    return _r(
        check_id,
        phase,
        Status.FAIL,
        detail,
        observed=timeline.ready_at,
        threshold=limit_s,
        data={"timeline": points},
    )


def judge_no_5xx_during_warmup(
    timelines: Sequence[ReadinessTimeline],
    *,
    phase: int = 2,
    check_id: str = "health.no_5xx_during_warmup",
) -> CheckResult:
    """``health.no_5xx_during_warmup``: no 502/503 (any 5xx) while polling for readiness."""
    cid = check_id
    points = [(t.url, p) for t in timelines for p in t.points]
    if not points:
        return _r(cid, phase, Status.ERROR, "no readiness poll was recorded", threshold=0)
    bad = [(u, p) for u, p in points if p.status is not None and p.status >= 500]
    if not bad:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"no 5xx in {len(points)} poll(s) during warm-up",
            observed=0,
            threshold=0,
        )
    codes = sorted({p.status for _, p in bad if p.status is not None})
    detail = (
        f"{len(bad)} of {len(points)} warm-up poll(s) answered "
        f"{'/'.join(map(str, codes))}: {explain_status(codes[0])}. Traffic reached the "
        "revision before it was ready: add a startup probe or min instances."
    )
    return _r(
        cid,
        phase,
        Status.FAIL,
        detail,
        observed=len(bad),
        threshold=0,
        data={"bad": [{"url": u, **p.to_record()} for u, p in bad]},
    )


# ---------------------------------------------------------------- phase 3


def judge_ws_upgrade(
    probes: Sequence[HandshakeObservation], *, phase: int = 3, check_id: str = "ws.upgrade"
) -> CheckResult:
    """``ws.upgrade``: every WebSocket path answers 101 with a valid ``Sec-WebSocket-Accept``."""
    cid = check_id
    observed = {p.path: (p.status if p.status is not None else p.error) for p in probes}
    if not probes:
        return _r(cid, phase, Status.ERROR, "no WebSocket path was probed: set target.ws_paths")
    bad = [p for p in probes if not p.upgraded]
    if not bad:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{len(probes)} path(s) upgraded (101, accept valid)",
            observed=observed,
            threshold=101,
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        "; ".join(_upgrade_words(p) for p in bad),
        observed=observed,
        threshold=101,
        data={"probes": [p.to_record() for p in probes]},
    )


def judge_ws_health(
    obs: HttpObservation, *, phase: int = 3, check_id: str = "ws.health"
) -> CheckResult:
    """``ws.health``: the WebSocket health endpoint answers 200 with ``connections.active``."""
    cid = check_id
    if obs.status != 200:
        return _r(
            cid,
            phase,
            Status.FAIL,
            _http_failure(obs),
            observed=obs.status or obs.error,
            threshold="200 with connections.active",
        )
    if not has_path(obs.json, "connections.active"):
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"{obs.url} answered 200 but its body has no "
            "`connections.active`: the WebSocket manager is not wired into the health "
            "endpoint (or this is not the WebSocket health route)",
            observed=200,
            threshold="200 with connections.active",
            data={"body": obs.json},
        )
    active = obs.json["connections"]["active"]
    return _r(
        cid,
        phase,
        Status.PASS,
        f"{obs.url} answered 200, connections.active={active}",
        observed=active,
        threshold="200 with connections.active",
    )


def judge_ws_test_endpoint(
    obs: RoundTripObservation | HttpObservation,
    *,
    phase: int = 3,
    check_id: str = "ws.test_endpoint",
) -> CheckResult:
    """``ws.test_endpoint``: the test route answers.

    Given a :class:`RoundTripObservation` (a WebSocket session on ``ws_test_path``) the
    socket must open and the server must send something; given an
    :class:`HttpObservation` (the seed's ``curl /ws/test``) it must answer 200.
    """
    cid = check_id
    if isinstance(obs, HttpObservation):
        if obs.status == 200:
            return _r(
                cid,
                phase,
                Status.PASS,
                f"{obs.url} answered 200",
                observed=200,
                threshold=200,
                data={"body": obs.json},
            )
        return _r(
            cid,
            phase,
            Status.FAIL,
            _http_failure(obs),
            observed=obs.status or obs.error,
            threshold=200,
        )
    if not obs.connect.connected:
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"{obs.url}: {_connect_failure_words(obs.connect)}",
            observed=obs.connect.status or obs.connect.error,
            threshold="connect + reply",
        )
    if obs.frames:
        first = obs.frames[0]
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{obs.url} accepted the socket and answered ({first.event_type or first.kind})",
            observed=len(obs.frames),
            threshold="connect + reply",
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"{obs.url} accepted the socket but sent nothing "
        f"(ended: {obs.ended}); the test route does not answer",
        observed=0,
        threshold="connect + reply",
    )


def _connect_failure_words(c: Any) -> str:
    if c.status is not None and c.status != 101:
        return f"upgrade refused with HTTP {c.status}: {explain_status(c.status)}"
    return f"could not connect ({c.error}: {c.error_detail})"


def judge_ws_roundtrip(
    obs: RoundTripObservation, *, phase: int = 3, check_id: str = "ws.roundtrip"
) -> CheckResult:
    """``ws.roundtrip``: a ping is answered with a pong."""
    cid = check_id
    if not obs.connect.connected:
        return _r(
            cid,
            phase,
            Status.FAIL,
            _connect_failure_words(obs.connect),
            observed=obs.connect.status or obs.connect.error,
            threshold="pong",
        )
    if obs.pong and obs.latency_s is not None:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"pong after {obs.latency_s * 1000:.0f} ms",
            observed=round(obs.latency_s, 4),
            threshold="pong",
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        "no pong: " + _ended_words(obs.ended, obs.close_code, obs.frames),
        observed=obs.ended,
        threshold="pong",
        data={"frames": [f.to_record() for f in obs.frames]},
    )


_UNREADABLE = ("binary", "non_json", "oversized")


def _ended_words(ended: str, code: int | None, frames: Sequence[Any] = ()) -> str:
    if ended == "timeout":
        # The server did answer, with frames the client cannot read: say so, not "ignored".
        bad = [f for f in frames if str(f.kind) in _UNREADABLE]
        if bad:
            kinds = sorted({str(f.kind).replace("_", "-") for f in bad})
            return (
                f"only {len(bad)} frame(s) the client cannot read arrived before the timeout "
                f"({', '.join(kinds)}; first: {bad[0].excerpt[:60]!r}): the server must answer "
                "with JSON text frames"
            )
        return "nothing matching arrived before the timeout (the server ignores the message type?)"
    if ended in ("server_closed", "abrupt", "protocol_error"):
        return f"the socket closed with {code}: {explain_close(code)}"
    if ended == "too_big":
        return "the server sent a frame larger than the client accepts (closed 1009)"
    if ended == "send_failed":
        return "the socket closed before the message could be sent"
    if ended == "error_frame":
        return "the server answered with an error frame"
    return ended


def judge_http_latency(
    samples: Sequence[HttpObservation],
    *,
    limit_s: float,
    phase: int = 3,
    check_id: str = "http.latency",
) -> CheckResult:
    """``http.latency``: every sample answered 2xx faster than ``limit_s``."""
    cid = check_id
    if not samples:
        return _r(cid, phase, Status.ERROR, "no latency sample was taken", threshold=limit_s)
    failed = [s for s in samples if not s.ok]
    lat = [s.latency_s for s in samples if s.ok]
    data = {"samples": [s.to_record() for s in samples]}
    if failed:
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"{len(failed)}/{len(samples)} sample(s) failed: " + _http_failure(failed[0]),
            observed=None,
            threshold=limit_s,
            data=data,
        )
    worst = max(lat)
    if worst < limit_s:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"max {worst:.3f}s, median {statistics.median(lat):.3f}s over {len(lat)} sample(s)",
            observed=round(worst, 4),
            threshold=limit_s,
            data=data,
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"slowest sample {worst:.3f}s >= {limit_s:g}s: cold "
        "starts, CPU throttling or a slow dependency; check instance count and logs",
        observed=round(worst, 4),
        threshold=limit_s,
        data=data,
    )


# ---------------------------------------------------------------- phase 4 / 5 agent runs


def _run_failure(run: AgentRunObservation) -> str | None:
    """Why a run produced no evidence (None when it did connect and send)."""
    if run.ended == "token_failed":
        return f"no token for {run.user_id}: {run.error}"
    if not run.connect.connected:
        return _connect_failure_words(run.connect)
    if not run.sent:
        why = "the socket closed before the request was sent"
        if run.close_code is not None:
            why += f" (close {run.close_code}: {explain_close(run.close_code)})"
        if run.errors:
            why += f"; the server's error frame: {run.errors[0].excerpt}"
        return why
    return None


def judge_agent_response(
    run: AgentRunObservation,
    *,
    timeout_s: float,
    final_event: str | None = None,
    check_id: str = "e2e.agent_response",
    phase: int = 4,
) -> CheckResult:
    """``e2e.agent_response``: the run's final event arrives within ``timeout_s``.

    The final event is ``final_event`` when given, else the one the run recorded
    (``protocol.critical_events[-1]``), else ``agent_completed``.
    """
    final_event = final_event or run.final_event or "agent_completed"
    why = _run_failure(run)
    if why:
        return _r(check_id, phase, Status.FAIL, why, threshold=timeout_s)
    events = run.events
    done = [f for f in events if f.event_type == final_event]
    data = {"event_types": list(run.event_types), "ended": run.ended}
    if done and done[0].t <= timeout_s:
        return _r(
            check_id,
            phase,
            Status.PASS,
            f"agent completed after {done[0].t:.2f}s ({len(events)} event(s))",
            observed=round(done[0].t, 3),
            threshold=timeout_s,
            data=data,
        )
    if done:
        return _r(
            check_id,
            phase,
            Status.FAIL,
            f"agent completed only after {done[0].t:.2f}s (limit {timeout_s:g}s)",
            observed=round(done[0].t, 3),
            threshold=timeout_s,
            data=data,
        )
    if events:
        return _r(
            check_id,
            phase,
            Status.FAIL,
            f"the agent started ({', '.join(run.event_types)})"
            f" but never completed: {_ended_words(run.ended, run.close_code, run.frames)}",
            observed=None,
            threshold=timeout_s,
            data=data,
        )
    return _r(
        check_id,
        phase,
        Status.FAIL,
        "no agent event arrived: " + _ended_words(run.ended, run.close_code, run.frames),
        observed=None,
        threshold=timeout_s,
        data=data,
    )


def judge_chat_flow(
    run: AgentRunObservation, *, phase: int = 5, check_id: str = "chat.flow"
) -> CheckResult:
    """``chat.flow``: a chat message over an authenticated socket gets agent events back."""
    cid = check_id
    why = _run_failure(run)
    if why:
        return _r(cid, phase, Status.FAIL, why)
    if run.errors and not run.events:
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"the server answered the chat message with an error frame: {run.errors[0].excerpt}",
            observed="error frame",
        )
    if not run.events:
        return _r(
            cid,
            phase,
            Status.FAIL,
            "no agent event answered the chat message: "
            + _ended_words(run.ended, run.close_code, run.frames),
            observed=0,
        )
    return _r(
        cid,
        phase,
        Status.PASS,
        f"{len(run.events)} event(s) answered the chat message, first after {run.events[0].t:.2f}s",
        observed=list(run.event_types),
    )


def judge_critical_delivered(
    run: AgentRunObservation,
    *,
    critical: Sequence[str],
    minimum: int,
    phase: int = 5,
    check_id: str = "events.critical_delivered",
) -> CheckResult:
    """``events.critical_delivered``: at least ``minimum`` of the critical event types arrived."""
    cid = check_id
    why = _run_failure(run)
    if why:
        return _r(cid, phase, Status.FAIL, why, observed=0, threshold=minimum)
    got = [c for c in critical if c in run.event_types]
    missing = [c for c in critical if c not in run.event_types]
    if len(got) >= minimum:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{len(got)}/{len(critical)} critical events delivered",
            observed=len(got),
            threshold=minimum,
            data={"missing": missing},
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"only {len(got)}/{len(critical)} critical events "
        f"arrived; missing {', '.join(missing)} "
        f"({_ended_words(run.ended, run.close_code, run.frames)}). The agent does not emit them or "
        "the WebSocket notifier drops them.",
        observed=len(got),
        threshold=minimum,
        data={"missing": missing},
    )


def order_violation(types: Sequence[str], critical: Sequence[str]) -> str | None:
    """Where ``types`` breaks ``started, thinking, (executing, completed)*, completed``.

    Only the critical types are considered; ``critical`` names them in the SPEC's order
    (started, thinking, executing, tool completed, agent completed). Returns None when the
    order is right, else a sentence naming the first offending event.
    """
    if len(critical) < 5:
        return None
    started, thinking, executing, tool_done, completed = critical[:5]
    seq = [t for t in types if t in critical[:5]]
    expected_first = [started, thinking]
    for i, want in enumerate(expected_first):
        if i >= len(seq):
            return f"the stream ended before {want}"
        if seq[i] != want:
            return f"event {i + 1} is {seq[i]}, expected {want}"
    i = 2
    while i < len(seq) and seq[i] == executing:
        if i + 1 >= len(seq) or seq[i + 1] != tool_done:
            got = seq[i + 1] if i + 1 < len(seq) else "the end of the stream"
            return f"{executing} at position {i + 1} is followed by {got}, expected {tool_done}"
        i += 2
    if i >= len(seq):
        return f"the stream ended without {completed}"
    if seq[i] != completed:
        return f"event {i + 1} is {seq[i]}, expected {executing} or {completed}"
    if i + 1 < len(seq):
        return f"{seq[i + 1]} arrived after {completed}"
    return None


def judge_events_order(
    run: AgentRunObservation,
    *,
    critical: Sequence[str],
    phase: int = 5,
    check_id: str = "events.order",
) -> CheckResult:
    """``events.order``: started, thinking, (executing, completed)*, completed."""
    cid = check_id
    why = _run_failure(run)
    if why:
        return _r(cid, phase, Status.FAIL, why)
    types = [t for t in run.event_types if t in critical]
    if not types:
        return _r(
            cid,
            phase,
            Status.FAIL,
            "no critical event arrived, so the order cannot be "
            "confirmed: " + _ended_words(run.ended, run.close_code, run.frames),
            observed=[],
        )
    bad = order_violation(types, critical)
    threshold = "started, thinking, (executing, completed)*, completed"
    if bad is None:
        return _r(
            cid,
            phase,
            Status.PASS,
            "events arrived in the expected order",
            observed=types,
            threshold=threshold,
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"out of order: {bad}. Clients render progress from this "
        "order; the emitter sends events concurrently or from several tasks.",
        observed=types,
        threshold=threshold,
    )


def judge_events_structure(
    run: AgentRunObservation,
    *,
    required_fields: Mapping[str, Sequence[str]],
    phase: int = 5,
    check_id: str = "events.structure",
) -> CheckResult:
    """``events.structure``: every event carries the required fields for its type."""
    cid = check_id
    why = _run_failure(run)
    if why:
        return _r(cid, phase, Status.FAIL, why)
    checked = [f for f in run.events if f.event_type in required_fields]
    if not checked:
        return _r(
            cid,
            phase,
            Status.FAIL,
            "no event with configured required fields arrived, "
            "so the structure cannot be confirmed",
            observed=0,
        )
    problems = []
    for f in checked:
        missing = [p for p in required_fields[f.event_type or ""] if not _has_field(f.data, p)]
        if missing:
            problems.append(f"{f.event_type} lacks {', '.join(missing)}")
    if not problems:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{len(checked)} event(s) carry every required field",
            observed=len(checked),
            threshold="protocol.required_fields",
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        "; ".join(sorted(set(problems))) + ". Clients that read these fields will break.",
        observed=len(problems),
        threshold="protocol.required_fields",
        data={"problems": problems},
    )


def _has_field(data: Any, path: str) -> bool:
    # A required field may live flat or under the data/payload envelope.
    return any(has_path(data, p) for p in (path, f"data.{path}", f"payload.{path}"))


def judge_events_latency(
    run: AgentRunObservation, *, timeout_s: float, phase: int = 5, check_id: str = "events.latency"
) -> CheckResult:
    """``events.latency``: every event arrived within ``timeout_s`` of the request."""
    cid = check_id
    why = _run_failure(run)
    if why:
        return _r(cid, phase, Status.FAIL, why, threshold=timeout_s)
    events = run.events
    if not events:
        return _r(
            cid,
            phase,
            Status.FAIL,
            "no event arrived: " + _ended_words(run.ended, run.close_code, run.frames),
            threshold=timeout_s,
        )
    times = [f.t for f in events]
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    data = {"times": [round(t, 3) for t in times], "max_gap_s": round(max(gaps), 3)}
    last = times[-1]
    if last <= timeout_s:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"first event {times[0]:.2f}s, last {last:.2f}s, largest gap {max(gaps):.2f}s",
            observed=round(last, 3),
            threshold=timeout_s,
            data=data,
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"the last event came {last:.2f}s after the request (limit {timeout_s:g}s)",
        observed=round(last, 3),
        threshold=timeout_s,
        data=data,
    )


def cross_user_frames(
    runs: Sequence[AgentRunObservation],
) -> dict[str, list[dict[str, Any]]]:
    """Per user, every frame that carries another session's user id or run id."""
    own_runs = {r.user_id: _own_run_ids(r) for r in runs}
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        other_users = {o.user_id for o in runs if o is not r} - {r.user_id}
        other_runs = (
            set().union(*(own_runs[o.user_id] for o in runs if o is not r)) - own_runs[r.user_id]
            if len(runs) > 1
            else set()
        )
        leaks = [
            f.to_record()
            for f in r.frames
            if (f.user_id is not None and f.user_id in other_users)
            or (f.run_id is not None and f.run_id in other_runs)
        ]
        if leaks:
            out[r.user_id] = leaks
    return out


def _own_run_ids(run: AgentRunObservation) -> set[str]:
    ids = {run.run_id} if run.run_id else set()
    ids |= {f.run_id for f in run.frames if f.run_id and f.user_id == run.user_id}
    return ids


def judge_isolation_sessions(
    iso: IsolationObservation,
    *,
    success_rate: float,
    response_s: float,
    phase: int = 5,
    check_id: str = "isolation.sessions",
) -> CheckResult:
    """``isolation.sessions``: >= ``success_rate`` of users get their response within
    ``response_s`` (response = first own event)."""
    cid = check_id
    runs = iso.runs
    if not runs:
        return _r(cid, phase, Status.ERROR, "no session was started", threshold=success_rate)
    rows: list[dict[str, Any]] = []
    ok = 0
    for r in runs:
        first = r.first_event_s
        good = _run_failure(r) is None and first is not None and first < response_s and not r.errors
        ok += good
        rows.append(
            {
                "user": r.user_id,
                "success": good,
                "response_s": first,
                "ended": r.ended,
                "events": len(r.events),
                "why": _run_failure(r)
                or ("" if good else _ended_words(r.ended, r.close_code, r.frames)),
            }
        )
    rate = ok / len(runs)
    threshold = f">= {success_rate:.0%} of users, each < {response_s:g}s"
    if rate >= success_rate:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{ok}/{len(runs)} sessions succeeded",
            observed=round(rate, 3),
            threshold=threshold,
            data={"users": rows},
        )
    reasons = sorted(
        {str(row["why"] or f"response {row['response_s']}s") for row in rows if not row["success"]}
    )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"only {ok}/{len(runs)} sessions succeeded; " + "; ".join(reasons)[:400],
        observed=round(rate, 3),
        threshold=threshold,
        data={"users": rows},
    )


def judge_isolation_no_cross_user(
    iso: IsolationObservation, *, phase: int = 5, check_id: str = "isolation.no_cross_user"
) -> CheckResult:
    """``isolation.no_cross_user``: no session receives another user's or run's events."""
    cid = check_id
    runs = iso.runs
    # Binary / non-JSON frames carry no readable user or run id: they prove nothing.
    with_events = [r for r in runs if any(str(f.kind) not in _UNREADABLE for f in r.frames)]
    if len(with_events) < 2:
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"only {len(with_events)} session(s) received any readable (JSON) "
            "frame: isolation cannot be shown without at least two active sessions",
            observed=len(with_events),
            threshold="0 foreign frames",
        )
    leaks = cross_user_frames(runs)
    if not leaks:
        total = sum(len(r.frames) for r in runs)
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{total} frame(s) across {len(runs)} sessions, none foreign",
            observed=0,
            threshold="0 foreign frames",
        )
    n = sum(len(v) for v in leaks.values())
    example_user, frames = next(iter(leaks.items()))
    f = frames[0]
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"{n} foreign frame(s) in {len(leaks)} session(s): e.g. "
        f"{example_user} received {f['event_type']} for user {f['user_id']} run "
        f"{f['run_id']}. Events are broadcast instead of routed per user: a data leak; "
        "roll back.",
        observed=n,
        threshold="0 foreign frames",
        data={"leaks": leaks},
    )


# ---------------------------------------------------------------- phase 5 auth


def judge_auth_config(
    obs: HttpObservation, *, phase: int = 5, check_id: str = "auth.config"
) -> CheckResult:
    """``auth.config``: the auth service's config endpoint answers 200 JSON."""
    cid = check_id
    if obs.status == 200 and obs.json is not None:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{obs.url} answered 200 JSON",
            observed=200,
            threshold=200,
            data={"body": obs.json},
        )
    if obs.status == 200:
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"{obs.url} answered 200 but not JSON: {obs.text[:80]}",
            observed=200,
            threshold="200 JSON",
        )
    return _r(
        cid, phase, Status.FAIL, _http_failure(obs), observed=obs.status or obs.error, threshold=200
    )


def judge_auth_health(
    obs: HttpObservation, *, phase: int = 5, check_id: str = "auth.health"
) -> CheckResult:
    """``auth.health``: the auth service's health endpoint answers 200."""
    cid = check_id
    if obs.status == 200:
        return _r(cid, phase, Status.PASS, f"{obs.url} answered 200", observed=200, threshold=200)
    return _r(
        cid, phase, Status.FAIL, _http_failure(obs), observed=obs.status or obs.error, threshold=200
    )


def judge_auth_ws_authenticated(
    obs: AuthObservation, *, phase: int = 5, check_id: str = "auth.ws_authenticated"
) -> CheckResult:
    """``auth.ws_authenticated``: a valid token opens a working socket (subprotocol echoed)."""
    cid = check_id
    a = obs.authenticated
    if a is None:
        return _r(
            cid,
            phase,
            Status.ERROR,
            f"no valid token could be obtained: {obs.token_error}",
            threshold="accepted",
        )
    if a.accepted is not True:
        cause = (
            explain_status(a.status)
            if a.status
            else explain_close(a.close_code)
            if a.close_code
            else a.how
        )
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"a valid token ({a.reason}) was not accepted: {a.how} - {cause}",
            observed=a.how,
            threshold="accepted",
        )
    if obs.mode == "subprotocol" and not a.subprotocol:
        return _r(
            cid,
            phase,
            Status.FAIL,
            "the socket opened but the server did not echo the "
            "jwt subprotocol: browsers drop such connections; the server must select the "
            "offered subprotocol",
            observed="no subprotocol",
            threshold="echoed",
        )
    return _r(
        cid,
        phase,
        Status.PASS,
        f"authenticated socket works ({a.how})",
        observed="accepted",
        threshold="accepted",
    )


def judge_auth_rejects_invalid(
    obs: AuthObservation, *, phase: int = 5, check_id: str = "auth.rejects_invalid"
) -> CheckResult:
    """``auth.rejects_invalid``: missing, malformed, wrongly signed and expired tokens refused."""
    cid = check_id
    if obs.mode == "none":
        return _r(cid, phase, Status.SKIP, "auth.mode is none: no credentials are configured")
    rows = {
        n.case: (
            ("refused: " + n.how)
            if n.accepted is False
            else ("ACCEPTED: " + n.how)
            if n.accepted
            else ("not produced: " + n.reason)
            if not n.produced
            else ("undecided: " + n.how)
        )
        for n in obs.negatives
    }
    accepted = [n.case for n in obs.negatives if n.accepted is True]
    undecided = [n.case for n in obs.negatives if n.produced and n.accepted is None]
    missing = [n.case for n in obs.negatives if not n.produced]
    threshold = "all invalid credentials refused"
    if accepted:
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"the server ACCEPTED invalid credentials: "
            f"{', '.join(accepted)}. Token verification is off or bypassed: anyone can "
            "connect as any user; roll back.",
            observed=rows,
            threshold=threshold,
        )
    if undecided:
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"refusal not shown for {', '.join(undecided)}: "
            + "; ".join(rows[c] for c in undecided),
            observed=rows,
            threshold=threshold,
        )
    if not [n for n in obs.negatives if n.produced]:
        return _r(
            cid,
            phase,
            Status.ERROR,
            "no invalid credential could be produced",
            observed=rows,
            threshold=threshold,
        )
    if missing:
        return _r(
            cid,
            phase,
            Status.WARN,
            f"produced cases were refused; not testable with this "
            f"configuration: {', '.join(missing)}",
            observed=rows,
            threshold=threshold,
        )
    return _r(
        cid,
        phase,
        Status.PASS,
        "every invalid credential was refused",
        observed=rows,
        threshold=threshold,
    )


# ---------------------------------------------------------------- phase 4 tests


def judge_tests_duration(
    durations: Mapping[str, float],
    *,
    limit_s: float,
    phase: int = 4,
    check_id: str = "tests.duration",
) -> CheckResult:
    """``tests.duration``: the configured suites took less than ``limit_s`` in total."""
    cid = check_id
    if not durations:
        return _r(
            cid,
            phase,
            Status.SKIP,
            "no mission-critical test suite is configured",
            threshold=limit_s,
        )
    total = sum(durations.values())
    if total < limit_s:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"suites took {total:.1f}s",
            observed=round(total, 2),
            threshold=limit_s,
            data=dict(durations),
        )
    slowest = max(durations, key=lambda k: durations[k])
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"suites took {total:.1f}s (limit {limit_s:g}s); slowest "
        f"{slowest} {durations[slowest]:.1f}s: look for connection timeouts",
        observed=round(total, 2),
        threshold=limit_s,
        data=dict(durations),
    )


# ---------------------------------------------------------------- phase 7


def judge_monitor_uptime(
    mon: MonitorObservation, *, min_uptime: float, phase: int = 7, check_id: str = "monitor.uptime"
) -> CheckResult:
    """``monitor.uptime``: share of ticks whose health GET answered 2xx."""
    cid = check_id
    if not mon.ticks:
        return _r(cid, phase, Status.ERROR, "no monitoring sample was taken", threshold=min_uptime)
    up = sum(1 for t in mon.ticks if t.health_status is not None and 200 <= t.health_status < 300)
    rate = up / len(mon.ticks)
    if rate >= min_uptime:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{up}/{len(mon.ticks)} health samples OK",
            observed=round(rate, 4),
            threshold=min_uptime,
        )
    bad = sorted(
        {
            str(t.health_status or t.health_error)
            for t in mon.ticks
            if not (t.health_status and 200 <= t.health_status < 300)
        }
    )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"{len(mon.ticks) - up}/{len(mon.ticks)} health samples "
        f"failed ({', '.join(bad)}); uptime {rate:.2%} < {min_uptime:.2%}",
        observed=round(rate, 4),
        threshold=min_uptime,
    )


def judge_monitor_ws_failure_rate(
    mon: MonitorObservation,
    *,
    max_rate: float,
    phase: int = 7,
    check_id: str = "monitor.ws_failure_rate",
) -> CheckResult:
    """``monitor.ws_failure_rate``: share of ticks whose handshake (or ping) failed."""
    cid = check_id
    if not mon.ticks:
        return _r(cid, phase, Status.ERROR, "no monitoring sample was taken", threshold=max_rate)
    failed = [t for t in mon.ticks if not t.ws_upgraded or t.ping_ok is False]
    rate = len(failed) / len(mon.ticks)
    if rate < max_rate or (rate == 0 and max_rate == 0):
        return _r(
            cid,
            phase,
            Status.PASS,
            f"{len(failed)}/{len(mon.ticks)} WebSocket samples failed",
            observed=round(rate, 4),
            threshold=max_rate,
        )
    kinds = sorted({str(t.ws_status or t.ws_error) for t in failed})
    first = failed[0]
    cause = (
        explain_status(first.ws_status)
        if first.ws_status and first.ws_status != 101
        else (first.ws_error or "ping unanswered")
    )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"{len(failed)}/{len(mon.ticks)} WebSocket samples failed ({', '.join(kinds)}): {cause}",
        observed=round(rate, 4),
        threshold=max_rate,
    )


def judge_monitor_avg_response(
    mon: MonitorObservation,
    *,
    limit_s: float,
    phase: int = 7,
    check_id: str = "monitor.avg_response",
) -> CheckResult:
    """``monitor.avg_response``: mean health latency of the successful samples."""
    cid = check_id
    lat = [t.health_latency_s for t in mon.ticks if t.health_status is not None]
    if not lat:
        return _r(
            cid,
            phase,
            Status.FAIL if mon.ticks else Status.ERROR,
            "no health sample got an answer: response time unknown",
            threshold=limit_s,
        )
    avg = statistics.fmean(lat)
    if avg < limit_s:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"mean {avg:.3f}s, max {max(lat):.3f}s",
            observed=round(avg, 4),
            threshold=limit_s,
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"mean response {avg:.3f}s >= {limit_s:g}s: the service "
        "is saturated or cold-starting; check instances and CPU",
        observed=round(avg, 4),
        threshold=limit_s,
    )


def judge_monitor_ws_404(
    mon: MonitorObservation, *, phase: int = 7, check_id: str = "monitor.ws_404"
) -> CheckResult:
    """``monitor.ws_404``: no WebSocket handshake answered 404 during the window."""
    cid = check_id
    if not mon.ticks:
        return _r(cid, phase, Status.ERROR, "no monitoring sample was taken", threshold=0)
    n = sum(1 for t in mon.ticks if t.ws_status == 404)
    if n == 0:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"no 404 in {len(mon.ticks)} handshake(s)",
            observed=0,
            threshold=0,
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"{n}/{len(mon.ticks)} handshakes answered 404: "
        f"{STATUS_CAUSES[404]}. The incident is back (or traffic is split with a revision "
        "without the routes).",
        observed=n,
        threshold=0,
    )


def judge_monitor_hold(
    hold: HoldObservation, *, phase: int = 7, check_id: str = "monitor.hold"
) -> CheckResult:
    """``monitor.hold``: a socket held for ``hold_s`` stays open and closes cleanly."""
    cid = check_id
    threshold = f"open {hold.hold_s:g}s, clean close"
    if hold.outcome == "connect_failed":
        return _r(
            cid,
            phase,
            Status.FAIL,
            _connect_failure_words(hold.connect),
            observed="connect failed",
            threshold=threshold,
        )
    if hold.outcome == "held" and hold.clean_close:
        return _r(
            cid,
            phase,
            Status.PASS,
            f"held {hold.ended_at_s:.1f}s and closed with {hold.close_code}",
            observed=round(hold.ended_at_s, 2),
            threshold=threshold,
        )
    if hold.outcome == "held":
        return _r(
            cid,
            phase,
            Status.FAIL,
            f"held {hold.ended_at_s:.1f}s but the close handshake "
            f"did not complete (code {hold.close_code}): "
            f"{explain_close(hold.close_code)}",
            observed=round(hold.ended_at_s, 2),
            threshold=threshold,
        )
    return _r(
        cid,
        phase,
        Status.FAIL,
        f"the socket ended after {hold.ended_at_s:.1f}s of "
        f"{hold.hold_s:g}s ({hold.outcome}, code {hold.close_code}): "
        f"{explain_close(hold.close_code)}",
        observed=round(hold.ended_at_s, 2),
        threshold=threshold,
        data={"close_code": hold.close_code, "reason": hold.close_reason},
    )


# ---------------------------------------------------------------- phase 4 load, logs


def _kind_words(kind: str) -> str:
    """Words for a load error kind such as ``handshake_404`` or ``closed_1006``."""
    head, _, code = kind.rpartition("_")
    if code.isdigit() and head == "handshake":
        return f"{kind}: {explain_status(int(code))}"
    if code.isdigit() and head == "closed":
        return f"{kind}: {explain_close(int(code))}"
    return kind


def judge_load(
    report: Any, *, success_rate: float, p95_s: float, phase: int = 4
) -> list[CheckResult]:
    """``load.success_rate``, ``load.latency_p95`` and ``load.no_server_errors``.

    Args:
        report: a :class:`runbook_lib.load.LoadReport`.
        success_rate: minimum share of planned sessions that must succeed.
        p95_s: the round-trip p95 must stay below this.
    """
    out: list[CheckResult] = []
    errors = dict(getattr(report, "errors_by_kind", {}) or {})
    top = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    top_words = "; ".join(f"{n}x {_kind_words(k)}" for k, n in top)
    if not report.planned:
        out.append(
            _r(
                "load.success_rate",
                phase,
                Status.ERROR,
                "no session was planned",
                threshold=success_rate,
            )
        )
    else:
        rate = report.success_rate()
        detail = f"{report.succeeded}/{report.planned} sessions succeeded"
        if rate >= success_rate:
            out.append(
                _r(
                    "load.success_rate",
                    phase,
                    Status.PASS,
                    detail,
                    observed=round(rate, 4),
                    threshold=success_rate,
                )
            )
        else:
            out.append(
                _r(
                    "load.success_rate",
                    phase,
                    Status.FAIL,
                    f"{detail} ({rate:.0%} < {success_rate:.0%}): {top_words}",
                    observed=round(rate, 4),
                    threshold=success_rate,
                    data={"errors_by_kind": errors},
                )
            )
    p95 = report.p95_s
    trusted = bool(getattr(report, "trusted", True))
    why_untrusted = getattr(report, "saturation_reason", "") or getattr(
        report, "schedule_reason", ""
    )
    if p95 is None:
        out.append(
            _r(
                "load.latency_p95",
                phase,
                Status.FAIL,
                "no round trip was answered, so there is no latency to judge"
                + (f": {top_words}" if top_words else ""),
                threshold=p95_s,
            )
        )
    elif p95 < p95_s:
        note = "" if trusted else f" (generator not trusted: {why_untrusted})"
        out.append(
            _r(
                "load.latency_p95",
                phase,
                Status.PASS,
                f"p95 {p95:.3f}s, p50 {report.p50_s or 0:.3f}s{note}",
                observed=round(p95, 4),
                threshold=p95_s,
            )
        )
    elif not trusted:
        out.append(
            _r(
                "load.latency_p95",
                phase,
                Status.WARN,
                f"p95 {p95:.3f}s >= {p95_s:g}s, but the load generator was the "
                f"bottleneck ({why_untrusted}): rerun with fewer sessions or more workers",
                observed=round(p95, 4),
                threshold=p95_s,
            )
        )
    else:
        out.append(
            _r(
                "load.latency_p95",
                phase,
                Status.FAIL,
                f"p95 {p95:.3f}s >= {p95_s:g}s under {report.planned} sessions: the "
                "service is saturated (concurrency, CPU) or cold-starting instances",
                observed=round(p95, 4),
                threshold=p95_s,
            )
        )
    n = report.server_error_count()
    if n == 0:
        out.append(
            _r(
                "load.no_server_errors",
                phase,
                Status.PASS,
                "no 5xx upgrade answer and no server-side close",
                observed=0,
                threshold=0,
            )
        )
    else:
        server = {
            k: v for k, v in errors.items() if k.startswith("handshake_5") or k in _SERVER_CLOSES
        }
        out.append(
            _r(
                "load.no_server_errors",
                phase,
                Status.FAIL,
                f"{n} session(s) failed on the server side: "
                + "; ".join(f"{v}x {_kind_words(k)}" for k, v in server.items()),
                observed=n,
                threshold=0,
                data={"errors_by_kind": errors},
            )
        )
    return out


_BAD_SEVERITIES = ("ERROR", "CRITICAL", "ALERT", "EMERGENCY")
_SERVER_CLOSES = ("closed_1011", "closed_1012", "closed_1013", "closed_1014")


def judge_log_entries(
    entries: Sequence[Any],
    *,
    check_id: str,
    what: str,
    phase: int,
    ws_paths: Sequence[str] = (),
) -> CheckResult:
    """``deploy.logs_clean``, ``logs.no_routing_errors``, ``monitor.log_errors``.

    An entry counts against the check when its severity is ERROR or worse, its request
    status is 5xx, or it is a 404 on one of ``ws_paths`` (the incident's routing error).

    Args:
        entries: :class:`runbook_lib.logs.LogEntry` rows (already filtered by the reader).
        check_id: the check to report.
        what: what was searched, in words (shown in the detail).
        ws_paths: WebSocket paths whose 404s are routing errors.
    """
    bad = []
    for e in entries:
        status = getattr(e, "status", None)
        path = getattr(e, "path", "") or ""
        if (
            str(getattr(e, "severity", "")).upper() in _BAD_SEVERITIES
            or (status is not None and status >= 500)
            or (status == 404 and path in ws_paths)
        ):
            bad.append(e)
    if not bad:
        return _r(
            check_id,
            phase,
            Status.PASS,
            f"no {what} ({len(entries)} entries read)",
            observed=0,
            threshold=0,
        )
    ws404 = [e for e in bad if getattr(e, "status", None) == 404]
    examples = [
        {
            "timestamp": str(getattr(e, "timestamp", "")),
            "severity": getattr(e, "severity", ""),
            "revision": getattr(e, "revision", ""),
            "text": str(getattr(e, "text", ""))[:200],
        }
        for e in bad[:10]
    ]
    first = examples[0]
    detail = (
        f"{len(bad)} matching entr{'y' if len(bad) == 1 else 'ies'} ({what}); first: "
        f"[{first['severity']}] {first['text'][:120]}"
    )
    if ws404:
        detail += f". {len(ws404)} WebSocket upgrade(s) answered 404: {STATUS_CAUSES[404]}"
    return _r(
        check_id,
        phase,
        Status.FAIL,
        detail,
        observed=len(bad),
        threshold=0,
        data={"examples": examples},
    )
