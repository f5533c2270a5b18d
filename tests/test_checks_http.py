"""Table tests of the HTTP checks (``runbook_lib.checks.http``)."""

from __future__ import annotations

import pytest
from observation_builders import (
    http,
    tl,
)

from runbook_lib.checks import (
    judge_auth_config,
    judge_auth_health,
    judge_health_backend,
    judge_http_latency,
    judge_no_5xx_during_warmup,
    judge_ready_within,
    judge_url_reachable,
    judge_ws_health,
    judge_ws_test_endpoint,
)
from runbook_lib.results import Status


@pytest.mark.parametrize(
    ("obs", "status"),
    [
        (http(200), Status.PASS),
        (http(503), Status.FAIL),
        (http(None, error="refused"), Status.FAIL),
        (http(None, error="timeout"), Status.ERROR),
    ],
)
def test_health_backend(obs, status) -> None:
    assert judge_health_backend(obs).status is status


def test_url_reachable() -> None:
    assert judge_url_reachable(http(404)).status is Status.PASS
    r = judge_url_reachable(http(None, error="dns"))
    assert r.status is Status.FAIL and "dns" in r.detail


@pytest.mark.parametrize(
    ("timeline", "limit", "status"),
    [
        (tl([None, 503, 200], ready_at=2.01), 30, Status.PASS),
        (tl([503] * 5 + [200], ready_at=40.0, deadline=60), 30, Status.FAIL),
        (tl([503, 503]), 30, Status.FAIL),
        (tl([]), 30, Status.ERROR),
    ],
)
def test_ready_within(timeline, limit, status) -> None:
    r = judge_ready_within(timeline, check_id="ws.health_ready_within", limit_s=limit)
    assert r.status is status and r.id == "ws.health_ready_within" and r.phase == 2


def test_no_5xx_during_warmup() -> None:
    assert judge_no_5xx_during_warmup([tl([None, 200])]).status is Status.PASS
    r = judge_no_5xx_during_warmup([tl([None, 200]), tl([502, 503, 200])])
    assert r.status is Status.FAIL and r.observed == 2 and "502/503" in r.detail
    assert judge_no_5xx_during_warmup([]).status is Status.ERROR


@pytest.mark.parametrize(
    ("obs", "field", "status"),
    [
        (http(200, {"connections": {"active": 0}}), "connections.active", Status.PASS),
        (http(200, {"status": "ok"}), "connections.active", Status.FAIL),
        (http(404), "connections.active", Status.FAIL),
        # Issue 9: any 200 passes unless a body field is configured.
        (http(200, {"status": "ok"}), "", Status.PASS),
        (http(200, None), "", Status.PASS),
        (http(503), "", Status.FAIL),
    ],
)
def test_ws_health(obs, field, status) -> None:
    assert judge_ws_health(obs, field=field).status is status


def test_ws_test_endpoint_on_a_websocket_route_judges_the_upgrade() -> None:
    """Issue 9: a test path that is a WebSocket route is not required to answer GET."""
    from observation_builders import hs

    get = http(404, url="http://x/ws/test")
    r = judge_ws_test_endpoint(get, upgrade=hs("/ws/test"))
    assert r.status is Status.PASS and "101" in r.detail
    assert judge_ws_test_endpoint(hs("/ws/test")).status is Status.PASS
    r = judge_ws_test_endpoint(get, upgrade=hs("/ws/test", 404))
    assert r.status is Status.FAIL and "path not found" in r.detail


def test_http_latency() -> None:
    assert judge_http_latency([http(latency=0.2)] * 3, limit_s=1).status is Status.PASS
    assert (
        judge_http_latency([http(latency=0.2), http(latency=1.5)], limit_s=1).status is Status.FAIL
    )
    assert judge_http_latency([http(latency=0.2), http(503)], limit_s=1).status is Status.FAIL
    assert judge_http_latency([], limit_s=1).status is Status.ERROR


def test_auth_http_endpoints() -> None:
    assert judge_auth_config(http(200, {"a": 1})).status is Status.PASS
    assert judge_auth_config(http(200, None)).status is Status.FAIL
    assert judge_auth_health(http(200)).status is Status.PASS
    assert judge_auth_health(http(None, error="refused")).status is Status.FAIL


@pytest.mark.parametrize(
    ("obs", "status", "words"),
    [
        (http(200, url="http://x/ws/test"), Status.PASS, "answered 200"),
        (http(404, url="http://x/ws/test"), Status.FAIL, "path not found"),
        (http(None, error="refused", url="http://x/ws/test"), Status.FAIL, "refused"),
    ],
)
def test_ws_test_endpoint_over_http(obs, status, words) -> None:
    r = judge_ws_test_endpoint(obs)
    assert (r.id, r.phase, r.status) == ("ws.test_endpoint", 3, status)
    assert words in r.detail
