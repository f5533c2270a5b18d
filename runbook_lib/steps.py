"""One function per notebook step: observe, judge, record, display.

Each step takes the notebook's :class:`PhaseContext`, gathers evidence with the
I/O modules (``http_checks``, ``ws_checks``, ``cloudrun``, ``logs``, ``load``,
``commands``, ``source``), judges it with the pure functions of ``evaluate``,
records the results in the context (persisted to the run folder) and returns a
:class:`StepReport` that Jupyter displays. Steps hold no judging logic of their
own beyond choosing what to observe; an unexpected exception inside a step
becomes ``error`` results for the step's checks, never a crashed notebook.
"""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from .context import PhaseContext, StepReport
from .exceptions import ApprovalRequired, CloudRunError
from .redaction import redact
from .results import CheckResult, Status

__all__ = [
    "deploy",
    "rollback_target",
    "rollback_traffic",
    "service_status",
    "ws_preflight",
]

log = logging.getLogger(__name__)

StepFn = Callable[..., Awaitable[StepReport]]


def _step(title: str, ids: Sequence[str] | Callable[[PhaseContext], Sequence[str]]):
    """Decorate a step: time it, turn unexpected exceptions into ``error`` results, record."""

    def deco(fn: StepFn) -> StepFn:
        @functools.wraps(fn)
        async def wrapper(ctx: PhaseContext, *args: Any, **kwargs: Any) -> StepReport:
            start = time.perf_counter()
            try:
                report = await fn(ctx, *args, **kwargs)
            except ApprovalRequired:
                raise
            except Exception as exc:  # the one boundary: a step never crashes the notebook
                log.exception("step %s failed", fn.__name__)
                wanted = ids(ctx) if callable(ids) else ids
                reason = redact(f"{type(exc).__name__}: {exc}")
                report = StepReport(
                    title,
                    [
                        CheckResult(i, ctx.phase, Status.ERROR, detail=f"the check could not run: {reason}")
                        for i in wanted
                    ],
                )
            elapsed = time.perf_counter() - start
            report.results = [
                r if r.duration_s else r.with_duration(elapsed / max(len(report.results), 1))
                for r in report.results
            ]
            return ctx.record(report)

        wrapper.check_ids = ids  # type: ignore[attr-defined]
        return wrapper

    return deco


def _result(ctx: PhaseContext, check_id: str, status: Status | str, detail: str,
            observed: Any = None, threshold: Any = None, **data: Any) -> CheckResult:
    return CheckResult(check_id, ctx.phase, Status(status), observed, threshold, detail, data=data)


def _skip_all(ctx: PhaseContext, ids: Sequence[str], reason: str) -> list[CheckResult]:
    return [_result(ctx, i, Status.SKIP, reason) for i in ids]


def _table(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows)


# ------------------------------------------------------------------ Cloud Run helpers

_CR_MISSING = "skip: [cloudrun] project, region and service are not configured"


def _cloudrun(ctx: PhaseContext) -> Any:
    from .cloudrun import cloudrun_client

    return cloudrun_client(ctx.settings)


def _previous_phase_artifact(ctx: PhaseContext, phase: int, key: str) -> Any:
    """An artifact another phase of the same run recorded (``None`` when absent)."""
    import json

    from .context import phase_file

    if ctx.run_dir is None:
        return None
    path = phase_file(ctx.run_dir, phase)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("artifacts", {}).get(key)
    except (OSError, ValueError):
        return None


# ------------------------------------------------------------------ phase 1

_STATUS_IDS = ("status.revision_identified", "status.traffic_on_latest", "status.revisions_listed")


