"""Phase 2 steps: pre-deploy commands, the deploy (mutating), warm-up and deploy logs.

The deploy follows ``[cloudrun] deploy_strategy``: ``direct`` (the seed's way: the new
revision takes all traffic at once) or ``verify-then-shift`` (SPEC 9: no traffic and a
tag, the endpoint checks on the tag URL, then traffic in ``shift_steps`` with a gate
after each, and the previous split back when a gate fails).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from ..checks import (
    ShiftRecord,
    gate_outcome,
    judge_deploy,
    judge_latest_serving,
    judge_no_5xx_during_warmup,
    judge_predeploy,
    judge_ready_within,
    judge_target_verified,
    step_ids,
)
from ..context import PhaseContext, StepReport
from ..exceptions import CloudRunError
from ..observations import CommandObservation, OperationView, ReadinessTimeline
from .common import (
    applies,
    cloudrun,
    dry_run,
    log_step,
    main_revision,
    report,
    skip_all,
    step,
    table,
)
from .verification import ShareTimeline, gate_probe, probe_revision, users_probe, verify_tag

__all__ = ["deploy", "deploy_logs", "predeploy", "warmup"]

log = logging.getLogger(__name__)

NOTHING_DEPLOYED = "dry-run: nothing was deployed, so there is no new revision to wait for"
NO_NEW_REVISION = "no new revision: the image already serves"


@step
async def deploy(ctx: PhaseContext) -> StepReport:
    """Deploy the configured image (mutating: needs approval, else a dry run).

    ``direct``: the new revision takes all traffic. ``verify-then-shift``: it is deployed
    with no traffic and a tag, verified on the tag URL, then shifted in steps with gates.
    """
    from ..traffic_plan import deploy_strategy, shift_steps

    cfg = ctx.settings.cloudrun
    cr = cloudrun(ctx)
    # A split read mid-rollout (another deploy in flight) is transient: wait it out.
    before = await cr.settled_service()
    previous = main_revision(before.serving_revisions) or before.latest_ready_revision
    strategy = deploy_strategy(ctx.settings)
    tag = verify_tag(cfg.service)
    ctx.artifacts.update(
        previous_revision=previous,
        previous_split=dict(before.serving_revisions),
        deploy_strategy=strategy,
        dry_run=True,
    )
    shifted = strategy == "verify-then-shift" and bool(cfg.deploy_image)
    plan: Any
    if cfg.deploy_image:
        plan = await cr.deploy_plan(  # type: ignore[attr-defined]
            cfg.deploy_image, no_traffic=shifted, tag=tag if shifted else ""
        )
        request, gcloud = plan.request, plan.gcloud
        if not ctx.approved:
            # Google checks the planned request (validateOnly) and commits nothing.
            ctx.artifacts["deploy_validation"] = await cr.validate(plan)  # type: ignore[attr-defined]
    else:
        plan = request = {"command": cfg.deploy_command}
        gcloud = cfg.deploy_command
    ctx.artifacts.update(deploy_request=request, deploy_gcloud=gcloud)
    if not ctx.approved:
        steps = list(shift_steps(ctx.settings)) if shifted else []
        rep = dry_run(ctx, step_ids("deploy"), plan, gcloud, "deploy")
        if validation := ctx.artifacts.get("deploy_validation"):
            rep.note += f" {validation}."
        if steps:
            rep.note += (
                f" Approved, the new revision gets 0 % and the tag {tag!r}, is verified "
                f"on the tag URL, then takes {', '.join(f'{p} %' for p in steps)} of traffic "
                "with a gate after each step."
            )
        return rep
    mutation = ctx.claim_mutation(
        "deploy", what=f"new revision at 0 % with tag {tag!r}" if shifted else ""
    )
    started = datetime.now(UTC)
    ctx.artifacts.update(dry_run=False, deploy_started_at=started.isoformat())
    if shifted:
        return await _verify_then_shift(
            ctx, plan, before.serving_revisions, previous, mutation, tag
        )
    done: OperationView | CommandObservation
    if cfg.deploy_image:
        # Named up front (the dry run showed the name): always a new revision, so a fix
        # pushed under the same image tag is rolled out, not skipped.
        done = outcome = await cr.deploy(cfg.deploy_image, revision_name=_revision_of(plan))
        mutation.done(
            operation=outcome.name,
            revision=outcome.revision,
            succeeded=outcome.succeeded,
            error=outcome.error,
        )
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
    ctx.artifacts.update(deployed_revision=deployed, no_new_revision=bool(deployed == previous))
    results.append(judge_latest_serving(after, deployed, previous))
    rows = [{"revision": k, "traffic_%": v} for k, v in after.serving_revisions.items()]
    same = " (the same: the image already served, no new revision)" if deployed == previous else ""
    return report(
        results,
        table=table(rows),
        note=f"previous revision: {previous}; deployed revision: {deployed}{same}",
    )


async def _verify_then_shift(
    ctx: PhaseContext,
    plan: Any,
    previous_split: dict[str, int],
    previous: str | None,
    mutation: Any,
    tag: str,
) -> StepReport:
    """Deploy with no traffic and a tag, verify on the tag URL, then shift with gates."""
    from ..plots import plot_traffic_share
    from ..traffic_plan import Gate, next_action, plan_shift, share_rows, shift_steps

    cr = cloudrun(ctx)
    image = ctx.settings.cloudrun.deploy_image
    timeline = ShareTimeline()
    timeline.add(previous_split, "before the deploy")
    outcome = await cr.deploy(image, no_traffic=True, tag=tag, revision_name=_revision_of(plan))
    mutation.done(
        operation=outcome.name,
        revision=outcome.revision,
        succeeded=outcome.succeeded,
        error=outcome.error,
    )
    after = await cr.get_service()
    results = judge_deploy(outcome, after, previous)
    new = outcome.revision if outcome.succeeded else ""
    ctx.artifacts.update(deployed_revision=outcome.revision, no_new_revision=False)
    # The new revision is drawn from the deploy on, at 0 % until a step gives it traffic.
    timeline.add(
        {**after.serving_revisions, **({new: 0} if new else {})},
        f"deploy: {new or 'failed'} at 0 %",
    )
    before_words = ", ".join(f"{r} {p} %" for r, p in previous_split.items())
    refusal = (
        f"Refused: no traffic moved; {outcome.revision} keeps 0 % and {before_words} keeps "
        "serving. Next: read the revision's logs (deploy.logs_clean), fix the image and "
        "deploy again."
    )
    verified = False
    if not new or not outcome.tag_url:
        why = outcome.error or "the deploy reported no tag URL"
        results.append(
            judge_target_verified(
                {},
                check_id="deploy.tag_verified",
                revision=outcome.revision or "(no revision)",
                url=outcome.tag_url,
                refusal=f"The deploy did not give a ready, tagged revision ({why}). {refusal}",
            )
        )
    else:
        # Every per-user conversation the gates use runs here first, at 0 %: a revision
        # that leaks between users is refused before any user is sent to it.
        parts = await probe_revision(ctx, outcome.tag_url, "deploy.tag_verified", isolation=True)
        verdict = judge_target_verified(
            parts,
            check_id="deploy.tag_verified",
            revision=new,
            url=outcome.tag_url,
            refusal=refusal,
        )
        results.append(verdict)
        verified = verdict.ok
    gates: list[Gate] = []
    gate_rows: list[tuple[int, bool, str]] = []
    restored: bool | None = None
    error = ""
    failing_before: set[str] = set()
    if verified:
        # What users get before any shift: a probe already failing (the incident being
        # fixed) cannot judge the new revision through the service URL.
        failing_before = {
            kind
            for kind, r in (await users_probe(ctx, "deploy.latest_serving")).items()
            if not r.ok
        }
        shift = plan_shift(new, previous_split, shift_steps(ctx.settings))
        for _ in range(len(shift.steps) + 2):  # bounded: each step once, then restore/done
            action = next_action(shift, True, gates)
            if action.kind == "done":
                break
            if action.kind == "restore":
                restored = await _restore(ctx, cr, shift.restore, timeline)
                break
            assert action.split is not None and action.step is not None
            pct = shift.steps[action.step].percent
            step_claim = ctx.claim_mutation("traffic", what=f"shift {new} to {pct} %")
            try:
                moved = await cr.set_traffic_split(action.split)
            except CloudRunError as exc:
                error = str(exc)
                step_claim.done(succeeded=False, error=error)
                restored = await _restore(ctx, cr, shift.restore, timeline)
                break
            step_claim.done(operation=moved.name, succeeded=moved.succeeded, split=moved.split)
            timeline.add(moved.split, f"step {pct} %")
            passed, failed, words = gate_outcome(
                await gate_probe(
                    ctx, outcome.tag_url, "deploy.latest_serving", failing_before=failing_before
                )
            )
            gates.append(Gate(action.step, passed, failed))
            gate_rows.append((pct, passed, words))
            if not passed:
                timeline.samples[-1] = (*timeline.samples[-1][:2], f"step {pct} %: gate failed")
    # Also after a failed deploy: a tag left on a revision that is not ready keeps the
    # service not ready on Cloud Run and makes every later write repeating it fail.
    await _untag(ctx, cr, tag)
    end = await cr.get_service()
    final = end.serving_revisions
    record = ShiftRecord(
        new_revision=new,
        previous=previous_split,
        verified=verified,
        gates=tuple(gate_rows),
        restored=restored,
        final=final,
        error=error,
    )
    results.append(judge_latest_serving(end, new, previous, shift=record))
    ctx.artifacts.update(
        traffic_timeline=[
            {"t_s": t, "split": split, "label": label} for t, split, label in timeline.samples
        ],
        max_share=record.max_share,
        shift_completed=bool(new) and final.get(new) == 100,
    )
    rows = [
        {
            "t_s": t,
            "what": label,
            "split": ", ".join(f"{r} {p} %" for r, p in split.items()),
        }
        for t, split, label in timeline.samples
    ]
    fig = plot_traffic_share(
        share_rows(timeline.samples),
        new_revision=new,
        first_step=shift_steps(ctx.settings)[0],
    )
    return report(
        results,
        table=table(rows),
        figure=fig,
        caption="Traffic share per revision during the verify-then-shift deploy",
        note=f"previous split: {previous_split}; deployed revision: {outcome.revision} "
        f"(verify-then-shift, tag {tag!r} removed afterwards)"
        + (
            f"; {' and '.join(sorted(failing_before))} through the service URL already failed "
            "before the first shift, so the gates ran them on the new revision's tag URL"
            if failing_before
            else ""
        ),
    )


def _revision_of(plan: Any) -> str:
    """The revision name a tagged deploy plan chose up front ('' when none)."""
    body = getattr(plan, "body", {}) or {}
    return str((body.get("template") or {}).get("revision") or "")


async def _restore(
    ctx: PhaseContext, cr: Any, split: Mapping[str, int], timeline: ShareTimeline
) -> bool:
    """Return traffic to ``split``; False (and logged) when that fails too."""
    words = ", ".join(f"{r} {p} %" for r, p in split.items())
    claim = ctx.claim_mutation("traffic", what=f"restore the previous split ({words})")
    try:
        back = await cr.set_traffic_split(split)
    except CloudRunError as exc:
        claim.done(succeeded=False, error=str(exc))
        log.error("returning traffic to %s failed: %s", split, exc)
        timeline.add((await cr.get_service()).serving_revisions, "restore FAILED")
        return False
    claim.done(operation=back.name, succeeded=back.succeeded, split=back.split)
    timeline.add(back.split, "restore: previous split")
    return True


async def _untag(ctx: PhaseContext, cr: Any, tag: str) -> None:
    """Remove the verification tag (a failure is logged: the tag serves 0 % anyway)."""
    try:
        if tag not in (await cr.get_service()).tagged_revisions:
            return
        claim = ctx.claim_mutation("tag", what=f"remove the tag {tag!r}")
        try:
            removed = await cr.untag(tag)
        except CloudRunError as exc:
            claim.done(succeeded=False, error=str(exc))
            raise
        claim.done(operation=removed.name, succeeded=removed.succeeded)
    except CloudRunError as exc:
        log.warning("could not remove the tag %s: %s", tag, exc)


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

    if ctx.artifacts.get("dry_run") is True:
        return report(skip_all(ctx, step_ids("warmup"), NOTHING_DEPLOYED))
    if ctx.artifacts.get("no_new_revision"):
        return report(skip_all(ctx, step_ids("warmup"), NO_NEW_REVISION))
    if ctx.artifacts.get("deploy_strategy") == "verify-then-shift" and not ctx.artifacts.get(
        "shift_completed"
    ):
        why = "the new revision took no traffic in the end (see deploy.latest_serving): nothing to warm up"
        return report(skip_all(ctx, step_ids("warmup"), why))
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
    return report(results, figure=fig, caption="Warm-up: every readiness poll's answer over time")


@step
async def deploy_logs(ctx: PhaseContext) -> StepReport:
    """Read the new revision's logs since the deploy started: no errors expected (ERROR
    entries, 5xx, 404s on WebSocket paths), once this run's requests are seen in them."""
    from ..logs import LogScope

    if ctx.artifacts.get("dry_run", True):
        reason = "dry-run: no deploy ran, so there are no deploy logs to read"
        return report(skip_all(ctx, step_ids("deploy_logs"), reason))
    if ctx.artifacts.get("no_new_revision"):
        return report(skip_all(ctx, step_ids("deploy_logs"), NO_NEW_REVISION))
    revision = str(ctx.artifacts.get("deployed_revision") or "")
    started = datetime.fromisoformat(str(ctx.artifacts["deploy_started_at"]))
    if not revision:  # the deploy named no revision: every revision's errors since it began
        return await log_step(
            ctx,
            "deploy.logs_clean",
            since=started,
            revision=None,
            kind="errors",
            what="errors of any revision since the deploy started",
        )
    scope = LogScope(revision, started, f"since the deploy of {revision} started")
    return await log_step(
        ctx,
        "deploy.logs_clean",
        scope=scope,
        kind="errors",
        what="errors of the new revision",
    )
