"""Phase 2 steps: pre-deploy commands, the deploy (mutating), warm-up and deploy logs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from ..context import PhaseContext, StepReport
from ..results import CheckResult, Status
from ._common import (
    _CR_MISSING,
    _TARGET_MISSING,
    _cloudrun,
    _log_step,
    _main_revision,
    _no_target,
    _result,
    _since,
    _skip_all,
    _step,
    _table,
    _timeouts,
)

__all__ = ["deploy", "deploy_logs", "predeploy", "warmup"]


_DEPLOY_IDS = ("deploy.executed", "deploy.operation_succeeded", "deploy.latest_serving")


@_step("Deploy", _DEPLOY_IDS)
async def deploy(ctx: PhaseContext) -> StepReport:
    """Deploy the configured image (mutating: needs approval, else a dry run)."""
    title = "Deploy"
    cfg = ctx.settings.cloudrun
    if not cfg.configured or not (cfg.deploy_image or cfg.deploy_command):
        reason = (
            "skip: no [cloudrun] deploy_image or deploy_command configured"
            if cfg.configured
            else _CR_MISSING
        )
        return StepReport(title, _skip_all(ctx, _DEPLOY_IDS, reason))
    cr = _cloudrun(ctx)
    before = await cr.get_service()
    previous = _main_revision(before.serving_revisions) or before.latest_ready_revision
    ctx.artifacts.update(previous_revision=previous, dry_run=True)
    if cfg.deploy_image:
        request = cr.deploy_request(cfg.deploy_image)
        gcloud = cr.gcloud_deploy_command(cfg.deploy_image)
    else:
        request = {"command": cfg.deploy_command}
        gcloud = cfg.deploy_command
    ctx.artifacts.update(deploy_request=request, deploy_gcloud=gcloud)
    if not ctx.approved:
        detail = f"dry-run: not approved; would send {request} (equivalent: {gcloud})"
        return StepReport(
            title,
            _skip_all(ctx, _DEPLOY_IDS, detail),
            table=_table([{"request": str(request), "gcloud": gcloud}]),
            note="Dry run. Re-run with approve=True (CLI: --approve) to deploy.",
        )
    ctx.claim_mutation("deploy")
    started = datetime.now(UTC)
    ctx.artifacts.update(dry_run=False, deploy_started_at=started.isoformat())
    results: list[CheckResult] = []
    if cfg.deploy_image:
        outcome = await cr.deploy(cfg.deploy_image)
        results.append(
            _result(
                ctx,
                "deploy.executed",
                Status.PASS,
                f"deploy request accepted: operation {outcome.name}",
                observed=outcome.name,
            )
        )
        deployed = outcome.revision
        if outcome.succeeded:
            results.append(
                _result(
                    ctx,
                    "deploy.operation_succeeded",
                    Status.PASS,
                    f"operation finished in {outcome.duration_s:.1f}s; "
                    f"revision {deployed} is ready",
                    observed=deployed,
                    duration_s=outcome.duration_s,
                )
            )
        else:
            results.append(
                _result(
                    ctx,
                    "deploy.operation_succeeded",
                    Status.FAIL,
                    f"the deploy operation failed: {outcome.error or 'no detail'}. The new revision "
                    f"did not become ready; the service still serves {previous}. Read the revision's "
                    "logs (deploy.logs_clean) for the startup error.",
                    observed=outcome.error or "failed",
                )
            )
    else:
        from ..commands import run_command
        from ..settings import CommandSpec

        spec = CommandSpec(
            name="deploy", run=cfg.deploy_command, timeout_s=ctx.settings.timeouts.operation_s
        )
        run = await run_command(spec)
        ok = run.exit_code == 0 and not run.timed_out
        results.append(
            _result(
                ctx,
                "deploy.executed",
                Status.PASS if ok else Status.FAIL,
                f"deploy command exited {run.exit_code}"
                + (" (timed out)" if run.timed_out else ""),
                observed=run.exit_code,
            )
        )
        after_cmd = await cr.get_service()
        deployed = after_cmd.latest_created_revision
        ready = after_cmd.latest_ready_revision == deployed and deployed != previous
        results.append(
            _result(
                ctx,
                "deploy.operation_succeeded",
                Status.PASS if ok and ready else Status.FAIL,
                f"latest created revision {deployed} "
                + ("is ready" if ready else "is not ready (or no new revision)"),
                observed=deployed,
            )
        )
    ctx.artifacts.update(deployed_revision=deployed)
    after = await cr.get_service()
    from ..rollout import judge_latest_serving

    results.append(judge_latest_serving(after, deployed, previous, phase=ctx.phase))
    rows = [{"revision": k, "traffic_%": v} for k, v in after.serving_revisions.items()]
    return StepReport(
        title,
        results,
        table=_table(rows),
        note=f"previous revision: {previous}; deployed revision: {deployed}",
    )


def _predeploy_ids(ctx: PhaseContext) -> list[str]:
    return [f"predeploy.{c.name}" for c in ctx.settings.predeploy] or ["predeploy"]


@_step("Pre-deployment commands", _predeploy_ids)
async def predeploy(ctx: PhaseContext) -> StepReport:
    """Run the configured pre-deployment validation commands (tests, compliance scripts)."""
    from ..commands import judge_predeploy, run_command

    title = "Pre-deployment commands"
    if not ctx.settings.predeploy:
        return StepReport(title, [], note="No [[commands.predeploy]] configured: nothing to run.")
    results, rows = [], []
    for spec in ctx.settings.predeploy:
        obs = await run_command(spec, cwd=spec.cwd or ctx.settings.source.repo_dir or None)
        results.append(judge_predeploy(obs, phase=ctx.phase))
        rows.append(
            {
                "name": spec.name,
                "exit_code": obs.exit_code,
                "duration_s": round(obs.duration_s, 2),
                "timed_out": obs.timed_out,
                "output (tail)": obs.output_tail[-400:],
            }
        )
    return StepReport(title, results, table=_table(rows))


_WARMUP_IDS = ("health.ready_within", "ws.health_ready_within", "health.no_5xx_during_warmup")


@_step("Warm-up after deploy", _WARMUP_IDS)
async def warmup(ctx: PhaseContext) -> StepReport:
    """Poll /health (30 s budget) and /ws/health (60 s) until 200, recording every answer."""

    from ..evaluate import judge_no_5xx_during_warmup, judge_ready_within
    from ..http_checks import poll_until_ready
    from ..plots import plot_warmup

    title = "Warm-up after deploy"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _WARMUP_IDS, _TARGET_MISSING))
    t, th = ctx.settings.target, ctx.settings.thresholds
    health_url, ws_health_url = t.http(t.health_path), t.http(t.ws_health_path)
    health, ws_health = await asyncio.gather(
        poll_until_ready(
            health_url,
            deadline_s=th.health_ready_s,
            interval_s=th.poll_interval_s,
            timeout_s=_timeouts(ctx).connect_s,
        ),
        poll_until_ready(
            ws_health_url,
            deadline_s=th.ws_health_ready_s,
            interval_s=th.poll_interval_s,
            timeout_s=_timeouts(ctx).connect_s,
        ),
    )
    results = [
        judge_ready_within(
            health, check_id="health.ready_within", limit_s=th.health_ready_s, phase=ctx.phase
        ),
        judge_ready_within(
            ws_health,
            check_id="ws.health_ready_within",
            limit_s=th.ws_health_ready_s,
            phase=ctx.phase,
        ),
        judge_no_5xx_during_warmup([health, ws_health], phase=ctx.phase),
    ]
    samples = [
        {"t_s": p.t, "url": tl.url, "status": p.status, "error": p.error, "latency_s": p.latency_s}
        for tl in (health, ws_health)
        for p in tl.points
    ]
    ctx.artifacts["warmup_samples"] = len(samples)
    fig = plot_warmup(
        samples, thresholds={health_url: th.health_ready_s, ws_health_url: th.ws_health_ready_s}
    )
    return StepReport(title, results, figure=fig)


@_step("Deployment logs", ("deploy.logs_clean",))
async def deploy_logs(ctx: PhaseContext) -> StepReport:
    """Read the new revision's logs since the deploy started: no ERROR entries expected."""
    title = "Deployment logs"
    if not ctx.settings.logging.enabled or not ctx.settings.cloudrun.configured:
        return StepReport(
            title,
            _skip_all(
                ctx,
                ("deploy.logs_clean",),
                "skip: [logging] enabled is false or [cloudrun] is not configured",
            ),
        )
    if ctx.artifacts.get("dry_run", True):
        return StepReport(
            title,
            _skip_all(
                ctx,
                ("deploy.logs_clean",),
                "dry-run: no deploy ran, so there are no deploy logs to read",
            ),
        )
    revision = ctx.artifacts.get("deployed_revision")
    since = _since(ctx, ctx.artifacts.get("deploy_started_at"))
    return await _log_step(
        ctx,
        title,
        "deploy.logs_clean",
        since=since,
        revision=revision,
        min_severity="ERROR",
        contains=(),
        what=f"ERROR entries of revision {revision} since the deploy",
    )
