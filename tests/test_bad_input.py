"""Bad input matrix (issue 5): every bad configuration or hostile target ends cleanly.

Configuration and usage errors exit 2 with one line naming the problem. Hostile targets
(refusing, silent, TLS spoken to plain HTTP, binary / non-JSON / 10 MB frames, a close in
the middle of the handshake, a Cloud Run API answering 500 or malformed JSON) are driven
through the real notebooks by the runner: each run ends with exit 1, every failed or errored
check says what happened, no cell shows a traceback, the run folder is complete and verifies,
and nothing waits longer than its configured timeout.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from runbook_lib import cli
from runbook_lib.context import PHASES
from runbook_lib.engines import InProcessEngine, KernelEngine
from runbook_lib.manifest import verify_run
from runbook_lib.runner import RunOptions, run

# Short windows so each hostile run is a few seconds per phase; every wait is bounded by these.
SHORT = """
[thresholds]
health_ready_s = 2
ws_health_ready_s = 2
http_latency_samples = 2
monitor_window_s = 2.5  # 5 samples every 0.5 s: the minimum a window is judged on
monitor_interval_s = 0.5
hold_s = 1
event_timeout_s = 3
isolation_users = 2

[timeouts]
connect_s = 2
read_s = 3
cloudrun_s = 3
operation_s = 10
command_s = 10
"""
# Kernel starts dominate on a loaded 2-core machine: bound generously, but far below a hang.
PHASE_BUDGET_S = 45.0


def _env(tmp_path: Path, name: str, body: str, short: bool = True) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(f'name = "{name}"\n{body}\n{SHORT if short else ""}', encoding="utf-8")
    return path


def _target(base_url: str, **extra: str) -> str:
    lines = ["[target]", f'base_url = "{base_url}"']
    lines += [f"{k} = {v}" for k, v in extra.items()]
    return "\n".join(lines) + "\n"


def _cloudrun(endpoint: str, logging: bool = False) -> str:
    text = (
        '[cloudrun]\nproject = "p"\nregion = "r"\nservice = "backend"\n'
        f'api_endpoint = "{endpoint}"\n'
    )
    if logging:
        text += "[logging]\nenabled = true\nlookback_s = 60\n"
    return text


def _run(
    tmp_path: Path, env: Path, phases: tuple[int, ...], engine: Any = None
) -> tuple[Any, dict, float]:
    """A run on ``engine`` (default: in process; ``KernelEngine()`` for the notebooks)."""
    start = time.monotonic()
    outcome = run(
        RunOptions(
            environment=str(env),
            out_dir=tmp_path / "outputs",
            phases=phases,
            cell_timeout_s=120,
            deadline_s=600,
        ),
        engine=engine or InProcessEngine(),
    )
    elapsed = time.monotonic() - start
    results = json.loads((outcome.run_dir / "results.json").read_text())
    return outcome, results, elapsed


def _checks(results: dict) -> dict[str, dict]:
    return {c["id"]: c for c in results["checks"]}


def _assert_clean_failure(outcome: Any, results: dict, elapsed: float, phases: tuple[int, ...]):
    """Exit 1, actionable details, no traceback, complete and verifiable folder, bounded."""
    bad = [c for c in results["checks"] if c["status"] in ("fail", "error")]
    assert outcome.exit_code == 1, (outcome.exit_code, outcome.phases, bad)
    assert bad, "a hostile target must fail at least one check"
    assert elapsed < PHASE_BUDGET_S * len(phases), elapsed
    # Every notebook ran to its end: no runner.phase_NN "did not complete" entry.
    assert [o.status for o in outcome.phases if o.status == "error"] == []
    assert not [c for c in results["checks"] if c["id"].startswith("runner.")]
    for c in bad:
        detail = c["detail"] or ""
        assert len(detail) > 15, c
        assert "Traceback" not in detail, c
    rd = outcome.run_dir
    for name in ("results.json", "junit.xml", "summary.md", "index.html", "manifest.json"):
        assert (rd / name).is_file(), name
    for p in phases:
        assert (rd / "phases" / f"{p:02d}.json").is_file()
        nb = rd / PHASES[p][0]
        if not nb.is_file():
            continue  # the in-process engine writes no notebook
        assert nb.with_suffix(".html").is_file(), nb
        cells = json.loads(nb.read_text())["cells"]
        errors = [o for c in cells for o in c.get("outputs", []) if o["output_type"] == "error"]
        assert errors == [], errors
        shown = json.dumps([c.get("outputs", []) for c in cells])
        assert "Traceback" not in shown, nb
    assert verify_run(rd).ok
    assert outcome.safe_to_share


# ------------------------------------------------------------------ CLI: exit 2, one line


def _cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    start = time.monotonic()
    code = cli.main(argv)
    assert time.monotonic() - start < 20
    captured = capsys.readouterr()
    assert "Traceback" not in captured.err + captured.out
    return code, captured.err


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ('[target\nbase_url = "http://x"', "not valid TOML"),
        ('[thresholds]\nhold_s = "long"', "thresholds.hold_s must be a number"),
        (
            "[thresholds]\nload_connections = 2.5",
            "thresholds.load_connections must be a whole number",
        ),
        ('auto_approve = "yes"', "auto_approve"),
        ("[timeouts]\nconnect_s = -1", "timeouts.connect_s must not be negative"),
        ('[target]\nbase_url = "ftp://files.example.com"', "scheme must be http or https"),
        ('[target]\nbase_url = "http://h"\nws_url = "http://h"', "target.ws_url"),
        ('[target]\nbase_url = "http://h:99999"', "target.base_url"),
        ('[target]\nws_paths = ["/ws"]', "target.base_url is required"),
        ('[auth]\nmode = "kerberos"', "[auth] mode"),
        ('target = "http://h"', "[target] must be a table"),
        ('[cloudrun]\napi_endpoint = ["a"]', "cloudrun.api_endpoint must be a string"),
        # Strict file (issue 9): a typo is exit 2 naming the closest key, never a green run.
        ('[targets]\nbase_url = "http://h"', "unknown section [targets] (did you mean [target]?)"),
        ("[thresholds]\nhold_secs = 5", "(did you mean thresholds.hold_s?)"),
        ('[target]\nbase_url = "http://h"\nhealth_path = ""', "target.health_path is an empty"),
        ('[auth]\nmode = "bearer"\ntoken_env = "RB_UNSET_TOKEN_VAR"', "auth.token_env"),
        ('[protocol]\npong_pattern = "(("', "protocol.pong_pattern"),
        ("[protocol]\ncritical_events = []", "critical_events_min = 5"),
        ('[[flows.agent.steps]]\nsend = "{nonce}"', "undefined placeholder {nonce}"),
        # Bad numbers (issue 11, reliability.md 6k-6m): rejected at load, naming the key.
        ("[thresholds]\nmonitor_window_s = inf", "thresholds.monitor_window_s"),
        ("[thresholds]\nhold_s = nan", "thresholds.hold_s"),
        ("[thresholds]\nhttp_latency_s = nan", "thresholds.http_latency_s"),
        ("[thresholds]\nmonitor_window_s = 60000", "milliseconds"),
        ("[thresholds]\nhold_s = 30000", "thresholds.hold_s"),
        ("[timeouts]\nconnect_s = 0", "timeouts.connect_s"),
        ("[timeouts]\nread_s = 0", "timeouts.read_s"),
        ("[thresholds]\nmonitor_window_s = 595", "notebook cell timeout"),
    ],
)
def test_bad_environment_file_exits_2_naming_the_key(tmp_path, capsys, body, needle) -> None:
    env = tmp_path / "bad.toml"
    env.write_text(f'name = "bad"\n{body}\n', encoding="utf-8")
    code, err = _cli(
        ["run", "--env", str(env), "--phases", "1", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("runbook: error:") and needle in lines[0], err
    assert str(env) in lines[0]  # names the file
    assert not (tmp_path / "o").exists()  # nothing started, no run folder


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--phases", "9"], "unknown phase 9"),
        (["--phases", "3-1"], "backwards"),
        (["--phases", "x"], "'x' is not a phase number"),
        (["--phases", "1,,2"], "is not a phase number"),
        (["--phases", "0"], "unknown phase 0"),
        (["--param", "novalue"], "expected KEY=VALUE"),
        (["--param", "=5"], "expected KEY=VALUE"),
        (["--param", "hold_s=5"], "dotted setting"),
        (["--param", "thresholds.hold_s=soon"], "thresholds.hold_s must be a number"),
        (["--param", "thresholds.monitor_window_s=Infinity"], "thresholds.monitor_window_s"),
        (["--param", "thresholds.http_latency_s=NaN"], "thresholds.http_latency_s"),
        (["--param", "timeouts.connect_s=0"], "timeouts.connect_s"),
        (["--env", "no-such-environment"], "unknown environment 'no-such-environment'"),
        (["--env", "/nonexistent/x.toml"], "environment file not found"),
        (["--cell-timeout", "-1"], "must be positive"),
    ],
)
def test_bad_command_line_exits_2_with_one_line(tmp_path, capsys, argv, needle) -> None:
    env = _env(tmp_path, "ok", "", short=False)
    full = ["run", "--env", str(env), "--out", str(tmp_path / "o"), *argv]
    if argv[0] == "--env":
        full = ["run", "--out", str(tmp_path / "o"), *argv]
    code, err = _cli(full, capsys)
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert needle in lines[0], err


def test_argparse_usage_errors_exit_2_without_traceback(capsys) -> None:
    code, err = _cli(["run", "--approve=yes"], capsys)
    assert code == 2 and "usage:" in err and "--approve" in err


# ------------------------------------------------------------------ hostile servers


def _http(status: int, body: str, ctype: str = "application/json", extra: str = "") -> bytes:
    data = body.encode()
    reason = {200: "OK", 400: "Bad Request", 500: "Internal Server Error"}.get(status, "X")
    head = (
        f"HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n{extra}\r\n"
    )
    return head.encode() + data


async def _drain_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
    n = int(headers.get("content-length", "0") or 0)
    if n:
        await asyncio.wait_for(reader.readexactly(n), 10.0)


def _api_answering(lt: Any, status: int, body: str) -> str:
    """A Cloud Run / Cloud Logging API stand-in answering every request the same way."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await lt.read_http_head(reader)
        await _drain_body(reader, headers)
        writer.write(_http(status, body))
        await writer.drain()

    return f"http://127.0.0.1:{lt.raw(handler)}"


