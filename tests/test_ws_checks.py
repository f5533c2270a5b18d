"""WebSocket observers against real loopback servers, well-behaved and not."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.asyncio.server import ServerConnection

from runbook_lib.flow_runner import run_flow
from runbook_lib.flows import default_flows
from runbook_lib.handshake import expected_accept, observe_handshake
from runbook_lib.monitor import observe_monitor
from runbook_lib.protocol import ProtocolSettings
from runbook_lib.settings import AuthSettings, Settings
from runbook_lib.settings_load import settings_from_dict
from runbook_lib.tokens import ConnectAuth, connect_auth, mint_jwt
from runbook_lib.ws_checks import observe_auth, observe_flow_users, observe_hold

P = ProtocolSettings()
SECRET = "ws-checks-test-secret-0123456789abcdef"


def test_expected_accept_matches_rfc_example() -> None:
    assert expected_accept("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


# ---------------------------------------------------------------- raw handshake


async def _read_head(reader: asyncio.StreamReader) -> dict[str, str]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:]
    return {k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines if x)}


async def test_handshake_101_with_valid_accept_and_subprotocol(agent_server) -> None:
    srv = await agent_server()
    obs = await observe_handshake(
        f"{srv.url}/websocket", timeout_s=5, auth=ConnectAuth(subprotocols=("chat.v1",))
    )
    assert obs.status == 101 and obs.accept_valid and obs.upgraded
    assert obs.subprotocol == "chat.v1" and obs.error is None and obs.path == "/websocket"


async def test_handshake_404_keeps_status_and_body(raw_server) -> None:
    async def h(reader, writer) -> None:
        await _read_head(reader)
        writer.write(b'HTTP/1.1 404 Not Found\r\nContent-Length: 22\r\n\r\n{"detail":"Not Found"}')
        await writer.drain()

    port = await raw_server(h)
    obs = await observe_handshake(f"ws://127.0.0.1:{port}/websocket", timeout_s=5)
    assert obs.status == 404 and not obs.upgraded and obs.body_excerpt == '{"detail":"Not Found"}'


async def test_handshake_answered_as_plain_get(raw_server) -> None:
    async def h(reader, writer) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\n\r\n<html>hi</html>")
        await writer.drain()
        writer.close()

    port = await raw_server(h)
    obs = await observe_handshake(f"ws://127.0.0.1:{port}/websocket", timeout_s=5)
    assert obs.status == 200 and not obs.upgraded and "hi" in obs.body_excerpt


async def test_handshake_wrong_accept_is_flagged(raw_server) -> None:
    async def h(reader, writer) -> None:
        await _read_head(reader)
        writer.write(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Accept: bogus=\r\n\r\n"
        )
        await writer.drain()
        await asyncio.sleep(1)

    port = await raw_server(h)
    obs = await observe_handshake(f"ws://127.0.0.1:{port}/", timeout_s=5)
    assert obs.status == 101 and obs.accept_valid is False and not obs.upgraded


async def test_handshake_refused(closed_port: int) -> None:
    obs = await observe_handshake(f"ws://127.0.0.1:{closed_port}/websocket", timeout_s=2)
    assert obs.status is None and obs.error == "refused"


async def test_handshake_silent_server_times_out_within_bound(raw_server) -> None:
    async def h(reader, writer) -> None:
        await asyncio.sleep(30)

    port = await raw_server(h)
    start = time.perf_counter()
    obs = await observe_handshake(f"ws://127.0.0.1:{port}/", timeout_s=0.5)
    assert obs.error == "timeout" and time.perf_counter() - start < 3


async def test_handshake_garbage_is_protocol_error(raw_server) -> None:
    async def h(reader, writer) -> None:
        await _read_head(reader)
        writer.write(b"\x00\x01garbage garbage\r\n\r\n")
        await writer.drain()

    port = await raw_server(h)
    obs = await observe_handshake(f"ws://127.0.0.1:{port}/", timeout_s=2)
    assert obs.error == "protocol"


async def test_handshake_closed_mid_response(raw_server) -> None:
    async def h(reader, writer) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 101 Switching Prot")
        await writer.drain()

    port = await raw_server(h)
    obs = await observe_handshake(f"ws://127.0.0.1:{port}/", timeout_s=2)
    assert obs.error == "closed" and obs.status is None


async def test_handshake_wss_on_plain_port_is_tls_error(raw_server) -> None:
    async def h(reader, writer) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    port = await raw_server(h)
    obs = await observe_handshake(f"wss://127.0.0.1:{port}/", timeout_s=2)
    assert obs.error == "tls"


async def test_handshake_sends_credentials(raw_server) -> None:
    seen: dict[str, str] = {}

    async def h(reader, writer) -> None:
        seen.update(await _read_head(reader))
        key = seen["sec-websocket-key"]
        acc = base64.b64encode(
            hashlib.sha1((key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()
        ).decode()
        writer.write(f"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: {acc}\r\n\r\n".encode())
        await writer.drain()

    port = await raw_server(h)
    auth = ConnectAuth(headers=(("Authorization", "Bearer abc"),), subprotocols=("jwt.abc",))
    obs = await observe_handshake(f"ws://127.0.0.1:{port}/ws", timeout_s=2, auth=auth)
    assert obs.upgraded and seen["authorization"] == "Bearer abc"
    assert seen["sec-websocket-protocol"] == "jwt.abc"


# ---------------------------------------------------------------- the seed's flows


def _flow(name: str, event_timeout_s: float = 10.0):
    return default_flows(P, event_timeout_s=event_timeout_s)[name]


async def test_ping_flow_pong_skips_welcome(agent_server) -> None:
    srv = await agent_server()
    obs = await run_flow(srv.url, _flow("load"), None, P, step_timeout_s=5)
    assert obs.completed and obs.response_s is not None
    assert obs.frames[0].frame.ignorable  # the welcome frame was recorded and skipped


async def test_ping_flow_refused_upgrade_keeps_status(raw_server) -> None:
    async def h(reader, writer) -> None:
        await _read_head(reader)
        writer.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 6\r\n\r\ndenied")
        await writer.drain()

    port = await raw_server(h)
    obs = await run_flow(f"ws://127.0.0.1:{port}/", _flow("load"), None, P, open_timeout_s=2)
    assert not obs.connected and obs.status == 403
    assert obs.body_excerpt == "denied" and obs.stop_reason == "connect_failed"


async def test_agent_flow_records_all_events(agent_server) -> None:
    srv = await agent_server()
    run = await run_flow(srv.url, _flow("agent"), {"user_id": "anonymous"}, P)
    assert run.completed and run.event_types == P.critical_events
    ts = [f.t for f in run.events]
    assert ts == sorted(ts) and ts[-1] < 10
    assert run.frames[0].frame.ignorable


async def test_agent_flow_nested_envelope(agent_server) -> None:
    srv = await agent_server(fault="nested")
    run = await run_flow(srv.url, _flow("agent"), {"user_id": "anonymous"}, P)
    assert run.completed and len(run.events) == 5
    assert run.events[0].run_id == run.run_id


async def test_agent_flow_server_error_close(agent_server) -> None:
    srv = await agent_server(fault="close1011")
    run = await run_flow(srv.url, _flow("agent", 5), None, P)
    assert not run.completed and run.close_code == 1011


async def test_agent_flow_tcp_drop_is_abrupt_1006(ws_server) -> None:
    async def h(ws: ServerConnection) -> None:
        await ws.recv()
        ws.transport.abort()

    url = await ws_server(h)
    run = await run_flow(url, _flow("agent", 5), None, P)
    assert not run.completed and run.close_code == 1006


# ---------------------------------------------------------------- auth


@pytest.mark.parametrize("mode", ["query", "bearer", "subprotocol"])
async def test_auth_valid_accepted_and_every_negative_refused(agent_server, mode: str) -> None:
    srv = await agent_server(secret=SECRET)
    auth = AuthSettings(mode=mode, jwt_secret=SECRET)
    obs = await observe_auth(srv.url, P, auth, probe_timeout_s=3)
    assert obs.authenticated is not None and obs.authenticated.accepted is True
    if mode == "subprotocol":
        assert obs.authenticated.subprotocol  # echoed (and redacted)
    assert {n.case: n.accepted for n in obs.negatives} == {
        "missing": False,
        "malformed": False,
        "wrong_signature": False,
        "expired": False,
    }
    assert all(n.how == "error frame" for n in obs.negatives)


async def test_auth_bypass_accepts_forged_tokens(agent_server) -> None:
    srv = await agent_server(bypass=True)
    obs = await observe_auth(
        srv.url, P, AuthSettings(mode="query", jwt_secret=SECRET), probe_timeout_s=3
    )
    accepted = {n.case for n in obs.negatives if n.accepted}
    assert accepted == {"wrong_signature", "expired"}


async def test_auth_close_1008_without_error_frame(ws_server) -> None:
    async def h(ws: ServerConnection) -> None:
        await ws.close(1008, "policy")

    url = await ws_server(h)
    obs = await observe_auth(
        url, P, AuthSettings(mode="bearer", jwt_secret=SECRET), probe_timeout_s=3
    )
    assert obs.negatives[0].accepted is False and obs.negatives[0].close_code == 1008


@pytest.mark.slow  # about 50 s: each negative case's close waits on the silent server
async def test_auth_silent_socket_is_undecided(agent_server) -> None:
    srv = await agent_server(fault="silent")
    obs = await observe_auth(
        srv.url, P, AuthSettings(mode="bearer", jwt_secret=SECRET), probe_timeout_s=0.3
    )
    assert {n.accepted for n in obs.negatives} == {None}


# ---------------------------------------------------------------- isolation


def _iso_settings(url: str, auth: dict) -> Settings:
    base = url.replace("ws", "http", 1)
    return settings_from_dict(
        {"name": "iso", "target": {"base_url": base, "ws_url": url}, "auth": auth}
    )


async def test_isolation_each_user_gets_only_own_events(agent_server, monkeypatch) -> None:
    srv = await agent_server(secret=SECRET)
    monkeypatch.setenv("ISO_JWT_SECRET", SECRET)
    settings = _iso_settings(srv.url, {"mode": "query", "jwt_secret_env": "ISO_JWT_SECRET"})
    runs = await observe_flow_users(settings, "isolation", users=3, url=srv.url)
    assert len(runs) == 3 and all(r.completed for r in runs)
    for r in runs:
        assert {f.user_id for f in r.events} == {r.user_id}
        assert not any(f.foreign for f in r.frames)


async def test_isolation_leak_is_visible_in_frames(agent_server, monkeypatch) -> None:
    srv = await agent_server(secret=SECRET, fault="leak")
    monkeypatch.setenv("ISO_JWT_SECRET", SECRET)
    settings = _iso_settings(srv.url, {"mode": "query", "jwt_secret_env": "ISO_JWT_SECRET"})
    runs = await observe_flow_users(settings, "isolation", users=3, url=srv.url)
    foreign = [f for r in runs for f in r.frames if f.frame.user_id not in (None, r.user_id)]
    assert foreign  # the judge turns these into a failure


async def test_isolation_token_failure_is_recorded(closed_port: int) -> None:
    url = f"ws://127.0.0.1:{closed_port}/"
    settings = _iso_settings(
        url, {"mode": "query", "token_endpoint": f"http://127.0.0.1:{closed_port}/t"}
    )
    runs = await observe_flow_users(settings, "isolation", users=2, url=url)
    assert [r.connect_error for r in runs] == ["token", "token"]


# ---------------------------------------------------------------- hold


async def test_hold_clean(agent_server) -> None:
    srv = await agent_server()
    obs = await observe_hold(srv.url, P, hold_s=1.0, ping_every_s=0.2)
    assert obs.outcome == "held" and obs.clean_close and obs.close_code == 1000
    assert obs.pings_sent >= 1 and obs.pongs >= 1


async def test_hold_abrupt_drop(ws_server) -> None:
    async def h(ws: ServerConnection) -> None:
        await asyncio.sleep(0.2)
        ws.transport.abort()

    url = await ws_server(h)
    obs = await observe_hold(url, P, hold_s=5)
    assert obs.outcome == "abrupt" and obs.close_code == 1006 and obs.ended_at_s < 4


async def test_hold_server_close_code(ws_server) -> None:
    async def h(ws: ServerConnection) -> None:
        await asyncio.sleep(0.2)
        await ws.close(1001, "going away")

    url = await ws_server(h)
    obs = await observe_hold(url, P, hold_s=5)
    assert (obs.outcome, obs.close_code, obs.close_reason) == ("server_closed", 1001, "going away")


# ---------------------------------------------------------------- monitor


def monitor_app() -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def ws_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        async for text in websocket.iter_text():
            if json.loads(text).get("type") == "ping":
                await websocket.send_text('{"type": "pong"}')

    return Starlette(routes=[Route("/health", health), WebSocketRoute("/websocket", ws_endpoint)])


async def test_monitor_samples_health_and_ws(uvicorn_app) -> None:
    base = await uvicorn_app(monitor_app())
    ws = base.replace("http", "ws", 1)
    mon = await observe_monitor(
        f"{base}/health",
        f"{ws}/websocket",
        window_s=0.6,
        interval_s=0.2,
        protocol=P,
        ping_flow=_flow("load", 5),
        timeout_s=5,
    )
    assert 1 <= len(mon.ticks) <= 4  # fewer when a loaded machine makes ticks slow
    assert all(t.health_status == 200 and t.ws_upgraded and t.ping_ok for t in mon.ticks)
    missing = await observe_monitor(
        f"{base}/health", f"{ws}/nope", window_s=0.1, interval_s=0.1, timeout_s=5
    )
    assert missing.ticks[0].ws_status in (403, 404) and not missing.ticks[0].ws_upgraded


async def test_connect_auth_with_minted_token_reaches_server(agent_server) -> None:
    srv = await agent_server(secret=SECRET)
    creds = connect_auth(AuthSettings(mode="bearer"), mint_jwt(SECRET, "bob"))
    run = await run_flow(srv.url, _flow("agent"), {"user_id": "bob"}, P, auth=creds)
    assert run.completed and {f.user_id for f in run.events} == {"bob"}


async def test_agent_flow_close_after_final_event_stays_completed(ws_server) -> None:
    async def h(ws: ServerConnection) -> None:
        await ws.recv()
        for etype in P.critical_events:
            await ws.send(json.dumps({"type": etype, "user_id": "u"}))
        await ws.close(1000, "bye")

    url = await ws_server(h)
    run = await run_flow(url, _flow("agent", 5), {"user_id": "u"}, P, linger_s=1)
    assert run.completed and len(run.events) == 5


async def test_agent_flow_without_credentials_sees_error_frame_and_1008(agent_server) -> None:
    srv = await agent_server(secret=SECRET)
    run = await run_flow(srv.url, _flow("chat", 5), None, P)
    assert not run.completed and run.events == ()
    assert any(f.frame.is_error for f in run.frames) or run.close_code == 1008
    from runbook_lib.checks.agent import judge_chat_flow

    r = judge_chat_flow(run)
    assert r.status == "fail" and ("1008" in r.detail or "error frame" in r.detail)
