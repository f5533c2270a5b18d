"""Phase 7 steps: monitoring window, long-lived socket, errors in the logs."""

from __future__ import annotations

from ..checks import (
    judge_monitor_avg_response,
    judge_monitor_hold,
    judge_monitor_uptime,
    judge_monitor_ws_404,
    judge_monitor_ws_failure_rate,
    step_ids,
)
from ..context import PhaseContext, StepReport
from ..results import CheckResult
from .common import (
    applies,
    connect_auth,
    evidence_scope,
    log_step,
    previous_phase_artifact,
    report,
    step,
    table,
    token_errors,
)

__all__ = ["hold", "log_errors", "monitor"]


@step
async def monitor(ctx: PhaseContext) -> StepReport:
    """Sample /health and a WebSocket handshake every interval for the monitoring window."""
    from ..flows import reply_timeout_s
    from ..monitor import observe_monitor
    from ..plots import plot_monitor
    from ..settings import resolve_flow

    t, th = ctx.settings.target, ctx.settings.thresholds
    auth, err = await connect_auth(ctx)
    if err:
        return report(token_errors(ctx, step_ids("monitor"), err))
    mon = await observe_monitor(
        # health_path = false: no health GET; availability comes from the handshakes.
        t.http(t.health_path) if t.health_path is not None else None,
        t.ws(),
        window_s=th.monitor_window_s,
        interval_s=th.monitor_interval_s,
        auth=auth,
        protocol=ctx.settings.protocol,
        # The ping conversation of ws.roundtrip (the load flow); a service without a ping
        # (ws.roundtrip declared) is not failed for not answering one.
        ping_flow=resolve_flow(ctx.settings, "load") if applies(ctx, "ws.roundtrip") else None,
        timeout_s=ctx.settings.timeouts.connect_s,
        reply_timeout_s=reply_timeout_s(ctx.settings),
    )
    n = th.monitor_min_samples
    results = [
        judge_monitor_uptime(mon, min_uptime=th.monitor_uptime, min_samples=n),
        judge_monitor_ws_failure_rate(mon, max_rate=th.monitor_ws_failure_rate, min_samples=n),
        judge_monitor_avg_response(mon, limit_s=th.monitor_avg_response_s, min_samples=n),
        judge_monitor_ws_404(mon, min_samples=n),
    ]
    samples = [
        {
            "t_s": k.t,
            "http_status": k.health_status,
            "http_latency_s": k.health_latency_s,
            "ws_ok": k.ws_upgraded and k.ping_ok is not False,
            "ws_status": k.ws_status,
            "ws_latency_s": k.ws_latency_s,
        }
        for k in mon.ticks
    ]
    ctx.artifacts["monitor_ticks"] = len(samples)
    note = (
        f"In force: a {th.monitor_window_s:g} s window (thresholds.monitor_window_s), a probe "
        f"every {th.monitor_interval_s:g} s (monitor_interval_s), at least {n} samples "
        "to judge; each check's limit is in its threshold column."
    )
    return report(
        results,
        figure=plot_monitor(samples),
        note=note,
        caption=f"Monitoring window: latency and probe results over {th.monitor_window_s:g} s",
    )


@step
async def hold(ctx: PhaseContext) -> StepReport:
    """Hold one socket open for hold_s: it must end cleanly (no 1006, no server close)."""
    from ..handshake import with_subprotocols
    from ..ws_checks import observe_hold

    th = ctx.settings.thresholds
    auth, err = await connect_auth(ctx)
    if err:
        return report(token_errors(ctx, step_ids("hold"), err))
    obs = await observe_hold(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        hold_s=th.hold_s,
        auth=with_subprotocols(auth, ctx.settings.protocol.subprotocols),
        ping_every_s=max(th.hold_s / 4, 1.0),
        open_timeout_s=ctx.settings.timeouts.connect_s,
    )
    row = {
        "outcome": obs.outcome,
        "ended_at_s": round(obs.ended_at_s, 2),
        "close_code": obs.close_code,
        "pings": obs.pings_sent,
        "pongs": obs.pongs,
    }
    timeout = ctx.artifacts.get("request_timeout_s") or previous_phase_artifact(
        ctx, 1, "request_timeout_s"
    )
    return report(
        [judge_monitor_hold(obs, request_timeout_s=float(timeout) if timeout else None)],
        table=table([row]),
    )


@step
async def log_errors(ctx: PhaseContext) -> StepReport:
    """Search the logs of the revision under test (the rollback target once traffic moved
    back, else the deployed revision; interactively, the one serving) for errors."""
    scope = await evidence_scope(ctx, "monitor.log_errors", after_rollback=True)
    if isinstance(scope, CheckResult):
        return report([scope])
    return await log_step(
        ctx,
        "monitor.log_errors",
        scope=scope,
        kind="errors",
        what="errors (ERROR entries, 5xx, 404s on WebSocket paths, error lines)",
    )
