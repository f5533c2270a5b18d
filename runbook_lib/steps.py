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
import inspect
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
    "agent_response",
    "auth_checks",
    "chat_flow",
    "deploy",
    "deploy_logs",
    "event_delivery",
    "health_and_routes",
    "hold",
    "http_endpoints",
    "isolation",
    "load_test",
    "log_errors",
    "monitor",
    "phase_summary",
    "predeploy",
    "rollback_target",
    "rollback_traffic",
    "rollback_verify",
    "routing_logs",
    "service_status",
    "source_status",
    "test_suites",
    "warmup",
    "ws_preflight",
    "ws_roundtrip",
    "ws_upgrade",
]

log = logging.getLogger(__name__)

StepFn = Callable[..., Awaitable[StepReport]]


def _step(title: str, ids: Sequence[str] | Callable[[PhaseContext], Sequence[str]]):
    """Decorate a step: time it, turn unexpected exceptions into ``error`` results, record."""

    def failed(ctx: PhaseContext, fn: Callable[..., Any], exc: Exception) -> StepReport:
        log.exception("step %s failed", fn.__name__)
        wanted = ids(ctx) if callable(ids) else ids
        reason = redact(f"{type(exc).__name__}: {exc}")
        return StepReport(
            title,
            [
                CheckResult(i, ctx.phase, Status.ERROR, detail=f"the check could not run: {reason}")
                for i in wanted
            ],
        )

    def finish(ctx: PhaseContext, report: StepReport, start: float) -> StepReport:
        elapsed = time.perf_counter() - start
        share = elapsed / max(len(report.results), 1)
        report.results = [r if r.duration_s else r.with_duration(share) for r in report.results]
        return ctx.record(report)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(ctx: PhaseContext, *args: Any, **kwargs: Any) -> StepReport:
                start = time.perf_counter()
                try:
                    report = await fn(ctx, *args, **kwargs)
                except ApprovalRequired:
                    raise
                except Exception as exc:  # the one boundary: a step never crashes a notebook
                    report = failed(ctx, fn, exc)
                return finish(ctx, report, start)

            awrapper.check_ids = ids  # type: ignore[attr-defined]
            return awrapper

        @functools.wraps(fn)
        def wrapper(ctx: PhaseContext, *args: Any, **kwargs: Any) -> StepReport:
            start = time.perf_counter()
            try:
                report = fn(ctx, *args, **kwargs)
            except ApprovalRequired:
                raise
            except Exception as exc:  # the one boundary: a step never crashes a notebook
                report = failed(ctx, fn, exc)
            return finish(ctx, report, start)

        wrapper.check_ids = ids  # type: ignore[attr-defined]
        return wrapper

    return deco


def _result(
    ctx: PhaseContext,
    check_id: str,
    status: Status | str,
    detail: str,
    observed: Any = None,
    threshold: Any = None,
    **data: Any,
) -> CheckResult:
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
        return StepReport(
            title,
            [
                _result(
                    ctx, "cloudrun.ws_preflight", Status.ERROR, f"could not read the service: {exc}"
                )
            ],
        )
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
        from .commands import run_command
        from .settings import CommandSpec

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
    from .rollout import judge_latest_serving

    results.append(judge_latest_serving(after, deployed, previous, phase=ctx.phase))
    rows = [{"revision": k, "traffic_%": v} for k, v in after.serving_revisions.items()]
    return StepReport(
        title,
        results,
        table=_table(rows),
        note=f"previous revision: {previous}; deployed revision: {deployed}",
    )


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
    from .cloudrun import TrafficTarget

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


# ------------------------------------------------------------------ shared observation helpers


def _timeouts(ctx: PhaseContext) -> Any:
    return ctx.settings.timeouts


async def _connect_auth(ctx: PhaseContext, user: str | None = None) -> tuple[Any, str]:
    """Auth to connect with as ``user`` (token obtained and registered as secret), and an error."""
    from .tokens import ConnectAuth, connect_auth, obtain_token

    auth = ctx.settings.auth
    if not auth.enabled:
        return ConnectAuth(), ""
    tok = await obtain_token(auth, user, timeout_s=_timeouts(ctx).connect_s)
    if tok.error:
        return ConnectAuth(), tok.error
    return connect_auth(auth, tok.token), ""


