"""``[auth] mode = "message"`` and distinct identities, against a login-message server.

The server takes no credential in the handshake: the first frame must be
``{"type": "login", "token": T}``; a valid HS256 JWT (or one of its static tokens) is
acknowledged with ``login_ok`` carrying the user, anything else gets an error frame and
close 4401. After the login it answers ``ping`` with ``pong`` and an agent request with
``agent_completed`` for that user. Through the load engine and through the phase steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import pytest
from timing import T
from websockets.asyncio.server import ServerConnection, serve

from runbook_lib.context import PhaseContext
from runbook_lib.exceptions import ConfigError
from runbook_lib.settings_load import settings_from_dict
from runbook_lib.steps.business import auth_checks, isolation
from runbook_lib.steps.mission import load_test

pytestmark = pytest.mark.timeout(T(60))

SECRET = "login-server-test-secret-0123456789abcdef"
STATIC = {"tok-alice-6f1d2c3b4a5e": "alice", "tok-bob-9e8d7c6b5a4f3e": "bob"}


@dataclass
class LoginServer:
    url: str = ""
    bypass: bool = False  # accept any token (the fault auth.rejects_invalid must catch)
    logins: list[str] = field(default_factory=list)


def _user_of(token: str, server: LoginServer) -> str | None:
    if token in STATIC:
        return STATIC[token]
    try:
        return str(jwt.decode(token, SECRET, algorithms=["HS256"])["sub"])
    except jwt.PyJWTError:
        return "anyone" if server.bypass else None


@pytest.fixture
async def login_server() -> AsyncIterator[LoginServer]:
    state = LoginServer()

    async def handler(ws: ServerConnection) -> None:
        first = json.loads(await ws.recv())
        user = (
            _user_of(str(first.get("token", "")), state) if first.get("type") == "login" else None
        )
        if user is None:
            await ws.send(json.dumps({"type": "error", "message": "invalid token"}))
            await ws.close(4401, "unauthorized")
            return
        state.logins.append(user)
        await ws.send(json.dumps({"type": "login_ok", "user_id": user}))
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("type") == "ping":
                await ws.send(json.dumps({"type": "pong"}))
            elif msg.get("type") == "agent_execute":
                run_id = msg.get("data", {}).get("run_id")
                done = {"type": "agent_completed", "user_id": user, "run_id": run_id}
                await ws.send(json.dumps(done))

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        state.url = f"http://127.0.0.1:{port}"
        yield state


def _raw(url: str, auth: dict[str, Any], **extra: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "login",
        "target": {"base_url": url, "ws_paths": ["/ws"], "primary_ws_path": "/ws"},
        "auth": {"mode": "message", **auth},
        "flows": {
            "auth": {
                "steps": [
                    {"send": {"type": "login", "token": "{token}"}},
                    {"expect": {"type": "login_ok"}, "timeout_s": T(1.0)},
                ]
            }
        },
        "thresholds": {"load_connections": 6, "isolation_users": 2},
        "timeouts": {"connect_s": T(2.0), "read_s": T(2.0)},
        "checks": {
            "not_applicable": {
                "auth.config": "no auth service",
                "auth.health": "no auth service",
            }
        },
    }
    raw.update(extra)
    return raw


def _ctx(phase: int, raw: dict[str, Any], environ: dict[str, str], run_dir: Path) -> PhaseContext:
    settings = settings_from_dict(raw, environ=environ)
    return PhaseContext(phase=phase, settings=settings, run_dir=run_dir, approve=False)


def _folder_text(run_dir: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in run_dir.rglob("*") if p.is_file())


# ------------------------------------------------------------------ configuration


def test_token_placeholder_needs_message_mode_and_message_mode_needs_an_auth_flow() -> None:
    raw = _raw("http://h", {"jwt_secret_env": "S"})
    env = {"S": SECRET}
    raw["auth"]["mode"] = "bearer"
    with pytest.raises(ConfigError, match=r'flows auth send \{token\}.*mode = "message"'):
        settings_from_dict(raw, environ=env)
    raw = _raw("http://h", {"jwt_secret_env": "S"})
    del raw["flows"]
    with pytest.raises(ConfigError, match=r"needs \[\[flows.auth.steps\]\]"):
        settings_from_dict(raw, environ=env)


def test_token_envs_must_be_distinct_and_cover_the_simulated_users() -> None:
    tokens = list(STATIC)
    env = {"A": tokens[0], "B": tokens[1], "C": tokens[0]}
    with pytest.raises(ConfigError, match="same token"):
        settings_from_dict(_raw("http://h", {"token_envs": ["A", "C"]}), environ=env)
    raw = _raw("http://h", {"token_envs": ["A", "B"]})
    raw["thresholds"]["isolation_users"] = 3
    with pytest.raises(ConfigError, match=r"isolation_users = 3 but auth\.token_envs names 2"):
        settings_from_dict(raw, environ=env)
    s = settings_from_dict(_raw("http://h", {"token_envs": ["A", "B"]}), environ=env)
    assert s.auth.distinct_identities and s.auth.token == tokens[0]
    assert tokens[0] not in repr(s.auth)


# ------------------------------------------------------------------ through the steps


@pytest.mark.slow
async def test_load_sessions_log_in_with_the_token_in_a_frame_then_run_the_flow(
    login_server: LoginServer, tmp_path: Path
) -> None:
    """Each load session sends the login frame first (the auth flow before ping/pong);
    the token reaches the server and never the run folder."""
    ctx = _ctx(4, _raw(login_server.url, {"jwt_secret_env": "S"}), {"S": SECRET}, tmp_path)
    rep = await load_test(ctx)
    by_id = {r.id: r for r in rep.results}
    assert by_id["load.success_rate"].status == "pass", by_id["load.success_rate"].detail
    assert by_id["load.latency_p95"].status == "pass"
    assert login_server.logins == ["runbook-user"] * 6
    steps = ctx.artifacts["load"]["steps"]
    assert [s["step"] for s in steps] == [2, 4] and all(s["samples"] == 6 for s in steps)
    ctx.record(rep)
    assert "eyJ" not in _folder_text(tmp_path) + json.dumps(ctx.artifacts["load"])


@pytest.mark.slow
async def test_auth_checks_send_valid_and_invalid_tokens_in_the_login_frame(
    login_server: LoginServer, tmp_path: Path
) -> None:
    ctx = _ctx(5, _raw(login_server.url, {"jwt_secret_env": "S"}), {"S": SECRET}, tmp_path)
    rep = await auth_checks(ctx)
    by_id = {r.id: r for r in rep.results}
    assert by_id["auth.ws_authenticated"].status == "pass", by_id["auth.ws_authenticated"].detail
    rejects = by_id["auth.rejects_invalid"]
    assert rejects.status == "pass", rejects.detail
    assert set(rejects.observed) == {"missing", "malformed", "wrong_signature", "expired"}
    ctx.record(rep)
    assert "eyJ" not in _folder_text(tmp_path)


@pytest.mark.slow
async def test_a_server_that_acknowledges_any_login_fails_rejects_invalid(
    login_server: LoginServer, tmp_path: Path
) -> None:
    login_server.bypass = True
    ctx = _ctx(5, _raw(login_server.url, {"jwt_secret_env": "S"}), {"S": SECRET}, tmp_path)
    by_id = {r.id: r for r in (await auth_checks(ctx)).results}
    assert by_id["auth.rejects_invalid"].status == "fail"
    assert "ACCEPTED" in by_id["auth.rejects_invalid"].detail


@pytest.mark.slow
async def test_one_static_token_makes_isolation_an_error_saying_every_user_is_one_user(
    login_server: LoginServer, tmp_path: Path
) -> None:
    token = next(iter(STATIC))
    ctx = _ctx(5, _raw(login_server.url, {"token_env": "TOK"}), {"TOK": token}, tmp_path)
    by_id = {r.id: r for r in (await isolation(ctx)).results}
    leak = by_id["isolation.no_cross_user"]
    assert leak.status == "error"
    assert "same user" in leak.detail and "token_envs" in leak.detail
    assert "roll back" not in leak.detail.lower() and "leak" not in leak.detail.lower()
    assert by_id["isolation.sessions"].status == "pass"


@pytest.mark.slow
async def test_token_envs_give_each_simulated_user_its_own_identity(
    login_server: LoginServer, tmp_path: Path
) -> None:
    alice, bob = STATIC
    env = {"A": alice, "B": bob}
    ctx = _ctx(5, _raw(login_server.url, {"token_envs": ["A", "B"]}), env, tmp_path)
    started = time.monotonic()
    by_id = {r.id: r for r in (await isolation(ctx)).results}
    assert sorted(login_server.logins) == ["alice", "bob"]
    assert by_id["isolation.sessions"].status == "pass", by_id["isolation.sessions"].detail
    assert by_id["isolation.no_cross_user"].status != "error", by_id[
        "isolation.no_cross_user"
    ].detail
    assert time.monotonic() - started < T(20)
