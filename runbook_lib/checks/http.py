"""HTTP checks: ``health.*``, ``status.url_reachable``, ``http.latency``, ``ws.health``,
``ws.test_endpoint``, ``ws.health_ready_within``, ``rollback.health``, ``auth.config``, ``auth.health``."""

from __future__ import annotations

import statistics
from collections.abc import Sequence

from ..observations import (
    HandshakeObservation,
    HttpObservation,
    ReadinessTimeline,
)
from ..protocol import get_path, has_path
from ..results import CheckResult, Status
from .causes import (
    Verdict,
    explain_http_status,
    http_failure,
    upgrade_words,
)

__all__ = [
    "judge_auth_config",
    "judge_auth_health",
    "judge_health_backend",
    "judge_http_latency",
    "judge_no_5xx_during_warmup",
    "judge_ready_within",
    "judge_url_reachable",
    "judge_ws_health",
    "judge_ws_test_endpoint",
]


def judge_health_backend(obs: HttpObservation, *, check_id: str = "health.backend") -> CheckResult:
    """``health.backend`` (and ``rollback.health``): the health endpoint answers 200."""
    v = Verdict(check_id, threshold=200)
    if obs.status == 200:
        return v.ok(
            f"{obs.url} answered 200 in {obs.latency_s:.3f}s",
            observed=200,
            data={"body": obs.json},
        )
    status = Status.ERROR if obs.status is None and obs.error == "timeout" else Status.FAIL
    return v.result(status, http_failure(obs), observed=obs.status or obs.error)


def judge_url_reachable(
    obs: HttpObservation, *, check_id: str = "status.url_reachable"
) -> CheckResult:
    """``status.url_reachable``: the service URL answers HTTP (any status below 500)."""
    v = Verdict(check_id, threshold="HTTP < 500")
    if obs.status is not None and obs.status < 500:
        return v.ok(
            f"{obs.url} answered HTTP {obs.status}",
            observed=obs.status,
        )
    return v.fail(
        http_failure(obs) + ". Check the service URL, ingress "
        "settings and that a revision is serving.",
        observed=obs.status or obs.error,
    )


def judge_ready_within(
    timeline: ReadinessTimeline,
    *,
    check_id: str = "health.ready_within",
    limit_s: float,
) -> CheckResult:
    """``health.ready_within`` / ``ws.health_ready_within``: 200 within ``limit_s``."""
    v = Verdict(check_id, threshold=limit_s)
    points = [p.to_record() for p in timeline.points]
    if not timeline.points:
        return v.error("no poll was made")
    if timeline.ready_at is not None and timeline.ready_at <= limit_s:
        return v.ok(
            f"{timeline.url} answered 200 after {timeline.ready_at:.1f}s ({len(points)} poll(s))",
            observed=round(timeline.ready_at, 3),
            data={"timeline": points},
        )
    last = timeline.points[-1]
    seen = sorted({str(p.status if p.status is not None else p.error) for p in timeline.points})
    if timeline.ready_at is not None:
        detail = (
            f"{timeline.url} became ready only after {timeline.ready_at:.1f}s "
            f"(limit {limit_s:g}s): slow startup; consider min instances or a lighter "
            "startup path"
        )
    else:
        cause = explain_http_status(last.status) if last.status is not None else last.error
        detail = (
            f"{timeline.url} never answered 200 within {timeline.deadline_s:g}s "
            f"(answers seen: {', '.join(seen)}); last: {cause}"
        )
    return v.fail(
        detail,
        observed=timeline.ready_at,
        data={"timeline": points},
    )


def judge_no_5xx_during_warmup(
    timelines: Sequence[ReadinessTimeline],
    *,
    check_id: str = "health.no_5xx_during_warmup",
) -> CheckResult:
    """``health.no_5xx_during_warmup``: no 502/503 (any 5xx) while polling for readiness."""
    v = Verdict(check_id, threshold=0)
    points = [(t.url, p) for t in timelines for p in t.points]
    if not points:
        return v.error("no readiness poll was recorded")
    bad = [(u, p) for u, p in points if p.status is not None and p.status >= 500]
    if not bad:
        return v.ok(
            f"no 5xx in {len(points)} poll(s) during warm-up",
            observed=0,
        )
    codes = sorted({p.status for _, p in bad if p.status is not None})
    detail = (
        f"{len(bad)} of {len(points)} warm-up poll(s) answered "
        f"{'/'.join(map(str, codes))}: {explain_http_status(codes[0])}. Traffic reached the "
        "revision before it was ready: add a startup probe or min instances."
    )
    return v.fail(
        detail,
        observed=len(bad),
        data={"bad": [{"url": u, **p.to_record()} for u, p in bad]},
    )


