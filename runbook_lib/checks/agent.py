"""Agent-run checks: ``e2e.agent_response``, ``chat.flow``, ``events.*``, ``isolation.*``.

The steps run flows and hand the judges a :class:`~runbook_lib.flows.FlowObservation`
(one per simulated user for isolation). The event judges read the user's own events:
frames that carry another user's id or marker are the isolation judge's evidence, not
this user's events.

No evidence, no pass:

* ``e2e.agent_response`` / ``chat.flow`` pass only when every step of the flow
  completed (within ``event_timeout_s`` for the agent);
* ``events.critical_delivered`` needs at least one configured critical event type and
  judges ``min(critical_events_min, len(critical_events))`` of them;
* ``events.order`` needs at least two configured critical event types (else ``error``
  saying what to configure, unless the check is declared not applicable);
* ``events.structure`` needs ``[protocol] required_fields`` for an event that arrived;
* ``isolation.no_cross_user`` fails on any frame carrying another user's id, run id or
  marker, and is ``error`` when a session received frames none of which could be
  attributed (no user id, run id or marker): there is nothing to show isolation with.
  Frames that cannot be attributed next to attributed ones (acks, results of the
  user's own requests) are counted in the detail, not judged. A service whose users
  share a room declares ``[protocol] shared_room = true``: the check is then ``skip``
  with that reason (catalog applicability), since other users' frames are expected.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from ..flows import FlowObservation
from ..observations import ConnectOutcome
from ..protocol import Frame, has_path
from ..results import CheckResult
from .causes import (
    UNREADABLE,
    Verdict,
    connect_failure_words,
    ended_words,
    explain_close,
    flow_drop,
)

__all__ = [
    "flow_failure",
    "flow_leaks",
    "judge_agent_response",
    "judge_chat_flow",
    "judge_critical_delivered",
    "judge_events_latency",
    "judge_events_order",
    "judge_events_structure",
    "judge_isolation_no_cross_user",
    "judge_isolation_sessions",
    "order_violation",
]


# How a flow stopped -> how the session ended, in the words of ``causes.ended_words``.
_STOP_ENDED = {
    "timeout": "timeout",
    "error_frame": "error_frame",
    "connect_failed": "connect_failed",
}


def _connect_outcome(obs: FlowObservation) -> ConnectOutcome:
    return ConnectOutcome(
        obs.connected,
        status=obs.status,
        latency_s=obs.connect_s,
        subprotocol=obs.subprotocol,
        error=obs.connect_error,
        error_detail=obs.connect_detail,
        body_excerpt=obs.body_excerpt,
    )


def _ended(obs: FlowObservation) -> str:
    if not obs.connected:
        return "token_failed" if obs.connect_error == "token" else "connect_failed"
    if obs.completed:
        return "completed"
    if obs.stop_reason in _STOP_ENDED:
        return _STOP_ENDED[obs.stop_reason]
    if obs.close_code == 1009:
        return "too_big"
    if obs.close_code == 1006:
        return "abrupt"
    if obs.close_code is not None:
        return "server_closed"
    return obs.stop_reason or "timeout"


def _own_events(obs: FlowObservation) -> tuple[Frame, ...]:
    """The user's own events, ``t`` counted from the first send (the request)."""
    base = obs.first_send_s or 0.0
    return tuple(dataclasses.replace(f, t=max(f.t - base, 0.0)) for f in obs.events)


def _own_frames(obs: FlowObservation) -> tuple[Frame, ...]:
    return tuple(f.frame for f in obs.frames if not f.foreign)


def _stop_words(obs: FlowObservation) -> str:
    """How the session ended, in words (for judges that found too few events)."""
    return ended_words(_ended(obs), obs.close_code, _own_frames(obs))


def _no_evidence(obs: FlowObservation) -> str | None:
    """Why a flow produced no evidence at all (None when it connected and sent)."""
    if obs.connect_error == "token":
        return f"no token for {obs.user_id}: {obs.connect_detail}"
    if not obs.connected:
        return connect_failure_words(_connect_outcome(obs))
    if not any(s.kind == "send" and s.outcome == "sent" for s in obs.steps):
        why = "the socket closed before the request was sent"
        if obs.close_code is not None:
            why += f" (close {obs.close_code}: {explain_close(obs.close_code)})"
        errors = [f for f in _own_frames(obs) if f.is_error]
        if errors:
            why += f"; the server's error frame: {errors[0].excerpt}"
        return why
    return None


