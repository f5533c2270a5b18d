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
    assert "ping" not in env["protocol"]  # the seed's JSON ping/pong works: kept
    # {"type": "echo", "text"} is answered by an "echoed" frame carrying the text.
    assert env["protocol"]["critical_events"] == ["echoed"]
    assert env["flows"]["agent"]["steps"][0]["send"]["type"] == "echo"
    na = env["checks"]["not_applicable"]
    assert "ws.roundtrip" not in na and "e2e.agent_response" not in na
    assert "chat.flow" not in na and "isolation.no_cross_user" not in na
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
    env = tomllib.loads(out.read_text())
    assert env["target"]["ws_paths"] == ["/ws"]
    assert env["name"] == "nh"  # named after --out, as `runbook run --env nh` will call it


# ---------------------------------------------------------------- the dialects (issue 18)


def _flows(env: dict) -> dict[str, Flow]:
    return {
        name: Flow(name, tuple(FlowStep(**s) for s in table["steps"]))
        for name, table in env.get("flows", {}).items()
    }


async def _run_written(svc: Running, text: str, name: str, **kw):
    env = tomllib.loads(text)
    return await run_flow(
        svc.ws_url + env["target"]["primary_ws_path"],
        _flows(env)[name],
        None,
        protocol_from_env(text),
        subprotocols=env.get("protocol", {}).get("subprotocols"),
        **kw,
    )


async def test_init_socketio_finds_the_engineio_path_and_writes_flows_that_work(corpus) -> None:
    """From --app (a Socket.IO ASGIApp): the Engine.IO path with its query, text frames,
    a hold ping the server's decoder accepts, and chat/isolation flows that run."""
    svc = await corpus("socketio_chat")
    f = await probe_service(
        svc.base_url, app="corpus.socketio_chat:app", repo_dir=TESTS, timeout_s=1.5
    )
    text = render_environment(f)
    env = tomllib.loads(text)
    assert env["target"]["primary_ws_path"] == "/socket.io/?EIO=4&transport=websocket"
    assert env["protocol"]["format"] == "text" and env["protocol"]["ping"] == "3"
    assert [s.get("send") for s in env["flows"]["load"]["steps"]] == [None, "40", None]
    na = env["checks"]["not_applicable"]
    assert "chat.flow" not in na and "isolation.no_cross_user" not in na
    assert "ws.roundtrip" not in na
    for name in ("load", "chat", "isolation"):
        obs = await _run_written(svc, text, name)
        assert obs.completed, (name, obs.stop_detail)


async def test_init_graphql_writes_an_operation_flow_and_both_subprotocols_are_known(
    corpus,
) -> None:
    svc = await corpus("graphql_ws")
    f = await probe_service(svc.base_url, ws_paths=["/graphql"], timeout_s=1.5)
    text = render_environment(f)
    env = tomllib.loads(text)
    assert env["protocol"]["subprotocols"] == ["graphql-transport-ws"]
    assert env["protocol"]["run_id"] == ["id"] and env["protocol"]["critical_events"] == [
        "next",
        "complete",
    ]
    assert "e2e.agent_response" not in env["checks"]["not_applicable"]
    obs = await _run_written(svc, text, "agent")
    assert obs.completed and obs.event_types[-2:] == ("next", "complete"), obs.stop_detail
    assert "403" in next(n for n in f.notes if n.startswith("upgrade /graphql"))


async def test_init_jsonrpc_pubsub_writes_subscribe_publish_notification(corpus) -> None:
    svc = await corpus("jsonrpc_pubsub")
    text = render_environment(await probe_service(svc.base_url, ws_paths=["/rpc"], timeout_s=1.5))
    env = tomllib.loads(text)
    assert env["protocol"]["critical_events"] == ["message"]
    assert (await _run_written(svc, text, "agent")).completed
    dropped = await corpus("jsonrpc_pubsub", "drop")
    obs = await _run_written(dropped, text, "agent", step_timeout_s=1.0)
    assert not obs.completed and obs.stopped_at == 3


