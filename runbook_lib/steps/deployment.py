"""Phase 2 steps: pre-deploy commands, the deploy (mutating), warm-up and deploy logs."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from ..checks import (
    judge_deploy,
    judge_latest_serving,
    judge_no_5xx_during_warmup,
    judge_predeploy,
    judge_ready_within,
    step_ids,
)
from ..context import PhaseContext, StepReport
from ..observations import CommandObservation, OperationView, ReadinessTimeline
from .common import (
    applies,
    cloudrun,
    dry_run,
    log_step,
    main_revision,
    report,
    since,
    skip_all,
    step,
    table,
)

__all__ = ["deploy", "deploy_logs", "predeploy", "warmup"]


@step
async def deploy(ctx: PhaseContext) -> StepReport:
    """Deploy the configured image (mutating: needs approval, else a dry run)."""
    cfg = ctx.settings.cloudrun
    cr = cloudrun(ctx)
    before = await cr.get_service()
    previous = main_revision(before.serving_revisions) or before.latest_ready_revision
    ctx.artifacts.update(previous_revision=previous, dry_run=True)
    if cfg.deploy_image:
        request = cr.deploy_request(cfg.deploy_image)
        gcloud = cr.gcloud_deploy_command(cfg.deploy_image)
    else:
        request = {"command": cfg.deploy_command}
        gcloud = cfg.deploy_command
    ctx.artifacts.update(deploy_request=request, deploy_gcloud=gcloud)
    if not ctx.approved:
        return dry_run(ctx, step_ids("deploy"), request, gcloud, "deploy")
    ctx.claim_mutation("deploy")
    started = datetime.now(UTC)
    ctx.artifacts.update(dry_run=False, deploy_started_at=started.isoformat())
    done: OperationView | CommandObservation
    if cfg.deploy_image:
        done = outcome = await cr.deploy(cfg.deploy_image)
    else:
        from ..commands import run_command
        from ..settings import CommandSpec

        spec = CommandSpec(
            name="deploy", run=cfg.deploy_command, timeout_s=ctx.settings.timeouts.operation_s
        )
        done = await run_command(spec)
    after = await cr.get_service()
    results = judge_deploy(done, after, previous)
    deployed = outcome.revision if cfg.deploy_image else after.latest_created_revision
    ctx.artifacts.update(deployed_revision=deployed)
    results.append(judge_latest_serving(after, deployed, previous))
    rows = [{"revision": k, "traffic_%": v} for k, v in after.serving_revisions.items()]
    return report(
        results,
        table=table(rows),
        note=f"previous revision: {previous}; deployed revision: {deployed}",
    )


@step
async def predeploy(ctx: PhaseContext) -> StepReport:
    """Run the configured pre-deployment validation commands (tests, compliance scripts)."""
    from ..commands import run_command

    if not ctx.settings.predeploy:
        return report([], note="No [[commands.predeploy]] configured: nothing to run.")
    results, rows = [], []
    for spec in ctx.settings.predeploy:
        if not applies(ctx, f"predeploy.{spec.name}"):
            continue
        obs = await run_command(spec, cwd=spec.cwd or ctx.settings.source.repo_dir or None)
        results.append(judge_predeploy(obs))
        rows.append(
            {
                "name": spec.name,
                "exit_code": obs.exit_code,
                "duration_s": round(obs.duration_s, 2),
                "timed_out": obs.timed_out,
                "output (tail)": obs.output_tail[-400:],
            }
        )
    return report(results, table=table(rows))


@step
async def warmup(ctx: PhaseContext) -> StepReport:
    """Poll /health (30 s budget) and /ws/health (60 s) until 200, recording every answer."""
    from ..http_checks import poll_until_ready
    from ..plots import plot_warmup

    t, th = ctx.settings.target, ctx.settings.thresholds
    # (check id, URL, deadline) of each endpoint this service has.
    polled = [
        (cid, t.http(path), limit)
        for cid, path, limit in (
            ("health.ready_within", t.health_path, th.health_ready_s),
            ("ws.health_ready_within", t.ws_health_path, th.ws_health_ready_s),
        )
        if applies(ctx, cid)
    ]
    timelines: list[ReadinessTimeline] = list(
        await asyncio.gather(
            *(
                poll_until_ready(
                    url,
                    deadline_s=limit,
                    interval_s=th.poll_interval_s,
                    timeout_s=ctx.settings.timeouts.connect_s,
                )
                for _, url, limit in polled
            )
        )
    )
    results = [
        judge_ready_within(tl, check_id=cid, limit_s=limit)
        for (cid, _, limit), tl in zip(polled, timelines, strict=True)
    ]
    results.append(judge_no_5xx_during_warmup(timelines))
    samples = [
        {"t_s": p.t, "url": tl.url, "status": p.status, "error": p.error, "latency_s": p.latency_s}
        for tl in timelines
        for p in tl.points
    ]
    ctx.artifacts["warmup_samples"] = len(samples)
    fig = plot_warmup(samples, thresholds={url: limit for _, url, limit in polled})
    return report(results, figure=fig)


@step
async def deploy_logs(ctx: PhaseContext) -> StepReport:
    """Read the new revision's logs since the deploy started: no ERROR entries expected."""
    if ctx.artifacts.get("dry_run", True):
        reason = "dry-run: no deploy ran, so there are no deploy logs to read"
        return report(skip_all(ctx, step_ids("deploy_logs"), reason))
    revision = ctx.artifacts.get("deployed_revision")
    return await log_step(
        ctx,
        "deploy.logs_clean",
        since=since(ctx, ctx.artifacts.get("deploy_started_at")),
        revision=revision,
        min_severity="ERROR",
        contains=(),
        what=f"ERROR entries of revision {revision} since the deploy",
    )
