"""Five differently shaped services, healthy and with injected faults, run by flows.

For each service: the flow a user writes in its environment file (``ENV``) passes
against the healthy server, and every injected fault is visible in the observation
(a refused upgrade, a timeout at the right step, a close code, another user's marker).
"""

from __future__ import annotations

import dataclasses
import tomllib

import httpx
import pytest

from runbook_lib.flow_runner import run_flow, run_users
from runbook_lib.flows import Flow, FlowStep, default_flows
from runbook_lib.settings import AuthSettings, TargetSettings
from runbook_lib.tokens import ConnectAuth

from . import SERVICES, agent_stream, graphql_ws, jsonrpc_pubsub, no_health, text_chat
from .conftest import flows_from_env, protocol_from_env, quick
from .serve import load

CHAT_AUTH = ConnectAuth(headers=(("Authorization", f"Bearer {text_chat.DEFAULT_TOKEN}"),))
ALICE = ConnectAuth(query=(("access_token", "agent-token-alice-5f2c9a"),))
BOB = ConnectAuth(query=(("access_token", "agent-token-bob-77d1e0"),))


async def _get(url: str) -> int:
    async with httpx.AsyncClient(timeout=5) as client:
        return (await client.get(url)).status_code


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_has_faults_and_a_valid_env_sketch(name: str) -> None:
    module = load(name)
    assert len(module.FAULTS) >= 2
    env = tomllib.loads(module.ENV.replace("{base_url}", "http://127.0.0.1:1"))
    assert env["target"]["ws_paths"] and "protocol" in env
    protocol_from_env(module.ENV)  # every key is a ProtocolSettings field
    for section, cls in (("target", TargetSettings), ("auth", AuthSettings)):
        known = {f.name for f in dataclasses.fields(cls)}
        assert set(env.get(section, {})) <= known, section
    assert set(env) <= {
        "name", "target", "auth", "protocol", "thresholds", "checks", "flows", "source"
    }  # fmt: skip
    flows_from_env(module.ENV)  # every step key is a FlowStep field


@pytest.mark.parametrize("name", SERVICES)
async def test_ws_library_missing_refuses_every_upgrade(corpus, name: str) -> None:
    svc = await corpus(name, "ws_missing")
    path = tomllib.loads(load(name).ENV.replace("{base_url}", svc.base_url))["target"][
        "primary_ws_path"
    ]
    flow = Flow("load", (FlowStep(send="x"),))
    obs = await run_flow(svc.ws_url + path, flow, None, protocol_from_env(load(name).ENV))
    # uvicorn hands a Socket.IO stack the upgrade as plain HTTP: engineio answers 500.
    refused = 500 if name == "socketio_chat" else 404
    assert not obs.connected and obs.status == refused and obs.stop_reason == "connect_failed"


_AUTH = {"text_chat": CHAT_AUTH, "agent_stream": ALICE}


@pytest.mark.parametrize("name", SERVICES)
async def test_every_flow_of_every_sketch_completes_against_the_healthy_service(
    corpus, name: str
) -> None:
    """The environment sketches in README.md are truthful: each flow a user would run
    (theirs, or the default from their [protocol]) completes, with no foreign frame."""
    svc = await corpus(name)
    env = load(name).ENV
    target = tomllib.loads(env.replace("{base_url}", svc.base_url))["target"]
    protocol = protocol_from_env(env)
    flows = {**default_flows(protocol), **flows_from_env(env)}
    na = tomllib.loads(env.replace("{base_url}", svc.base_url)).get("checks", {})
    skipped = set(na.get("not_applicable", {}))
    if "chat.flow" in skipped:
        flows.pop("chat")
    if "e2e.agent_response" in skipped:
        flows.pop("agent")
    if "isolation" not in flows_from_env(env) and "agent" in flows_from_env(env):
        flows["isolation"] = flows_from_env(env)["agent"]
    for flow in flows.values():
        obs = await run_flow(
            svc.ws_url + target["primary_ws_path"],
            flow,
            {"user_id": "alice"},
            protocol,
            auth=_AUTH.get(name),
        )
        assert obs.completed, obs.stop_detail
        assert not obs.foreign_frames


# ---------------------------------------------------------------- JSON-RPC pub/sub


def _flow(flow: Flow, fast: bool) -> Flow:
    return quick(flow) if fast else flow


async def _rpc(svc, quick=False, **kw):
    env = jsonrpc_pubsub.ENV
    flow = _flow(flows_from_env(env)["agent"], quick)
    return await run_flow(svc.ws_url + "/rpc", flow, None, protocol_from_env(env), **kw)


