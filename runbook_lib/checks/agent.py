"""Agent-run checks: ``e2e.agent_response``, ``chat.flow``, ``events.*``, ``isolation.*``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from ..observations import AgentRunObservation, IsolationObservation
from ..protocol import has_path
from ..results import CheckResult
from .causes import UNREADABLE, Verdict, ended_words, run_failure

__all__ = [
    "cross_user_frames",
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


def judge_agent_response(
    run: AgentRunObservation,
    *,
    timeout_s: float,
    final_event: str | None = None,
    check_id: str = "e2e.agent_response",
) -> CheckResult:
    """``e2e.agent_response``: the run's final event arrives within ``timeout_s``.

    The final event is ``final_event`` when given, else the one the run recorded
    (``protocol.critical_events[-1]``), else ``agent_completed``.
    """
    v = Verdict(check_id, threshold=timeout_s)
    final_event = final_event or run.final_event or "agent_completed"
    why = run_failure(run)
    if why:
        return v.fail(why)
    events = run.events
    done = [f for f in events if f.event_type == final_event]
    data = {"event_types": list(run.event_types), "ended": run.ended}
    if done and done[0].t <= timeout_s:
        return v.ok(
            f"agent completed after {done[0].t:.2f}s ({len(events)} event(s))",
            observed=round(done[0].t, 3),
            data=data,
        )
    if done:
        return v.fail(
            f"agent completed only after {done[0].t:.2f}s (limit {timeout_s:g}s)",
            observed=round(done[0].t, 3),
            data=data,
        )
    if events:
        return v.fail(
            f"the agent started ({', '.join(run.event_types)})"
            f" but never completed: {ended_words(run.ended, run.close_code, run.frames)}",
            observed=None,
            data=data,
        )
    return v.fail(
        "no agent event arrived: " + ended_words(run.ended, run.close_code, run.frames),
        observed=None,
        data=data,
    )


def judge_chat_flow(run: AgentRunObservation, *, check_id: str = "chat.flow") -> CheckResult:
    """``chat.flow``: a chat message over an authenticated socket gets agent events back."""
    v = Verdict(check_id)
    why = run_failure(run)
    if why:
        return v.fail(why)
    if run.errors and not run.events:
        return v.fail(
            f"the server answered the chat message with an error frame: {run.errors[0].excerpt}",
            observed="error frame",
        )
    if not run.events:
        return v.fail(
            "no agent event answered the chat message: "
            + ended_words(run.ended, run.close_code, run.frames),
            observed=0,
        )
    return v.ok(
        f"{len(run.events)} event(s) answered the chat message, first after {run.events[0].t:.2f}s",
        observed=list(run.event_types),
    )


def judge_critical_delivered(
    run: AgentRunObservation,
    *,
    critical: Sequence[str],
    minimum: int,
    check_id: str = "events.critical_delivered",
) -> CheckResult:
    """``events.critical_delivered``: at least ``minimum`` of the critical event types arrived."""
    v = Verdict(check_id, threshold=minimum)
    why = run_failure(run)
    if why:
        return v.fail(why, observed=0)
    got = [c for c in critical if c in run.event_types]
    missing = [c for c in critical if c not in run.event_types]
    if len(got) >= minimum:
        return v.ok(
            f"{len(got)}/{len(critical)} critical events delivered",
            observed=len(got),
            data={"missing": missing},
        )
    return v.fail(
        f"only {len(got)}/{len(critical)} critical events "
        f"arrived; missing {', '.join(missing)} "
        f"({ended_words(run.ended, run.close_code, run.frames)}). The agent does not emit them or "
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
    check_id: str = "events.order",
) -> CheckResult:
    """``events.order``: started, thinking, (executing, completed)*, completed."""
    v = Verdict(check_id)
    why = run_failure(run)
    if why:
        return v.fail(why)
    types = [t for t in run.event_types if t in critical]
    if not types:
        return v.fail(
            "no critical event arrived, so the order cannot be "
            "confirmed: " + ended_words(run.ended, run.close_code, run.frames),
            observed=[],
        )
    bad = order_violation(types, critical)
    threshold = "started, thinking, (executing, completed)*, completed"
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
    run: AgentRunObservation,
    *,
    required_fields: Mapping[str, Sequence[str]],
    check_id: str = "events.structure",
) -> CheckResult:
    """``events.structure``: every event carries the required fields for its type."""
    v = Verdict(check_id)
    why = run_failure(run)
    if why:
        return v.fail(why)
    checked = [f for f in run.events if f.event_type in required_fields]
    if not checked:
        return v.fail(
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
    run: AgentRunObservation, *, timeout_s: float, check_id: str = "events.latency"
) -> CheckResult:
    """``events.latency``: every event arrived within ``timeout_s`` of the request."""
    v = Verdict(check_id, threshold=timeout_s)
    why = run_failure(run)
    if why:
        return v.fail(why)
    events = run.events
    if not events:
        return v.fail(
            "no event arrived: " + ended_words(run.ended, run.close_code, run.frames),
        )
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
    check_id: str = "isolation.sessions",
) -> CheckResult:
    """``isolation.sessions``: >= ``success_rate`` of users get their response within
    ``response_s`` (response = first own event)."""
    v = Verdict(check_id)
    runs = iso.runs
    if not runs:
        return v.error("no session was started", threshold=success_rate)
    rows: list[dict[str, Any]] = []
    ok = 0
    for r in runs:
        first = r.first_event_s
        good = run_failure(r) is None and first is not None and first < response_s and not r.errors
        ok += good
        rows.append(
            {
                "user": r.user_id,
                "success": good,
                "response_s": first,
                "ended": r.ended,
                "events": len(r.events),
                "why": run_failure(r)
                or ("" if good else ended_words(r.ended, r.close_code, r.frames)),
            }
        )
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


def judge_isolation_no_cross_user(
    iso: IsolationObservation, *, check_id: str = "isolation.no_cross_user"
) -> CheckResult:
    """``isolation.no_cross_user``: no session receives another user's or run's events."""
    v = Verdict(check_id, threshold="0 foreign frames")
    runs = iso.runs
    # Binary / non-JSON frames carry no readable user or run id: they prove nothing.
    with_events = [r for r in runs if any(str(f.kind) not in UNREADABLE for f in r.frames)]
    if len(with_events) < 2:
        return v.fail(
            f"only {len(with_events)} session(s) received any readable (JSON) "
            "frame: isolation cannot be shown without at least two active sessions",
            observed=len(with_events),
        )
    leaks = cross_user_frames(runs)
    if not leaks:
        total = sum(len(r.frames) for r in runs)
        return v.ok(
            f"{total} frame(s) across {len(runs)} sessions, none foreign",
            observed=0,
        )
    n = sum(len(v) for v in leaks.values())
    example_user, frames = next(iter(leaks.items()))
    f = frames[0]
    return v.fail(
        f"{n} foreign frame(s) in {len(leaks)} session(s): e.g. "
        f"{example_user} received {f['event_type']} for user {f['user_id']} run "
        f"{f['run_id']}. Events are broadcast instead of routed per user: a data leak; "
        "roll back.",
        observed=n,
        data={"leaks": leaks},
    )