async def test_init_crash_chat_writes_a_room_flow_that_catches_the_crash(corpus) -> None:
    svc = await corpus("crash_chat")
    text = render_environment(
        await probe_service(svc.base_url, ws_paths=["/ws/chat"], timeout_s=1.5)
    )
    env = tomllib.loads(text)
    assert env["flows"]["chat"]["steps"][0]["send"]["type"] == "join"
    assert (await _run_written(svc, text, "chat")).completed
    crashed = await corpus("crash_chat", "crash")
    obs = await _run_written(crashed, text, "chat")
    assert not obs.completed and obs.connected and obs.duration_s < 3


async def test_init_an_echo_is_an_echo_not_json_rpc(ws_server) -> None:
    async def echo(ws) -> None:
        async for raw in ws:
            await ws.send(raw)

    url = await ws_server(echo)
    f = await probe_service("http" + url[2:], ws_paths=["/echo"], timeout_s=1.0)
    env = _env(f)
    assert f.why["protocol.dialect"] == "echo" and "event_type" not in env.get("protocol", {})
    assert not any("JSON-RPC" in n for n in f.notes)
    na = env["checks"]["not_applicable"]
    assert "ws.roundtrip" not in na and "isolation.no_cross_user" not in na
    assert "e2e.agent_response" not in na and "events.order" in na


async def test_init_on_a_broken_service_declares_nothing_that_outlives_the_fix(corpus) -> None:
    """No socket opened: the file keeps every check on (they fail until the service is
    fixed) and says the service is broken, instead of 12 reasons about conversations."""
    svc = await corpus("crash_chat", "ws_missing")
    f = await probe_service(svc.base_url, ws_paths=["/ws/chat"], timeout_s=1.0)
    env = _env(f)
    assert env.get("checks", {}).get("not_applicable", {}) == {}
    assert any("broken" in n and "could not be probed" in n for n in f.notes)


async def test_init_a_500_is_a_server_error_not_missing_credentials(corpus) -> None:
    svc = await corpus("socketio_chat", "ws_missing")
    f = await probe_service(
        svc.base_url, ws_paths=["/socket.io/?EIO=4&transport=websocket"], timeout_s=1.0
    )
    note = next(n for n in f.notes if n.startswith("upgrade /socket.io/"))
    assert "500" in note and "credentials" not in note and "server error" in note


async def test_init_legacy_graphql_ws_after_a_4406_close(ws_server) -> None:
    """A server that accepts, then closes 4406 without the subprotocol: init offers
    ``graphql-ws`` and writes the legacy protocol's flows (start -> data -> complete)."""
    import json as _json

    async def legacy(ws) -> None:
        if ws.subprotocol != "graphql-ws":
            await ws.close(4406, "Subprotocol not acceptable")
            return
        async for raw in ws:
            msg = _json.loads(raw)
            if msg["type"] == "connection_init":
                await ws.send('{"type": "connection_ack"}')
            elif msg["type"] == "start":
                data = {"type": "data", "id": msg["id"], "payload": {"data": {"__typename": "Q"}}}
                await ws.send(_json.dumps(data))
                await ws.send(_json.dumps({"type": "complete", "id": msg["id"]}))

    def select(conn, offered):
        return "graphql-ws" if "graphql-ws" in offered else None

    url = await ws_server(legacy, select_subprotocol=select)
    f = await probe_service("http" + url[2:], ws_paths=["/graphql"], timeout_s=1.0)
    env = _env(f)
    assert env["protocol"]["subprotocols"] == ["graphql-ws"]
    assert env["protocol"]["critical_events"] == ["data", "complete"]
    assert "4406" in next(n for n in f.notes if n.startswith("upgrade /graphql"))
    assert [s.get("send", {}).get("type") for s in env["flows"]["agent"]["steps"]][::2] == [
        "connection_init",
        "start",
        None,
    ]


async def test_init_without_the_token_keeps_the_path_and_asks_for_one(corpus) -> None:
    """A path that refuses for credentials is not 'broken' and not 'not found': it is
    kept, the file asks for --token-env, and no check is declared away meanwhile."""
    svc = await corpus("text_chat")
    f = await probe_service(svc.base_url, ws_paths=["/chat"], timeout_s=1.0)
    env = _env(f)
    assert env["target"]["ws_paths"] == ["/chat"] and f.locked == ["/chat"]
    assert any("--token-env" in n and "refused without credentials" in n for n in f.notes)
    assert not any("broken" in n for n in f.notes)
    assert env.get("checks", {}).get("not_applicable", {}) == {}
