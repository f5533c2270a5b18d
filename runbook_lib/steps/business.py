"""Phase 5 steps: authentication, chat flow, multi-user isolation, critical events."""

from __future__ import annotations

from ..context import PhaseContext, StepReport
from ..results import CheckResult
from ._common import (
    _TARGET_MISSING,
    _agent_run,
    _frame_rows,
    _no_target,
    _skip_all,
    _step,
    _table,
    _timeline,
    _timeouts,
)

__all__ = ["auth_checks", "chat_flow", "event_delivery", "isolation"]


_AUTH_IDS = ("auth.config", "auth.health", "auth.ws_authenticated", "auth.rejects_invalid")


@_step("Authentication", _AUTH_IDS)
async def auth_checks(ctx: PhaseContext) -> StepReport:
    """Auth service config and health; an authenticated socket works; invalid tokens are refused."""
    from ..evaluate import (
        judge_auth_config,
        judge_auth_health,
        judge_auth_rejects_invalid,
        judge_auth_ws_authenticated,
    )
    from ..http_checks import observe_get
    from ..ws_checks import observe_auth

    title = "Authentication"
    t, to = ctx.settings.target, _timeouts(ctx)
    results: list[CheckResult] = []
    if t.auth_url:
        results.append(
            judge_auth_config(
                await observe_get(t.auth(t.auth_config_path), timeout_s=to.read_s), phase=ctx.phase
            )
        )
        results.append(
            judge_auth_health(
                await observe_get(t.auth(t.auth_health_path), timeout_s=to.read_s), phase=ctx.phase
            )
        )
    else:
        results += _skip_all(
            ctx, ("auth.config", "auth.health"), "skip: [target] auth_url is not configured"
        )
    if not ctx.settings.auth.enabled or _no_target(ctx):
        # Name the real reason: with [auth] configured, the missing piece is the target.
        why = _TARGET_MISSING if ctx.settings.auth.enabled else "skip: [auth] mode is none"
        results += _skip_all(ctx, ("auth.ws_authenticated", "auth.rejects_invalid"), why)
        return StepReport(title, results)
    obs = await observe_auth(
        t.ws(),
        ctx.settings.protocol,
        ctx.settings.auth,
        open_timeout_s=to.connect_s,
        probe_timeout_s=to.read_s,
    )
    results.append(judge_auth_ws_authenticated(obs, phase=ctx.phase))
    results.append(judge_auth_rejects_invalid(obs, phase=ctx.phase))
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
    return StepReport(title, results, table=_table(rows))


@_step("Chat message flow", ("chat.flow",))
async def chat_flow(ctx: PhaseContext) -> StepReport:
    """Send a chat message as an authenticated user and expect the agent's answer."""
    from ..evaluate import judge_chat_flow

    title = "Chat message flow"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, ("chat.flow",), _TARGET_MISSING))
    run = await _agent_run(
        ctx, ctx.settings.auth.default_user, "chat_message", "Hello, test the Golden Path"
    )
    return StepReport(
        title, [judge_chat_flow(run, phase=ctx.phase)], table=_table(_frame_rows(run))
    )


_ISO_IDS = ("isolation.sessions", "isolation.no_cross_user")


@_step("Multi-user isolation", _ISO_IDS)
async def isolation(ctx: PhaseContext) -> StepReport:
    """K users at once, each with its own token: all succeed, none sees another's events."""
    from ..evaluate import judge_isolation_no_cross_user, judge_isolation_sessions
    from ..plots import plot_event_timeline
    from ..ws_checks import observe_isolation

    title = "Multi-user isolation"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _ISO_IDS, _TARGET_MISSING))
    th = ctx.settings.thresholds
    iso = await observe_isolation(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        ctx.settings.auth,
        users=th.isolation_users,
        event_timeout_s=th.event_timeout_s,
        open_timeout_s=_timeouts(ctx).connect_s,
    )
    results = [
        judge_isolation_sessions(
            iso,
            success_rate=th.isolation_success_rate,
            response_s=th.isolation_response_s,
            phase=ctx.phase,
        ),
        judge_isolation_no_cross_user(iso, phase=ctx.phase),
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
    fig = plot_event_timeline(_timeline(iso.runs), ctx.settings.protocol.critical_events)
    return StepReport(title, results, table=_table(rows), figure=fig)


_EVENT_IDS = ("events.critical_delivered", "events.order", "events.structure", "events.latency")


@_step("Critical event delivery", _EVENT_IDS)
async def event_delivery(ctx: PhaseContext) -> StepReport:
    """One agent run: all five critical events, in order, with their fields, in time."""
    from ..evaluate import (
        judge_critical_delivered,
        judge_events_latency,
        judge_events_order,
        judge_events_structure,
    )
    from ..plots import plot_event_timeline

    title = "Critical event delivery"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _EVENT_IDS, _TARGET_MISSING))
    p, th = ctx.settings.protocol, ctx.settings.thresholds
    run = await _agent_run(ctx, ctx.settings.auth.default_user, "agent_request", "Test all events")
    results = [
        judge_critical_delivered(
            run, critical=p.critical_events, minimum=th.critical_events_min, phase=ctx.phase
        ),
        judge_events_order(run, critical=p.critical_events, phase=ctx.phase),
        judge_events_structure(run, required_fields=p.required_fields, phase=ctx.phase),
        judge_events_latency(run, timeout_s=th.event_timeout_s, phase=ctx.phase),
    ]
    fig = plot_event_timeline(_timeline([run]), p.critical_events)
    return StepReport(title, results, table=_table(_frame_rows(run)), figure=fig)