def _token_errors(ctx: PhaseContext, ids: Sequence[str], err: str) -> list[CheckResult]:
    detail = (
        f"could not obtain a token to connect with: {err}. Check [auth] (token_env, "
        "jwt_secret_env or token_endpoint) and the auth service."
    )
    return [_result(ctx, i, Status.ERROR, detail) for i in ids]


def _handshake_rows(probes: Sequence[Any], base: str) -> list[dict[str, Any]]:
    from .evaluate import explain_status

    rows = []
    for p in probes:
        ok = p.status == 101 and bool(p.accept_valid)
        path = p.url[len(base) :] if p.url.startswith(base) else p.url
        cause = (
            "" if ok else (explain_status(p.status) if p.status else f"{p.error}: {p.error_detail}")
        )
        rows.append(
            {
                "path": path or "/",
                "status": p.status,
                "ok": ok,
                "cause": cause,
                "latency_ms": round(p.latency_s * 1000, 1),
            }
        )
    return rows


def _ws_urls(ctx: PhaseContext) -> list[str]:
    t = ctx.settings.target
    return [t.ws(p) for p in t.ws_paths]


_TARGET_MISSING = "skip: [target] base_url is not configured"


def _no_target(ctx: PhaseContext) -> bool:
    return not ctx.settings.target.base_url


# ------------------------------------------------------------------ phase 1 (continued)

_SOURCE_IDS = ("source.git_clean", "source.git_branch", "source.ws_routes_present")


@_step("Local source", _SOURCE_IDS)
def source_status(ctx: PhaseContext) -> StepReport:
    """Compare the local checkout with what should be deployed: branch, cleanliness, WS routes."""
    from .source import (
        judge_git_branch,
        judge_git_clean,
        judge_ws_routes_present,
        list_app_routes,
        observe_git,
    )

    title = "Local source"
    src = ctx.settings.source
    if not ctx.settings.has("source") or not src.repo_dir:
        return StepReport(
            title, _skip_all(ctx, _SOURCE_IDS, "skip: [source] repo_dir is not configured")
        )
    git = observe_git(src.repo_dir, timeout_s=_timeouts(ctx).read_s)
    results = [judge_git_clean(git, phase=ctx.phase)]
    if src.expected_branch:
        results.append(judge_git_branch(git, src.expected_branch, phase=ctx.phase))
    else:
        results.append(
            _result(
                ctx,
                "source.git_branch",
                Status.SKIP,
                "skip: [source] expected_branch is not configured",
                observed=git.branch,
            )
        )
    rows: list[dict[str, Any]] = []
    if src.app:
        routes = list_app_routes(src.app, cwd=src.repo_dir, timeout_s=_timeouts(ctx).command_s)
        results.append(judge_ws_routes_present(routes, src.expected_ws_routes, phase=ctx.phase))
        rows = [
            {"kind": r.kind, "path": r.path, "methods": ",".join(r.methods)} for r in routes.routes
        ]
    else:
        results.append(
            _result(
                ctx, "source.ws_routes_present", Status.SKIP, "skip: [source] app is not configured"
            )
        )
    return StepReport(
        title,
        results,
        table=_table(rows) if rows else None,
        note=f"{src.repo_dir}: branch {git.branch or '?'} at {git.head or '?'}",
    )


_PROBE_IDS = ("status.url_reachable", "health.backend", "ws.routes_probe")


@_step("Health and WebSocket route probe", _PROBE_IDS)
async def health_and_routes(ctx: PhaseContext) -> StepReport:
    """GET /health, then try the WebSocket handshake on every configured WS path."""
    from .evaluate import judge_health_backend, judge_url_reachable, judge_ws_routes_probe
    from .http_checks import observe_get
    from .plots import plot_handshakes
    from .ws_checks import observe_handshakes

    title = "Health and WebSocket route probe"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _PROBE_IDS, _TARGET_MISSING))
    t = ctx.settings.target
    health = await observe_get(t.http(t.health_path), timeout_s=_timeouts(ctx).read_s)
    auth, _ = await _connect_auth(ctx)
    probes = await observe_handshakes(_ws_urls(ctx), timeout_s=_timeouts(ctx).connect_s, auth=auth)
    results = [
        judge_url_reachable(health, phase=ctx.phase),
        judge_health_backend(health, phase=ctx.phase),
        judge_ws_routes_probe(health, probes, phase=ctx.phase),
    ]
    rows = _handshake_rows(probes, t.ws_url)
    ctx.artifacts["handshakes_before"] = rows
    return StepReport(title, results, table=_table(rows), figure=plot_handshakes(rows))


