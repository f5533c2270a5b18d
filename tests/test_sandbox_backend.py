"""Sandbox backend run as a real process (``python -m runbook_lib.sandbox.backend``)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from timing import T
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from runbook_lib.sandbox.auth_service import mint_token
from runbook_lib.sandbox.backend import CRITICAL_EVENTS
from runbook_lib.sandbox.wire import REQUEST_LOG_KEY

# Every test here starts a process (kernel, sandbox or subprocess server).
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
SECRET = "sandbox-test-secret-0123456789-abcdefghijklmnop"
TIMEOUT = T(10.0)
START_TIMEOUT = T(30.0)

# Every token handed to a backend in this module: none may ever appear in its log.
ISSUED_TOKENS: list[str] = []


def token_for(user_id: str, *, secret: str = SECRET, ttl_s: int = 300) -> str:
    token = mint_token(secret, user_id, ttl_s=ttl_s)
    ISSUED_TOKENS.append(token)
    return token


class BackendProcess:
    """One backend revision process; stdout lines after the listening line are kept."""

    def __init__(self, profile: str, env: dict[str, str] | None = None) -> None:
        self.profile = profile
        self.revision = f"svc-{profile}-00001"
        clean = {k: v for k, v in os.environ.items() if not k.startswith("SANDBOX_")}
        clean.update({"SANDBOX_JWT_SECRET": SECRET, "PYTHONUNBUFFERED": "1"}, **(env or {}))
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "runbook_lib.sandbox.backend",
                "--host",
                "127.0.0.1",
                "--port",
                "0",
                "--profile",
                profile,
                "--revision",
                self.revision,
                "--service",
                "svc",
            ],
            cwd=REPO,
            env=clean,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        self.lines: list[str] = []
        self._first: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.port: int | None = None
        self.first_line: str | None = None

    def _read(self) -> None:
        assert self.proc.stdout is not None
        first = True
        for line in self.proc.stdout:
            if first:
                self._first.put(line)
                first = False
            else:
                self.lines.append(line)
        if first:
            self._first.put(None)

    def wait_listening(self) -> int:
        line = self._first.get(timeout=START_TIMEOUT)
        self.first_line = line
        assert line is not None, f"{self.profile}: exited before listening"
        event = json.loads(line)
        assert event["event"] == "listening"
        self.port = int(event["port"])
        return self.port

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def entries(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in list(self.lines)]

    async def wait_logged(self, text: str, timeout_s: float = TIMEOUT) -> list[dict[str, Any]]:
        """The lines once a request record ``"METHOD /path STATUS"`` (or a line whose
        ``message`` is ``text``) was read (polled, bounded)."""
        deadline = time.monotonic() + timeout_s
        while True:
            entries = self.entries()
            if any(_said(e) == text for e in entries):
                return entries
            if time.monotonic() >= deadline:
                raise AssertionError(f"{self.profile}: {text!r} not logged within {timeout_s:g} s")
            await asyncio.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._reader.join(timeout=5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture(scope="module")
def healthy() -> Iterator[BackendProcess]:
    backend = BackendProcess("healthy")
    try:
        backend.wait_listening()
        yield backend
    finally:
        backend.stop()


@pytest.fixture
def spawn() -> Iterator[Callable[..., BackendProcess]]:
    started: list[BackendProcess] = []

    def _spawn(profile: str, listen: bool = True, **env: str) -> BackendProcess:
        backend = BackendProcess(profile, env)
        started.append(backend)
        if listen:
            backend.wait_listening()
        return backend

    yield _spawn
    for backend in started:
        backend.stop()


async def recv_json(ws: ClientConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))


async def open_ws(
    backend: BackendProcess, user: str | None, path: str = "/websocket"
) -> ClientConnection:
    subprotocols = [f"jwt.{token_for(user)}"] if user else None
    ws = await connect(f"{backend.ws}{path}", subprotocols=subprotocols, open_timeout=TIMEOUT)
    welcome = await recv_json(ws)
    assert welcome["type"] == "connected"
    return ws


async def run_agent(ws: ClientConnection, run_id: str, **extra: Any) -> list[dict[str, Any]]:
    """Send agent_execute and collect frames until agent_completed of this run."""
    data = {"message": "check the golden path", "run_id": run_id, **extra}
    await ws.send(json.dumps({"type": "agent_execute", "data": data}))
    frames = []
    while True:
        frame = await recv_json(ws)
        frames.append(frame)
        if frame["type"] == "agent_completed" and frame["run_id"] == run_id:
            return frames


async def handshake_status(url: str, **kwargs: Any) -> int:
    try:
        async with connect(url, open_timeout=TIMEOUT, **kwargs):
            return 101
    except InvalidStatus as exc:
        return exc.response.status_code


# ----------------------------------------------------------------------------- healthy


async def test_listening_line_then_health_endpoints(healthy: BackendProcess) -> None:
    """The first stdout line announces the port; /health, /ws/health and /ws/test GET answer."""
    assert json.loads(healthy.first_line or "") == {"event": "listening", "port": healthy.port}
    async with httpx.AsyncClient(base_url=healthy.http, timeout=TIMEOUT) as client:
        health = await client.get("/health")
        ws_health = await client.get("/ws/health")
        ws_test = await client.get("/ws/test")
    assert health.status_code == 200
    body = health.json()
    assert body["status"] == "ok"
    assert body["revision"] == healthy.revision
    assert body["service"] == "svc"
    assert body["environment"] == "sandbox"
    assert body["profile"] == "healthy"
    assert {"timestamp", "version"} <= body.keys()
    assert ws_health.status_code == 200
    assert ws_health.json()["connections"]["active"] >= 0
    assert ws_test.status_code == 200
    assert ws_test.json()["message"] == "websocket test endpoint"


async def test_ping_pong_ack_and_invalid_json_keep_socket_open(healthy: BackendProcess) -> None:
    """ping -> pong, unknown type -> ack, non-JSON -> invalid_json error, socket stays open."""
    token = token_for("alice")
    async with connect(
        f"{healthy.ws}/ws/test", subprotocols=[f"jwt.{token}"], open_timeout=TIMEOUT
    ) as ws:
        assert ws.subprotocol == f"jwt.{token}"  # the server echoes the selected subprotocol
        welcome = await recv_json(ws)
        assert welcome["type"] == "connected"
        assert welcome["user_id"] == "alice"
        assert welcome["revision"] == healthy.revision
        assert welcome["connection_id"]
        await ws.send(json.dumps({"type": "ping"}))
        pong = await recv_json(ws)
        assert pong["type"] == "pong"
        assert pong["timestamp"]
        await ws.send(json.dumps({"type": "test", "id": 7}))
        assert (await recv_json(ws))["type"] == "ack"
        await ws.send("not json")
        error = await recv_json(ws)
        assert error["type"] == "error"
        assert error["error"] == "invalid_json"
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_json(ws))["type"] == "pong"


async def test_five_critical_events_in_order(healthy: BackendProcess) -> None:
    """agent_execute yields the five critical events in order with user_id, run_id, thread_id."""
    ws = await open_ws(healthy, "alice")
    async with ws:
        frames = await run_agent(ws, "run-42", thread_id="thread-7")
    assert [f["type"] for f in frames] == list(CRITICAL_EVENTS)
    for frame in frames:
        assert frame["user_id"] == "alice"
        assert frame["run_id"] == "run-42"
        assert frame["thread_id"] == "thread-7"
        assert frame["timestamp"]
    by_type = {f["type"]: f for f in frames}
    assert by_type["agent_started"]["agent_name"]
    assert by_type["agent_thinking"]["reasoning"]
    assert by_type["tool_executing"]["tool_name"]
    assert "parameters" in by_type["tool_executing"]
    assert "results" in by_type["tool_completed"]
    assert by_type["tool_completed"]["duration"] >= 0
    assert by_type["agent_completed"]["status"] == "success"
    assert by_type["agent_completed"]["final_response"]


@pytest.mark.parametrize("kind", ["chat_message", "user_message"])
async def test_chat_and_user_messages_also_run_the_agent(
    healthy: BackendProcess, kind: str
) -> None:
    """chat_message and user_message are answered with the five events (run id generated)."""
    ws = await open_ws(healthy, "carol")
    async with ws:
        await ws.send(json.dumps({"type": kind, "data": {"message": "hello"}}))
        frames = [await recv_json(ws) for _ in CRITICAL_EVENTS]
    assert [f["type"] for f in frames] == list(CRITICAL_EVENTS)
    assert len({f["run_id"] for f in frames}) == 1
    assert frames[0]["run_id"]


@pytest.mark.parametrize("mode", ["bearer", "subprotocol", "query"])
async def test_auth_modes_accepted(healthy: BackendProcess, mode: str) -> None:
    """A valid JWT is accepted by Authorization header, jwt.<token> subprotocol or ?token=."""
    token = token_for(f"user-{mode}")
    url, kwargs = f"{healthy.ws}/websocket", {}
    if mode == "bearer":
        kwargs = {"additional_headers": {"Authorization": f"Bearer {token}"}}
    elif mode == "subprotocol":
        kwargs = {"subprotocols": [f"jwt.{token}"]}
    else:
        url += f"?token={token}"
    async with connect(url, open_timeout=TIMEOUT, **kwargs) as ws:
        welcome = await recv_json(ws)
    assert welcome["type"] == "connected"
    assert welcome["user_id"] == f"user-{mode}"


def _bad_tokens() -> dict[str, str | None]:
    return {
        "missing": None,
        "malformed": "not-a-jwt",
        "wrong-signature": mint_token("another-secret-0123456789-abcdefghijkl", "mallory"),
        "expired": mint_token(SECRET, "old-user", ttl_s=-120),
    }


@pytest.mark.parametrize("case", ["missing", "malformed", "wrong-signature", "expired"])
@pytest.mark.parametrize("mode", ["bearer", "subprotocol", "query"])
async def test_invalid_tokens_refused_with_error_frame_and_1008(
    healthy: BackendProcess, case: str, mode: str
) -> None:
    """Missing, malformed, wrongly signed and expired tokens get auth_failed then close 1008."""
    token = _bad_tokens()[case]
    if token:
        ISSUED_TOKENS.append(token)
    url, kwargs = f"{healthy.ws}/websocket", {}
    if token is not None and mode == "bearer":
        kwargs = {"additional_headers": {"Authorization": f"Bearer {token}"}}
    elif token is not None and mode == "subprotocol":
        kwargs = {"subprotocols": [f"jwt.{token}"]}
    elif token is not None:
        url += f"?token={token}"
    async with connect(url, open_timeout=TIMEOUT, **kwargs) as ws:
        frame = await recv_json(ws)
        assert frame["type"] == "error"
        assert frame["error"] == "auth_failed"
        assert frame["reason"]
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert ws.close_code == 1008


async def test_users_are_isolated(healthy: BackendProcess) -> None:
    """Events go only to the requesting user's sockets; /ws/health counts open sockets."""
    alice, bob = await open_ws(healthy, "alice"), await open_ws(healthy, "bob")
    async with alice, bob:
        async with httpx.AsyncClient(base_url=healthy.http, timeout=TIMEOUT) as client:
            active = (await client.get("/ws/health")).json()["connections"]["active"]
        assert active >= 2
        frames = await run_agent(alice, "run-alice")
        assert {f["user_id"] for f in frames} == {"alice"}
        # Bob's next frame must be his own pong, not one of Alice's events.
        await bob.send(json.dumps({"type": "ping"}))
        assert (await recv_json(bob))["type"] == "pong"