def _silent(lt: Any) -> int:
    """Accepts TCP, reads whatever comes, never answers."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while await reader.read(65536):
            pass

    return lt.raw(handler)


def _plain_http(lt: Any) -> int:
    """A plain HTTP server: a TLS ClientHello gets what such a server says, a 400."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        first = await reader.read(1)
        if first == b"\x16":  # TLS handshake record
            await reader.read(65536)
            writer.write(_http(400, "Bad Request: this is a plain HTTP port", "text/plain"))
        else:
            writer.write(_http(200, '{"status": "ok"}'))
        await writer.drain()

    return lt.raw(handler)


def _closes_mid_handshake(lt: Any) -> int:
    """HTTP works; a WebSocket upgrade gets half a 101 head, then the connection closes."""

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        _, headers = await lt.read_http_head(reader)
        if headers.get("upgrade", "").lower() == "websocket":
            writer.write(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n")
        else:
            writer.write(_http(200, '{"status": "ok"}'))
        await writer.drain()

    return lt.raw(handler)


HUGE = 10 * 1024 * 1024


def _bad_frames(lt: Any) -> int:
    """A WebSocket server that answers every message with a bad frame chosen by the path."""

    def process_request(conn: ServerConnection, request: Any) -> Any:
        if request.headers.get("Upgrade", "").lower() != "websocket":
            resp = conn.respond(200, '{"status": "ok"}')
            resp.headers["Content-Type"] = "application/json"
            return resp
        return None

    def bad(path: str) -> str | bytes:
        if path.startswith("/binary"):
            return b"\x00\xff\xfe\x01 binary garbage"
        if path.startswith("/nonjson"):
            return "<html><body>502 Bad Gateway</body></html>"
        return json.dumps({"type": "pong", "pad": "x" * HUGE})

    async def handler(ws: ServerConnection) -> None:
        frame = bad(ws.request.path)
        try:
            await ws.send(frame)
            async for _ in ws:
                await ws.send(frame)
        except ConnectionClosed:
            pass

    return lt.websocket(handler, process_request=process_request, max_size=None)


# ------------------------------------------------------------------ hostile targets, real runs


@pytest.mark.e2e
def test_refusing_target_and_cloudrun_500(tmp_path, loop_thread, closed_port) -> None:
    """Connection refused everywhere on the target; the Cloud Run and Logging APIs answer 500.

    Run through the notebooks and their kernels: no cell shows an error or a traceback."""
    api = _api_answering(loop_thread, 500, "upstream exploded")
    env = _env(
        tmp_path, "refused", _target(f"http://127.0.0.1:{closed_port}") + _cloudrun(api, True)
    )
    phases = (1, 3)
    outcome, results, elapsed = _run(tmp_path, env, phases, KernelEngine())
    _assert_clean_failure(outcome, results, elapsed, phases)
    checks = _checks(results)
    assert checks["status.revision_identified"]["status"] == "error"
    assert "500" in checks["status.revision_identified"]["detail"]
    assert "refused" in checks["ws.upgrade"]["detail"]
    assert "refused" in checks["health.backend"]["detail"]
    assert checks["logs.no_routing_errors"]["status"] in ("error", "fail")
    assert checks["logs.no_routing_errors"]["detail"]


@pytest.mark.e2e
def test_silent_target_and_cloudrun_malformed_json_are_bounded(tmp_path, loop_thread) -> None:
    """A target that accepts TCP and never answers; a Cloud Run API answering broken JSON."""
    api = _api_answering(
        loop_thread, 200, '{"name": "projects/p/locations/r/services/backend", "tr'
    )
    port = _silent(loop_thread)
    env = _env(tmp_path, "silent", _target(f"http://127.0.0.1:{port}") + _cloudrun(api))
    phases = (1, 3, 5, 7)
    outcome, results, elapsed = _run(tmp_path, env, phases)
    _assert_clean_failure(outcome, results, elapsed, phases)
    checks = _checks(results)
    assert checks["status.revision_identified"]["status"] == "error"
    for cid in ("ws.upgrade", "health.backend", "ws.roundtrip", "monitor.uptime", "monitor.hold"):
        assert checks[cid]["status"] in ("fail", "error"), checks[cid]
        assert "timeout" in checks[cid]["detail"] or "timed out" in checks[cid]["detail"]
    assert "malformed JSON" in checks["status.revision_identified"]["detail"]
    # A timeout names its bound instead of an empty exception message.
    assert "no answer within 3s" in checks["health.backend"]["detail"]
    assert "no answer within 2s" in checks["ws.upgrade"]["detail"]


@pytest.mark.e2e
def test_tls_spoken_to_a_plain_http_server(tmp_path, loop_thread) -> None:
    """https:// and wss:// pointed at a plain HTTP port: TLS fails, the detail says so."""
    port = _plain_http(loop_thread)
    env = _env(tmp_path, "tls", _target(f"https://127.0.0.1:{port}"))
    phases = (1, 3)
    outcome, results, elapsed = _run(tmp_path, env, phases)
    _assert_clean_failure(outcome, results, elapsed, phases)
    checks = _checks(results)
    for cid in ("health.backend", "ws.upgrade", "ws.roundtrip"):
        assert checks[cid]["status"] == "fail"
        assert "tls" in checks[cid]["detail"].lower() or "ssl" in checks[cid]["detail"].lower()


@pytest.mark.e2e
def test_server_closing_mid_handshake(tmp_path, loop_thread) -> None:
    """The upgrade gets half a 101 head and a closed connection."""
    port = _closes_mid_handshake(loop_thread)
    env = _env(tmp_path, "midclose", _target(f"http://127.0.0.1:{port}"))
    phases = (3,)
    outcome, results, elapsed = _run(tmp_path, env, phases)
    _assert_clean_failure(outcome, results, elapsed, phases)
    checks = _checks(results)
    assert checks["ws.upgrade"]["status"] == "fail"
    assert "closed before a complete response head" in checks["ws.upgrade"]["detail"]
    assert checks["ws.roundtrip"]["status"] == "fail"
    assert checks["ws.test_endpoint"]["status"] == "pass"  # plain HTTP on that server still works


@pytest.mark.e2e
@pytest.mark.parametrize(
    ("path", "words"),
    [
        ("/binary", ("binary",)),
        ("/nonjson", ("json",)),
        ("/huge", ("1009", "larger", "size")),
    ],
)
def test_bad_frames(tmp_path, loop_thread, path, words) -> None:
    """Binary, non-JSON and 10 MB frames instead of JSON: every WS check fails and says why."""
    port = _bad_frames(loop_thread)
    target = _target(
        f"http://127.0.0.1:{port}", primary_ws_path=f'"{path}"', ws_paths=f'["{path}"]'
    )
    env = _env(tmp_path, path.strip("/"), target)
    phases = (3, 5, 7)
    outcome, results, elapsed = _run(tmp_path, env, phases)
    _assert_clean_failure(outcome, results, elapsed, phases)
    checks = _checks(results)
    for cid in ("ws.roundtrip", "chat.flow", "isolation.sessions", "events.latency"):
        assert checks[cid]["status"] == "fail", checks[cid]
        assert any(w in checks[cid]["detail"].lower() for w in words), checks[cid]
    # Unreadable frames carry no user id: they cannot prove isolation.
    assert checks["isolation.no_cross_user"]["status"] == "fail"
    r = checks["monitor.ws_failure_rate"]
    assert r["status"] == "fail", (r["status"], r["detail"])


@pytest.mark.e2e
def test_missing_sections_skip_their_checks(tmp_path, monkeypatch) -> None:
    """No [target], [cloudrun], [source]: every check of phases 1, 3, 5 and 7 is a skip
    that names the missing section (even where [auth] is configured)."""
    monkeypatch.setenv("BARE_TOKEN_ENV", "bare-token-value-123")
    env = _env(tmp_path, "bare", '[auth]\nmode = "bearer"\ntoken_env = "BARE_TOKEN_ENV"')
    outcome, results, _ = _run(tmp_path, env, (1, 3, 5, 7))
    checks = [c for c in results["checks"] if c["phase"] in (1, 3, 5, 7)]
    assert {c["phase"] for c in checks} == {1, 3, 5, 7}
    assert {c["status"] for c in checks} == {"skip"}, checks
    assert all(c["detail"].startswith("skip") for c in checks), checks
    for c in checks:
        assert any(s in c["detail"] for s in ("[target]", "[cloudrun]", "[source]", "[logging]")), c
    assert outcome.exit_code == 0 and results["verdict"] == "pass"
    assert verify_run(outcome.run_dir).ok