# ------------------------------------------------------------------ phase 2 (continued)


def _predeploy_ids(ctx: PhaseContext) -> list[str]:
    return [f"predeploy.{c.name}" for c in ctx.settings.predeploy] or ["predeploy"]


@_step("Pre-deployment commands", _predeploy_ids)
async def predeploy(ctx: PhaseContext) -> StepReport:
    """Run the configured pre-deployment validation commands (tests, compliance scripts)."""
    from .commands import judge_predeploy, run_command

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
    import asyncio

    from .evaluate import judge_no_5xx_during_warmup, judge_ready_within
    from .http_checks import poll_until_ready
    from .plots import plot_warmup

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


# ------------------------------------------------------------------ log helpers


def _since(ctx: PhaseContext, iso: str | None) -> datetime:
    from datetime import timedelta

    if iso:
        try:
            return datetime.fromisoformat(iso)
        except ValueError:
            pass
    return datetime.now(UTC) - timedelta(seconds=ctx.settings.logging.lookback_s)


async def _log_step(
    ctx: PhaseContext,
    title: str,
    check_id: str,
    *,
    since: datetime,
    revision: str | None,
    min_severity: str | None,
    contains: Sequence[str],
    what: str,
    status_404_paths: Sequence[str] = (),
) -> StepReport:
    from .evaluate import judge_log_entries
    from .logs import gcloud_logging_command, logging_filter, read_logs

    flt = logging_filter(
        ctx.settings, since=since, revision=revision, min_severity=min_severity, contains=contains
    )
    gcloud = gcloud_logging_command(ctx.settings, flt)
    try:
        entries = await read_logs(
            ctx.settings,
            since=since,
            revision=revision,
            min_severity=min_severity,
            contains=contains,
        )
    except CloudRunError as exc:
        return StepReport(
            title,
            [_result(ctx, check_id, Status.ERROR, f"could not read logs: {exc}", observed=None)],
            note=f"equivalent: {gcloud}",
        )
    result = judge_log_entries(
        entries, check_id=check_id, what=what, phase=ctx.phase, ws_paths=status_404_paths
    )
    rows = [
        {
            "timestamp": e.timestamp.isoformat(timespec="seconds"),
            "severity": e.severity,
            "revision": e.revision,
            "status": e.status,
            "text": e.text[:160],
        }
        for e in entries[:30]
    ]
    return StepReport(
        title, [result], table=_table(rows) if rows else None, note=f"equivalent: {gcloud}"
    )


# ------------------------------------------------------------------ phase 3


@_step("WebSocket upgrade on every path", ("ws.upgrade",))
async def ws_upgrade(ctx: PhaseContext) -> StepReport:
    """Every WS path must answer 101 with a valid Sec-WebSocket-Accept."""
    from .evaluate import judge_ws_upgrade
    from .plots import plot_handshakes
    from .ws_checks import observe_handshakes

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
    from .evaluate import judge_http_latency, judge_ws_health, judge_ws_test_endpoint
    from .http_checks import observe_get, sample_latency

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
    from .evaluate import judge_ws_roundtrip
    from .ws_checks import observe_roundtrip

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


# ------------------------------------------------------------------ phase 4


def _tests_ids(ctx: PhaseContext) -> list[str]:
    return [f"tests.{c.name}" for c in ctx.settings.mission_critical] + ["tests.duration"]


