"""Phase 6 steps: rollback target, traffic move (mutating), verification."""

from __future__ import annotations

from ..context import PhaseContext, StepReport
from ..results import Status
from ._common import (
    _CR_MISSING,
    _TARGET_MISSING,
    _cloudrun,
    _connect_auth,
    _main_revision,
    _no_target,
    _previous_phase_artifact,
    _result,
    _skip_all,
    _step,
    _table,
    _timeouts,
    _token_errors,
)

__all__ = ["rollback_target", "rollback_traffic", "rollback_verify"]


@_step("Rollback target", ("rollback.target_identified",))
async def rollback_target(ctx: PhaseContext, rollback_to: str = "") -> StepReport:
    """Pick the revision to roll back to: the parameter, else the one serving before the deploy."""
    title = "Rollback target"
    if not ctx.settings.cloudrun.configured:
        return StepReport(title, _skip_all(ctx, ("rollback.target_identified",), _CR_MISSING))
    cr = _cloudrun(ctx)
    svc = await cr.get_service()
    revisions = await cr.list_revisions(limit=20)
    current = _main_revision(svc.serving_revisions) or svc.latest_ready_revision
    source = "parameter rollback_to"
    target = rollback_to
    if not target:
        target = _previous_phase_artifact(ctx, 2, "previous_revision") or ""
        source = "revision serving before this run's deploy"
    if not target:
        older = [r for r in revisions if r.ready and r.name != current]
        target = older[0].name if older else ""
        source = "newest ready revision other than the current one"
    by_name = {r.name: r for r in revisions}
    rows = [
        {
            "revision": r.name,
            "ready": r.ready,
            "traffic_%": svc.serving_revisions.get(r.name, 0),
            "image": r.image,
        }
        for r in revisions
    ]
    if not target:
        res = _result(
            ctx,
            "rollback.target_identified",
            Status.FAIL,
            "no ready revision other than the current one exists: nothing to roll back "
            "to. Redeploy a known-good image instead.",
            observed=None,
        )
    elif target not in by_name or not by_name[target].ready:
        res = _result(
            ctx,
            "rollback.target_identified",
            Status.FAIL,
            f"revision {target} ({source}) is not a ready revision of the service; pick "
            "another with rollback_to=...",
            observed=target,
        )
    else:
        res = _result(
            ctx,
            "rollback.target_identified",
            Status.PASS,
            f"roll back from {current} to {target} ({source})",
            observed=target,
            current=current,
        )
        ctx.artifacts.update(rollback_target=target, rollback_from=current)
    return StepReport(title, [res], table=_table(rows))


@_step("Rollback: move traffic", ("rollback.traffic_moved",))
async def rollback_traffic(ctx: PhaseContext) -> StepReport:
    """Send 100 % of traffic to the rollback target (mutating: needs approval, else a dry run)."""
    title = "Rollback: move traffic"
    target = ctx.artifacts.get("rollback_target")
    if not ctx.settings.cloudrun.configured:
        return StepReport(title, _skip_all(ctx, ("rollback.traffic_moved",), _CR_MISSING))
    if not target:
        return StepReport(
            title,
            [
                _result(
                    ctx,
                    "rollback.traffic_moved",
                    Status.FAIL,
                    "no rollback target was identified (see the step above)",
                )
            ],
        )
    from ..cloudrun import TrafficTarget

    cr = _cloudrun(ctx)
    targets = [TrafficTarget(type="REVISION", revision=target, percent=100)]
    request = cr.traffic_request(targets)
    gcloud = cr.gcloud_traffic_command(targets)
    if not ctx.approved:
        return StepReport(
            title,
            [
                _result(
                    ctx,
                    "rollback.traffic_moved",
                    Status.SKIP,
                    f"dry-run: not approved; would send {request} (equivalent: {gcloud})",
                )
            ],
            table=_table([{"request": str(request), "gcloud": gcloud}]),
            note="Dry run. Re-run with approve=True (CLI: --approve) to move traffic.",
        )
    ctx.claim_mutation("rollback")
    outcome = await cr.set_traffic(targets)
    svc = await cr.get_service()
    serving = svc.serving_revisions
    if outcome.succeeded and serving.get(target) == 100:
        res = _result(
            ctx,
            "rollback.traffic_moved",
            Status.PASS,
            f"{target} now receives 100 % of traffic",
            observed=serving,
        )
    else:
        res = _result(
            ctx,
            "rollback.traffic_moved",
            Status.FAIL,
            f"traffic did not move to {target}: operation "
            f"{'succeeded' if outcome.succeeded else 'failed: ' + outcome.error}; "
            f"serving now {serving}. Run: {gcloud}",
            observed=serving,
        )
    rows = [{"revision": k, "traffic_%": v} for k, v in serving.items()]
    return StepReport(title, [res], table=_table(rows), note=f"equivalent: {gcloud}")


_ROLLBACK_VERIFY_IDS = ("rollback.health", "rollback.smoke")


@_step("Rollback verification", _ROLLBACK_VERIFY_IDS)
async def rollback_verify(ctx: PhaseContext) -> StepReport:
    """After the rollback: /health is 200 and a WebSocket round trip works."""
    from ..evaluate import judge_health_backend, judge_ws_roundtrip
    from ..http_checks import observe_get
    from ..ws_checks import observe_roundtrip

    title = "Rollback verification"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _ROLLBACK_VERIFY_IDS, _TARGET_MISSING))
    if not ctx.artifacts.get("rollback_target") or not ctx.approved:
        return StepReport(
            title, _skip_all(ctx, _ROLLBACK_VERIFY_IDS, "dry-run: no rollback was performed")
        )
    t = ctx.settings.target
    health = await observe_get(t.http(t.health_path), timeout_s=_timeouts(ctx).read_s)
    auth, err = await _connect_auth(ctx)
    if err:
        return StepReport(title, _token_errors(ctx, _ROLLBACK_VERIFY_IDS, err))
    rt = await observe_roundtrip(
        t.ws(),
        ctx.settings.protocol,
        auth=auth,
        timeout_s=_timeouts(ctx).read_s,
        open_timeout_s=_timeouts(ctx).connect_s,
    )
    return StepReport(
        title,
        [
            judge_health_backend(health, phase=ctx.phase, check_id="rollback.health"),
            judge_ws_roundtrip(rt, phase=ctx.phase, check_id="rollback.smoke"),
        ],
    )