async def test_jsonrpc_healthy_subscribe_publish_notification(corpus) -> None:
    svc = await corpus("jsonrpc_pubsub")
    assert await _get(svc.base_url + "/healthz") == 200
    assert await _get(svc.base_url + "/health") == 404
    obs = await _rpc(svc)
    assert obs.completed, obs.stop_detail
    assert obs.captured["sub"].startswith("sub-")
    assert obs.event_types == ("message",) and not obs.foreign_frames


async def test_jsonrpc_route_removed_refuses_the_upgrade(corpus) -> None:
    obs = await _rpc(await corpus("jsonrpc_pubsub", "route_removed"))
    assert not obs.connected and obs.status == 403  # Starlette: no WS route -> 403


async def test_jsonrpc_dropped_notification_times_out_at_the_last_step(corpus) -> None:
    obs = await _rpc(await corpus("jsonrpc_pubsub", "drop"), quick=True)
    assert obs.stopped_at == 3 and obs.stop_reason == "timeout"
    assert obs.steps[1].outcome == "matched"  # subscribe worked: the fault is the delivery


async def test_jsonrpc_leak_shows_another_users_marker(corpus) -> None:
    env = jsonrpc_pubsub.ENV
    for faults, leaked in (((), False), (("leak",), True)):
        svc = await corpus("jsonrpc_pubsub", *faults)
        obs = await run_users(
            svc.ws_url + "/rpc",
            flows_from_env(env)["agent"],
            protocol_from_env(env),
            ["u1", "u2", "u3"],
            linger_s=0.5,
        )
        assert all(o.completed for o in obs), [o.stop_detail for o in obs]
        assert any(o.foreign_frames for o in obs) is leaked


# ---------------------------------------------------------------- plain-text chat


async def _chat(svc, *, auth=CHAT_AUTH, quick=False, **kw):
    env = text_chat.ENV
    return await run_flow(
        svc.ws_url + "/chat",
        _flow(flows_from_env(env)["chat"], quick),
        {"user_id": "alice"},
        protocol_from_env(env),
        auth=auth,
        **kw,
    )


async def test_text_chat_healthy_flow_and_text_ping(corpus) -> None:
    svc = await corpus("text_chat")
    obs = await _chat(svc)
    assert obs.completed, obs.stop_detail
    assert obs.frames[-1].text == f"[r-{obs.marker}] alice: hello {obs.marker}"
    assert obs.event_types == ("joined", "said")  # classified by event_patterns, no JSON
    ping = await run_flow(
        svc.ws_url + "/chat",
        default_flows(protocol_from_env(text_chat.ENV))["load"],
        None,
        protocol_from_env(text_chat.ENV),
        auth=CHAT_AUTH,
    )
    assert ping.completed and ping.frames[0].kind == "ignored"


async def test_text_chat_without_token_or_rejected_token_is_403(corpus) -> None:
    assert (await _chat(await corpus("text_chat"), auth=None)).status == 403
    assert (await _chat(await corpus("text_chat", "reject_token"))).status == 403


async def test_text_chat_dropped_message_times_out(corpus) -> None:
    obs = await _chat(await corpus("text_chat", "drop"), quick=True)
    assert (
        obs.stopped_at == 4 and obs.stop_reason == "timeout" and obs.steps[2].outcome == "matched"
    )


async def test_text_chat_leak_across_rooms_is_foreign(corpus) -> None:
    env = text_chat.ENV
    for faults, leaked in (((), False), (("leak",), True)):
        svc = await corpus("text_chat", *faults)
        obs = await run_users(
            svc.ws_url + "/chat",
            flows_from_env(env)["chat"],
            protocol_from_env(env),
            ["alice", "bob"],
            auths={"alice": CHAT_AUTH, "bob": CHAT_AUTH},
            linger_s=0.5,
        )
        assert all(o.completed for o in obs), [o.stop_detail for o in obs]
        assert any(o.foreign_frames for o in obs) is leaked


# ---------------------------------------------------------------- GraphQL over WebSocket


async def _gql(svc, *, subprotocols=None, quick=False, **kw):
    env = graphql_ws.ENV
    return await run_flow(
        svc.ws_url + "/graphql",
        _flow(flows_from_env(env)["agent"], quick),
        None,
        protocol_from_env(env),
        subprotocols=subprotocols,
        **kw,
    )


async def test_graphql_healthy_init_subscribe_next_complete(corpus) -> None:
    obs = await _gql(await corpus("graphql_ws"))
    assert obs.completed, obs.stop_detail
    assert obs.subprotocol == "graphql-transport-ws"
    assert [f.frame.event_type for f in obs.frames[:3]] == ["connection_ack", "next", "complete"]