@_step("Mission-critical test suites", _tests_ids)
async def test_suites(ctx: PhaseContext) -> StepReport:
    """Run the configured mission-critical suites (JUnit parsed when written)."""
    from .commands import judge_tests, run_command
    from .evaluate import judge_tests_duration

    title = "Mission-critical test suites"
    if not ctx.settings.mission_critical:
        return StepReport(
            title,
            _skip_all(
                ctx, ("tests.duration",), "skip: no [[commands.mission_critical]] configured"
            ),
        )
    results, rows, durations = [], [], {}
    for spec in ctx.settings.mission_critical:
        obs = await run_command(spec, cwd=spec.cwd or ctx.settings.source.repo_dir or None)
        results.append(judge_tests(obs, phase=ctx.phase))
        durations[spec.name] = obs.duration_s
        j = obs.junit
        rows.append(
            {
                "suite": spec.name,
                "exit_code": obs.exit_code,
                "duration_s": round(obs.duration_s, 2),
                "tests": j.tests if j else None,
                "failures": j.failures if j else None,
                "errors": j.errors if j else None,
                "timed_out": obs.timed_out,
            }
        )
    results.append(
        judge_tests_duration(
            durations, limit_s=ctx.settings.thresholds.tests_max_s, phase=ctx.phase
        )
    )
    return StepReport(title, results, table=_table(rows))


def _frame_rows(run: Any) -> list[dict[str, Any]]:
    return [
        {
            "t_ms": round(f.t * 1000, 1),
            "kind": str(f.kind),
            "type": f.event_type,
            "user_id": f.user_id,
            "run_id": f.run_id,
            "own": run.is_own(f),
        }
        for f in run.frames
    ]


@_step("End-to-end agent response", ("e2e.agent_response",))
async def agent_response(ctx: PhaseContext) -> StepReport:
    """The golden path: send an agent request and wait for the agent's final event."""
    from .evaluate import judge_agent_response

    title = "End-to-end agent response"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, ("e2e.agent_response",), _TARGET_MISSING))
    run = await _agent_run(ctx, ctx.settings.auth.default_user, "agent_request", "test golden path")
    th = ctx.settings.thresholds
    return StepReport(
        title,
        [judge_agent_response(run, timeout_s=th.event_timeout_s, phase=ctx.phase)],
        table=_table(_frame_rows(run)),
    )


async def _agent_run(ctx: PhaseContext, user: str, template: str, text: str) -> Any:
    from .ws_checks import observe_agent_run

    auth, err = await _connect_auth(ctx, user)
    run = await observe_agent_run(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        auth=auth,
        user_id=user,
        text=text,
        template=template,
        event_timeout_s=ctx.settings.thresholds.event_timeout_s,
        open_timeout_s=_timeouts(ctx).connect_s,
    )
    if err and not run.error:
        from dataclasses import replace

        run = replace(run, error=f"token: {err}")
    return run


_LOAD_IDS = ("load.success_rate", "load.latency_p95", "load.no_server_errors")


@_step("Concurrent load", _LOAD_IDS)
async def load_test(ctx: PhaseContext) -> StepReport:
    """Open N concurrent sessions (connect, ping round trips, close) and judge success and p95."""
    from .evaluate import judge_load
    from .load import LoadPlan, run_load
    from .plots import plot_load_latency
    from .protocol import render_message

    title = "Concurrent load"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _LOAD_IDS, _TARGET_MISSING))
    th, p = ctx.settings.thresholds, ctx.settings.protocol
    auth, err = await _connect_auth(ctx)
    if err:
        return StepReport(
            title,
            [_result(ctx, i, Status.ERROR, f"could not obtain a token: {err}") for i in _LOAD_IDS],
        )
    url = _with_query(ctx.settings.target.ws(), auth.query)
    plan = LoadPlan(
        url=url,
        sessions=th.load_connections,
        messages=th.load_messages,
        ramp_s=th.load_ramp_s,
        message=render_message(p, "ping"),
        reply_types=p.pong_types,
        type_paths=p.event_type,
        ignore_types=tuple(t for t in p.ignore if t not in p.pong_types),
        headers=auth.headers,
        subprotocols=auth.subprotocols,
        connect_timeout_s=_timeouts(ctx).connect_s,
        message_timeout_s=_timeouts(ctx).read_s,
        deadline_s=max(60.0, _timeouts(ctx).operation_s),
    )
    report = await run_load(plan)
    results = judge_load(
        report, success_rate=th.load_success_rate, p95_s=th.load_p95_s, phase=ctx.phase
    )
    ctx.artifacts["load"] = report.to_record()
    fig = plot_load_latency(
        report.rtt_s, report.p50_s, report.p95_s, report.p99_s, threshold_s=th.load_p95_s
    )
    rec = report.to_record()
    rows = [{"metric": k, "value": v} for k, v in rec.items() if not isinstance(v, (list, dict))]
    return StepReport(title, results, table=_table(rows), figure=fig)