def flow_failure(obs: FlowObservation) -> str | None:
    """Why a flow did not complete, in words a person can act on (None when it did)."""
    if obs.completed:
        return None
    if obs.connect_error == "token":
        return f"no token for {obs.user_id}: {obs.connect_detail}"
    if not obs.connected:
        return f"{obs.flow} flow: " + connect_failure_words(_connect_outcome(obs))
    why = obs.stop_detail or f"{obs.flow} flow did not complete"
    if obs.stop_reason == "timeout":
        bad = [f.frame for f in obs.frames if str(f.kind) in UNREADABLE]
        if bad:
            why += ". " + ended_words("timeout", None, bad)
    elif (drop := flow_drop(obs)) is not None:
        why += f" ({drop[1]})"
    elif obs.close_code is not None and obs.stop_reason in ("closed", "send_failed"):
        why += f" ({ended_words('server_closed', obs.close_code)})"
    return why


def _flow_data(obs: FlowObservation) -> dict[str, Any]:
    return {
        "flow": obs.flow,
        "steps": [s.to_record() for s in obs.steps],
        "event_types": list(obs.event_types),
        "frames": len(obs.frames),
    }


def _judge_flow_completed(
    obs: FlowObservation, v: Verdict, timeout_s: float | None, what: str
) -> CheckResult:
    data = _flow_data(obs)
    why = flow_failure(obs)
    if why is not None:
        events = obs.event_types
        if events and obs.connected:
            why += f" (events before the stop: {', '.join(events)})"
        return v.fail(why, observed=None, data=data)
    took = obs.response_s or 0.0
    steps = len(obs.steps)
    if timeout_s is not None and took > timeout_s:
        return v.fail(
            f"the {obs.flow} flow completed only after {took:.2f}s (limit {timeout_s:g}s)",
            observed=round(took, 3),
            data=data,
        )
    return v.ok(
        f"{what}: the {obs.flow} flow completed all {steps} step(s) in {took:.2f}s "
        f"({len(obs.frames)} frame(s) received)",
        observed=round(took, 3),
        data=data,
    )


def judge_agent_response(
    run: FlowObservation, *, timeout_s: float, check_id: str = "e2e.agent_response"
) -> CheckResult:
    """``e2e.agent_response``: the agent flow completes within ``timeout_s``.

    Passes when every step of the flow completed and the time from the first send to
    the last step is within ``timeout_s``.
    """
    v = Verdict(check_id, threshold=timeout_s)
    return _judge_flow_completed(run, v, timeout_s, "the agent answered")


def judge_chat_flow(run: FlowObservation, *, check_id: str = "chat.flow") -> CheckResult:
    """``chat.flow``: every step of the chat flow completes."""
    return _judge_flow_completed(run, Verdict(check_id), None, "the chat conversation worked")


def judge_critical_delivered(
    run: FlowObservation,
    *,
    critical: Sequence[str],
    minimum: int,
    check_id: str = "events.critical_delivered",
) -> CheckResult:
    """``events.critical_delivered``: at least ``minimum`` of the critical event types arrived.

    Judged on evidence: with no critical event type configured the check is ``error``
    (nothing to look for); ``minimum`` is capped at the number of configured types and
    is at least 1, so a pass always means some configured event arrived.
    """
    if not critical:
        return Verdict(check_id, threshold=minimum).error(
            "no critical event type is configured, so delivery cannot be judged: list the "
            "events the service must send in [protocol] critical_events (or declare "
            "events.critical_delivered in [checks.not_applicable] with a reason)",
            observed=None,
        )
    needed = max(1, min(minimum, len(critical)))
    v = Verdict(check_id, threshold=needed)
    why = _no_evidence(run)
    if why:
        return v.fail(why, observed=0)
    types = [f.event_type for f in _own_events(run)]
    got = [c for c in critical if c in types]
    missing = [c for c in critical if c not in types]
    if len(got) >= needed:
        return v.ok(
            f"{len(got)}/{len(critical)} critical events delivered",
            observed=len(got),
            data={"missing": missing},
        )
    return v.fail(
        f"only {len(got)}/{len(critical)} critical events "
        f"arrived; missing {', '.join(missing)} "
        f"({_stop_words(run)}). The agent does not emit them or "
        "the WebSocket notifier drops them.",
        observed=len(got),
        data={"missing": missing},
    )


