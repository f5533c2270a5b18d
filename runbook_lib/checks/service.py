"""Cloud Run service checks: ``status.*``, ``cloudrun.ws_preflight``, ``deploy.*`` (but the
logs) and ``rollback.target_identified``/``rollback.traffic_moved``.

They take the adapter's value objects (read through the views of
:mod:`runbook_lib.observations`) and return results; the steps only observe and act.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from ..observations import CommandObservation, OperationView, RevisionView, ServiceView
from ..results import CheckResult, Status
from .causes import Verdict

if TYPE_CHECKING:
    from ..settings import Thresholds

__all__ = [
    "judge_deploy",
    "judge_latest_serving",
    "judge_rollback_target",
    "judge_service_status",
    "judge_traffic_moved",
    "judge_ws_preflight",
]

# Below this a long-lived socket is cut by Cloud Run's request timeout.
_WS_TIMEOUT_FLOOR_S = 3600.0


def judge_service_status(svc: ServiceView, revisions: Sequence[RevisionView]) -> list[CheckResult]:
    """``status.revision_identified``, ``status.traffic_on_latest``, ``status.revisions_listed``.

    Traffic is judged from ``trafficStatuses`` (what serves), not only from
    ``latestReadyRevision``: a pinned split makes a new revision serve 0 %.
    """
    serving: dict[str, int] = dict(svc.serving_revisions)
    results: list[CheckResult] = []
    if serving:
        main = max(serving, key=lambda k: serving[k])
        results.append(
            Verdict("status.revision_identified").ok(
                observed=serving,
                detail="serving revision(s): " + ", ".join(f"{k} {v}%" for k, v in serving.items()),
            )
        )
    else:
        main = None
        results.append(
            Verdict("status.revision_identified").fail(
                observed=serving,
                detail="no revision receives traffic: the service cannot answer. Check the service's "
                "conditions and deploy a working revision.",
            )
        )
    latest = svc.latest_ready_revision
    latest_share = serving.get(latest, 0) if latest else 0
    if latest and latest_share == 100:
        results.append(
            Verdict("status.traffic_on_latest").ok(
                observed={latest: 100},
                threshold=100,
                detail=f"the latest ready revision {latest} serves 100 % of traffic",
            )
        )
    else:
        pinned = any(t.type == "REVISION" for t in svc.traffic)
        why = (
            (
                " Traffic is pinned to named revisions, so new deploys serve 0 % until traffic is "
                "moved: gcloud run services update-traffic SERVICE --to-latest."
            )
            if pinned
            else ""
        )
        results.append(
            Verdict("status.traffic_on_latest").fail(
                observed=serving,
                threshold=100,
                detail=f"the latest ready revision {latest or '(none)'} serves {latest_share} %; "
                f"{main or 'no revision'} serves the most.{why}",
            )
        )
    if revisions:
        results.append(
            Verdict("status.revisions_listed").ok(
                observed=len(revisions),
                detail=f"{len(revisions)} revision(s); newest {revisions[0].name}"
                + ("" if revisions[0].ready else f" is NOT ready: {revisions[0].ready_message}"),
            )
        )
    else:
        results.append(
            Verdict("status.revisions_listed").fail(
                observed=0,
                detail="the service lists no revisions: check the service name and region",
            )
        )
    return results


def judge_ws_preflight(svc: ServiceView, thresholds: Thresholds) -> CheckResult:
    """``cloudrun.ws_preflight``: service settings that make WebSockets fail (warnings)."""
    warnings: list[str] = []
    observed = {
        "timeout_s": svc.timeout_s,
        "use_http2": svc.use_http2,
        "session_affinity": svc.session_affinity,
        "min_instances": svc.min_instances,
        "max_instances": svc.max_instances,
        "concurrency": svc.concurrency,
        "ingress": svc.ingress,
    }
    hold = float(thresholds.hold_s)
    if svc.timeout_s is not None and svc.timeout_s < max(hold, 1.0):
        warnings.append(
            f"request timeout {svc.timeout_s:.0f}s is shorter than the hold time {hold:.0f}s: "
            "sockets will be cut (clients see 1006). Raise it: gcloud run services update "
            "SERVICE --timeout=3600"
        )
    elif svc.timeout_s is not None and svc.timeout_s < _WS_TIMEOUT_FLOOR_S:
        warnings.append(
            f"request timeout {svc.timeout_s:.0f}s caps every WebSocket's lifetime; clients must "
            "reconnect at least that often (max 3600s)"
        )
    if svc.use_http2:
        warnings.append(
            "HTTP/2 end-to-end is on: WebSocket upgrades need HTTP/1.1 to the container and "
            "fail with 502. Turn it off: gcloud run services update SERVICE --no-use-http2"
        )
    if not svc.session_affinity:
        warnings.append(
            "session affinity is off: reconnecting clients may land on another instance "
            "(state kept per instance is lost). Consider --session-affinity"
        )
    if not svc.min_instances:
        warnings.append(
            "min instances is 0: the first connection after idle pays a cold start "
            "(--min-instances=1 keeps one warm)"
        )
    if svc.concurrency is not None and svc.concurrency < 10:
        warnings.append(
            f"max concurrency {svc.concurrency}: each open socket holds one request slot, so "
            "instances fill up fast (429s). Raise --concurrency"
        )
    if svc.max_instances is not None and svc.concurrency is not None:
        capacity = svc.max_instances * svc.concurrency
        want = int(thresholds.load_connections)
        if capacity < want:
            warnings.append(
                f"capacity {capacity} sockets (max instances x concurrency) is below the load "
                f"test's {want} connections"
            )
    if warnings:
        return Verdict("cloudrun.ws_preflight").warn(
            observed=observed,
            threshold="WebSocket-friendly settings",
            detail="; ".join(warnings),
            data={"warnings": warnings},
        )
    return Verdict("cloudrun.ws_preflight").ok(
        observed=observed,
        threshold="WebSocket-friendly settings",
        detail="timeout, HTTP/2, affinity, scaling and concurrency suit WebSockets",
    )


def judge_latest_serving(
    svc: ServiceView, deployed: str | None, previous: str | None
) -> CheckResult:
    """``deploy.latest_serving``: the deployed revision is the latest ready one and serves 100 %."""
    serving = dict(svc.serving_revisions)
    if not deployed:
        return Verdict("deploy.latest_serving").fail(
            observed=serving,
            threshold=100,
            detail=f"no new revision was created; still serving {previous}",
        )
    share = serving.get(deployed, 0)
    if svc.latest_ready_revision == deployed and share == 100:
        return Verdict("deploy.latest_serving").ok(
            observed={deployed: 100},
            threshold=100,
            detail=f"{deployed} is the latest ready revision and serves 100 % of traffic",
        )
    if svc.latest_ready_revision != deployed:
        why = (
            f"{deployed} is not ready (latest ready is {svc.latest_ready_revision}); the "
            f"service keeps serving {serving or previous}"
        )
    else:
        why = (
            f"{deployed} is ready but serves {share} %: traffic is pinned ({serving}). Move it: "
            "gcloud run services update-traffic SERVICE --to-latest"
        )
    return Verdict("deploy.latest_serving").fail(observed=serving, threshold=100, detail=why)


def judge_deploy(
    done: OperationView | CommandObservation, after: ServiceView, previous: str | None
) -> list[CheckResult]:
    """``deploy.executed`` and ``deploy.operation_succeeded``.

    Args:
        done: the image deploy's operation, or the ``deploy_command``'s run.
        after: the service read after the deploy.
        previous: the revision that served before.
    """
    if isinstance(done, CommandObservation):
        return _command_results(done, after, previous)
    return _operation_results(done, previous)


def _operation_results(outcome: OperationView, previous: str | None) -> list[CheckResult]:
    results = [
        Verdict("deploy.executed").ok(
            f"deploy request accepted: operation {outcome.name}", observed=outcome.name
        )
    ]
    done = Verdict("deploy.operation_succeeded")
    if outcome.succeeded:
        results.append(
            done.ok(
                f"operation finished in {outcome.duration_s:.1f}s; "
                f"revision {outcome.revision} is ready",
                observed=outcome.revision,
                data={"duration_s": outcome.duration_s},
            )
        )
    else:
        results.append(
            done.fail(
                f"the deploy operation failed: {outcome.error or 'no detail'}. The new revision "
                f"did not become ready; the service still serves {previous}. Read the revision's "
                "logs (deploy.logs_clean) for the startup error.",
                observed=outcome.error or "failed",
            )
        )
    return results


def _command_results(
    run: CommandObservation, after: ServiceView, previous: str | None
) -> list[CheckResult]:
    ok = run.exit_code == 0 and not run.timed_out
    deployed = after.latest_created_revision
    ready = after.latest_ready_revision == deployed and deployed != previous
    executed = Verdict("deploy.executed").result(
        Status.PASS if ok else Status.FAIL,
        f"deploy command exited {run.exit_code}" + (" (timed out)" if run.timed_out else ""),
        observed=run.exit_code,
    )
    succeeded = Verdict("deploy.operation_succeeded").result(
        Status.PASS if ok and ready else Status.FAIL,
        f"latest created revision {deployed} "
        + ("is ready" if ready else "is not ready (or no new revision)"),
        observed=deployed,
    )
    return [executed, succeeded]


def judge_rollback_target(
    target: str, rule: str, current: str | None, revisions: Sequence[RevisionView]
) -> CheckResult:
    """``rollback.target_identified``: the chosen target is a ready revision of the service.

    Args:
        target: the chosen revision ('' when no rule found one).
        rule: which rule chose it, in words.
        current: the revision serving now.
        revisions: the service's revisions.
    """
    v = Verdict("rollback.target_identified")
    by_name = {r.name: r for r in revisions}
    if not target:
        return v.fail(
            "no ready revision other than the current one exists: nothing to roll back "
            "to. Redeploy a known-good image instead.",
        )
    if target not in by_name or not by_name[target].ready:
        return v.fail(
            f"revision {target} ({rule}) is not a ready revision of the service; pick "
            "another with rollback_to=...",
            observed=target,
        )
    return v.ok(
        f"roll back from {current} to {target} ({rule})",
        observed=target,
        data={"current": current},
    )


def judge_traffic_moved(
    target: str | None,
    outcome: OperationView | None,
    serving: Mapping[str, int],
    gcloud: str = "",
) -> CheckResult:
    """``rollback.traffic_moved``: the target serves 100 % after the traffic update.

    Args:
        target: the rollback target (None when none was identified).
        outcome: the traffic update's operation (None when none was sent).
        serving: revision -> percent read after the update.
        gcloud: the equivalent command, named when the move failed.
    """
    v = Verdict("rollback.traffic_moved")
    if not target or outcome is None:
        return v.fail("no rollback target was identified (see the step above)")
    if outcome.succeeded and serving.get(target) == 100:
        return v.ok(f"{target} now receives 100 % of traffic", observed=dict(serving))
    return v.fail(
        f"traffic did not move to {target}: operation "
        f"{'succeeded' if outcome.succeeded else 'failed: ' + outcome.error}; "
        f"serving now {dict(serving)}. Run: {gcloud}",
        observed=dict(serving),
    )