def _with_query(url: str, query: Sequence[tuple[str, str]]) -> str:
    if not query:
        return url
    from urllib.parse import urlencode

    return url + ("&" if "?" in url else "?") + urlencode(list(query))


# ------------------------------------------------------------------ phase 5

_AUTH_IDS = ("auth.config", "auth.health", "auth.ws_authenticated", "auth.rejects_invalid")


@_step("Authentication", _AUTH_IDS)
async def auth_checks(ctx: PhaseContext) -> StepReport:
    """Auth service config and health; an authenticated socket works; invalid tokens are refused."""
    from .evaluate import (
        judge_auth_config,
        judge_auth_health,
        judge_auth_rejects_invalid,
        judge_auth_ws_authenticated,
    )
    from .http_checks import observe_get
    from .ws_checks import observe_auth

    title = "Authentication"
    t, to = ctx.settings.target, _timeouts(ctx)
    results: list[CheckResult] = []
    if t.auth_url:
        results.append(
            judge_auth_config(
                await observe_get(t.auth(t.auth_config_path), timeout_s=to.read_s), phase=ctx.phase
            )
        )
        results.append(
            judge_auth_health(
                await observe_get(t.auth(t.auth_health_path), timeout_s=to.read_s), phase=ctx.phase
            )
        )
    else:
        results += _skip_all(
            ctx, ("auth.config", "auth.health"), "skip: [target] auth_url is not configured"
        )
    if not ctx.settings.auth.enabled or _no_target(ctx):
        # Name the real reason: with [auth] configured, the missing piece is the target.
        why = _TARGET_MISSING if ctx.settings.auth.enabled else "skip: [auth] mode is none"
        results += _skip_all(ctx, ("auth.ws_authenticated", "auth.rejects_invalid"), why)
        return StepReport(title, results)
    obs = await observe_auth(
        t.ws(),
        ctx.settings.protocol,
        ctx.settings.auth,
        open_timeout_s=to.connect_s,
        probe_timeout_s=to.read_s,
    )
    results.append(judge_auth_ws_authenticated(obs, phase=ctx.phase))
    results.append(judge_auth_rejects_invalid(obs, phase=ctx.phase))
    attempts = ([obs.authenticated] if obs.authenticated else []) + list(obs.negatives)
    rows = [
        {
            "case": a.case,
            "produced": a.produced,
            "accepted": a.accepted,
            "how": a.how,
            "reason": a.reason,
        }
        for a in attempts
    ]
    return StepReport(title, results, table=_table(rows))


@_step("Chat message flow", ("chat.flow",))
async def chat_flow(ctx: PhaseContext) -> StepReport:
    """Send a chat message as an authenticated user and expect the agent's answer."""
    from .evaluate import judge_chat_flow

    title = "Chat message flow"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, ("chat.flow",), _TARGET_MISSING))
    run = await _agent_run(
        ctx, ctx.settings.auth.default_user, "chat_message", "Hello, test the Golden Path"
    )
    return StepReport(
        title, [judge_chat_flow(run, phase=ctx.phase)], table=_table(_frame_rows(run))
    )


