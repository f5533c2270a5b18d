"""Pure judges of a Cloud Run rollout: which revision serves, how traffic is split,
and which service settings break WebSockets.

They take the adapter's value objects (``ServiceInfo``, ``RevisionInfo``) and
return :class:`CheckResult` s; no I/O, table-tested in ``tests/test_rollout.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .results import CheckResult, Status

__all__ = ["judge_latest_serving", "judge_service_status", "judge_ws_preflight"]

# Below this a long-lived socket is cut by Cloud Run's request timeout.
_WS_TIMEOUT_FLOOR_S = 3600.0


def judge_service_status(
    svc: Any, revisions: Sequence[Any], *, phase: int = 1
) -> list[CheckResult]:
    """``status.revision_identified``, ``status.traffic_on_latest``, ``status.revisions_listed``.

    Traffic is judged from ``trafficStatuses`` (what serves), not only from
    ``latestReadyRevision``: a pinned split makes a new revision serve 0 %.
    """
    serving: dict[str, int] = dict(svc.serving_revisions)
    results: list[CheckResult] = []
    if serving:
        main = max(serving, key=lambda k: serving[k])
        results.append(
            CheckResult(
                "status.revision_identified",
                phase,
                Status.PASS,
                observed=serving,
                detail="serving revision(s): " + ", ".join(f"{k} {v}%" for k, v in serving.items()),
            )
        )
    else:
        main = None
        results.append(
            CheckResult(
                "status.revision_identified",
                phase,
                Status.FAIL,
                observed=serving,
                detail="no revision receives traffic: the service cannot answer. Check the service's "
                "conditions and deploy a working revision.",
            )
        )
    latest = svc.latest_ready_revision
    latest_share = serving.get(latest, 0) if latest else 0
    if latest and latest_share == 100:
        results.append(
            CheckResult(
                "status.traffic_on_latest",
                phase,
                Status.PASS,
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
            CheckResult(
                "status.traffic_on_latest",
                phase,
                Status.FAIL,
                observed=serving,
                threshold=100,
                detail=f"the latest ready revision {latest or '(none)'} serves {latest_share} %; "
                f"{main or 'no revision'} serves the most.{why}",
            )
        )
    if revisions:
        results.append(
            CheckResult(
                "status.revisions_listed",
                phase,
                Status.PASS,
                observed=len(revisions),
                detail=f"{len(revisions)} revision(s); newest {revisions[0].name}"
                + ("" if revisions[0].ready else f" is NOT ready: {revisions[0].ready_message}"),
            )
        )
    else:
        results.append(
            CheckResult(
                "status.revisions_listed",
                phase,
                Status.FAIL,
                observed=0,
                detail="the service lists no revisions: check the service name and region",
            )
        )
    return results


def judge_ws_preflight(svc: Any, thresholds: Any, *, phase: int = 1) -> CheckResult:
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
    hold = float(getattr(thresholds, "hold_s", 30.0))
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
        want = int(getattr(thresholds, "load_connections", 0))
        if capacity < want:
            warnings.append(
                f"capacity {capacity} sockets (max instances x concurrency) is below the load "
                f"test's {want} connections"
            )
    if warnings:
        return CheckResult(
            "cloudrun.ws_preflight",
            phase,
            Status.WARN,
            observed=observed,
            threshold="WebSocket-friendly settings",
            detail="; ".join(warnings),
            data={"warnings": warnings},
        )
    return CheckResult(
        "cloudrun.ws_preflight",
        phase,
        Status.PASS,
        observed=observed,
        threshold="WebSocket-friendly settings",
        detail="timeout, HTTP/2, affinity, scaling and concurrency suit WebSockets",
    )


def judge_latest_serving(
    svc: Any, deployed: str | None, previous: str | None, *, phase: int = 2
) -> CheckResult:
    """``deploy.latest_serving``: the deployed revision is the latest ready one and serves 100 %."""
    serving = dict(svc.serving_revisions)
    if not deployed:
        return CheckResult(
            "deploy.latest_serving",
            phase,
            Status.FAIL,
            observed=serving,
            threshold=100,
            detail=f"no new revision was created; still serving {previous}",
        )
    share = serving.get(deployed, 0)
    if svc.latest_ready_revision == deployed and share == 100:
        return CheckResult(
            "deploy.latest_serving",
            phase,
            Status.PASS,
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
    return CheckResult(
        "deploy.latest_serving", phase, Status.FAIL, observed=serving, threshold=100, detail=why
    )