def order_violation(types: Sequence[str], critical: Sequence[str]) -> str | None:
    """Where ``types`` breaks ``started, thinking, (executing, completed)*, completed``.

    Only the critical types are considered; ``critical`` names them in the SPEC's order
    (started, thinking, executing, tool completed, agent completed). Returns None when the
    order is right, else a sentence naming the first offending event.
    """
    if len(critical) < 2:
        raise ValueError("an order needs at least two critical event types")
    if len(critical) < 5:
        return _linear_violation(types, critical)
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


def _linear_violation(types: Sequence[str], critical: Sequence[str]) -> str | None:
    """Where ``types`` leaves the configured order (each type may repeat, none goes back)."""
    rank = {t: i for i, t in enumerate(critical)}
    seq = [t for t in types if t in rank]
    if not seq:
        return f"the stream ended before {critical[0]}"
    if seq[0] != critical[0]:
        return f"event 1 is {seq[0]}, expected {critical[0]}"
    for i in range(1, len(seq)):
        if rank[seq[i]] < rank[seq[i - 1]]:
            return f"{seq[i]} (event {i + 1}) arrived after {seq[i - 1]}"
    if seq[-1] != critical[-1]:
        return f"the stream ended without {critical[-1]}"
    return None


def _went_back(types: Sequence[str], critical: Sequence[str]) -> str | None:
    """Where ``types`` goes back in the configured order, gaps allowed (None when it never
    does); in the seed's grammar a tool completion may be followed by another tool."""
    rank = {t: i for i, t in enumerate(critical[:5] if len(critical) >= 5 else critical)}
    seq = [t for t in types if t in rank]
    for i in range(1, len(seq)):
        a, b = rank[seq[i - 1]], rank[seq[i]]
        loop = len(critical) >= 5 and (a, b) == (3, 2)
        if b < a and not loop:
            return f"{seq[i]} (event {i + 1}) arrived after {seq[i - 1]}"
    return None


def _order_words(critical: Sequence[str]) -> str:
    if len(critical) >= 5:
        s, t, e, d, c = critical[:5]
        return f"{s}, {t}, ({e}, {d})*, {c}"
    return ", ".join(f"{t}+" if 0 < i < len(critical) - 1 else t for i, t in enumerate(critical))


def judge_events_order(
    run: FlowObservation,
    *,
    critical: Sequence[str],
    check_id: str = "events.order",
) -> CheckResult:
    """``events.order``: the critical events arrive in the configured order.

    Five or more types: the seed's grammar (started, thinking, (executing,
    completed)*, completed) over the first five; two to four: the configured order,
    each type possibly repeated, ending with the last. Fewer than two configured types:
    ``error`` (nothing to order) saying what to configure.
    """
    v = Verdict(check_id)
    if len(critical) < 2:
        return v.error(
            f"events.order needs at least two event types in [protocol] critical_events "
            f"({len(critical)} configured), so no order can be confirmed: list them in the "
            "order the service must send them, or declare events.order in "
            "[checks.not_applicable] with a reason (e.g. one event per request)",
            observed=None,
        )
    why = _no_evidence(run)
    if why:
        return v.fail(why)
    types = [t for f in _own_events(run) if (t := f.event_type or "") in critical]
    if not types:
        return v.fail(
            "no critical event arrived, so the order cannot be confirmed: " + _stop_words(run),
            observed=[],
        )
    bad = order_violation(types, critical)
    threshold = _order_words(critical)
    missing = [c for c in (critical[:5] if len(critical) >= 5 else critical) if c not in types]
    if bad is not None and missing:
        # A missing event is missing, not out of order: say which, and whether the
        # events that did arrive kept their order.
        back = _went_back(types, critical)
        kept = (
            f"the {len(types)} critical event(s) that arrived came in order"
            if back is None
            else f"also out of order among those that arrived: {back}"
        )
        return v.fail(
            f"{', '.join(missing)} never arrived (a missing event, counted by "
            f"events.critical_delivered), so the full order cannot be confirmed; {kept}.",
            observed=types,
            threshold=threshold,
            data={"missing": missing},
        )
    if bad is None:
        return v.ok(
            "events arrived in the expected order",
            observed=types,
            threshold=threshold,
        )
    return v.fail(
        f"out of order: {bad}. Clients render progress from this "
        "order; the emitter sends events concurrently or from several tasks.",
        observed=types,
        threshold=threshold,
    )