def _timeline(runs: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    return {
        r.user_id: [
            {"t_s": f.t, "type": f.event_type or str(f.kind), "foreign": not r.is_own(f)}
            for f in r.frames
            if f.event_type or not r.is_own(f)
        ]
        for r in runs
    }


_ISO_IDS = ("isolation.sessions", "isolation.no_cross_user")


@_step("Multi-user isolation", _ISO_IDS)
async def isolation(ctx: PhaseContext) -> StepReport:
    """K users at once, each with its own token: all succeed, none sees another's events."""
    from .evaluate import judge_isolation_no_cross_user, judge_isolation_sessions
    from .plots import plot_event_timeline
    from .ws_checks import observe_isolation

    title = "Multi-user isolation"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _ISO_IDS, _TARGET_MISSING))
    th = ctx.settings.thresholds
    iso = await observe_isolation(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        ctx.settings.auth,
        users=th.isolation_users,
        event_timeout_s=th.event_timeout_s,
        open_timeout_s=_timeouts(ctx).connect_s,
    )
    results = [
        judge_isolation_sessions(
            iso,
            success_rate=th.isolation_success_rate,
            response_s=th.isolation_response_s,
            phase=ctx.phase,
        ),
        judge_isolation_no_cross_user(iso, phase=ctx.phase),
    ]
    rows = [
        {
            "user": r.user_id,
            "ended": r.ended,
            "events": len(r.events),
            "foreign_frames": sum(1 for f in r.frames if not r.is_own(f)),
            "first_event_ms": round((r.first_event_s or 0) * 1000, 1),
            "duration_ms": round(r.duration_s * 1000, 1),
        }
        for r in iso.runs
    ]
    fig = plot_event_timeline(_timeline(iso.runs), ctx.settings.protocol.critical_events)
    return StepReport(title, results, table=_table(rows), figure=fig)


_EVENT_IDS = ("events.critical_delivered", "events.order", "events.structure", "events.latency")


@_step("Critical event delivery", _EVENT_IDS)
async def event_delivery(ctx: PhaseContext) -> StepReport:
    """One agent run: all five critical events, in order, with their fields, in time."""
    from .evaluate import (
        judge_critical_delivered,
        judge_events_latency,
        judge_events_order,
        judge_events_structure,
    )
    from .plots import plot_event_timeline

    title = "Critical event delivery"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _EVENT_IDS, _TARGET_MISSING))
    p, th = ctx.settings.protocol, ctx.settings.thresholds
    run = await _agent_run(ctx, ctx.settings.auth.default_user, "agent_request", "Test all events")
    results = [
        judge_critical_delivered(
            run, critical=p.critical_events, minimum=th.critical_events_min, phase=ctx.phase
        ),
        judge_events_order(run, critical=p.critical_events, phase=ctx.phase),
        judge_events_structure(run, required_fields=p.required_fields, phase=ctx.phase),
        judge_events_latency(run, timeout_s=th.event_timeout_s, phase=ctx.phase),
    ]
    fig = plot_event_timeline(_timeline([run]), p.critical_events)
    return StepReport(title, results, table=_table(_frame_rows(run)), figure=fig)


# ------------------------------------------------------------------ phase 6 (continued)

_ROLLBACK_VERIFY_IDS = ("rollback.health", "rollback.smoke")


@_step("Rollback verification", _ROLLBACK_VERIFY_IDS)
async def rollback_verify(ctx: PhaseContext) -> StepReport:
    """After the rollback: /health is 200 and a WebSocket round trip works."""
    from .evaluate import judge_health_backend, judge_ws_roundtrip
    from .http_checks import observe_get
    from .ws_checks import observe_roundtrip

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


# ------------------------------------------------------------------ phase 7

_MONITOR_IDS = (
    "monitor.uptime",
    "monitor.ws_failure_rate",
    "monitor.avg_response",
    "monitor.ws_404",
)


