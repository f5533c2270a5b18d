"""Phase 5 steps: authentication, chat flow, multi-user isolation, critical events."""

from __future__ import annotations

from ..checks import (
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
from .common import agent_run, applies, frame_rows, report, step, table, timeline

__all__ = ["auth_checks", "chat_flow", "event_delivery", "isolation"]


@step
async def auth_checks(ctx: PhaseContext) -> StepReport:
    """Auth service config and health; an authenticated socket works; invalid tokens are refused."""
    from ..http_checks import observe_get
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
    """Send a chat message as an authenticated user and expect the agent's answer."""
    run = await agent_run(
        ctx, ctx.settings.auth.default_user, "chat_message", "Hello, test the Golden Path"
    )
    return report([judge_chat_flow(run)], table=table(frame_rows(run)))


@step
async def isolation(ctx: PhaseContext) -> StepReport:
    """K users at once, each with its own token: all succeed, none sees another's events."""
    from ..plots import plot_event_timeline
    from ..ws_checks import observe_isolation

    th = ctx.settings.thresholds
    iso = await observe_isolation(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        ctx.settings.auth,
        users=th.isolation_users,
        event_timeout_s=th.event_timeout_s,
        open_timeout_s=ctx.settings.timeouts.connect_s,
    )
    results = [
        judge_isolation_sessions(
            iso, success_rate=th.isolation_success_rate, response_s=th.isolation_response_s
        ),
        judge_isolation_no_cross_user(iso),
    ]
    rows = [
        {
            "user": r.user_id,
            "ended": r.ended,
            "events": len(r.events),
            "foreign_frames": sum(1 for f in r.frames if not r.is_own(f)),
            "first_event_ms": round((r.first_event_s or 0) * 1000, 1),
            "duration_ms": round(r.duration_s * 1000, 1),
        }
        for r in iso.runs
    ]
    fig = plot_event_timeline(timeline(iso.runs), ctx.settings.protocol.critical_events)
    return report(results, table=table(rows), figure=fig)


@step
async def event_delivery(ctx: PhaseContext) -> StepReport:
    """One agent run: all five critical events, in order, with their fields, in time."""
    from ..plots import plot_event_timeline

    p, th = ctx.settings.protocol, ctx.settings.thresholds
    run = await agent_run(ctx, ctx.settings.auth.default_user, "agent_request", "Test all events")
    results = [
        judge_critical_delivered(run, critical=p.critical_events, minimum=th.critical_events_min),
        judge_events_order(run, critical=p.critical_events),
        judge_events_structure(run, required_fields=p.required_fields),
        judge_events_latency(run, timeout_s=th.event_timeout_s),
    ]
    fig = plot_event_timeline(timeline([run]), p.critical_events)
    return report(results, table=table(frame_rows(run)), figure=fig)
