"""Phase 6 steps: rollback target, traffic move (mutating), verification."""

from __future__ import annotations

from ..checks import (
    judge_health_backend,
    judge_rollback_target,
    judge_traffic_moved,
    judge_ws_roundtrip,
    step_ids,
)
from ..context import PhaseContext, StepReport
from .common import (
    applies,
    cloudrun,
    connect_auth,
    dry_run,
    main_revision,
    previous_phase_artifact,
    report,
    skip_all,
    step,
    table,
    token_errors,
)

__all__ = ["rollback_target", "rollback_traffic", "rollback_verify"]


@step
async def rollback_target(ctx: PhaseContext, rollback_to: str = "") -> StepReport:
    """Pick the revision to roll back to: the parameter, else the one serving before the deploy."""
    cr = cloudrun(ctx)
    svc = await cr.get_service()
    revisions = await cr.list_revisions(limit=20)
    current = main_revision(svc.serving_revisions) or svc.latest_ready_revision
    rule = "parameter rollback_to"
    target = rollback_to
    if not target:
        target = previous_phase_artifact(ctx, 2, "previous_revision") or ""
        rule = "revision serving before this run's deploy"
    if not target:
        older = [r for r in revisions if r.ready and r.name != current]
        target = older[0].name if older else ""
        rule = "newest ready revision other than the current one"
    result = judge_rollback_target(target, rule, current, revisions)
    if result.ok:
        ctx.artifacts.update(rollback_target=target, rollback_from=current)
    rows = [
        {
            "revision": r.name,
            "ready": r.ready,
            "traffic_%": svc.serving_revisions.get(r.name, 0),
            "image": r.image,
        }
        for r in revisions
    ]
    return report([result], table=table(rows))


@step
async def rollback_traffic(ctx: PhaseContext) -> StepReport:
    """Send 100 % of traffic to the rollback target (mutating: needs approval, else a dry run)."""
    target = ctx.artifacts.get("rollback_target")
    if not target:
        return report([judge_traffic_moved(None, None, {})])
    from ..cloudrun import TrafficTarget

    cr = cloudrun(ctx)
    targets = [TrafficTarget(type="REVISION", revision=target, percent=100)]
    request = cr.traffic_request(targets)
    gcloud = cr.gcloud_traffic_command(targets)
    if not ctx.approved:
        return dry_run(ctx, step_ids("rollback_traffic"), request, gcloud, "move traffic")
    ctx.claim_mutation("rollback")
    outcome = await cr.set_traffic(targets)
    serving = (await cr.get_service()).serving_revisions
    rows = [{"revision": k, "traffic_%": v} for k, v in serving.items()]
    return report(
        [judge_traffic_moved(target, outcome, serving, gcloud)],
        table=table(rows),
        note=f"equivalent: {gcloud}",
    )


@step
async def rollback_verify(ctx: PhaseContext) -> StepReport:
    """After the rollback: /health is 200 and a WebSocket round trip works."""
    from ..http_checks import observe_get
    from ..ws_checks import observe_roundtrip

    ids = step_ids("rollback_verify")
    if not ctx.artifacts.get("rollback_target") or not ctx.approved:
        return report(skip_all(ctx, ids, "dry-run: no rollback was performed"))
    t, to = ctx.settings.target, ctx.settings.timeouts
    auth, err = await connect_auth(ctx)
    if err:
        return report(token_errors(ctx, ids, err))
    results = []
    if applies(ctx, "rollback.health"):
        health = await observe_get(t.http(t.health_path), timeout_s=to.read_s)
        results.append(judge_health_backend(health, check_id="rollback.health"))
    rt = await observe_roundtrip(
        t.ws(), ctx.settings.protocol, auth=auth, timeout_s=to.read_s, open_timeout_s=to.connect_s
    )
    results.append(judge_ws_roundtrip(rt, check_id="rollback.smoke"))
    return report(results)
