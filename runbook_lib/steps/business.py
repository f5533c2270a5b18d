"""Phase 5 steps: authentication, chat flow, multi-user isolation, critical events.

Every conversation with the service is a flow: the auth probe runs the ``auth`` flow
(default: the ``load`` flow), the chat check the ``chat`` flow, the isolation test the
``isolation`` flow once per simulated user (each with a unique ``{marker}``), and the
event checks judge the frames the ``agent`` flow recorded. Undefined flows are the
seed's defaults, so the sandbox behaves as before.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..checks import (
    Verdict,
    judge_auth_config,
    judge_auth_health,
    judge_auth_rejects_invalid,
    judge_auth_ws_authenticated,
    judge_chat_flow,
    judge_critical_delivered,
    judge_events_latency,
    judge_events_order,
    judge_events_structure,
    judge_isolation_no_cross_user,
    judge_isolation_sessions,
)
from ..context import PhaseContext, StepReport
from ..results import CheckResult
from .common import applies, dropped_words, report, step, table

if TYPE_CHECKING:
    from ..flows import FlowObservation

__all__ = ["auth_checks", "chat_flow", "event_delivery", "flow_frame_rows", "isolation"]


def flow_frame_rows(obs: FlowObservation) -> list[dict[str, Any]]:
    """One table row per step of a flow run, then one per frame received."""
    rows: list[dict[str, Any]] = [
        {
            "t_ms": round(s.started_s * 1000, 1),
            "step": s.index + 1,
            "kind": s.kind,
            "what": s.description[:80],
            "outcome": s.outcome,
            "detail": s.detail[:120],
        }
        for s in obs.steps
    ]
    if not obs.connected:
        rows.append({"kind": "connect", "outcome": "failed", "detail": obs.stop_detail[:160]})
    if obs.frames_dropped:  # before the frames: a long table is cut, this row must show
        rows.append({"kind": "dropped", "detail": dropped_words(obs.frames_dropped)})
    rows += [
        {
            "t_ms": round(f.t * 1000, 1),
            "step": None if f.step is None else f.step + 1,
            "kind": str(f.kind),
            "what": f.frame.event_type or f.frame.excerpt[:60],
            "outcome": "foreign" if f.foreign else "matched" if f.step is not None else "",
            "detail": f"user={f.frame.user_id} run={f.frame.run_id}"
            if f.frame.user_id or f.frame.run_id
            else "",
        }
        for f in obs.frames
    ]
    return rows


def flow_timeline(runs: Sequence[FlowObservation]) -> dict[str, list[dict[str, Any]]]:
    """Per user, the events and foreign frames over time (for the delivery plot)."""
    return {
        r.user_id: [
            {"t_s": f.t, "type": f.frame.event_type or str(f.kind), "foreign": f.foreign}
            for f in r.frames
            if f.frame.event_type or f.foreign
        ]
        for r in runs
    }


@step
async def auth_checks(ctx: PhaseContext) -> StepReport:
    """Auth service config and health; an authenticated socket works; invalid tokens are refused."""
    from ..http_checks import observe_get
    from ..settings import resolve_flow
    from ..ws_checks import observe_auth

    t, to = ctx.settings.target, ctx.settings.timeouts
    results: list[CheckResult] = []
    if applies(ctx, "auth.config"):
        config = await observe_get(t.auth(t.auth_config_path), timeout_s=to.read_s)
        results.append(judge_auth_config(config))
    if applies(ctx, "auth.health"):
        health = await observe_get(t.auth(t.auth_health_path), timeout_s=to.read_s)
        results.append(judge_auth_health(health))
    if not (applies(ctx, "auth.ws_authenticated") or applies(ctx, "auth.rejects_invalid")):
        return report(results)
    obs = await observe_auth(
        t.ws(),
        ctx.settings.protocol,
        ctx.settings.auth,
        open_timeout_s=to.connect_s,
        probe_timeout_s=to.read_s,
        flow=resolve_flow(ctx.settings, "auth"),
    )
    results.append(judge_auth_ws_authenticated(obs))
    results.append(judge_auth_rejects_invalid(obs))
    attempts = ([obs.authenticated] if obs.authenticated else []) + list(obs.negatives)
    rows = [
        {
            "case": a.case,
            "produced": a.produced,
            "accepted": a.accepted,
            "how": a.how,
            "reason": a.reason,
        }
        for a in attempts
    ]
    return report(results, table=table(rows))


@step
async def chat_flow(ctx: PhaseContext) -> StepReport:
    """Run the chat flow as an authenticated user: every step must complete."""
    from ..ws_checks import observe_flow

    obs = await observe_flow(ctx.settings, "chat", values={"text": "Hello, test the Golden Path"})
    return report([judge_chat_flow(obs)], table=table(flow_frame_rows(obs)))


@step
async def isolation(ctx: PhaseContext) -> StepReport:
    """K users at once, each with its own token and marker: all succeed, none sees another's."""
    from ..plots import plot_event_timeline
    from ..ws_checks import observe_flow_users

    th = ctx.settings.thresholds
    runs = await observe_flow_users(ctx.settings, "isolation", users=th.isolation_users)
    results = [
        judge_isolation_sessions(
            runs, success_rate=th.isolation_success_rate, response_s=th.isolation_response_s
        ),
        judge_isolation_no_cross_user(runs),
    ]
    auth = ctx.settings.auth
    if auth.enabled and auth.token and not auth.distinct_identities:
        # One static token: to the server every simulated user is one user, so a frame
        # "for another user" is that same user's. That is no evidence of a leak.
        results[1] = Verdict("isolation.no_cross_user", phase=ctx.phase).error(
            "every simulated user connected with the one token of auth.token_env, so to "
            "the server they are all the same user: isolation between users cannot be "
            'tested. Give one token per user (auth.token_envs = ["TOKEN_A", '
            '"TOKEN_B", ...]) or auth.jwt_secret_env to mint one per user.',
            observed="one identity",
            threshold="distinct identities",
        )
    rows = [
        {
            "user": r.user_id,
            "completed": r.completed,
            "stopped": r.stop_detail[:120],
            "events": len(r.events),
            "foreign_frames": len(r.foreign_frames),
            "unattributed_frames": len(r.unattributed_frames),
            "response_ms": None if r.response_s is None else round(r.response_s * 1000, 1),
            "duration_ms": round(r.duration_s * 1000, 1),
        }
        for r in runs
    ]
    fig = plot_event_timeline(flow_timeline(runs), ctx.settings.protocol.critical_events)
    note = (
        f"In force: {th.isolation_users} users at once (thresholds.isolation_users), "
        f">= {th.isolation_success_rate:.0%} succeeding within {th.isolation_response_s:g} s each."
    )
    return report(
        results,
        table=table(rows),
        figure=fig,
        note=note,
        caption="Isolation: each user's events over time (another user's events in red)",
    )


@step
async def event_delivery(ctx: PhaseContext) -> StepReport:
    """One agent flow: the critical events, in order, with their fields, in time."""
    from ..plots import plot_event_timeline
    from ..ws_checks import observe_flow

    p, th = ctx.settings.protocol, ctx.settings.thresholds
    obs = await observe_flow(ctx.settings, "agent", values={"text": "Test all events"})
    results = [
        judge_critical_delivered(obs, critical=p.critical_events, minimum=th.critical_events_min),
        judge_events_order(obs, critical=p.critical_events),
        judge_events_structure(obs, required_fields=p.required_fields),
        judge_events_latency(obs, timeout_s=th.event_timeout_s),
    ]
    fig = plot_event_timeline(flow_timeline([obs]), p.critical_events)
    return report(
        results,
        table=table(flow_frame_rows(obs)),
        figure=fig,
        caption="Event delivery: the agent's events over time",
    )
