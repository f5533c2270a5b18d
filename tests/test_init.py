"""runbook init against real corpus services: the written file parses, says what was
found, declares what cannot apply, and its ping/flows work against the service."""

from __future__ import annotations

import asyncio
import sys
import threading
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from corpus.conftest import corpus, protocol_from_env
from corpus.serve import Running, serve_corpus
from corpus.text_chat import DEFAULT_TOKEN

from runbook_lib.flow_runner import run_flow
from runbook_lib.flows import Flow, FlowStep, default_flows
from runbook_lib.init import init_main, probe_service, render_environment
from runbook_lib.tokens import ConnectAuth

TESTS = str(Path(__file__).parent)
__all__ = ["corpus"]  # the corpus fixture, shared with tests/corpus


def _env(findings) -> dict:
    return tomllib.loads(render_environment(findings))


@pytest.mark.slow  # waits on real timeouts
async def test_init_text_chat_with_bearer_token(corpus) -> None:
    svc: Running = await corpus("text_chat")
    f = await probe_service(
        svc.base_url, ws_paths=["/chat"], token=DEFAULT_TOKEN, token_env="CHAT_TOKEN", timeout_s=1.5
    )
    text = render_environment(f)
    env = tomllib.loads(text)
    assert DEFAULT_TOKEN not in text
    assert env["target"]["health_path"] == "/health" and env["target"]["ws_paths"] == ["/chat"]
    assert env["auth"] == {"mode": "bearer", "token_env": "CHAT_TOKEN"}
    assert env["protocol"]["format"] == "text" and env["protocol"]["ping"] == "PING {marker}"
    assert env["protocol"]["pong_pattern"] == "^PONG {marker}$"
    assert env["protocol"]["error_pattern"] == "^ERR"
    na = env["checks"]["not_applicable"]
    assert "e2e.agent_response" in na and "auth.ws_authenticated" not in na
    # The written protocol's ping works against the service.
    proto = protocol_from_env(text)
    obs = await run_flow(
        svc.ws_url + "/chat",
        default_flows(proto)["load"],
        None,
        proto,
        auth=ConnectAuth(headers=(("Authorization", f"Bearer {DEFAULT_TOKEN}"),)),
    )
    assert obs.completed, obs.stop_detail


async def test_init_graphql_finds_the_subprotocol_and_writes_a_load_flow(corpus) -> None:
    svc = await corpus("graphql_ws")
    f = await probe_service(svc.base_url, timeout_s=1.5)
    text = render_environment(f)
    env = tomllib.loads(text)
    assert env["protocol"]["subprotocols"] == ["graphql-transport-ws"]
    assert env["target"]["primary_ws_path"] == "/graphql"
    steps = env["flows"]["load"]["steps"]
    assert steps[0]["send"]["type"] == "connection_init"
    flow = Flow("load", tuple(FlowStep(**s) for s in steps))
    obs = await run_flow(svc.ws_url + "/graphql", flow, None, protocol_from_env(text))
    assert obs.completed and obs.subprotocol == "graphql-transport-ws"
    assert "auth.rejects_invalid" in env["checks"]["not_applicable"]


@pytest.mark.slow  # waits on real timeouts
async def test_init_service_without_health_uses_the_apps_routes(corpus) -> None:
    svc = await corpus("no_health")
    f = await probe_service(svc.base_url, app="corpus.no_health:app", repo_dir=TESTS, timeout_s=1.5)
    env = _env(f)
    assert env["target"]["health_path"] is False and env["target"]["ws_health_path"] is False
    assert env["target"]["ws_test_path"] is False and env["target"]["ws_paths"] == ["/ws"]
    assert env["source"]["app"] == "corpus.no_health:app"
    assert "protocol" not in env  # the seed's JSON ping/pong works: nothing to change
    assert "ws.roundtrip" not in env["checks"]["not_applicable"]
    assert f.upgraded


@pytest.mark.slow  # starts a process
async def test_init_app_import_failure_is_noted_and_candidates_probed(corpus, tmp_path) -> None:
    """--python without the app's dependencies: the note names the module and the
    interpreter; the common candidate paths are still probed."""
    bare = tmp_path / "bare-python"
    bare.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    bare.chmod(0o755)
    svc = await corpus("no_health")
    f = await probe_service(
        svc.base_url, app="corpus.no_health:app", python=str(bare), repo_dir=TESTS, timeout_s=1.5
    )
    assert any("'starlette'" in n and str(bare) in n for n in f.notes), f.notes
    env = _env(f)
    assert env["target"]["ws_paths"] == ["/ws"] and env["source"]["python"] == str(bare)


