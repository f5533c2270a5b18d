"""Phase 3 steps: WebSocket upgrade, HTTP endpoints and latency, round trip, routing logs."""

from __future__ import annotations

from ..context import PhaseContext, StepReport
from ..results import Status
from ._common import (
    _TARGET_MISSING,
    _connect_auth,
    _handshake_rows,
    _log_step,
    _no_target,
    _previous_phase_artifact,
    _result,
    _since,
    _skip_all,
    _step,
    _table,
    _timeouts,
    _ws_urls,
)

__all__ = ["http_endpoints", "routing_logs", "ws_roundtrip", "ws_upgrade"]


@_step("WebSocket upgrade on every path", ("ws.upgrade",))
async def ws_upgrade(ctx: PhaseContext) -> StepReport:
    """Every WS path must answer 101 with a valid Sec-WebSocket-Accept."""
    from ..evaluate import judge_ws_upgrade
    from ..plots import plot_handshakes
    from ..ws_checks import observe_handshakes

    title = "WebSocket upgrade on every path"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, ("ws.upgrade",), _TARGET_MISSING))
    auth, _ = await _connect_auth(ctx)
    probes = await observe_handshakes(_ws_urls(ctx), timeout_s=_timeouts(ctx).connect_s, auth=auth)
    rows = _handshake_rows(probes, ctx.settings.target.ws_url)
    ctx.artifacts["handshakes"] = rows
    return StepReport(
        title,
        [judge_ws_upgrade(probes, phase=ctx.phase)],
        table=_table(rows),
        figure=plot_handshakes(rows),
    )


_HTTP_IDS = ("ws.health", "ws.test_endpoint", "http.latency")


@_step("HTTP endpoints and latency", _HTTP_IDS)
async def http_endpoints(ctx: PhaseContext) -> StepReport:
    """GET /ws/health and /ws/test, then sample HTTP latency on /health."""
    from ..evaluate import judge_http_latency, judge_ws_health, judge_ws_test_endpoint
    from ..http_checks import observe_get, sample_latency

    title = "HTTP endpoints and latency"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _HTTP_IDS, _TARGET_MISSING))
    t, th, to = ctx.settings.target, ctx.settings.thresholds, _timeouts(ctx)
    ws_health = await observe_get(t.http(t.ws_health_path), timeout_s=to.read_s)
    ws_test = await observe_get(t.http(t.ws_test_path), timeout_s=to.read_s)
    samples = await sample_latency(
        t.http(t.health_path), n=th.http_latency_samples, timeout_s=to.read_s
    )
    results = [
        judge_ws_health(ws_health, phase=ctx.phase),
        judge_ws_test_endpoint(ws_test, phase=ctx.phase),
        judge_http_latency(samples, limit_s=th.http_latency_s, phase=ctx.phase),
    ]
    rows = [
        {
            "url": o.url,
            "status": o.status,
            "latency_ms": round(o.latency_s * 1000, 1),
            "error": o.error or "",
        }
        for o in (ws_health, ws_test, *samples)
    ]
    return StepReport(title, results, table=_table(rows))


@_step("WebSocket round trip", ("ws.roundtrip",))
async def ws_roundtrip(ctx: PhaseContext) -> StepReport:
    """Connect (with auth), send the ping template, expect a pong."""
    from ..evaluate import judge_ws_roundtrip
    from ..ws_checks import observe_roundtrip

    title = "WebSocket round trip"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, ("ws.roundtrip",), _TARGET_MISSING))
    auth, err = await _connect_auth(ctx)
    if err:
        return StepReport(
            title, [_result(ctx, "ws.roundtrip", Status.ERROR, f"could not obtain a token: {err}")]
        )
    obs = await observe_roundtrip(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        auth=auth,
        timeout_s=_timeouts(ctx).read_s,
        open_timeout_s=_timeouts(ctx).connect_s,
    )
    rows = [
        {
            "t_ms": round(f.t * 1000, 1),
            "kind": str(f.kind),
            "type": f.event_type,
            "excerpt": f.excerpt[:120],
        }
        for f in obs.frames
    ]
    return StepReport(
        title, [judge_ws_roundtrip(obs, phase=ctx.phase)], table=_table(rows) if rows else None
    )


@_step("Routing errors in the logs", ("logs.no_routing_errors",))
async def routing_logs(ctx: PhaseContext) -> StepReport:
    """Search the serving revision's logs for 404s on WebSocket paths and routing errors."""
    title = "Routing errors in the logs"
    if not ctx.settings.logging.enabled or not ctx.settings.cloudrun.configured:
        return StepReport(
            title,
            _skip_all(
                ctx,
                ("logs.no_routing_errors",),
                "skip: [logging] enabled is false or [cloudrun] is not configured",
            ),
        )
    revision = _previous_phase_artifact(ctx, 2, "deployed_revision")
    since = _since(ctx, _previous_phase_artifact(ctx, 2, "deploy_started_at"))
    return await _log_step(
        ctx,
        title,
        "logs.no_routing_errors",
        since=since,
        revision=revision,
        min_severity=None,
        contains=("404", "websocket", "routing"),
        what="404s on WebSocket paths and routing errors",
        status_404_paths=ctx.settings.target.ws_paths,
    )