@_step("Monitoring window", _MONITOR_IDS)
async def monitor(ctx: PhaseContext) -> StepReport:
    """Sample /health and a WebSocket handshake every interval for the monitoring window."""
    from .evaluate import (
        judge_monitor_avg_response,
        judge_monitor_uptime,
        judge_monitor_ws_404,
        judge_monitor_ws_failure_rate,
    )
    from .plots import plot_monitor
    from .ws_checks import observe_monitor

    title = "Monitoring window"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _MONITOR_IDS, _TARGET_MISSING))
    t, th = ctx.settings.target, ctx.settings.thresholds
    auth, err = await _connect_auth(ctx)
    if err:
        return StepReport(title, _token_errors(ctx, _MONITOR_IDS, err))
    mon = await observe_monitor(
        t.http(t.health_path),
        t.ws(),
        window_s=th.monitor_window_s,
        interval_s=th.monitor_interval_s,
        auth=auth,
        protocol=ctx.settings.protocol,
        ping=True,
        timeout_s=_timeouts(ctx).connect_s,
    )
    results = [
        judge_monitor_uptime(mon, min_uptime=th.monitor_uptime, phase=ctx.phase),
        judge_monitor_ws_failure_rate(mon, max_rate=th.monitor_ws_failure_rate, phase=ctx.phase),
        judge_monitor_avg_response(mon, limit_s=th.monitor_avg_response_s, phase=ctx.phase),
        judge_monitor_ws_404(mon, phase=ctx.phase),
    ]
    samples = [
        {
            "t_s": k.t,
            "http_status": k.health_status,
            "http_latency_s": k.health_latency_s,
            "ws_ok": k.ws_upgraded and k.ping_ok is not False,
            "ws_status": k.ws_status,
            "ws_latency_s": k.ws_latency_s,
        }
        for k in mon.ticks
    ]
    ctx.artifacts["monitor_ticks"] = len(samples)
    return StepReport(title, results, figure=plot_monitor(samples))


@_step("Long-lived socket", ("monitor.hold",))
async def hold(ctx: PhaseContext) -> StepReport:
    """Hold one socket open for hold_s: it must end cleanly (no 1006, no server close)."""
    from .evaluate import judge_monitor_hold
    from .ws_checks import observe_hold

    title = "Long-lived socket"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, ("monitor.hold",), _TARGET_MISSING))
    th = ctx.settings.thresholds
    auth, err = await _connect_auth(ctx)
    if err:
        return StepReport(title, _token_errors(ctx, ("monitor.hold",), err))
    obs = await observe_hold(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        hold_s=th.hold_s,
        auth=auth,
        ping_every_s=max(th.hold_s / 4, 1.0),
        open_timeout_s=_timeouts(ctx).connect_s,
    )
    row = {
        "outcome": obs.outcome,
        "ended_at_s": round(obs.ended_at_s, 2),
        "close_code": obs.close_code,
        "pings": obs.pings_sent,
        "pongs": obs.pongs,
    }
    return StepReport(title, [judge_monitor_hold(obs, phase=ctx.phase)], table=_table([row]))


@_step("Errors in the logs", ("monitor.log_errors",))
async def log_errors(ctx: PhaseContext) -> StepReport:
    """Search the service's logs over the lookback window for errors and WebSocket 404s."""
    from datetime import timedelta

    title = "Errors in the logs"
    if not ctx.settings.logging.enabled or not ctx.settings.cloudrun.configured:
        return StepReport(
            title,
            _skip_all(
                ctx,
                ("monitor.log_errors",),
                "skip: [logging] enabled is false or [cloudrun] is not configured",
            ),
        )
    window = max(ctx.settings.thresholds.monitor_window_s * 2, 120.0)
    since = datetime.now(UTC) - timedelta(seconds=window)
    revision = _previous_phase_artifact(ctx, 2, "deployed_revision")
    return await _log_step(
        ctx,
        title,
        "monitor.log_errors",
        since=since,
        revision=revision,
        min_severity="ERROR",
        contains=(),
        what=f"ERROR entries in the last {window:.0f}s",
    )


# ------------------------------------------------------------------ every phase


def phase_summary(ctx: PhaseContext) -> StepReport:
    """The phase's results so far, failed checks first (persisted as well)."""
    from .results import _SEVERITY

    ordered = sorted(ctx.results, key=lambda r: (-_SEVERITY[r.status], r.id))
    ctx.persist()
    failed = [r for r in ordered if not r.ok]
    note = (
        (f"{len(failed)} check(s) failed: " + ", ".join(r.id for r in failed))
        if failed
        else f"all {len(ordered)} check(s) passed, warned or were skipped"
    )
    return StepReport(f"Phase {ctx.phase} summary", ordered, note=note)