def judge_ws_health(
    obs: HttpObservation, *, field: str = "", check_id: str = "ws.health"
) -> CheckResult:
    """``ws.health``: the WebSocket health endpoint answers 200.

    Any 200 passes; the body is judged only when ``field`` (``[target] ws_health_field``,
    e.g. the seed's ``connections.active``) is configured: then the JSON body must carry it.
    """
    v = Verdict(check_id, threshold=f"200 with {field}" if field else 200)
    if obs.status != 200:
        return v.fail(
            http_failure(obs),
            observed=obs.status or obs.error,
        )
    if not field:
        return v.ok(f"{obs.url} answered 200", observed=200, data={"body": obs.json})
    if not has_path(obs.json, field):
        return v.fail(
            f"{obs.url} answered 200 but its body has no `{field}` "
            "([target] ws_health_field): the WebSocket manager is not wired into the health "
            "endpoint, this is not the WebSocket health route, or the field is named otherwise",
            observed=200,
            data={"body": obs.json},
        )
    value = get_path(obs.json, field)
    return v.ok(
        f"{obs.url} answered 200, {field}={value}",
        observed=value,
    )


def judge_ws_test_endpoint(
    obs: HttpObservation | HandshakeObservation,
    *,
    upgrade: HandshakeObservation | None = None,
    check_id: str = "ws.test_endpoint",
) -> CheckResult:
    """``ws.test_endpoint``: the test route answers.

    Given an :class:`HttpObservation` (the seed's ``curl /ws/test``) it must answer 200,
    or, when the path is a WebSocket route (``upgrade``: the handshake there), upgrade;
    given a :class:`HandshakeObservation` alone it must upgrade.
    """
    v = Verdict(check_id)
    if isinstance(obs, HandshakeObservation):
        return _test_route(v, None, obs)
    return _test_route(v, obs, upgrade)


def _test_route(
    v: Verdict, get: HttpObservation | None, upgrade: HandshakeObservation | None
) -> CheckResult:
    """The test route answered GET 200, or (a WebSocket route) the upgrade."""
    if get is not None and get.status == 200:
        return v.ok(f"{get.url} answered 200", observed=200, threshold=200, data={"body": get.json})
    if upgrade is not None and upgrade.upgraded:
        why = f" (GET answered {get.status})" if get is not None else ""
        return v.ok(
            f"{upgrade.url} is a WebSocket route: the upgrade answered 101{why}",
            observed=101,
            threshold="200 or 101",
        )
    if upgrade is not None:
        words = http_failure(get) + "; " if get is not None else ""
        return v.fail(
            f"{words}upgrade {upgrade_words(upgrade)}",
            observed=upgrade.status or upgrade.error,
            threshold="200 or 101",
        )
    assert get is not None  # the caller passes one of the two
    return _not_200(v, get)


def judge_http_latency(
    samples: Sequence[HttpObservation],
    *,
    limit_s: float,
    check_id: str = "http.latency",
) -> CheckResult:
    """``http.latency``: every sample answered 2xx faster than ``limit_s``."""
    v = Verdict(check_id, threshold=limit_s)
    if not samples:
        return v.error("no latency sample was taken")
    failed = [s for s in samples if not s.ok]
    lat = [s.latency_s for s in samples if s.ok]
    data = {"samples": [s.to_record() for s in samples]}
    if failed:
        return v.fail(
            f"{len(failed)}/{len(samples)} sample(s) failed: " + http_failure(failed[0]),
            observed=None,
            data=data,
        )
    worst = max(lat)
    if worst < limit_s:
        return v.ok(
            f"max {worst:.3f}s, median {statistics.median(lat):.3f}s over {len(lat)} sample(s)",
            observed=round(worst, 4),
            data=data,
        )
    return v.fail(
        f"slowest sample {worst:.3f}s >= {limit_s:g}s: cold "
        "starts, CPU throttling or a slow dependency; check instance count and logs",
        observed=round(worst, 4),
        data=data,
    )


def judge_auth_config(obs: HttpObservation, *, check_id: str = "auth.config") -> CheckResult:
    """``auth.config``: the auth service's config endpoint answers 200 JSON."""
    v = Verdict(check_id)
    if obs.status == 200 and obs.json is not None:
        return v.ok(
            f"{obs.url} answered 200 JSON",
            observed=200,
            threshold=200,
            data={"body": obs.json},
        )
    if obs.status == 200:
        return v.fail(
            f"{obs.url} answered 200 but not JSON: {obs.text[:80]}",
            observed=200,
            threshold="200 JSON",
        )
    return _not_200(v, obs)


def judge_auth_health(obs: HttpObservation, *, check_id: str = "auth.health") -> CheckResult:
    """``auth.health``: the auth service's health endpoint answers 200."""
    v = Verdict(check_id, threshold=200)
    if obs.status == 200:
        return v.ok(f"{obs.url} answered 200", observed=200)
    return _not_200(v, obs)


def _not_200(v: Verdict, obs: HttpObservation) -> CheckResult:
    """The failure of an endpoint that should answer 200 and did not (or not at all)."""
    return v.fail(http_failure(obs), observed=obs.status or obs.error, threshold=200)