async def test_log_lines_are_cloud_run_entries_without_tokens(healthy: BackendProcess) -> None:
    """Every stdout line is a JSON line (the app's own with severity and message, or a
    request record with the httpRequest fields, a WebSocket's at close); no token."""
    token = token_for("dave")
    async with connect(f"{healthy.ws}/websocket?token={token}", open_timeout=TIMEOUT) as ws:
        await recv_json(ws)
    async with httpx.AsyncClient(base_url=healthy.http, timeout=TIMEOUT) as client:
        assert (await client.get("/nope")).status_code == 404
    assert await handshake_status(f"{healthy.ws}/no-such-ws") == 404
    entries = await healthy.wait_logged("GET /no-such-ws 404")  # the last request's line
    assert entries
    requests = []
    for entry in entries:
        assert entry["timestamp"].endswith("Z")
        if REQUEST_LOG_KEY in entry:
            requests.append(entry)
            req = entry[REQUEST_LOG_KEY]
            assert set(req) == {
                "requestMethod",
                "requestUrl",
                "status",
                "latency",
                "protocol",
                "userAgent",
                "remoteIp",
            }
            assert req["latency"].endswith("s")
        else:
            assert entry["severity"] in {"INFO", "WARNING", "ERROR"}
            assert isinstance(entry["message"], str)
    texts = [_said(e) for e in requests]
    assert "GET /health 200" in texts
    assert "GET /nope 404" in texts
    assert "GET /no-such-ws 404" in texts
    # Written when the socket closed (before the later requests), as Cloud Run does.
    assert texts.index("GET /websocket 101") < texts.index("GET /nope 404")
    assert any(e[REQUEST_LOG_KEY]["requestUrl"] == "/websocket?token=[REDACTED]" for e in requests)
    raw = "".join(healthy.lines)
    for issued in ISSUED_TOKENS:
        assert issued not in raw
    assert SECRET not in raw


