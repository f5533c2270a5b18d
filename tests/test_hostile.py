"""Hostile and broken services cannot take the operator's machine, time or credentials.

Every server here is our own, on loopback: an endless stream of frames, a frame built to
make a backtracking regex explode, a slow-drip handshake, a cross-origin redirect that
collects whatever credential follows it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time

import pytest
from websockets.asyncio.server import ServerConnection

from runbook_lib.flow_runner import MAX_FRAMES_KEPT, run_flow
from runbook_lib.flows import Flow, FlowStep
from runbook_lib.protocol import parse_frame
from runbook_lib.settings import ProtocolSettings
from runbook_lib.steps.business import flow_frame_rows
from runbook_lib.steps.common import TABLE_MAX_ROWS, table
from tests.timing import T

P = ProtocolSettings()
PING = Flow(
    "load",
    (FlowStep(send={"type": "ping"}), FlowStep(expect_event="pong", timeout_s=1.5)),
)


async def endless(ws: ServerConnection) -> None:
    """Answer nothing useful, forever: one small JSON frame after another."""
    n = 0
    while True:
        n += 1
        await ws.send(json.dumps({"type": "tick", "n": n, "pad": "x" * 200}))
        if n % 50 == 0:
            await asyncio.sleep(0)


@pytest.mark.slow
async def test_endless_stream_is_bounded_in_frames_kept_and_in_time(ws_server) -> None:
    url = await ws_server(endless)
    start = time.perf_counter()
    obs = await run_flow(url, PING, {}, P, linger_s=0.2, step_timeout_s=1.5)
    took = time.perf_counter() - start
    assert took < T(5), took
    assert obs.stop_reason == "timeout"
    assert len(obs.frames) <= MAX_FRAMES_KEPT
    assert obs.frames_dropped > 0, "the stream was faster than the cap: nothing to drop?"
    assert obs.to_record()["frames"] == len(obs.frames) + obs.frames_dropped
    rows = flow_frame_rows(obs)
    (dropped,) = [r for r in rows[: len(obs.steps) + 1] if r["kind"] == "dropped"]
    assert str(obs.frames_dropped) in dropped["detail"]
    shown = table(rows)
    assert len(shown) == TABLE_MAX_ROWS + 1 and "more row(s) not shown" in str(shown.iloc[-1, 0])


async def test_a_leaked_frame_after_the_cap_is_still_kept_as_evidence(ws_server) -> None:
    async def chatty_then_leak(ws: ServerConnection) -> None:
        for n in range(MAX_FRAMES_KEPT + 50):
            await ws.send(json.dumps({"type": "tick", "n": n}))
        await ws.send('{"type": "note", "user_id": "someone-else", "text": "OTHERMARK"}')
        await asyncio.sleep(2)

    url = await ws_server(chatty_then_leak)
    obs = await run_flow(
        url, PING, {}, P, linger_s=0.2, step_timeout_s=1.0, other_markers=("OTHERMARK",)
    )
    assert obs.frames_dropped >= 50
    assert [f.text for f in obs.foreign_frames if "OTHERMARK" in f.text]


async def test_catastrophic_pong_pattern_matches_in_linear_time(ws_server) -> None:
    """``^(a+)+$`` against 5,000 ``a`` and a ``!`` backtracks for ever in Python's re."""
    text = ProtocolSettings(format="text", ping="ping", pong_pattern="^(a+)+$")
    start = time.perf_counter()
    frame = parse_frame("a" * 5000 + "!", text)
    assert time.perf_counter() - start < 0.5
    assert str(frame.kind) != "ignored"  # no match: the frame is not a pong

    async def redos(ws: ServerConnection) -> None:
        async for _ in ws:
            await ws.send("a" * 5000 + "!")

    url = await ws_server(redos)
    flow = Flow("load", (FlowStep(send="ping"), FlowStep(expect_pattern="^(a+)+$", timeout_s=1)))
    start = time.perf_counter()
    obs = await run_flow(url, flow, {}, text, linger_s=0)
    assert time.perf_counter() - start < T(4)
    assert obs.stop_reason == "timeout"


