"""The check engine against the real sandbox backend (in-process uvicorn, port 0).

Healthy passes every judge; each faulty profile fails the judge that names its fault.
"""

from __future__ import annotations

import pytest
from timing import T

from runbook_lib import checks as ev
from runbook_lib.checks.causes import INCIDENT_SIGNATURE
from runbook_lib.flow_runner import run_flow, run_users
from runbook_lib.flows import default_flows
from runbook_lib.handshake import observe_handshake
from runbook_lib.http_checks import observe_get, sample_latency
from runbook_lib.monitor import observe_monitor
from runbook_lib.protocol import ProtocolSettings
from runbook_lib.results import Status
from runbook_lib.sandbox.auth_service import create_auth_app
from runbook_lib.sandbox.backend import create_app
from runbook_lib.settings import AuthSettings, Thresholds
from runbook_lib.tokens import connect_auth, obtain_token
from runbook_lib.ws_checks import observe_auth, observe_hold

SECRET = "backend-test-secret-0123456789abcdef0123"
P = ProtocolSettings()
TH = Thresholds()
WS_PATHS = ("/websocket", "/ws/test")


@pytest.fixture
def backend(uvicorn_app, monkeypatch):
    async def start(profile: str = "healthy", **env: str) -> tuple[str, str]:
        for k, v in env.items():
            monkeypatch.setenv(k, v)
        base = await uvicorn_app(
            create_app(profile=profile, revision="svc-00001-abc", service="svc", jwt_secret=SECRET)
        )
        return base, base.replace("http", "ws", 1)

    return start


async def _creds(auth: AuthSettings, user: str = "runbook-user"):
    tok = await obtain_token(auth, user)
    return connect_auth(auth, tok.token)


async def _flow(url: str, name: str, creds=None, timeout_s: float = 10.0, user="runbook-user"):
    """One of the seed's flows (``load``: ping -> pong; ``agent``; ``chat``) as ``user``."""
    flow = default_flows(P, event_timeout_s=timeout_s)[name]
    return await run_flow(url, flow, {"user_id": user}, P, auth=creds)


async def _isolation(url: str, auth: AuthSettings, users: int, timeout_s: float):
    """The isolation flow for ``users`` users at once, each with a token of its own."""
    names = [f"runbook-iso-{i}" for i in range(users)]
    auths = {u: await _creds(auth, u) for u in names}
    flow = default_flows(P, event_timeout_s=timeout_s)["isolation"]
    return await run_users(url, flow, P, names, auths=auths)


async def test_healthy_backend_passes_every_judge(backend) -> None:
    base, ws = await backend("healthy")
    auth = AuthSettings(mode="subprotocol", jwt_secret=SECRET)
    creds = await _creds(auth)
    health = await observe_get(f"{base}/health")
    probes = [await observe_handshake(ws + p, auth=creds) for p in WS_PATHS]
    results = [
        ev.judge_health_backend(health),
        ev.judge_url_reachable(health),
        ev.judge_ws_routes_probe(health, probes),
        ev.judge_ws_upgrade(probes),
        ev.judge_ws_health(await observe_get(f"{base}/ws/health")),
        ev.judge_ws_test_endpoint(
            await observe_get(f"{base}/ws/test"),
            upgrade=await observe_handshake(f"{ws}/ws/test", auth=creds),
        ),
        ev.judge_ws_roundtrip(await _flow(f"{ws}/websocket", "load", creds)),
        ev.judge_http_latency(await sample_latency(f"{base}/health", 3), limit_s=TH.http_latency_s),
    ]
    run = await _flow(f"{ws}/websocket", "agent", creds, T(10))
    chat = await _flow(f"{ws}/websocket", "chat", creds, T(10))
    results += [
        ev.judge_agent_response(run, timeout_s=TH.event_timeout_s),
        ev.judge_chat_flow(chat),
        ev.judge_critical_delivered(
            run, critical=P.critical_events, minimum=TH.critical_events_min
        ),
        ev.judge_events_order(run, critical=P.critical_events),
        ev.judge_events_structure(run, required_fields=P.required_fields),
        ev.judge_events_latency(run, timeout_s=TH.event_timeout_s),
    ]
    a = await observe_auth(f"{ws}/websocket", P, auth, probe_timeout_s=T(3))
    results += [ev.judge_auth_ws_authenticated(a), ev.judge_auth_rejects_invalid(a)]
    iso = await _isolation(f"{ws}/websocket", auth, users=3, timeout_s=T(10))
    results += [
        ev.judge_isolation_sessions(
            iso, success_rate=TH.isolation_success_rate, response_s=TH.isolation_response_s
        ),
        ev.judge_isolation_no_cross_user(iso),
    ]
    mon = await observe_monitor(
        f"{base}/health",
        f"{ws}/websocket",
        window_s=0.4,
        interval_s=0.2,
        auth=creds,
        protocol=P,
        ping_flow=default_flows(P)["load"],
    )
    results += [
        # A short window (2 samples) keeps the test fast: judge it with that minimum.
        ev.judge_monitor_uptime(mon, min_uptime=TH.monitor_uptime, min_samples=2),
        ev.judge_monitor_ws_failure_rate(mon, max_rate=TH.monitor_ws_failure_rate, min_samples=2),
        ev.judge_monitor_avg_response(mon, limit_s=TH.monitor_avg_response_s, min_samples=2),
        ev.judge_monitor_ws_404(mon, min_samples=2),
        ev.judge_monitor_hold(
            await observe_hold(f"{ws}/websocket", P, hold_s=0.5, auth=creds, ping_every_s=0.2)
        ),
    ]
    bad = [(r.id, r.status, r.detail) for r in results if r.status is not Status.PASS]
    assert bad == []


