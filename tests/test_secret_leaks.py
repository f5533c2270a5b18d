"""Planted secrets never reach the run folder; a leak that slips through is caught; mutations wait.

A hostile service echoes every credential it receives (and the planted secrets it was told)
back in response headers, JSON bodies, error frames and events. The real notebooks run
against it through ``runbook run``; afterwards no byte of the token, the JWT secret or any
minted JWT may be found in any file of the run folder (nor on the console), while the auth
checks still judge what the service did. A secret written around the redaction is caught by
the final scan. The deploy step is a dry run without approval and refuses to run twice.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import nbformat
import pytest
from nbformat.v4 import new_code_cell
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from runbook_lib import cli, evidence, steps
from runbook_lib.context import PHASES, open_phase
from runbook_lib.exceptions import ApprovalRequired
from runbook_lib.redaction import JWT_PATTERN
from runbook_lib.runner import notebooks_dir

TOKEN = "planted-opaque-token-7f3a9c2e1b"  # not JWT-shaped: only the registry can catch it
JWT_SECRET = "planted-jwt-secret-5d8e0a4c6f-91b2c3d4e5f60718"  # >= 32 bytes for HS256
TOKEN_ENV, SECRET_ENV = "LEAKTEST_TOKEN", "LEAKTEST_JWT_SECRET"

SHORT = """
[thresholds]
health_ready_s = 2
ws_health_ready_s = 2
http_latency_samples = 2
monitor_window_s = 2.5  # 5 samples every 0.5 s: the minimum a window is judged on
monitor_interval_s = 0.5
hold_s = 1
event_timeout_s = 3
isolation_users = 3