@pytest.mark.slow  # waits on real timeouts
async def test_init_jsonrpc_and_query_token_services(corpus) -> None:
    rpc = await corpus("jsonrpc_pubsub")
    env = _env(
        await probe_service(
            rpc.base_url, app="corpus.jsonrpc_pubsub:app", repo_dir=TESTS, timeout_s=1.5
        )
    )
    assert env["target"]["health_path"] == "/healthz"
    assert env["protocol"]["event_type"] == ["method"]
    assert env["flows"]["load"]["steps"][1]["expect"] == {"id": "{marker}"}
    agent = await corpus("agent_stream")
    env = _env(
        await probe_service(
            agent.base_url,
            ws_paths=["/agent/stream"],
            token="agent-token-alice-5f2c9a",
            token_env="AGENT_TOKEN",
            timeout_s=1.5,
        )
    )
    assert env["auth"] == {
        "mode": "query",
        "query_param": "access_token",
        "token_env": "AGENT_TOKEN",
    }


async def test_init_names_a_server_without_websocket_implementation(corpus) -> None:
    svc = await corpus("no_health", "ws_missing")
    f = await probe_service(svc.base_url, app="corpus.no_health:app", repo_dir=TESTS, timeout_s=1.5)
    assert not f.upgraded
    assert any("no WebSocket implementation" in n for n in f.notes)
    env = _env(f)
    assert env["target"]["ws_paths"] == ["/ws"]  # the app's route, kept: its 404 is the finding


@contextmanager
def threaded(name: str, *faults: str) -> Iterator[Running]:
    """A corpus service in its own thread and loop (init_main runs its own asyncio.run)."""
    box: dict = {}
    ready = threading.Event()

    async def main() -> None:
        async with serve_corpus(name, faults) as svc:
            box["svc"], box["stop"] = svc, asyncio.Event()
            ready.set()
            await box["stop"].wait()

    def run() -> None:
        box["loop"] = asyncio.new_event_loop()
        box["loop"].run_until_complete(main())
        box["loop"].close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    assert ready.wait(10), "corpus service did not start"
    try:
        yield box["svc"]
    finally:
        box["loop"].call_soon_threadsafe(box["stop"].set)
        thread.join(10)


@pytest.mark.slow  # waits on real timeouts
def test_init_main_writes_the_file_and_refuses_to_overwrite(tmp_path: Path, capsys) -> None:
    out = tmp_path / "env.toml"
    with threaded("no_health") as svc:
        assert (
            init_main(
                [
                    "--url",
                    svc.base_url,
                    "--ws-path",
                    "/ws",
                    "--out",
                    str(out),
                    "--name",
                    "nh",
                    "--timeout",
                    "1.5",
                ]
            )
            == 0
        )
        env = tomllib.loads(out.read_text())
        assert env["name"] == "nh" and env["target"]["base_url"] == svc.base_url
        assert init_main(["--url", svc.base_url, "--out", str(out)]) == 2
        assert "exists" in capsys.readouterr().err
    with threaded("no_health", "ws_missing") as svc:
        bad = tmp_path / "bad.toml"
        assert init_main(["--url", svc.base_url, "--ws-path", "/ws", "--out", str(bad)]) == 1
        assert bad.exists()


def test_init_main_unreachable_service_writes_nothing(tmp_path: Path, closed_port: int) -> None:
    out = tmp_path / "x.toml"
    url = f"http://127.0.0.1:{closed_port}"
    assert init_main(["--url", url, "--out", str(out), "--timeout", "1"]) == 1
    assert not out.exists()


def test_init_main_usage_errors(tmp_path: Path, monkeypatch, capsys) -> None:
    assert init_main(["--url", "ftp://x"]) == 2
    monkeypatch.delenv("NOPE_TOKEN", raising=False)
    assert init_main(["--url", "http://127.0.0.1:1", "--token-env", "NOPE_TOKEN"]) == 2
    assert "NOPE_TOKEN is not set" in capsys.readouterr().err
    assert init_main([]) == 2


@pytest.mark.slow  # waits on real timeouts
async def test_init_detects_a_ws_test_endpoint_and_the_seed_ping(ws_server) -> None:
    async def seed_like(ws) -> None:
        async for raw in ws:
            if '"ping"' in raw:
                await ws.send('{"type": "pong"}')

    url = await ws_server(seed_like)
    f = await probe_service("http" + url[2:], ws_paths=["/websocket"], timeout_s=1.5)
    env = _env(f)
    assert env["target"]["ws_test_path"] == "/ws/test"
    assert env["target"]["primary_ws_path"] == "/websocket" and "protocol" not in env


@pytest.mark.slow  # waits on real timeouts
def test_runbook_init_is_a_cli_subcommand(tmp_path: Path, capsys) -> None:
    """`runbook init` runs init_main: usage errors are 2, a probe writes the file."""
    from runbook_lib.cli import main

    assert main(["init", "--url", "ftp://x"]) == 2
    assert "--url" in capsys.readouterr().err
    out = tmp_path / "nh.toml"
    with threaded("no_health") as svc:
        argv = ["init", "--url", svc.base_url, "--ws-path", "/ws", "--out", str(out)]
        assert main([*argv, "--timeout", "1.5"]) == 0
    assert tomllib.loads(out.read_text())["target"]["ws_paths"] == ["/ws"]