@pytest.mark.parametrize("mode", ["bearer", "query"])
async def test_auth_modes_against_backend(backend, mode: str) -> None:
    _, ws = await backend("healthy")
    a = await observe_auth(
        f"{ws}/websocket", P, AuthSettings(mode=mode, jwt_secret=SECRET), probe_timeout_s=T(3)
    )
    assert ev.judge_auth_ws_authenticated(a).status is Status.PASS
    assert ev.judge_auth_rejects_invalid(a).status is Status.PASS


async def test_token_endpoint_of_sandbox_auth_service(backend, uvicorn_app) -> None:
    _, ws = await backend("healthy")
    auth_base = await uvicorn_app(create_auth_app(jwt_secret=SECRET))
    assert ev.judge_auth_config(await observe_get(f"{auth_base}/auth/config")).ok
    assert ev.judge_auth_health(await observe_get(f"{auth_base}/health")).ok
    auth = AuthSettings(mode="query", token_endpoint=f"{auth_base}/auth/dev-token")
    a = await observe_auth(f"{ws}/websocket", P, auth, probe_timeout_s=T(3))
    r = ev.judge_auth_rejects_invalid(a)
    assert r.status is Status.PASS, r.detail  # all four produced via the endpoint


async def test_ws_routes_missing_is_named_as_the_incident(backend) -> None:
    base, ws = await backend("ws-routes-missing")
    health = await observe_get(f"{base}/health")
    probes = [await observe_handshake(ws + p) for p in WS_PATHS]
    r = ev.judge_ws_routes_probe(health, probes)
    assert r.status is Status.FAIL and INCIDENT_SIGNATURE in r.detail
    assert ev.judge_ws_upgrade(probes).status is Status.FAIL
    assert ev.judge_ws_health(await observe_get(f"{base}/ws/health")).status is Status.FAIL
    run = await _flow(f"{ws}/websocket", "agent", timeout_s=3)
    r = ev.judge_agent_response(run, timeout_s=3)
    assert r.status is Status.FAIL and "404" in r.detail


@pytest.mark.parametrize(
    ("profile", "judge"),
    [("reorder-events", "order"), ("drop-events", "critical")],
)
async def test_event_faults_fail_the_right_judge(backend, profile: str, judge: str) -> None:
    _, ws = await backend(profile)
    auth = AuthSettings(mode="bearer", jwt_secret=SECRET)
    run = await _flow(f"{ws}/websocket", "agent", await _creds(auth), timeout_s=3)
    order = ev.judge_events_order(run, critical=P.critical_events)
    crit = ev.judge_critical_delivered(run, critical=P.critical_events, minimum=5)
    failed = {"order": order.status, "critical": crit.status}
    assert failed[judge] is Status.FAIL
    if judge == "critical":
        assert "tool_completed" in crit.detail


async def test_cross_user_leak_fails_isolation(backend) -> None:
    _, ws = await backend("cross-user-leak")
    iso = await _isolation(
        f"{ws}/websocket", AuthSettings(mode="query", jwt_secret=SECRET), users=3, timeout_s=T(5)
    )
    r = ev.judge_isolation_no_cross_user(iso)
    assert r.status is Status.FAIL and r.observed > 0


async def test_auth_bypass_fails_rejects_invalid(backend) -> None:
    _, ws = await backend("auth-bypass")
    a = await observe_auth(
        f"{ws}/websocket", P, AuthSettings(mode="bearer", jwt_secret=SECRET), probe_timeout_s=T(3)
    )
    r = ev.judge_auth_rejects_invalid(a)
    assert r.status is Status.FAIL and "ACCEPTED" in r.detail


async def test_idle_close_fails_hold_with_1006(backend) -> None:
    _, ws = await backend("idle-close", SANDBOX_IDLE_CLOSE_S="0.3")
    creds = await _creds(AuthSettings(mode="bearer", jwt_secret=SECRET))
    hold = await observe_hold(f"{ws}/websocket", P, hold_s=T(5), auth=creds)
    r = ev.judge_monitor_hold(hold)
    assert hold.close_code == 1006 and r.status is Status.FAIL and hold.ended_at_s < T(4)


async def test_slow_warmup_answers_503_then_200(backend) -> None:
    from runbook_lib.http_checks import poll_until_ready

    base, _ = await backend("slow-warmup", SANDBOX_WARMUP_S="0.5")
    tl = await poll_until_ready(f"{base}/health", deadline_s=T(20), interval_s=0.1)
    assert ev.judge_ready_within(tl, limit_s=30).status is Status.PASS
    assert ev.judge_no_5xx_during_warmup([tl]).status is Status.FAIL
