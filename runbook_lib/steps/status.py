"""Phase 1 steps: deployment status (service, source, health and route probe, preflight)."""

from __future__ import annotations

from typing import Any

from ..checks import (
    Verdict,
    judge_git_branch,
    judge_git_clean,
    judge_health_backend,
    judge_service_status,
    judge_url_reachable,
    judge_ws_preflight,
    judge_ws_routes_present,
    judge_ws_routes_probe,
    skip_reason,
    step_ids,
)
from ..checks.causes import WsEvidence
from ..context import PhaseContext, StepReport
from ..exceptions import CloudRunError
from ..observations import HttpObservation
from .common import (
    applies,
    cloudrun,
    connect_auth,
    handshake_rows,
    previous_phase_artifact,
    report,
    step,
    table,
    ws_urls,
)

__all__ = ["health_and_routes", "service_status", "source_status", "ws_evidence", "ws_preflight"]


def ws_evidence(ctx: PhaseContext, health: HttpObservation | None = None) -> WsEvidence:
    """What phase 1 knows besides the handshakes: the source's routes (this phase's
    ``source_status`` or phase 1 of the run), the walker's library check, the health
    answer's ``Server`` header and whether a configured deploy would change the code."""

    def seen(key: str) -> Any:
        value = ctx.artifacts.get(key)
        return value if value is not None else previous_phase_artifact(ctx, 1, key)

    routes = seen("source_ws_routes")
    cr = ctx.settings.cloudrun
    serving = seen("serving_images") or []
    changes = bool(cr.deploy_command) or bool(cr.deploy_image and cr.deploy_image not in serving)
    return WsEvidence(
        source_routes=None if routes is None else tuple(routes),
        ws_library_missing=bool(seen("ws_library_missing")),
        health_server=(health.headers.get("server", "") if health is not None else ""),
        deploy_changes_code=changes,
        credentials=ctx.settings.auth.enabled,
    )


@step
async def service_status(ctx: PhaseContext) -> StepReport:
    """Describe the service and its revisions; judge which revision serves and how traffic is split."""
    cr = cloudrun(ctx)
    try:
        svc = await cr.get_service()
        # All of them: the order is by createTime only once every page is read.
        revisions = await cr.list_revisions()
    except CloudRunError as exc:
        detail = f"could not read the service: {exc}. Check [cloudrun] project/region/service and credentials."
        return report([Verdict(i).error(detail) for i in step_ids("service_status")])
    results = judge_service_status(svc, revisions)
    serving = svc.serving_revisions
    ctx.artifacts.update(
        serving_revisions=serving,
        latest_ready_revision=svc.latest_ready_revision,
        service_uri=svc.uri,
        serving_images=sorted({r.image for r in revisions if r.name in serving and r.image}),
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
        for i, r in enumerate(revisions)
        if i < 10 or r.name in serving  # the newest ten, and every serving one
    ]
    return report(results, table=table(rows), note=f"Service URL: {svc.uri}")


@step
async def ws_preflight(ctx: PhaseContext) -> StepReport:
    """Read the service settings that break WebSockets on Cloud Run and warn about each."""
    try:
        svc = await cloudrun(ctx).get_service()
    except CloudRunError as exc:
        return report(
            [Verdict("cloudrun.ws_preflight").error(f"could not read the service: {exc}")]
        )
    result = judge_ws_preflight(svc, ctx.settings.thresholds)
    # What a drop at the request timeout is told apart by (monitor.hold).
    ctx.artifacts["request_timeout_s"] = svc.timeout_s
    rows = [{"setting": k, "value": v} for k, v in (result.observed or {}).items()]
    return report([result], table=table(rows))


@step
def source_status(ctx: PhaseContext) -> StepReport:
    """Compare the local checkout with what should be deployed: branch, cleanliness, WS routes."""
    from ..source import list_source_routes, observe_git

    src = ctx.settings.source
    git = observe_git(src.repo_dir, timeout_s=ctx.settings.timeouts.read_s)
    results = [judge_git_clean(git)]
    branch_skip = skip_reason("source.git_branch", ctx.settings)
    if branch_skip is None:
        results.append(judge_git_branch(git, src.expected_branch))
    else:
        results.append(Verdict("source.git_branch").skip(branch_skip, observed=git.branch))
    rows: list[dict[str, Any]] = []
    # Listed whenever an app is configured: declaring the route check not applicable
    # must not also hide a missing WebSocket library from the handshake diagnosis.
    if src.app:
        routes = list_source_routes(src, timeout_s=ctx.settings.timeouts.command_s)
        if applies(ctx, "source.ws_routes_present"):
            results.append(judge_ws_routes_present(routes, src.expected_ws_routes))
        if not routes.error:
            ctx.artifacts["source_ws_routes"] = list(routes.ws_paths)
        ctx.artifacts["ws_library_missing"] = routes.ws_library_missing
        rows = [
            {"kind": r.kind, "path": r.path, "methods": ",".join(r.methods)} for r in routes.routes
        ]
    return report(
        results,
        table=table(rows) if rows else None,
        note=f"{src.repo_dir}: branch {git.branch or '?'} at {git.head or '?'}",
    )


@step
async def health_and_routes(ctx: PhaseContext) -> StepReport:
    """GET /health, then try the WebSocket handshake on every configured WS path."""
    from ..handshake import observe_handshakes, with_subprotocols
    from ..http_checks import observe_get
    from ..plots import plot_handshakes

    t, to = ctx.settings.target, ctx.settings.timeouts
    health = (
        await observe_get(t.http(t.health_path), timeout_s=to.read_s)
        if applies(ctx, "health.backend")
        else None
    )
    auth, _ = await connect_auth(ctx)
    auth = with_subprotocols(auth, ctx.settings.protocol.subprotocols)
    probes = await observe_handshakes(ws_urls(ctx), timeout_s=to.connect_s, auth=auth)
    results = [judge_ws_routes_probe(health, probes, evidence=ws_evidence(ctx, health))]
    if health is not None:
        results[:0] = [judge_url_reachable(health), judge_health_backend(health)]
    rows = handshake_rows(probes, t.ws_url)
    ctx.artifacts["handshakes_before"] = rows
    return report(
        results,
        table=table(rows),
        figure=plot_handshakes(rows),
        caption="WebSocket handshake per path, before remediation",
    )