def _said(line: dict[str, Any]) -> str:
    req = line.get(REQUEST_LOG_KEY)
    if isinstance(req, dict):
        return f"{req['requestMethod']} {req['requestUrl'].split('?')[0]} {req['status']}"
    return str(line.get("message", ""))


# ----------------------------------------------------------------------------- profiles


async def test_ws_routes_missing_404_on_ws_while_health_200(spawn: Callable[..., Any]) -> None:
    """ws-routes-missing: every WS handshake and /ws/* GET is 404 while /health is 200."""
    backend = spawn("ws-routes-missing")
    token = token_for("alice")
    for path in ("/websocket", "/ws/test"):
        assert await handshake_status(f"{backend.ws}{path}?token={token}") == 404
    async with httpx.AsyncClient(base_url=backend.http, timeout=TIMEOUT) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ws/health")).status_code == 404
        assert (await client.get("/ws/test")).status_code == 404
    await backend.wait_logged("GET /websocket 404")


async def test_slow_warmup_503_then_200(spawn: Callable[..., Any]) -> None:
    """slow-warmup: 503 {"status": "starting"} on HTTP and WS during warm-up, then 200/101."""
    backend = spawn("slow-warmup", SANDBOX_WARMUP_S="5")
    async with httpx.AsyncClient(base_url=backend.http, timeout=TIMEOUT) as client:
        first = await client.get("/health")
        assert first.status_code == 503
        assert first.json() == {"status": "starting"}
        assert await handshake_status(f"{backend.ws}/websocket") == 503
        deadline = time.monotonic() + T(20)
        status = first.status_code
        while status != 200 and time.monotonic() < deadline:
            await asyncio.sleep(0.25)
            status = (await client.get("/health")).status_code
        assert status == 200
    ws = await open_ws(backend, "alice")
    await ws.close()