[timeouts]
connect_s = 3
read_s = 3
"""
CRITICAL = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)
EXTRA = {
    "agent_started": {"agent_name": "triage"},
    "agent_thinking": {"reasoning": "r"},
    "tool_executing": {"tool_name": "search"},
    "tool_completed": {"tool_name": "search", "results": []},
    "agent_completed": {"final_response": "done"},
}


@pytest.fixture(autouse=True)
def _planted(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv(TOKEN_ENV, TOKEN)
    monkeypatch.setenv(SECRET_ENV, JWT_SECRET)


class EchoServer:
    """A WebSocket + HTTP service that reflects every credential it sees.

    * HTTP GETs (health, auth config): 200 JSON whose body and ``X-Debug-Token`` header carry
      the planted token and JWT secret.
    * Upgrade without a credential or with a non-JWT one: HTTP 401 echoing it in a header
      and in the JSON body.
    * Upgrade with a JWT (or the planted token): 101 with ``X-Echo-Token: <token>`` and the
      ``jwt.<token>`` subprotocol selected; then a token it cannot verify gets an error frame
      quoting it and close 1008 (``refuse_valid`` refuses valid ones the same way); a valid
      one gets a welcome, pongs and agent events, each carrying the token.
    """

    def __init__(
        self,
        *,
        refuse_valid: bool = False,
        jwt_secret: str = JWT_SECRET,
        straddle: bool = False,
        encoded: bool = False,
    ) -> None:
        self.refuse_valid = refuse_valid
        self.encoded = encoded  # also echo every encoded form of the credential (issue 11)
        self.straddle = straddle  # answer agent requests with an error frame (see below)
        self.jwt_secret = jwt_secret  # '' when the run is not configured with one
        self.received: list[str] = []
        self.echoes: dict[str, int] = {"header": 0, "json_body": 0, "error_frame": 0, "event": 0}
        self.users: set[str] = set()

    @staticmethod
    def token_of(request: Any) -> str | None:
        query = parse_qs(urlsplit(request.path).query)
        if "token" in query:
            return query["token"][0]
        auth = request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        for offered in request.headers.get("Sec-WebSocket-Protocol", "").split(","):
            if offered.strip().startswith("jwt."):
                return offered.strip()[4:]
        return None

    def user_of(self, token: str | None) -> str | None:
        if not token:
            return None
        if token == TOKEN:
            return "env-token-user"
        try:
            return str(jwt.decode(token, self.jwt_secret, algorithms=["HS256"])["sub"])
        except (jwt.PyJWTError, KeyError):
            return None

    def _json(self, conn: ServerConnection, status: int, body: dict[str, Any]) -> Any:
        resp = conn.respond(status, json.dumps(body))
        resp.headers["Content-Type"] = "application/json"
        self.echoes["json_body"] += 1
        return resp

    def process_request(self, conn: ServerConnection, request: Any) -> Any:
        token = self.token_of(request)
        if token:
            self.received.append(token)
        if request.headers.get("Upgrade", "").lower() != "websocket":
            resp = self._json(
                conn,
                200,
                {
                    "status": "ok",
                    "connections": {"active": 0},
                    "debug": {"token": TOKEN, "jwt_secret": self.jwt_secret},
                    **({"forms": echo_forms(TOKEN)} if self.encoded else {}),
                },
            )
            resp.headers["X-Debug-Token"] = TOKEN
            self.echoes["header"] += 1
            return resp
        if token is None or (token.count(".") != 2 and token != TOKEN):
            body: dict[str, Any] = {"error": "invalid token", "received": token, "expected": TOKEN}
            if self.encoded:
                body["error"] = "invalid token; expected " + " ".join(echo_forms(TOKEN).values())
            resp = self._json(conn, 401, body)
            resp.headers["X-Echo-Token"] = token or TOKEN
            resp.headers["WWW-Authenticate"] = f'Bearer error="invalid_token" token="{token}"'
            self.echoes["header"] += 1
            return resp
        return None

    def process_response(self, conn: ServerConnection, request: Any, response: Any) -> None:
        token = self.token_of(request)
        if token and response.status_code == 101:
            response.headers["X-Echo-Token"] = token
            self.echoes["header"] += 1

    async def handler(self, ws: ServerConnection) -> None:
        token = self.token_of(ws.request)
        user = self.user_of(token)
        try:
            if user is None or self.refuse_valid:
                await ws.send(
                    json.dumps(
                        {
                            "type": "error",
                            "message": f"token {token} rejected (key {self.jwt_secret}?)",
                            "token": token,
                        }
                    )
                )
                self.echoes["error_frame"] += 1
                # The close reason quotes the token too when it fits (123 bytes at most).
                short = token is not None and len(token) < 100
                await ws.close(1008, f"invalid token {token}" if short else "invalid token")
                return
            self.users.add(user)
            await ws.send(json.dumps({"type": "connected", "user_id": user, "token": token}))
            async for raw in ws:
                try:
                    msg = json.loads(raw)
                except ValueError:
                    continue
                kind = msg.get("type")
                if kind == "ping":
                    await ws.send(json.dumps({"type": "pong", "echo": token}))
                elif kind in ("agent_execute", "chat_message") and self.straddle:
                    await ws.send(straddling_error(token or ""))
                    self.echoes["error_frame"] += 1
                elif kind in ("agent_execute", "chat_message"):
                    run_id = (msg.get("data") or {}).get("run_id") or "srv-run"
                    for etype in CRITICAL:
                        event = {
                            "type": etype,
                            "user_id": user,
                            "run_id": run_id,
                            "timestamp": "2026-01-01T00:00:00Z",
                            "token": token,
                            "auth_header": f"Authorization: Bearer {token}",
                            **EXTRA[etype],
                        }
                        if self.encoded:
                            event["forms"] = echo_forms(token or "")
                            event["agent_name"] = "b64=" + echo_forms(token or "")["b64"]
                        await ws.send(json.dumps(event))
                        self.echoes["event"] += 1
                        await asyncio.sleep(0.01)
        except ConnectionClosed:
            pass


def echo_forms(secret: str) -> dict[str, str]:
    """The credential the way a careless service or script echoes it: every encoding of
    issue 11, each an independent spelling (not computed by the code under test)."""
    raw = secret.encode()
    return {
        "raw": secret,
        "upper": secret.upper(),
        "lower": secret.lower(),
        "b64": base64.b64encode(raw).decode(),
        "b64url_nopad": base64.urlsafe_b64encode(raw).decode().rstrip("="),
        "b64_offset1": base64.b64encode(b"u:" + raw).decode(),
        "b64_offset2": base64.b64encode(b"id:" + raw + b"!").decode(),
        "b64_offset0_long": base64.b64encode(b"abc" + raw + b"?x").decode(),
        "percent": "".join(f"%{b:02X}" for b in raw),
        "hex": raw.hex(),
        "HEX": raw.hex().upper(),
    }


_B64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{8,}")


def _encoded_hits(data: bytes, secret: str) -> list[str]:
    """Every spelling of ``secret`` found in ``data``: case-folded, hex, percent, and any
    base64 run (standard or URL-safe, at any character offset) that decodes to it."""
    raw = secret.encode()
    low = data.lower()
    hits = [
        name
        for name, needle in (
            ("raw/case-folded", raw.lower()),
            ("hex", raw.hex().encode()),
            ("percent", "".join(f"%{b:02x}" for b in raw).encode()),
        )
        if needle in low
    ]
    for m in _B64_RUN.finditer(data):
        run = m.group(0).replace(b"-", b"+").replace(b"_", b"/")
        for start in range(4):
            chunk = run[start:]
            if len(chunk) % 4 == 1:
                chunk = chunk[:-1]
            if raw in base64.b64decode(chunk + b"=" * (-len(chunk) % 4)):
                hits.append("base64")
                break
    return hits


def straddling_error(token: str) -> str:
    """An error frame whose 200-character excerpt cut falls in the middle of ``token``."""
    head = '{"type": "error", "message": "'
    tail = '", "token": "'
    pad = "x" * (190 - len(head) - len(tail))
    frame = head + pad + tail + token + '"}'
    assert frame.index(token) == 190
    return frame


def _start(loop_thread: Any, server: EchoServer) -> str:
    port = loop_thread.websocket(
        server.handler,
        process_request=server.process_request,
        process_response=server.process_response,
        select_subprotocol=lambda conn, offered: offered[0] if offered else None,
    )
    return f"http://127.0.0.1:{port}"


def _env(tmp_path: Path, base: str, auth: str) -> Path:
    path = tmp_path / "hostile.toml"
    path.write_text(
        f'name = "hostile"\n[target]\nbase_url = "{base}"\nauth_url = "{base}"\n'
        f"[auth]\n{auth}\n{SHORT}",
        encoding="utf-8",
    )
    return path


def _cli_run(tmp_path: Path, env: Path, phases: str, capsys: Any, *extra: str) -> tuple:
    out = tmp_path / "outputs"
    start = time.monotonic()
    code = cli.main(["run", "--env", str(env), "--phases", phases, "--out", str(out), *extra])
    elapsed = time.monotonic() - start
    console = capsys.readouterr()
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    results = json.loads((run_dir / "results.json").read_text())
    return code, run_dir, results, console.out + console.err, elapsed


def _checks(results: dict) -> dict[str, dict]:
    return {c["id"]: c for c in results["checks"]}


def _assert_nothing_secret(run_dir: Path, console: str, server: EchoServer) -> None:
    """No planted value, no received token and no JWT-shaped string in any file or on screen."""
    jwts = {t for t in server.received if JWT_PATTERN.fullmatch(t)}
    needles = {v for v in (TOKEN, server.jwt_secret, *jwts) if v}
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    names = {p.relative_to(run_dir).as_posix() for p in files}
    # Every kind of file the folder holds was searched.
    assert {"results.json", "junit.xml", "summary.md", "index.html", "manifest.json"} <= names
    assert any(n.startswith("logs/") for n in names) and any(n.startswith("phases/") for n in names)
    assert any(n.endswith(".ipynb") for n in names) and any(n.endswith(".html") for n in names)
    jwt_bytes = re.compile(JWT_PATTERN.pattern.encode())
    for path in files:
        data = path.read_bytes()
        for needle in needles:
            assert needle.encode() not in data, (path.name, needle[:12])
        assert not jwt_bytes.search(data), (path.name, jwt_bytes.search(data))
    for needle in needles:
        assert needle not in console
    assert not JWT_PATTERN.search(console)
    assert not (run_dir / evidence.UNSAFE_MARKER).exists()


@pytest.mark.e2e
def test_echoed_secrets_never_reach_the_run_folder_and_checks_still_judge(
    tmp_path, loop_thread, capsys
) -> None:
    """JWT secret + token planted, minted JWTs echoed everywhere: folder clean, auth checks pass."""
    server = EchoServer()
    base = _start(loop_thread, server)
    env = _env(
        tmp_path,
        base,
        f'mode = "subprotocol"\ntoken_env = "{TOKEN_ENV}"\njwt_secret_env = "{SECRET_ENV}"',
    )
    code, run_dir, results, console, elapsed = _cli_run(tmp_path, env, "1,3,5,7", capsys)
    assert elapsed < 240
    # The hostile service really saw and echoed minted tokens, per user, on every channel.
    minted = {t for t in server.received if JWT_PATTERN.fullmatch(t)}
    assert len(minted) >= 4, server.received
    assert len(server.users) >= 3, server.users
    assert all(n > 0 for n in server.echoes.values()), server.echoes
    _assert_nothing_secret(run_dir, console, server)
    # The checks still judge what the service did.
    checks = _checks(results)
    for cid in (
        "auth.config",
        "auth.health",
        "auth.ws_authenticated",
        "auth.rejects_invalid",
        "ws.upgrade",
        "ws.roundtrip",
        "chat.flow",
        "events.critical_delivered",
        "isolation.no_cross_user",
        "monitor.hold",
        "evidence.secret_scan",
    ):
        assert checks[cid]["status"] == "pass", checks[cid]
    rejects = checks["auth.rejects_invalid"]["observed"]
    assert rejects["missing"].startswith("refused: HTTP 401")
    assert rejects["wrong_signature"].startswith("refused") and rejects["expired"].startswith(
        "refused"
    )
    assert code == 0, [c for c in results["checks"] if c["status"] in ("fail", "error")]
    assert results["safe_to_share"] is True
    assert evidence.verify_run(run_dir).ok


@pytest.mark.e2e
@pytest.mark.parametrize("mode", ["bearer", "query"])
def test_refused_valid_token_fails_auth_without_leaking_it(
    tmp_path, loop_thread, capsys, monkeypatch, mode
) -> None:
    """An env token sent as a header or in the URL and quoted back in an error frame: fail, no leak."""
    monkeypatch.delenv(SECRET_ENV)  # only the ready-made token is configured
    server = EchoServer(refuse_valid=True, jwt_secret="")
    base = _start(loop_thread, server)
    env = _env(tmp_path, base, f'mode = "{mode}"\ntoken_env = "{TOKEN_ENV}"')
    code, run_dir, results, console, elapsed = _cli_run(tmp_path, env, "3,5", capsys)
    assert elapsed < 150
    assert TOKEN in server.received and server.echoes["error_frame"] > 0
    _assert_nothing_secret(run_dir, console, server)
    checks = _checks(results)
    authed = checks["auth.ws_authenticated"]
    assert authed["status"] == "fail", authed
    assert "error frame" in authed["detail"] and "was not accepted" in authed["detail"]
    assert checks["ws.roundtrip"]["status"] == "fail"
    assert "1008" in checks["ws.roundtrip"]["detail"]
    # The valid token was refused too: refusing the invalid ones proves nothing (error),
    # so the verdict is error, not a plain fail.
    assert checks["auth.rejects_invalid"]["status"] == "error"
    assert "proves nothing" in checks["auth.rejects_invalid"]["detail"]
    assert code == 1 and results["verdict"] == "error"
    assert checks["evidence.secret_scan"]["status"] == "pass"
    assert evidence.verify_run(run_dir).ok


@pytest.mark.e2e
def test_no_secret_prefix_survives_excerpt_truncation(
    tmp_path, loop_thread, capsys, monkeypatch
) -> None:
    """An error frame cut for display in the middle of the token must not show its beginning."""
    monkeypatch.delenv(SECRET_ENV)
    server = EchoServer(straddle=True, jwt_secret="")
    base = _start(loop_thread, server)
    env = _env(tmp_path, base, f'mode = "bearer"\ntoken_env = "{TOKEN_ENV}"')
    code, run_dir, results, console, _ = _cli_run(tmp_path, env, "5", capsys)
    chat = _checks(results)["chat.flow"]
    assert chat["status"] == "fail" and "error frame" in chat["detail"], chat
    assert "[REDACTED]" in chat["detail"]
    _assert_nothing_secret(run_dir, console, server)
    prefix = TOKEN[:10].encode()
    for path in run_dir.rglob("*"):
        if path.is_file():
            assert prefix not in path.read_bytes(), path.name
    assert code == 1


@pytest.mark.e2e
def test_credential_echoed_in_every_encoding_never_reaches_the_folder(
    tmp_path, loop_thread, capsys, monkeypatch
) -> None:
    """reliability.md 7a/7b: a service echoes the token raw, upper-cased, base64 (standard,
    URL-safe, at every alignment), percent-encoded and hex, in bodies, error frames and
    events; a mission-critical command prints the same forms and fails. No form of the
    token may be found in any file of the run folder, and the scan agrees (it passes)."""
    monkeypatch.delenv(SECRET_ENV)
    server = EchoServer(encoded=True, jwt_secret="")
    base = _start(loop_thread, server)
    script = tmp_path / "debug_env.py"
    script.write_text(
        "import base64, os, sys\n"
        f"t = os.environ[{TOKEN_ENV!r}]\n"
        "r = t.encode()\n"
        "print('upper=' + t.upper())\n"
        "print('b64=' + base64.b64encode(r).decode())\n"
        "print('b64url=' + base64.urlsafe_b64encode(b'xy' + r).decode().rstrip('='))\n"
        "print('hex=' + r.hex().upper())\n"
        "print('all ' + base64.b64encode(b'k' + r).decode() + ' ' + t.lower())\n"
        "sys.exit(1)\n",
        encoding="utf-8",
    )
    env = _env(tmp_path, base, f'mode = "bearer"\ntoken_env = "{TOKEN_ENV}"')
    with env.open("a", encoding="utf-8") as f:
        f.write(
            f'[[commands.mission_critical]]\nname = "debug_env"\n'
            f'run = "{sys.executable} {script}"\ntimeout_s = 30\n'
        )
    code, run_dir, results, console, _ = _cli_run(tmp_path, env, "3,4,5", capsys)
    assert server.echoes["event"] > 0 and server.echoes["json_body"] > 0, server.echoes
    checks = _checks(results)
    assert checks["tests.debug_env"]["status"] == "fail"
    assert "[REDACTED]" in checks["tests.debug_env"]["detail"]
    leaks = {}
    for path in run_dir.rglob("*"):
        if path.is_file():
            hits = _encoded_hits(path.read_bytes(), TOKEN)
            if hits:
                leaks[path.relative_to(run_dir).as_posix()] = hits
    assert leaks == {}
    assert _encoded_hits(console.encode(), TOKEN) == []
    assert checks["evidence.secret_scan"]["status"] == "pass"
    assert not (run_dir / evidence.UNSAFE_MARKER).exists()
    assert code == 1  # the failing command, not a leak
    assert evidence.verify_run(run_dir).ok


def test_the_scan_finds_every_encoded_form_written_around_the_redaction(tmp_path) -> None:
    """A file written raw with each form: the final scan counts every one of them."""
    forms = echo_forms(TOKEN)
    for name, form in forms.items():
        (tmp_path / f"{name}.txt").write_text(f"leaked: {form}\n", encoding="utf-8")
    leaks = evidence.scan_secrets(tmp_path, [TOKEN])
    assert sorted(lk.file for lk in leaks) == sorted(f"{n}.txt" for n in forms)
    assert all(_encoded_hits((tmp_path / lk.file).read_bytes(), TOKEN) for lk in leaks)


# ------------------------------------------------------------------ a leak that slips through


def _leaky_notebooks(folder: Path) -> Path:
    """The real notebooks, phase 3 with two extra cells: one prints the secrets (redacted on
    write), one writes them raw into ``logs/`` behind the redaction's back."""
    shutil.copytree(notebooks_dir(), folder)
    path = folder / PHASES[3][0]
    nb = nbformat.read(path, as_version=4)
    nb.cells.append(
        new_code_cell(
            f'import os, pathlib, runbook_lib.tokens\nprint(os.environ["{TOKEN_ENV}"], '
            f'os.environ["{SECRET_ENV}"])'
        )
    )
    nb.cells.append(
        new_code_cell(
            f'leaked = os.environ["{TOKEN_ENV}"] + " " + runbook_lib.tokens.mint_jwt('
            f'os.environ["{SECRET_ENV}"], "someone")\n'
            'pathlib.Path(run_dir, "logs", "debug.txt").write_text(leaked)'
        )
    )
    for i, c in enumerate(nb.cells):
        c["id"] = f"cell-{i}"
    nbformat.write(nb, path)
    return folder


