"""Phase 3 steps: WebSocket upgrade, HTTP endpoints and latency, round trip, routing logs."""

from __future__ import annotations

from dataclasses import replace

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
    dropped_words,
    evidence_scope,
    handshake_rows,
    log_step,
    previous_phase_artifact,
    report,
    step,
    table,
    token_errors,
    ws_urls,
)
from .status import ws_evidence

__all__ = ["http_endpoints", "routing_logs", "ws_roundtrip", "ws_upgrade"]


@step
async def ws_upgrade(ctx: PhaseContext) -> StepReport:
    """Every WS path must answer 101 with a valid Sec-WebSocket-Accept."""
    from ..handshake import observe_handshakes, with_subprotocols
    from ..plots import plot_handshakes

    auth, _ = await connect_auth(ctx)
    auth = with_subprotocols(auth, ctx.settings.protocol.subprotocols)
    probes = await observe_handshakes(
        ws_urls(ctx), timeout_s=ctx.settings.timeouts.connect_s, auth=auth
    )
    rows = handshake_rows(probes, ctx.settings.target.ws_url)
    ctx.artifacts["handshakes"] = rows
    evidence = ws_evidence(ctx)
    if previous_phase_artifact(ctx, 2, "deployed_revision"):
        # The deploy already happened: a 404 that survives it is not fixed by another.
        evidence = replace(evidence, deploy_changes_code=False)
    return report(
        [judge_ws_upgrade(probes, evidence=evidence)],
        table=table(rows),
        figure=plot_handshakes(rows),
        caption="WebSocket handshake per path, after the deploy",
    )


@step
async def http_endpoints(ctx: PhaseContext) -> StepReport:
    """GET /ws/health and /ws/test, then sample HTTP latency on /health."""
    from ..http_checks import observe_get, sample_latency

    t, th, to = ctx.settings.target, ctx.settings.thresholds, ctx.settings.timeouts
    results: list[CheckResult] = []
    observed: list[HttpObservation] = []
    if applies(ctx, "ws.health"):
        ws_health = await observe_get(t.http(t.ws_health_path), timeout_s=to.read_s)
        results.append(judge_ws_health(ws_health, field=t.ws_health_field))
        observed.append(ws_health)
    if applies(ctx, "ws.test_endpoint"):
        ws_test = await observe_get(t.http(t.ws_test_path), timeout_s=to.read_s)
        upgrade = None
        if ws_test.status != 200:
            # The test path may be a WebSocket route only: judge the upgrade there.
            from ..handshake import observe_handshake, with_subprotocols

            auth, _ = await connect_auth(ctx)
            upgrade = await observe_handshake(
                t.ws(t.ws_test_path),
                timeout_s=to.connect_s,
                auth=with_subprotocols(auth, ctx.settings.protocol.subprotocols),
            )
        results.append(judge_ws_test_endpoint(ws_test, upgrade=upgrade))
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
    """Connect (with auth) and run the ping conversation: the ``load`` flow (the user's
    ``[flows.load]``, or the seed's ping -> pong built from ``[protocol]``)."""
    from ..flow_runner import run_named_flow

    auth, err = await connect_auth(ctx)
    if err:
        return report(token_errors(ctx, step_ids("ws_roundtrip"), err))
    obs = await run_named_flow(ctx.settings, "load", auth=auth)
    rows = [
        {
            "t_ms": round(f.frame.t * 1000, 1),
            "step": f.step,
            "kind": str(f.frame.kind),
            "type": f.frame.event_type,
            "excerpt": f.frame.excerpt[:120],
        }
        for f in obs.frames
    ]
    if obs.frames_dropped:  # first: a long table is cut, this row must show
        rows.insert(0, {"kind": "dropped", "excerpt": dropped_words(obs.frames_dropped)})
    return report([judge_ws_roundtrip(obs)], table=table(rows) if rows else None)


@step
async def routing_logs(ctx: PhaseContext) -> StepReport:
    """Search the logs of the revision under test since its deploy (interactively: since
    this phase opened) for 404s on WebSocket paths and 5xx (request log) and routing
    errors in the service's own lines, once this run's requests are seen in them."""
    scope = await evidence_scope(ctx, "logs.no_routing_errors")
    if isinstance(scope, CheckResult):
        return report([scope])
    return await log_step(
        ctx,
        "logs.no_routing_errors",
        scope=scope,
        kind="routing",
        what="404s on WebSocket paths, 5xx or routing errors",
    )
