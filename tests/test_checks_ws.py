"""Table tests of the WebSocket checks (``runbook_lib.checks.ws``)."""

from __future__ import annotations

import pytest
from observation_builders import (
    NEG_OK,
    att,
    hs,
    http,
    ping_flow,
)

from runbook_lib.checks import (
    judge_auth_rejects_invalid,
    judge_auth_ws_authenticated,
    judge_ws_roundtrip,
    judge_ws_routes_probe,
    judge_ws_test_endpoint,
    judge_ws_upgrade,
)
from runbook_lib.checks.causes import INCIDENT_SIGNATURE
from runbook_lib.observations import (
    AuthAttempt,
    AuthObservation,
)
from runbook_lib.protocol import Frame, FrameKind
from runbook_lib.results import Status


def test_routes_probe_names_incident_signature() -> None:
    r = judge_ws_routes_probe(http(200), [hs("/websocket", 404), hs("/ws/test", 404)])
    assert r.status is Status.FAIL and INCIDENT_SIGNATURE in r.detail
    assert r.data["incident_signature"] is True and r.observed == {
        "/websocket": 404,
        "/ws/test": 404,
    }


def test_routes_probe_other_failures_and_pass() -> None:
    r = judge_ws_routes_probe(http(503), [hs("/websocket", 404)])
    assert r.status is Status.FAIL and INCIDENT_SIGNATURE not in r.detail
    r = judge_ws_routes_probe(http(200), [hs("/websocket", 426)])
    assert "Upgrade" in r.detail
    assert judge_ws_routes_probe(http(200), [hs("/websocket")]).status is Status.PASS
    assert judge_ws_routes_probe(http(200), []).status is Status.ERROR


def test_ws_upgrade() -> None:
    assert judge_ws_upgrade([hs("/a"), hs("/b")]).status is Status.PASS
    r = judge_ws_upgrade([hs("/a"), hs("/b", 101, accept=False)])
    assert r.status is Status.FAIL and "Accept" in r.detail
    r = judge_ws_upgrade([hs("/a", None, error="timeout")])
    assert "timeout" in r.detail


def test_ws_roundtrip_and_test_endpoint() -> None:
    pong = Frame(t=0.01, size=5, kind=FrameKind.IGNORED, event_type="pong")
    assert judge_ws_roundtrip(ping_flow(frames=(pong,))).status is Status.PASS
    r = judge_ws_roundtrip(ping_flow(pong=False))
    assert r.status is Status.FAIL and "no pong" in r.detail
    r = judge_ws_roundtrip(ping_flow(connected=False, pong=False, status=404))
    assert r.status is Status.FAIL and "not registered" in r.detail
    r = judge_ws_roundtrip(ping_flow(pong=False, stop="closed", close_code=1011))
    assert r.status is Status.FAIL and "1011" in r.detail
    assert judge_ws_test_endpoint(hs("/ws/test")).status is Status.PASS
    assert judge_ws_test_endpoint(hs("/ws/test", 404)).status is Status.FAIL
    assert judge_ws_test_endpoint(http(200, {"status": "ok"})).status is Status.PASS
    assert judge_ws_test_endpoint(http(404)).status is Status.FAIL


def test_auth_ws_authenticated() -> None:
    ok = AuthObservation("bearer", att("valid", True), NEG_OK)
    assert judge_auth_ws_authenticated(ok).status is Status.PASS
    no_echo = AuthObservation("subprotocol", att("valid", True), NEG_OK)
    assert judge_auth_ws_authenticated(no_echo).status is Status.FAIL
    echo = AuthObservation("subprotocol", att("valid", True, sub="jwt.[REDACTED]"), NEG_OK)
    assert judge_auth_ws_authenticated(echo).status is Status.PASS
    refused = AuthObservation(
        "bearer", AuthAttempt("valid", accepted=False, how="HTTP 403", status=403), NEG_OK
    )
    assert "IAM" in judge_auth_ws_authenticated(refused).detail
    assert (
        judge_auth_ws_authenticated(AuthObservation("bearer", None, token_error="x")).status
        is Status.ERROR
    )


VALID = att("valid", True, "pong")


def test_auth_rejects_invalid() -> None:
    assert judge_auth_rejects_invalid(AuthObservation("query", VALID, NEG_OK)).status is Status.PASS
    bypass = (*NEG_OK[:2], att("wrong_signature", True), att("expired", True))
    r = judge_auth_rejects_invalid(AuthObservation("query", None, bypass))
    assert r.status is Status.FAIL and "wrong_signature, expired" in r.detail
    partial = (
        *NEG_OK[:2],
        att("wrong_signature", None, produced=False),
        att("expired", None, produced=False),
    )
    assert (
        judge_auth_rejects_invalid(AuthObservation("bearer", VALID, partial)).status is Status.WARN
    )
    silent = (*NEG_OK[:3], att("expired", None, "socket stayed open"))
    assert judge_auth_rejects_invalid(AuthObservation("bearer", None, silent)).status is Status.FAIL
    assert judge_auth_rejects_invalid(AuthObservation("none", None)).status is Status.SKIP


@pytest.mark.parametrize(
    "valid",
    [att("valid", False, "HTTP 404"), att("valid", None, "no answer"), None],
)
def test_refusing_everything_is_no_evidence_for_token_checks(valid) -> None:
    """A 404 (or a dead server) also 'refuses' bad tokens: that proves nothing."""
    r = judge_auth_rejects_invalid(AuthObservation("bearer", valid, NEG_OK))
    assert r.status is Status.ERROR
    assert "proves nothing" in r.detail and "auth.ws_authenticated" in r.detail


def test_routes_probe_404_with_routes_in_source_is_no_ws_implementation() -> None:
    """Issue 9: uvicorn without a WebSocket library answers 404 while the source has the
    routes; phase 1 names the signature but does not advise redeploying the same code."""
    from runbook_lib.checks.causes import WsEvidence

    ev = WsEvidence(source_routes=("/websocket", "/ws/test"))
    r = judge_ws_routes_probe(http(200), [hs("/websocket", 404), hs("/ws/test", 404)], evidence=ev)
    assert r.status is Status.FAIL and INCIDENT_SIGNATURE in r.detail
    assert r.data["cause"] == "no_ws_implementation"
    assert "install websockets" in r.detail and "fixed source" not in r.detail
    # The same 404 when a deploy would serve other code: the seed's remedy stays.
    ev = WsEvidence(source_routes=("/websocket",), deploy_changes_code=True)
    r = judge_ws_routes_probe(http(200), [hs("/websocket", 404)], evidence=ev)
    assert r.data["cause"] == "route_not_deployed" and "deploy the revision" in r.detail
    # Without any source evidence both readings are given.
    r = judge_ws_routes_probe(http(200), [hs("/websocket", 404)])
    assert r.data["cause"] == "route_unknown"
    assert "fixed source" in r.detail and "no WebSocket implementation" in r.detail


def test_upgrade_403_on_a_path_the_source_lacks_is_an_unknown_route() -> None:
    """Starlette answers 403 (not 404) to an upgrade on a path without a WebSocket route."""
    from runbook_lib.checks.causes import WsEvidence

    ev = WsEvidence(source_routes=("/rpc",))
    r = judge_ws_upgrade([hs("/rpc2", 403)], evidence=ev)
    assert r.status is Status.FAIL and r.data["cause"] == "route_not_in_source"
    assert "unknown path" in r.detail