@pytest.mark.e2e
def test_a_leak_around_the_redaction_marks_the_folder_unsafe_and_fails(tmp_path, capsys) -> None:
    env = tmp_path / "leaky.toml"
    env.write_text(
        f'name = "leaky"\n[auth]\nmode = "bearer"\ntoken_env = "{TOKEN_ENV}"\n'
        f'jwt_secret_env = "{SECRET_ENV}"\n',
        encoding="utf-8",
    )
    nbs = _leaky_notebooks(tmp_path / "notebooks")
    code, run_dir, results, console, _ = _cli_run(
        tmp_path, env, "3", capsys, "--notebooks", str(nbs)
    )
    # The run fails with its own message, on the console and in the reports.
    assert code == 1
    assert "NOT SAFE TO SHARE" in console and evidence.UNSAFE_MARKER in console
    assert "verdict: ERROR" in console
    assert results["verdict"] == "error" and results["safe_to_share"] is False
    scan = _checks(results)["evidence.secret_scan"]
    assert scan["status"] == "error"
    assert scan["detail"] == (
        "secret material found in 1 file(s): logs/debug.txt; do not share this folder"
    )
    marker = (run_dir / evidence.UNSAFE_MARKER).read_text()
    assert "logs/debug.txt: registered secret value x1" in marker
    assert "logs/debug.txt: JWT-shaped string x1" in marker
    assert "evidence.secret_scan" in (run_dir / "summary.md").read_text()
    # Only the raw write leaked: the printed secrets were redacted in the notebook and HTML.
    for name in ("03_endpoint_validation.ipynb", "03_endpoint_validation.html"):
        text = (run_dir / name).read_text()
        assert TOKEN not in text and JWT_SECRET not in text and "[REDACTED]" in text
    for needle in (TOKEN, JWT_SECRET):
        assert needle not in marker and needle not in console
    # The folder is sealed as it is (marker included) and says it is unsafe.
    report = evidence.verify_run(run_dir)
    assert report.ok and not report.safe_to_share
    assert json.loads((run_dir / evidence.MANIFEST).read_text())["safe_to_share"] is False
    assert cli.main(["verify", str(run_dir)]) == 0
    assert "NOT SAFE TO SHARE" in capsys.readouterr().out