def judge_events_structure(
    run: FlowObservation,
    *,
    required_fields: Mapping[str, Sequence[str]],
    check_id: str = "events.structure",
) -> CheckResult:
    """``events.structure``: every event carries the required fields for its type."""
    v = Verdict(check_id)
    if not any(required_fields.values()):
        return v.error(
            "no required fields are configured, so the structure cannot be confirmed: set "
            "[protocol.required_fields] (event type -> field paths), or declare "
            "events.structure in [checks.not_applicable] with a reason",
        )
    why = _no_evidence(run)
    if why:
        return v.fail(why)
    events = _own_events(run)
    checked = [f for f in events if f.event_type in required_fields]
    if not checked:
        return v.fail(
            "no event with configured required fields arrived, so the structure cannot "
            f"be confirmed (fields are configured for {', '.join(sorted(required_fields))}; "
            f"arrived: {', '.join(f.event_type or '' for f in events) or 'no event'})",
            observed=0,
        )
    problems = []
    for f in checked:
        missing = [p for p in required_fields[f.event_type or ""] if not _has_field(f.data, p)]
        if missing:
            problems.append(f"{f.event_type} lacks {', '.join(missing)}")
    if not problems:
        return v.ok(
            f"{len(checked)} event(s) carry every required field",
            observed=len(checked),
            threshold="protocol.required_fields",
        )
    return v.fail(
        "; ".join(sorted(set(problems))) + ". Clients that read these fields will break.",
        observed=len(problems),
        threshold="protocol.required_fields",
        data={"problems": problems},
    )


def _has_field(data: Any, path: str) -> bool:
    # A required field may live flat or under the data/payload envelope.
    return any(has_path(data, p) for p in (path, f"data.{path}", f"payload.{path}"))


def judge_events_latency(
    run: FlowObservation, *, timeout_s: float, check_id: str = "events.latency"
) -> CheckResult:
    """``events.latency``: every event arrived within ``timeout_s`` of the request."""
    v = Verdict(check_id, threshold=timeout_s)
    why = _no_evidence(run)
    if why:
        return v.fail(why)
    events = _own_events(run)
    if not events:
        return v.fail("no event arrived: " + _stop_words(run))
    times = [f.t for f in events]
    gaps = [b - a for a, b in zip([0.0, *times], times, strict=False)]
    data = {"times": [round(t, 3) for t in times], "max_gap_s": round(max(gaps), 3)}
    last = times[-1]
    if last <= timeout_s:
        return v.ok(
            f"first event {times[0]:.2f}s, last {last:.2f}s, largest gap {max(gaps):.2f}s",
            observed=round(last, 3),
            data=data,
        )
    return v.fail(
        f"the last event came {last:.2f}s after the request (limit {timeout_s:g}s)",
        observed=round(last, 3),
        data=data,
    )


def judge_isolation_sessions(
    runs: Sequence[FlowObservation],
    *,
    success_rate: float,
    response_s: float,
    check_id: str = "isolation.sessions",
) -> CheckResult:
    """``isolation.sessions``: >= ``success_rate`` of users get their response within
    ``response_s`` (the isolation flow completed, first send -> last step)."""
    v = Verdict(check_id)
    if not runs:
        return v.error("no session was started", threshold=success_rate)
    rows: list[dict[str, Any]] = []
    ok = 0
    for r in runs:
        took = r.response_s
        why = flow_failure(r)
        good = why is None and took is not None and took < response_s
        row = {
            "user": r.user_id,
            "success": good,
            "response_s": None if took is None else round(took, 3),
            "ended": "completed" if r.completed else r.stop_reason,
            "events": len(r.events),
            "why": why or ("" if good else f"response {took:.2f}s"),
        }
        ok += good
        rows.append(row)
    rate = ok / len(runs)
    threshold = f">= {success_rate:.0%} of users, each < {response_s:g}s"
    if rate >= success_rate:
        return v.ok(
            f"{ok}/{len(runs)} sessions succeeded",
            observed=round(rate, 3),
            threshold=threshold,
            data={"users": rows},
        )
    reasons = sorted(
        {str(row["why"] or f"response {row['response_s']}s") for row in rows if not row["success"]}
    )
    return v.fail(
        f"only {ok}/{len(runs)} sessions succeeded; " + "; ".join(reasons)[:400],
        observed=round(rate, 3),
        threshold=threshold,
        data={"users": rows},
    )


