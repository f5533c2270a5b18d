"""Phase 6 steps: the rollback target chosen by evidence, verified on its tag URL before
traffic moves (mutating), then the service verified (SPEC section 9)."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from ..checks import (
    Verdict,
    choose_rollback_target,
    judge_health_backend,
    judge_rollback_target,
    judge_target_verified,
    judge_traffic_moved,
    judge_ws_roundtrip,
    step_ids,
)
from ..checks.service import RULE_ALREADY_SERVING
from ..context import PhaseContext, StepReport
from ..exceptions import CloudRunError
from ..results import CheckResult
from .common import (
    applies,
    cloudrun,
    connect_auth,
    dry_run,
    main_revision,
    report,
    skip_all,
    step,
    table,
    token_errors,
)
from .verification import probe_revision, verify_tag

if TYPE_CHECKING:
    from ..cloudrun import CloudRun

__all__ = ["rollback_target", "rollback_traffic", "rollback_verify"]

log = logging.getLogger(__name__)


@step
async def rollback_target(ctx: PhaseContext, rollback_to: str = "") -> StepReport:
    """Choose the target by evidence: the revision serving before this run's deploy, else the
    newest one a chained run judged pass, else ``rollback_to``; never one seen failing."""
    from ..rollback_rule import gather_evidence

    cr = cloudrun(ctx)
    # Mid-rollout the split is transient; then every revision (all pages, by createTime).
    svc = await cr.settled_service()
    revisions = await cr.list_revisions()
    serving = svc.serving_revisions
    current = main_revision(serving) or svc.latest_ready_revision
    ev = gather_evidence(ctx.run_dir, ctx.settings.name)
    choice = choose_rollback_target(
        serving,
        revisions,
        previous_serving=ev.previous_split or None,
        passed_in_chain=ev.passed_in_chain,
        failed_seen=ev.failed_seen,
        explicit=rollback_to.strip() or None,
        deployed=ev.deployed or None,
    )
    result = judge_rollback_target(choice, current)
    ctx.artifacts.update(
        rollback_from=current,
        rollback_rule=choice.rule,
        rollback_candidates=list(choice.candidates),
        rollback_serving=dict(serving),
    )
    ctx.artifacts["rollback_alternatives"] = [
        r.name
        for r in revisions
        if r.ready
        and not serving.get(r.name)
        and r.name not in ev.failed_seen
        and r.name != choice.revision
    ]
    if choice.revision:
        ctx.artifacts["rollback_target"] = choice.revision
    else:
        ctx.artifacts.pop("rollback_target", None)
    rows = []
    for r in revisions:
        evidence = []
        if r.name in ev.previous_split:
            evidence.append(f"served {ev.previous_split[r.name]} % before this run's deploy")
        if r.name == ev.deployed:
            evidence.append("deployed by this run")
        if r.name in ev.passed_in_chain:
            evidence.append(f"passed in run {ev.passed_in_chain[r.name]}")
        if r.name in ev.failed_seen:
            evidence.append(f"seen failing ({ev.failed_seen[r.name]})")
        if r.name == choice.revision:
            evidence.append(f"CHOSEN ({choice.rule})")
        rows.append(
            {
                "revision": r.name,
                "created": r.create_time.isoformat(timespec="seconds") if r.create_time else "",
                "ready": r.ready,
                "traffic_%": serving.get(r.name, 0),
                "image": r.image,
                "evidence": "; ".join(evidence),
            }
        )
    where = (
        f"evidence read: this run's records and {ev.chain_runs_read} earlier run(s) of the chain"
        if ctx.run_dir is not None
        else "no run folder (run_dir is empty): no recorded evidence, only rollback_to can name "
        "a target"
    )
    return report([result], table=table(rows), note=where)


def _refusal(ctx: PhaseContext, target: str, current: str) -> str:
    others = [c for c in ctx.artifacts.get("rollback_alternatives", []) if c != target]
    pick = (
        f"name another ready revision nobody saw failing with --param rollback_to=REV "
        f"({', '.join(others[:5])}), whose tag URL is probed the same way"
        if others
        else "no other ready revision is free of failures: fix forward (deploy a fixed image)"
    )
    return f"Refused: traffic stays on {current}. Next: {pick}."


@step
async def rollback_traffic(ctx: PhaseContext) -> StepReport:
    """Tag the target (0 %), verify it on its tag URL, then send it 100 % and remove the tag
    (mutating: needs approval, else a dry run showing the three requests)."""
    ids = step_ids("rollback_traffic")  # rollback.target_verified, rollback.traffic_moved
    target = ctx.artifacts.get("rollback_target")
    current = str(ctx.artifacts.get("rollback_from") or "")
    cr = cloudrun(ctx)
    if not target:
        why = "no rollback target was identified (see rollback.target_identified)"
        return report(
            [
                judge_target_verified(
                    {},
                    revision="(none)",
                    url="",
                    refusal=f"{why}: traffic stays on {current or 'the serving revision'}",
                ),
                judge_traffic_moved(None, None, {}),
            ]
        )
    ctx.artifacts["rollback_moved"] = False
    if ctx.artifacts.get("rollback_rule") == RULE_ALREADY_SERVING:
        return await _already_serving(ctx, str(target))
    tag = verify_tag(ctx.settings.cloudrun.service)
    try:
        plans = [
            await cr.tag_plan(target, tag),  # type: ignore[attr-defined]
            await cr.split_plan({target: 100}),  # type: ignore[attr-defined]
            await cr.untag_plan(tag),  # type: ignore[attr-defined]
        ]
    except CloudRunError as exc:  # e.g. no tag fits beside this service name
        why = f"its verification cannot be planned ({exc}). "
        return report(
            [
                judge_target_verified(
                    {}, revision=target, url="", refusal=why + _refusal(ctx, target, current)
                ),
                judge_traffic_moved(target, None, {}),
            ]
        )
    gcloud = plans[1].gcloud
    if not ctx.approved:
        rep = dry_run(ctx, ids, plans, gcloud, "tag, verify and move traffic")
        # Google checks the tag request (validateOnly) and commits nothing.
        rep.note += f" Tag request: {await cr.validate(plans[0])}."  # type: ignore[attr-defined]
        rep.note += (
            f" Approved: {target} is tagged {tag!r} at 0 %, probed on its tag URL "
            "(health, WebSocket upgrade, round trip), and only then given 100 %."
        )
        return rep
    mutation = ctx.claim_mutation("rollback")
    try:
        tag_url = await cr.tag_revision(target, tag)
    except CloudRunError as exc:
        mutation.done(succeeded=False, error=str(exc))
        return report(
            [
                judge_target_verified(
                    {},
                    revision=target,
                    url="",
                    refusal=f"tagging it failed ({exc}). " + _refusal(ctx, target, current),
                ),
                judge_traffic_moved(target, None, {}),
            ]
        )
    parts = await probe_revision(ctx, tag_url, "rollback.target_verified")
    verified = judge_target_verified(
        parts, revision=target, url=tag_url, refusal=_refusal(ctx, target, current)
    )
    rows = [
        {"probe": f"{label} on {tag_url}", "status": str(r.status), "detail": r.detail}
        for label, r in parts.items()
    ]
    results: list[CheckResult] = [verified]
    if not verified.ok:
        serving = await _untag(ctx, cr, tag)
        mutation.done(succeeded=False, error=f"{target} failed verification; traffic not moved")
        why = f"{target} failed its verification on the tag URL (rollback.target_verified)"
        results.append(judge_traffic_moved(target, None, serving, gcloud, why_not=why))
        return report(results, table=table(rows), note=f"equivalent: {plans[0].gcloud}")
    try:
        outcome = await cr.set_traffic_split({target: 100})
    except CloudRunError as exc:
        serving = await _untag(ctx, cr, tag)
        mutation.done(succeeded=False, error=str(exc))
        why = f"the traffic update failed ({exc}). Run: {gcloud}"
        results.append(judge_traffic_moved(target, None, serving, gcloud, why_not=why))
        return report(results, table=table(rows))
    serving = await _untag(ctx, cr, tag)
    mutation.done(operation=outcome.name, revision=target, succeeded=outcome.succeeded)
    moved = judge_traffic_moved(target, outcome, serving, gcloud)
    if moved.ok:
        ctx.artifacts.update(rollback_moved=True, rolled_back_at=datetime.now(UTC).isoformat())
    results.append(moved)
    rows.append({"probe": "traffic after the move", "status": "", "detail": str(serving)})
    return report(results, table=table(rows), note=f"equivalent: {gcloud}")


async def _already_serving(ctx: PhaseContext, target: str) -> StepReport:
    """The split from before the deploy is back: probe it where it serves, move nothing."""
    t = ctx.settings.target
    parts = await probe_revision(ctx, t.base_url, "rollback.target_verified")
    verified = judge_target_verified(
        parts,
        revision=target,
        url=t.base_url,
        refusal="It already serves: the state before the deploy is not healthy either; "
        "escalate and fix forward.",
        where="the service URL (it already serves)",
    )
    serving = (await cloudrun(ctx).get_service()).serving_revisions
    words = ", ".join(f"{r} {p} %" for r, p in serving.items())
    moved = Verdict("rollback.traffic_moved").ok(
        f"nothing to move: {words} serve(s) again, as before this run's deploy "
        f"(rule {RULE_ALREADY_SERVING})",
        observed=dict(serving),
    )
    # Traffic is where a rollback would put it: the verification step probes it.
    ctx.artifacts["rollback_moved"] = True
    rows = [
        {"probe": f"{label} on {t.base_url}", "status": str(r.status), "detail": r.detail}
        for label, r in parts.items()
    ]
    return report([verified, moved], table=table(rows))


async def _untag(ctx: PhaseContext, cr: CloudRun, tag: str) -> dict[str, int]:
    """Remove the verification tag (a failure is logged: the tag serves 0 % anyway); return
    the split serving now. The tags left are recorded (``tags_after``)."""
    try:
        await cr.untag(tag)
    except CloudRunError as exc:
        log.warning("could not remove the tag %s: %s", tag, exc)
    svc = await cr.get_service()
    ctx.artifacts["tags_after"] = dict(svc.tag_urls)
    return dict(svc.serving_revisions)


@step
async def rollback_verify(ctx: PhaseContext) -> StepReport:
    """After the rollback: /health is 200 and a WebSocket round trip works."""
    from ..flow_runner import run_named_flow
    from ..http_checks import observe_get

    ids = step_ids("rollback_verify")
    if not ctx.approved:
        return report(skip_all(ctx, ids, "dry-run: no rollback was performed"))
    if not ctx.artifacts.get("rollback_moved"):
        why = (
            "the target was refused (see rollback.target_identified)"
            if not ctx.artifacts.get("rollback_target")
            else "traffic was not moved (see rollback.target_verified, rollback.traffic_moved)"
        )
        return report(skip_all(ctx, ids, f"no rollback was performed: {why}"))
    t, to = ctx.settings.target, ctx.settings.timeouts
    auth, err = await connect_auth(ctx)
    if err:
        return report(token_errors(ctx, ids, err))
    results = []
    if applies(ctx, "rollback.health"):
        health = await observe_get(t.http(t.health_path), timeout_s=to.read_s)
        results.append(judge_health_backend(health, check_id="rollback.health"))
    rt = await run_named_flow(ctx.settings, "load", auth=auth)  # the service's ping conversation
    results.append(judge_ws_roundtrip(rt, check_id="rollback.smoke"))
    return report(results)