@_step("Cloud Run service status", _STATUS_IDS)
async def service_status(ctx: PhaseContext) -> StepReport:
    """Describe the service and its revisions; judge which revision serves and how traffic is split."""
    title = "Cloud Run service status"
    if not ctx.settings.cloudrun.configured:
        return StepReport(title, _skip_all(ctx, _STATUS_IDS, _CR_MISSING))
    cr = _cloudrun(ctx)
    try:
        svc = await cr.get_service()
        revisions = await cr.list_revisions(limit=10)
    except CloudRunError as exc:
        detail = f"could not read the service: {exc}. Check [cloudrun] project/region/service and credentials."
        return StepReport(title, [_result(ctx, i, Status.ERROR, detail) for i in _STATUS_IDS])
    from .rollout import judge_service_status

    results = judge_service_status(svc, revisions, phase=ctx.phase)
    serving = svc.serving_revisions
    ctx.artifacts.update(
        serving_revisions=serving,
        latest_ready_revision=svc.latest_ready_revision,
        service_uri=svc.uri,
    )
    rows = [
        {
            "revision": r.name,
            "ready": r.ready,
            "traffic_%": serving.get(r.name, 0),
            "image": r.image,
            "created": r.create_time.isoformat(timespec="seconds") if r.create_time else "",
            "message": r.ready_message,
        }
        for r in revisions
    ]
    return StepReport(title, results, table=_table(rows), note=f"Service URL: {svc.uri}")


@_step("Cloud Run WebSocket preflight", ("cloudrun.ws_preflight",))
async def ws_preflight(ctx: PhaseContext) -> StepReport:
    """Read the service settings that break WebSockets on Cloud Run and warn about each."""
    title = "Cloud Run WebSocket preflight"
    if not ctx.settings.cloudrun.configured:
        return StepReport(title, _skip_all(ctx, ("cloudrun.ws_preflight",), _CR_MISSING))
    try:
        svc = await _cloudrun(ctx).get_service()
    except CloudRunError as exc:
        return StepReport(title, [_result(ctx, "cloudrun.ws_preflight", Status.ERROR,
                                          f"could not read the service: {exc}")])
    from .rollout import judge_ws_preflight

    result = judge_ws_preflight(svc, ctx.settings.thresholds, phase=ctx.phase)
    rows = [{"setting": k, "value": v} for k, v in (result.observed or {}).items()]
    return StepReport(title, [result], table=_table(rows))


# ------------------------------------------------------------------ phase 2

_DEPLOY_IDS = ("deploy.executed", "deploy.operation_succeeded", "deploy.latest_serving")


@_step("Deploy", _DEPLOY_IDS)
async def deploy(ctx: PhaseContext) -> StepReport:
    """Deploy the configured image (mutating: needs approval, else a dry run)."""
    title = "Deploy"
    cfg = ctx.settings.cloudrun
    if not cfg.configured or not (cfg.deploy_image or cfg.deploy_command):
        reason = ("skip: no [cloudrun] deploy_image or deploy_command configured"
                  if cfg.configured else _CR_MISSING)
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
        return StepReport(title, _skip_all(ctx, _DEPLOY_IDS, detail),
                          table=_table([{"request": str(request), "gcloud": gcloud}]),
                          note="Dry run. Re-run with approve=True (CLI: --approve) to deploy.")
    ctx.claim_mutation("deploy")
    started = datetime.now(UTC)
    ctx.artifacts.update(dry_run=False, deploy_started_at=started.isoformat())
    results: list[CheckResult] = []
    if cfg.deploy_image:
        outcome = await cr.deploy(cfg.deploy_image)
        results.append(_result(ctx, "deploy.executed", Status.PASS,
                               f"deploy request accepted: operation {outcome.name}",
                               observed=outcome.name))
        deployed = outcome.revision
        if outcome.succeeded:
            results.append(_result(ctx, "deploy.operation_succeeded", Status.PASS,
                                   f"operation finished in {outcome.duration_s:.1f}s; "
                                   f"revision {deployed} is ready",
                                   observed=deployed, duration_s=outcome.duration_s))
        else:
            results.append(_result(
                ctx, "deploy.operation_succeeded", Status.FAIL,
                f"the deploy operation failed: {outcome.error or 'no detail'}. The new revision "
                f"did not become ready; the service still serves {previous}. Read the revision's "
                "logs (deploy.logs_clean) for the startup error.",
                observed=outcome.error or "failed"))
    else:
        from .commands import run_command
        from .settings import CommandSpec

        spec = CommandSpec(name="deploy", run=cfg.deploy_command,
                           timeout_s=ctx.settings.timeouts.operation_s)
        run = await run_command(spec)
        ok = run.exit_code == 0 and not run.timed_out
        results.append(_result(ctx, "deploy.executed", Status.PASS if ok else Status.FAIL,
                               f"deploy command exited {run.exit_code}"
                               + (" (timed out)" if run.timed_out else ""),
                               observed=run.exit_code))
        after_cmd = await cr.get_service()
        deployed = after_cmd.latest_created_revision
        ready = after_cmd.latest_ready_revision == deployed and deployed != previous
        results.append(_result(ctx, "deploy.operation_succeeded",
                               Status.PASS if ok and ready else Status.FAIL,
                               f"latest created revision {deployed} "
                               + ("is ready" if ready else "is not ready (or no new revision)"),
                               observed=deployed))
    ctx.artifacts.update(deployed_revision=deployed)
    after = await cr.get_service()
    from .rollout import judge_latest_serving

    results.append(judge_latest_serving(after, deployed, previous, phase=ctx.phase))
    rows = [{"revision": k, "traffic_%": v} for k, v in after.serving_revisions.items()]
    return StepReport(title, results, table=_table(rows),
                      note=f"previous revision: {previous}; deployed revision: {deployed}")