# ------------------------------------------------------------------ mutations under control


@pytest.fixture
def sandbox(tmp_path_factory):
    from runbook_lib.sandbox import manager

    state = tmp_path_factory.mktemp("trust-sandbox")
    info = manager.up(state_dir=state, env_file=state / "local.toml")
    try:
        yield info
    finally:
        with contextlib.suppress(Exception):
            manager.down(state)


@pytest.mark.e2e
async def test_deploy_is_a_dry_run_without_approval_and_refuses_to_run_twice(
    sandbox, tmp_path
) -> None:
    env = str(sandbox.env_file)
    # The sandbox's env file auto-approves: turn that off to see what an engineer sees.
    ctx = open_phase(
        2, environment=env, run_dir=str(tmp_path / "dry"), overrides={"auto_approve": False}
    )
    assert not ctx.approved
    report = await steps.deploy(ctx)
    assert {r.id for r in report.results} == set(steps.deploy.check_ids)
    for r in report.results:
        assert r.status == "skip" and r.detail.startswith("dry-run"), r
        assert "sandbox/backend:healthy" in r.detail  # the request body's image
        assert "gcloud run deploy" in r.detail  # the equivalent command
    assert ctx.artifacts["dry_run"] is True
    assert "gcloud run deploy" in ctx.artifacts["deploy_gcloud"]
    assert ctx.artifacts["deploy_request"]
    # Re-running a dry run is harmless: it claims nothing.
    again = await steps.deploy(ctx)
    assert all(r.status == "skip" for r in again.results)
    before = len(ctx.results)

    approved = open_phase(2, environment=env, run_dir=str(tmp_path / "real"), approve=True)
    first = await steps.deploy(approved)
    assert {r.id: r.status for r in first.results}["deploy.executed"] == "pass", first.results
    # Re-executing the cell in the same context (JupyterLab) refuses instead of deploying again.
    with pytest.raises(ApprovalRequired, match="already ran"):
        await steps.deploy(approved)
    assert [r.id for r in approved.results].count("deploy.executed") == 1
    assert len(ctx.results) == before


def test_excerpts_are_cut_after_redaction_never_before() -> None:
    """A cut through a registered secret or a JWT leaves no recognisable beginning of it."""
    from runbook_lib.protocol import parse_frame
    from runbook_lib.redaction import redact_excerpt, register_secret
    from runbook_lib.settings import ProtocolSettings

    register_secret(TOKEN)
    frame = straddling_error(TOKEN)
    assert TOKEN[:10] not in redact_excerpt(frame, 200, "…")
    assert redact_excerpt(frame, 200, "…").endswith('[REDACTED]"}') is False
    minted = jwt.encode({"sub": "u"}, JWT_SECRET, algorithm="HS256")
    assert minted[:40] not in redact_excerpt("x" * 180 + minted, 200)
    parsed = parse_frame(frame, ProtocolSettings())
    assert TOKEN[:10] not in parsed.excerpt and "[REDACTED]" in parsed.excerpt
    huge = frame + " " * (2 * 1024 * 1024)  # oversized: excerpt of the head only
    assert TOKEN[:10] not in parse_frame(huge, ProtocolSettings(), max_parse_bytes=1000).excerpt