def flow_leaks(runs: Sequence[FlowObservation]) -> dict[str, list[dict[str, Any]]]:
    """Per user, every frame carrying another simulated user's id, run id or marker."""
    own_runs = {
        r.user_id: ({r.run_id} if r.run_id else set())
        | {f.frame.run_id for f in r.frames if f.frame.run_id and f.frame.user_id == r.user_id}
        for r in runs
    }
    out: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        others = [o for o in runs if o is not r and o.user_id != r.user_id]
        other_users = {o.user_id for o in others}
        other_markers = {o.marker for o in others if o.marker}
        other_runs = set().union(*(own_runs[o.user_id] for o in others)) - own_runs[r.user_id]
        leaks = []
        for f in r.frames:
            fr = f.frame
            why = (
                "user id"
                if fr.user_id is not None and fr.user_id in other_users
                else "run id"
                if fr.run_id is not None and fr.run_id in other_runs
                else "marker"
                if (fr.marker is not None and fr.marker in other_markers)
                or any(m in f.text for m in other_markers)
                else "foreign"
                if f.foreign
                else ""
            )
            if why:
                leaks.append({**f.to_record(), "carries": why})
        if leaks:
            out[r.user_id] = leaks
    return out


_ATTRIBUTE_HOW = (
    "put {marker} in the isolation flow's send template (each simulated user's messages "
    "then carry a unique marker the service echoes), or set [protocol] user_id / run_id "
    "to the paths where the service puts them"
)


def _attribute_how(runs: Sequence[FlowObservation]) -> str:
    """What to configure so frames can be attributed; never advise adding ``{marker}`` to
    a flow whose sends already carry it."""
    sends = [s.description for r in runs[:1] for s in r.steps if s.kind == "send"]
    if any("{marker}" in d for d in sends):
        return (
            "the isolation flow's messages carry {marker} but the service's frames do not "
            "echo it: set [protocol] user_id / run_id to the paths where the service puts "
            "them, or declare isolation.no_cross_user not applicable with the reason"
        )
    return _ATTRIBUTE_HOW


def _judge_flow_isolation(runs: Sequence[FlowObservation], v: Verdict) -> CheckResult:
    readable = [
        r
        for r in runs
        if any(str(f.kind) not in UNREADABLE and not f.frame.ignorable for f in r.frames)
    ]
    connected = [r for r in runs if r.connected]
    if len(connected) < 2:
        # Nothing reached the service's sessions: isolation was not tested at all.
        return v.error(
            f"{len(connected)} of {len(runs)} session(s) connected, so isolation could not be "
            "tested (at least two connected sessions are needed)"
            + "".join(f"; {w}" for r in runs if (w := flow_failure(r)))[:400],
            observed=None,
        )
    if len(readable) < 2:
        return v.fail(
            f"only {len(readable)} session(s) received any readable frame: isolation cannot "
            "be shown without at least two active sessions"
            + "".join(f"; {w}" for r in runs if (w := flow_failure(r)))[:400],
            observed=len(readable),
        )
    leaks = flow_leaks(runs)
    total = sum(len(r.frames) for r in runs)
    unattributed = {r.user_id: len(r.unattributed_frames) for r in runs}
    data: dict[str, Any] = {"unattributed": unattributed}
    if leaks:
        n = sum(len(x) for x in leaks.values())
        user, frames = next(iter(leaks.items()))
        f = frames[0]
        return v.fail(
            f"{n} foreign frame(s) in {len(leaks)} session(s): e.g. {user} received a frame "
            f"carrying another user's {f['carries']} ({f['excerpt'][:120]!r}). Messages are "
            "broadcast instead of routed per user (or per room): a data leak; roll back.",
            observed=n,
            data={**data, "leaks": leaks},
        )
    blind = [
        r.user_id
        for r in readable
        if not any(f.attributed for f in r.frames if not f.frame.ignorable)
    ]
    if blind:
        return v.error(
            f"{len(blind)} of {len(readable)} session(s) received frames none of which carried "
            "a user id, a run id or a marker, so whose they are cannot be told and no leak "
            f"could be seen: {_attribute_how(runs)}",
            observed=None,
            data=data,
        )
    n_un = sum(unattributed.values())
    extra = f"; {n_un} frame(s) carried no id or marker and were not judged" if n_un else ""
    return v.ok(
        f"{total} frame(s) across {len(runs)} sessions, none carrying another user's id, "
        f"run id or marker{extra}",
        observed=0,
        data=data,
    )


def judge_isolation_no_cross_user(
    runs: Sequence[FlowObservation], *, check_id: str = "isolation.no_cross_user"
) -> CheckResult:
    """``isolation.no_cross_user``: no session receives another user's or run's frames.

    A frame carrying another simulated user's id, run id or marker is a leak; a session
    whose frames carry none of them is ``error`` (see the module docstring).
    """
    return _judge_flow_isolation(runs, Verdict(check_id, threshold="0 foreign frames"))