def _main_revision(serving: dict[str, int]) -> str | None:
    if not serving:
        return None
    return max(serving.items(), key=lambda kv: kv[1])[0]


# ------------------------------------------------------------------ phase 6

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
    if not target or target == current:
        older = [r for r in revisions if r.ready and r.name != current]
        target = older[0].name if older else ""
        source = "newest ready revision other than the current one"
    by_name = {r.name: r for r in revisions}
    rows = [{"revision": r.name, "ready": r.ready, "traffic_%": svc.serving_revisions.get(r.name, 0),
             "image": r.image} for r in revisions]
    if not target:
        res = _result(ctx, "rollback.target_identified", Status.FAIL,
                      "no ready revision other than the current one exists: nothing to roll back "
                      "to. Redeploy a known-good image instead.", observed=None)
    elif target not in by_name or not by_name[target].ready:
        res = _result(ctx, "rollback.target_identified", Status.FAIL,
                      f"revision {target} ({source}) is not a ready revision of the service; pick "
                      "another with rollback_to=...", observed=target)
    else:
        res = _result(ctx, "rollback.target_identified", Status.PASS,
                      f"roll back from {current} to {target} ({source})", observed=target,
                      current=current)
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
        return StepReport(title, [_result(ctx, "rollback.traffic_moved", Status.FAIL,
                                          "no rollback target was identified (see the step above)")])
    from .cloudrun import TrafficTarget

    cr = _cloudrun(ctx)
    targets = [TrafficTarget(type="REVISION", revision=target, percent=100)]
    request = cr.traffic_request(targets)
    gcloud = cr.gcloud_traffic_command(targets)
    if not ctx.approved:
        return StepReport(
            title,
            [_result(ctx, "rollback.traffic_moved", Status.SKIP,
                     f"dry-run: not approved; would send {request} (equivalent: {gcloud})")],
            table=_table([{"request": str(request), "gcloud": gcloud}]),
            note="Dry run. Re-run with approve=True (CLI: --approve) to move traffic.",
        )
    ctx.claim_mutation("rollback")
    outcome = await cr.set_traffic(targets)
    svc = await cr.get_service()
    serving = svc.serving_revisions
    if outcome.succeeded and serving.get(target) == 100:
        res = _result(ctx, "rollback.traffic_moved", Status.PASS,
                      f"{target} now receives 100 % of traffic", observed=serving)
    else:
        res = _result(ctx, "rollback.traffic_moved", Status.FAIL,
                      f"traffic did not move to {target}: operation "
                      f"{'succeeded' if outcome.succeeded else 'failed: ' + outcome.error}; "
                      f"serving now {serving}. Run: {gcloud}", observed=serving)
    rows = [{"revision": k, "traffic_%": v} for k, v in serving.items()]
    return StepReport(title, [res], table=_table(rows), note=f"equivalent: {gcloud}")
