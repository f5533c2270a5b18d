"""Phase 1 steps: deployment status (service, source, health and route probe, preflight)."""

from __future__ import annotations

from typing import Any

from ..context import PhaseContext, StepReport
from ..exceptions import CloudRunError
from ..results import Status
from ._common import (
    _CR_MISSING,
    _TARGET_MISSING,
    _cloudrun,
    _connect_auth,
    _handshake_rows,
    _no_target,
    _result,
    _skip_all,
    _step,
    _table,
    _timeouts,
    _ws_urls,
)

__all__ = ["health_and_routes", "service_status", "source_status", "ws_preflight"]


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
    from ..rollout import judge_service_status

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
    from ..rollout import judge_ws_preflight

    result = judge_ws_preflight(svc, ctx.settings.thresholds, phase=ctx.phase)
    rows = [{"setting": k, "value": v} for k, v in (result.observed or {}).items()]
    return StepReport(title, [result], table=_table(rows))


_SOURCE_IDS = ("source.git_clean", "source.git_branch", "source.ws_routes_present")


@_step("Local source", _SOURCE_IDS)
def source_status(ctx: PhaseContext) -> StepReport:
    """Compare the local checkout with what should be deployed: branch, cleanliness, WS routes."""
    from ..source import (
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
    from ..evaluate import judge_health_backend, judge_url_reachable, judge_ws_routes_probe
    from ..http_checks import observe_get
    from ..plots import plot_handshakes
    from ..ws_checks import observe_handshakes

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