async def test_drop_events_never_sends_tool_completed(spawn: Callable[..., Any]) -> None:
    """drop-events: the run completes without tool_completed."""
    backend = spawn("drop-events")
    ws = await open_ws(backend, "alice")
    async with ws:
        frames = await run_agent(ws, "run-1")
    types = [f["type"] for f in frames]
    assert "tool_completed" not in types
    assert types[0] == "agent_started"


async def test_reorder_events_breaks_order(spawn: Callable[..., Any]) -> None:
    """reorder-events: agent_thinking arrives after tool_executing."""
    backend = spawn("reorder-events")
    ws = await open_ws(backend, "alice")
    async with ws:
        frames = await run_agent(ws, "run-1")
    types = [f["type"] for f in frames]
    assert sorted(types) == sorted(CRITICAL_EVENTS)
    assert types.index("agent_thinking") > types.index("tool_executing")


async def test_cross_user_leak_reaches_other_users(spawn: Callable[..., Any]) -> None:
    """cross-user-leak: bob receives alice's events."""
    backend = spawn("cross-user-leak")
    alice, bob = await open_ws(backend, "alice"), await open_ws(backend, "bob")
    async with alice, bob:
        await run_agent(alice, "run-a")
        leaked = await recv_json(bob)
    assert leaked["type"] == "agent_started"
    assert leaked["user_id"] == "alice"


