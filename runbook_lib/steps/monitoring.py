"""Phase 7 steps: monitoring window, long-lived socket, errors in the logs."""

from __future__ import annotations

from datetime import UTC, datetime

from ..context import PhaseContext, StepReport
from ._common import (
    _TARGET_MISSING,
    _connect_auth,
    _log_step,
    _no_target,
    _previous_phase_artifact,
    _skip_all,
    _step,
    _table,
    _timeouts,
    _token_errors,
)

__all__ = ["hold", "log_errors", "monitor"]


_MONITOR_IDS = (
    "monitor.uptime",
    "monitor.ws_failure_rate",
    "monitor.avg_response",
    "monitor.ws_404",
)


@_step("Monitoring window", _MONITOR_IDS)
async def monitor(ctx: PhaseContext) -> StepReport:
    """Sample /health and a WebSocket handshake every interval for the monitoring window."""
    from ..evaluate import (
        judge_monitor_avg_response,
        judge_monitor_uptime,
        judge_monitor_ws_404,
        judge_monitor_ws_failure_rate,
    )
    from ..plots import plot_monitor
    from ..ws_checks import observe_monitor

    title = "Monitoring window"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _MONITOR_IDS, _TARGET_MISSING))
    t, th = ctx.settings.target, ctx.settings.thresholds
    auth, err = await _connect_auth(ctx)
    if err:
        return StepReport(title, _token_errors(ctx, _MONITOR_IDS, err))
    mon = await observe_monitor(
        t.http(t.health_path),
        t.ws(),
        window_s=th.monitor_window_s,
        interval_s=th.monitor_interval_s,
        auth=auth,
        protocol=ctx.settings.protocol,
        ping=True,
        timeout_s=_timeouts(ctx).connect_s,
    )
    results = [
        judge_monitor_uptime(mon, min_uptime=th.monitor_uptime, phase=ctx.phase),
        judge_monitor_ws_failure_rate(mon, max_rate=th.monitor_ws_failure_rate, phase=ctx.phase),
        judge_monitor_avg_response(mon, limit_s=th.monitor_avg_response_s, phase=ctx.phase),
        judge_monitor_ws_404(mon, phase=ctx.phase),
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
    return StepReport(title, results, figure=plot_monitor(samples))


@_step("Long-lived socket", ("monitor.hold",))
async def hold(ctx: PhaseContext) -> StepReport:
    """Hold one socket open for hold_s: it must end cleanly (no 1006, no server close)."""
    from ..evaluate import judge_monitor_hold
    from ..ws_checks import observe_hold

    title = "Long-lived socket"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, ("monitor.hold",), _TARGET_MISSING))
    th = ctx.settings.thresholds
    auth, err = await _connect_auth(ctx)
    if err:
        return StepReport(title, _token_errors(ctx, ("monitor.hold",), err))
    obs = await observe_hold(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        hold_s=th.hold_s,
        auth=auth,
        ping_every_s=max(th.hold_s / 4, 1.0),
        open_timeout_s=_timeouts(ctx).connect_s,
    )
    row = {
        "outcome": obs.outcome,
        "ended_at_s": round(obs.ended_at_s, 2),
        "close_code": obs.close_code,
        "pings": obs.pings_sent,
        "pongs": obs.pongs,
    }
    return StepReport(title, [judge_monitor_hold(obs, phase=ctx.phase)], table=_table([row]))


@_step("Errors in the logs", ("monitor.log_errors",))
async def log_errors(ctx: PhaseContext) -> StepReport:
    """Search the service's logs over the lookback window for errors and WebSocket 404s."""
    from datetime import timedelta

    title = "Errors in the logs"
    if not ctx.settings.logging.enabled or not ctx.settings.cloudrun.configured:
        return StepReport(
            title,
            _skip_all(
                ctx,
                ("monitor.log_errors",),
                "skip: [logging] enabled is false or [cloudrun] is not configured",
            ),
        )
    window = max(ctx.settings.thresholds.monitor_window_s * 2, 120.0)
    since = datetime.now(UTC) - timedelta(seconds=window)
    revision = _previous_phase_artifact(ctx, 2, "deployed_revision")
    return await _log_step(
        ctx,
        title,
        "monitor.log_errors",
        since=since,
        revision=revision,
        min_severity="ERROR",
        contains=(),
        what=f"ERROR entries in the last {window:.0f}s",
    )