@pytest.mark.slow
async def test_init_against_a_slow_drip_server_returns_within_its_probe_timeouts(
    raw_server,
) -> None:
    """Every answer arrives one byte at a time: init gives up per probe, not per byte."""
    from runbook_lib.init import probe_service

    async def drip(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        for byte in b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n" + b"X" * 10**5:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.1)

    port = await raw_server(drip)
    start = time.perf_counter()
    f = await asyncio.wait_for(probe_service(f"http://127.0.0.1:{port}", timeout_s=0.5), T(120))
    took = time.perf_counter() - start
    assert took < T(60), took
    assert f.keys["target"]["health_path"] is False and not f.upgraded


async def test_no_credential_follows_a_redirect_to_another_origin(ws_server, raw_server) -> None:
    """A 302 to another origin: neither ``jwt.<token>``, ``Authorization`` nor the query
    token reaches it; the refusal says why the redirect was not followed."""
    from runbook_lib.tokens import ConnectAuth

    seen: list[bytes] = []

    async def recorder(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))

    other = await raw_server(recorder)

    async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 302 Found\r\nLocation: ws://localhost:%d/collect\r\n"
            b"Content-Length: 0\r\n\r\n" % other
        )
        await writer.drain()

    port = await raw_server(redirect)
    token = "rbXoriginSub5ecret99"
    auths = [
        ConnectAuth(subprotocols=(f"jwt.{token}",)),
        ConnectAuth(headers=(("Authorization", f"Bearer {token}"),)),
        ConnectAuth(query=(("token", token),)),
    ]
    for auth in auths:
        obs = await run_flow(f"ws://127.0.0.1:{port}/ws", PING, {}, P, auth=auth, linger_s=0)
        assert not obs.connected and obs.status == 302
        assert "not followed" in obs.connect_detail and token not in obs.connect_detail
    await asyncio.sleep(0.2)
    assert seen == [], "a request reached the other origin"


def test_run_refuses_unbounded_cell_timeout_and_deadline(capsys) -> None:
    from runbook_lib.cli import main

    for flag in ("--cell-timeout", "--deadline"):
        for value in ("nan", "inf", "-inf", "0", "1e400"):
            try:
                rc = main(["run", flag, value])
            except SystemExit as exc:
                rc = int(exc.code or 0)
            assert rc == 2, (flag, value)
            assert flag in capsys.readouterr().err


def test_deeply_nested_toml_is_a_configuration_error(tmp_path) -> None:
    import pytest

    from runbook_lib.exceptions import ConfigError
    from runbook_lib.settings_load import load_settings

    env = tmp_path / "deep.toml"
    env.write_text(
        'name = "deep"\n[target]\nbase_url = "http://127.0.0.1:9"\n[auth]\n'
        "jwt_claims = " + "{a=" * 400 + "1" + "}" * 400 + "\n"
    )
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_settings(env)


async def test_a_token_split_over_two_frames_is_redacted_in_both(ws_server) -> None:
    from runbook_lib.redaction import count_secrets, register_secret

    token = register_secret("rbT0k3nSecr3tSub_9Qz7")
    assert token is not None

    async def split(ws: ServerConnection) -> None:
        await ws.send("your token is " + token[:13])
        await ws.send(token[13:] + " (second half)")
        await ws.send("a plain frame")
        await asyncio.sleep(1)

    url = await ws_server(split)
    obs = await run_flow(url, PING, {}, P, linger_s=0.3, step_timeout_s=0.5)
    texts = [f.text for f in obs.frames] + [f.frame.excerpt for f in obs.frames]
    joined = "".join(f.text for f in obs.frames)
    assert count_secrets(joined) == 0
    assert token[:13] not in " ".join(texts) and token[13:] not in " ".join(texts)
    assert obs.frames[0].text.startswith("your token is ")
    assert obs.frames[1].text.endswith(" (second half)") and obs.frames[2].text == "a plain frame"


@pytest.mark.slow
def test_a_sandbox_that_dies_mid_run_is_named_not_the_service(tmp_path, monkeypatch) -> None:
    """The daemon is killed during phase 3: the run stops there, says the sandbox died, and
    does not recommend investigating the revision."""
    import subprocess
    import sys
    import types

    from runbook_lib import runner
    from runbook_lib.runner import RunOptions
    from tests.test_runner import _record, _write

    env_file = tmp_path / "fixture.toml"
    env_file.write_text('name = "fixture"\n')
    daemon = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    monkeypatch.setenv("RB_FAKE_DAEMON", str(daemon.pid))

    class FakeManager:
        class Sandbox:  # the manager's claim: started here, stopped on exit
            started = True

            def __init__(self, **kw):
                pass

            def __enter__(self):
                return types.SimpleNamespace(env_file=str(env_file), pid=daemon.pid)

            def __exit__(self, *exc):
                pass

    kill = "import os, signal; os.kill(int(os.environ['RB_FAKE_DAEMON']), signal.SIGKILL)"
    nbs = _write(tmp_path / "nbs", {3: [kill, _record(3, ("ws.upgrade", "fail"))]})
    try:
        out = runner.run(
            RunOptions(out_dir=tmp_path / "out", notebooks=nbs, phases=(3, 5), cell_timeout_s=60),
            sandbox=FakeManager,
        )
    finally:
        daemon.kill()
        daemon.wait()
    assert out.exit_code == 3
    assert [o.phase for o in out.phases] == [3]
    assert "sandbox daemon" in out.recommendation.reason
    assert "investigate" not in out.recommendation.reason
    summary = (out.run_dir / "summary.md").read_text()
    assert f"sandbox daemon (pid {daemon.pid}) is no longer running" in summary