async def test_auth_bypass_accepts_bad_tokens(spawn: Callable[..., Any]) -> None:
    """auth-bypass: no token and wrongly signed tokens are accepted."""
    backend = spawn("auth-bypass")
    async with connect(f"{backend.ws}/websocket", open_timeout=TIMEOUT) as ws:
        assert (await recv_json(ws))["user_id"] == "anonymous"
    forged = mint_token("forged-secret-0123456789-abcdefghijklmnop", "mallory")
    ISSUED_TOKENS.append(forged)
    async with connect(f"{backend.ws}/websocket?token={forged}", open_timeout=TIMEOUT) as ws:
        welcome = await recv_json(ws)
        assert welcome["type"] == "connected"
        assert welcome["user_id"] == "mallory"


async def test_idle_close_drops_tcp_client_sees_1006(spawn: Callable[..., Any]) -> None:
    """idle-close: after SANDBOX_IDLE_CLOSE_S the TCP connection drops without a close frame."""
    backend = spawn("idle-close", SANDBOX_IDLE_CLOSE_S="1")
    ws = await open_ws(backend, "alice")
    started = time.monotonic()
    with pytest.raises(ConnectionClosedError) as closed:
        await asyncio.wait_for(ws.recv(), TIMEOUT)
    assert time.monotonic() - started >= 0.5
    assert ws.close_code == 1006
    assert closed.value.rcvd is None  # no close frame ever arrived


async def test_slow_responses_add_latency(spawn: Callable[..., Any]) -> None:
    """slow-responses: SANDBOX_DELAY_S before HTTP responses and WS replies."""
    backend = spawn("slow-responses", SANDBOX_DELAY_S="0.8")
    async with httpx.AsyncClient(base_url=backend.http, timeout=TIMEOUT) as client:
        started = time.monotonic()
        assert (await client.get("/health")).status_code == 200
        assert time.monotonic() - started >= 0.7
    ws = await open_ws(backend, "alice")
    async with ws:
        started = time.monotonic()
        await ws.send(json.dumps({"type": "ping"}))
        assert (await recv_json(ws))["type"] == "pong"
        assert time.monotonic() - started >= 0.7


def test_deploy_fails_exits_1_without_listening(spawn: Callable[..., Any]) -> None:
    """deploy-fails: an ERROR log line, exit code 1, never a listening line."""
    backend = spawn("deploy-fails", listen=False)
    assert backend.proc.wait(timeout=START_TIMEOUT) == 1
    backend._reader.join(timeout=5)
    first = backend._first.get(timeout=5)
    assert first is not None
    entry = json.loads(first)
    assert "event" not in entry
    assert entry["severity"] == "ERROR"
    assert entry["message"].startswith("startup failed")