async def test_graphql_refuses_the_upgrade_without_the_subprotocol(corpus) -> None:
    obs = await _gql(await corpus("graphql_ws"), subprotocols=())
    assert not obs.connected and obs.status == 403


@pytest.mark.slow  # waits on real timeouts
async def test_graphql_no_ack_and_no_complete_stop_at_their_step(corpus) -> None:
    no_ack = await _gql(await corpus("graphql_ws", "no_ack"), quick=True)
    assert no_ack.stopped_at == 1 and no_ack.stop_reason == "timeout"
    no_complete = await _gql(await corpus("graphql_ws", "no_complete"), quick=True)
    assert no_complete.stopped_at == 4 and no_complete.steps[3].outcome == "matched"
    drop = await _gql(await corpus("graphql_ws", "drop_next"), quick=True)
    assert drop.stopped_at == 3


# ---------------------------------------------------------------- agent stream (payload, query token)


AGENT = protocol_from_env(agent_stream.ENV)


async def _agent(svc, user="alice", auth=ALICE, quick=False, **kw):
    return await run_flow(
        svc.ws_url + "/agent/stream",
        _flow(default_flows(AGENT)["agent"], quick),
        {"user_id": user},
        AGENT,
        auth=auth,
        **kw,
    )


async def test_agent_stream_healthy_run_with_nested_events(corpus) -> None:
    obs = await _agent(await corpus("agent_stream"))
    assert obs.completed, obs.stop_detail
    assert obs.event_types == ("run_started", "token", "token", "run_finished")
    assert {f.frame.user_id for f in obs.frames} == {"alice"}
    assert all(f.frame.run_id == obs.run_id for f in obs.frames[1:])


async def test_agent_stream_bad_token_gets_an_error_frame(corpus) -> None:
    svc = await corpus("agent_stream")
    obs = await _agent(svc, auth=ConnectAuth(query=(("access_token", "forged-token-000000"),)))
    assert obs.connected and obs.stop_reason == "error_frame" and obs.close_code == 1008
    assert "invalid token" in obs.stop_detail
    bypass = await _agent(
        await corpus("agent_stream", "bypass"),
        auth=ConnectAuth(query=(("access_token", "forged-token-000000"),)),
    )
    assert bypass.completed  # the fault: a forged token runs an agent


async def test_agent_stream_drop_and_leak(corpus) -> None:
    drop = await _agent(await corpus("agent_stream", "drop"), quick=True)
    assert drop.stop_reason == "timeout" and drop.event_types[-1] == "token"
    svc = await corpus("agent_stream", "leak")
    obs = await run_users(
        svc.ws_url + "/agent/stream",
        default_flows(AGENT)["agent"],
        AGENT,
        ["alice", "bob"],
        auths={"alice": ALICE, "bob": BOB},
        linger_s=0.5,
    )
    assert all(o.completed for o in obs)
    foreign = [f for o in obs for f in o.foreign_frames]
    assert foreign and {f.frame.user_id for f in foreign} <= {"alice", "bob"}


# ---------------------------------------------------------------- no health endpoints


NOH = protocol_from_env(no_health.ENV)
QUICK_PING = Flow(
    "load", (FlowStep(send={"type": "ping"}), FlowStep(expect_event="pong", timeout_s=1))
)


async def test_no_health_service_answers_404_to_http_and_101_to_ws(corpus) -> None:
    svc = await corpus("no_health")
    for path in ("/", "/health", "/healthz", "/ready"):
        assert await _get(svc.base_url + path) == 404
    for name in ("agent", "load"):
        obs = await run_flow(svc.ws_url + "/ws", default_flows(NOH)[name], None, NOH)
        assert obs.completed, obs.stop_detail


async def test_no_health_faults(corpus) -> None:
    moved = await run_flow(
        (await corpus("no_health", "route_moved")).ws_url + "/ws",
        default_flows(NOH)["load"],
        None,
        NOH,
    )
    assert moved.status == 403
    slow = await run_flow((await corpus("no_health", "slow")).ws_url + "/ws", QUICK_PING, None, NOH)
    assert slow.stop_reason == "timeout" and slow.stopped_at == 1
    closed = await run_flow(
        (await corpus("no_health", "close_1011")).ws_url + "/ws",
        default_flows(NOH)["agent"],
        None,
        NOH,
    )
    assert closed.stop_reason == "closed" and closed.close_code == 1011
