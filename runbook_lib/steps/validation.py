"""Phase 3 steps: WebSocket upgrade, HTTP endpoints and latency, round trip, routing logs."""

from __future__ import annotations

from ..checks import (
    judge_http_latency,
    judge_ws_health,
    judge_ws_roundtrip,
    judge_ws_test_endpoint,
    judge_ws_upgrade,
    step_ids,
)
from ..context import PhaseContext, StepReport
from ..observations import HttpObservation
from ..results import CheckResult
from .common import (
    applies,
    connect_auth,
    evidence_scope,
    handshake_rows,
    log_step,
    report,
    step,
    table,
    token_errors,
    ws_urls,
)

__all__ = ["http_endpoints", "routing_logs", "ws_roundtrip", "ws_upgrade"]


@step
async def ws_upgrade(ctx: PhaseContext) -> StepReport:
    """Every WS path must answer 101 with a valid Sec-WebSocket-Accept."""
    from ..plots import plot_handshakes
    from ..ws_checks import observe_handshakes

    auth, _ = await connect_auth(ctx)
    probes = await observe_handshakes(
        ws_urls(ctx), timeout_s=ctx.settings.timeouts.connect_s, auth=auth
    )
    rows = handshake_rows(probes, ctx.settings.target.ws_url)
    ctx.artifacts["handshakes"] = rows
    return report([judge_ws_upgrade(probes)], table=table(rows), figure=plot_handshakes(rows))


@step
async def http_endpoints(ctx: PhaseContext) -> StepReport:
    """GET /ws/health and /ws/test, then sample HTTP latency on /health."""
    from ..http_checks import observe_get, sample_latency

    t, th, to = ctx.settings.target, ctx.settings.thresholds, ctx.settings.timeouts
    results: list[CheckResult] = []
    observed: list[HttpObservation] = []
    if applies(ctx, "ws.health"):
        ws_health = await observe_get(t.http(t.ws_health_path), timeout_s=to.read_s)
        results.append(judge_ws_health(ws_health))
        observed.append(ws_health)
    if applies(ctx, "ws.test_endpoint"):
        ws_test = await observe_get(t.http(t.ws_test_path), timeout_s=to.read_s)
        results.append(judge_ws_test_endpoint(ws_test))
        observed.append(ws_test)
    if applies(ctx, "http.latency"):
        samples = await sample_latency(
            t.http(t.health_path), n=th.http_latency_samples, timeout_s=to.read_s
        )
        results.append(judge_http_latency(samples, limit_s=th.http_latency_s))
        observed += samples
    rows = [
        {
            "url": o.url,
            "status": o.status,
            "latency_ms": round(o.latency_s * 1000, 1),
            "error": o.error or "",
        }
        for o in observed
    ]
    return report(results, table=table(rows))


@step
async def ws_roundtrip(ctx: PhaseContext) -> StepReport:
    """Connect (with auth), send the ping template, expect a pong."""
    from ..ws_checks import observe_roundtrip

    auth, err = await connect_auth(ctx)
    if err:
        return report(token_errors(ctx, step_ids("ws_roundtrip"), err))
    obs = await observe_roundtrip(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        auth=auth,
        timeout_s=ctx.settings.timeouts.read_s,
        open_timeout_s=ctx.settings.timeouts.connect_s,
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
    return report([judge_ws_roundtrip(obs)], table=table(rows) if rows else None)


@step
async def routing_logs(ctx: PhaseContext) -> StepReport:
    """Search the logs of the revision under test since its deploy (interactively: since
    this phase opened) for 404s on WebSocket paths and routing errors."""
    scope = await evidence_scope(ctx, "logs.no_routing_errors")
    if isinstance(scope, CheckResult):
        return report([scope])
    return await log_step(
        ctx,
        "logs.no_routing_errors",
        scope=scope,
        min_severity=None,
        contains=("404", "websocket", "routing"),
        what="404s on WebSocket paths and routing errors",
        status_404_paths=ctx.settings.target.ws_paths,
    )