def _forms(t: str) -> dict[str, str]:
    import base64

    raw = t.encode()
    return {
        "json \\u escapes": "".join(f"\\u{ord(c):04x}" for c in t),
        "json \\u escapes, upper hex": "".join(f"\\u{ord(c):04X}" for c in t),
        "html decimal entities": "".join(f"&#{ord(c)};" for c in t),
        "html hex entities": "".join(f"&#x{ord(c):X};" for c in t),
        "base32": base64.b32encode(raw).decode(),
        "base32 inside a longer blob": base64.b32encode(b"xy" + raw + b"z").decode(),
        "base32 lower case": base64.b32encode(raw).decode().lower(),
        "base64 of base64": base64.b64encode(base64.b64encode(raw)).decode(),
        "base64 of json holding base64": base64.b64encode(
            b'{"a":"' + base64.b64encode(raw) + b'"}'
        ).decode(),
        "utf-16le hex": t.encode("utf-16-le").hex(),
        "utf-16be hex upper": t.encode("utf-16-be").hex().upper(),
        "reversed": t[::-1],
        "spaced out": " ".join(t),
    }


@pytest.mark.parametrize("token", ["rbT0k3n-Secr3t/pl+us=eq&amp<x>", "rbT0k3nSecr3tSub_9Qz7"])
def test_secret_forms_from_the_review_are_redacted_and_found_by_the_scan(token) -> None:
    from runbook_lib.redaction import count_secrets, redact, register_secret

    register_secret(token)
    for name, form in _forms(token).items():
        text = f"frame: {form} (end)"
        assert count_secrets(text) >= 1, f"the scan misses the {name} form"
        assert count_secrets(redact(text)) == 0, f"redaction leaves the {name} form"
        assert count_secrets(text.encode()) >= 1, f"the byte scan misses the {name} form"


@pytest.mark.slow
@pytest.mark.e2e
def test_a_run_against_an_endless_stream_stays_small_in_memory_and_on_disk(tmp_path) -> None:
    """``runbook run --phases 3`` against a service that never stops sending: the run
    ends within its timeouts, under 300 MB RSS (every process of the run together) and
    with a run folder under 20 MB."""
    import subprocess
    import sys
    from pathlib import Path

    import psutil

    server = subprocess.Popen(
        [sys.executable, "-m", "tests.hostile_server", "endless"],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).parent.parent,
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline().split()[1])
        env = tmp_path / "endless.toml"
        env.write_text(
            f'name = "endless"\n[target]\nbase_url = "http://127.0.0.1:{port}"\n'
            'ws_paths = ["/websocket"]\nhealth_path = "/health"\n'
            "ws_health_path = false\nws_test_path = false\n"
            '[auth]\nmode = "none"\n[logging]\nenabled = false\n'
        )
        out = tmp_path / "out"
        argv = ["run", "--env", str(env), "--phases", "3", "--out", str(out)]
        run = subprocess.Popen(
            [sys.executable, "-m", "runbook_lib", *argv],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        proc, peak, start = psutil.Process(run.pid), 0, time.monotonic()
        while run.poll() is None and time.monotonic() - start < T(240):
            with contextlib.suppress(psutil.Error):
                tree = [proc, *proc.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            time.sleep(0.5)
        if run.poll() is None:
            run.kill()
        assert run.wait() == 1, "the run should end with failed checks, not hang or crash"
    finally:
        server.kill()
        server.wait()
        if server.stdout is not None:
            server.stdout.close()
    (folder,) = [p for p in out.iterdir() if p.is_dir()]
    size = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    assert peak < 300 * 2**20, f"peak RSS {peak / 2**20:.0f} MB"
    assert size < 20 * 2**20, f"run folder {size / 2**20:.1f} MB"


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (
            '[target]\nbase_url = "http://127.0.0.1:9"\nws_paths = ['
            + ", ".join(f'"/p{i}"' for i in range(100_000))
            + "]",
            "at most",
        ),
        ('[auth]\nmode = "subprotocol"\nsubprotocol = "jwt"', "has no {token}"),
    ],
)
def test_unbounded_or_inert_configuration_is_refused(tmp_path, body, needle) -> None:
    from runbook_lib.exceptions import ConfigError
    from runbook_lib.settings_load import load_settings

    env = tmp_path / "bad.toml"
    env.write_text('name = "bad"\n' + body + "\n")
    with pytest.raises(ConfigError, match=needle.replace("{", r"\{").replace("}", r"\}")):
        load_settings(env)
