"""run_flow against real loopback WebSocket servers: every outcome recorded, nothing raised."""

from __future__ import annotations

import asyncio
import json

from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Response

from runbook_lib.flow_runner import run_flow, run_named_flow, run_users
from runbook_lib.flows import Flow, FlowStep
from runbook_lib.protocol import FrameKind, ProtocolSettings
from runbook_lib.tokens import ConnectAuth

P = ProtocolSettings()
TEXT = ProtocolSettings(format="text", pong_pattern="^PONG {marker}$", error_pattern="^ERR")


async def echo_json(ws: ServerConnection) -> None:
    async for raw in ws:
        msg = json.loads(raw)
        if msg.get("op") == "sub":
            await ws.send(json.dumps({"ack": {"id": msg["id"]}, "sub": "s-42"}))
        elif msg.get("op") == "pub":
            await ws.send(json.dumps({"type": "note", "sub": msg["sub"], "data": msg["data"]}))


PUBSUB = Flow(
    "agent",
    (
        FlowStep(send={"op": "sub", "id": "{run_id}"}),
        FlowStep(expect={"ack.id": "{run_id}"}, capture={"sub_id": "sub"}, timeout_s=2),
        FlowStep(send={"op": "pub", "sub": "{sub_id}", "data": "{marker}"}),
        FlowStep(expect_pattern="{marker}", expect_event="note", timeout_s=2),
    ),
)


async def test_capture_flows_into_later_steps(ws_server) -> None:
    url = await ws_server(echo_json)
    obs = await run_flow(url + "/x", PUBSUB, {"user_id": "u1"}, P, linger_s=0)
    assert obs.completed, obs.stop_detail
    assert obs.captured == {"sub_id": "s-42"} and obs.values["sub_id"] == "s-42"
    assert [s.outcome for s in obs.steps] == ["sent", "matched", "sent", "matched"]
    assert obs.frames[-1].step == 3 and obs.marker in obs.frames[-1].text
    assert obs.response_s is not None and obs.response_s < 2
    assert obs.first_send_s is not None and 0 < (obs.first_event_s or 0) < 2
    # The ack carries neither an id at a configured path nor the marker: unattributable.
    assert [f.frame.data.get("ack") for f in obs.unattributed_frames] == [{"id": obs.run_id}]
    record = json.loads(json.dumps(obs.to_record()))
    assert record["completed"] and record["steps"][1]["outcome"] == "matched"


async def test_silent_server_times_out_at_the_step(ws_server) -> None:
    async def silent(ws: ServerConnection) -> None:
        async for _ in ws:
            pass

    url = await ws_server(silent)
    obs = await run_flow(url, PUBSUB, None, P, step_timeout_s=0.3)
    assert not obs.completed and obs.stopped_at == 1 and obs.stop_reason == "timeout"
    assert [s.outcome for s in obs.steps] == ["sent", "timeout", "not_reached", "not_reached"]
    assert "no matching frame within 2s" in obs.stop_detail
    assert 1.8 < obs.steps[1].duration_s < 3


async def test_close_garbage_binary_and_huge_frames_are_recorded(ws_server) -> None:
    async def nasty(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(b"\xff\x00\xfe")
        await ws.send("not json {")
        await ws.send(json.dumps({"type": "x", "blob": "y" * 1_500_000}))
        await ws.close(1011, "boom")

    url = await ws_server(nasty, max_size=None)
    obs = await run_flow(url, PUBSUB, None, P, max_text=100)
    kinds = [f.kind for f in obs.frames]
    assert kinds == [FrameKind.BINARY, FrameKind.NON_JSON, FrameKind.OVERSIZED]
    assert obs.stop_reason == "closed" and obs.close_code == 1011
    assert all(len(f.text) <= 101 for f in obs.frames)
    assert "1011" in obs.stop_detail


async def test_too_big_frame_closes_with_1009(ws_server) -> None:
    async def flood(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send("z" * 300_000)
        await asyncio.sleep(1)

    url = await ws_server(flood, max_size=None)
    obs = await run_flow(url, PUBSUB, None, P, max_size=100_000)
    assert obs.stop_reason == "closed" and obs.close_code == 1009


async def test_refused_upgrade_is_a_connect_failure(ws_server) -> None:
    def refuse(conn, request):
        return Response(404, "Not Found", Headers([("Content-Length", "9")]), b"not found")

    url = await ws_server(echo_json, process_request=refuse)
    obs = await run_flow(url, PUBSUB, None, P)
    assert not obs.connected and obs.status == 404 and obs.stop_reason == "connect_failed"
    assert obs.body_excerpt == "not found" and obs.steps[0].outcome == "not_reached"


async def test_closed_port_is_refused(closed_port: int) -> None:
    obs = await run_flow(f"ws://127.0.0.1:{closed_port}/ws", PUBSUB, None, P, open_timeout_s=1)
    assert not obs.connected and obs.connect_error == "refused"
    assert "could not connect" in obs.stop_detail


async def test_unrenderable_template_is_a_failed_send_not_a_crash(ws_server) -> None:
    import datetime

    url = await ws_server(echo_json)
    flow = Flow("x", (FlowStep(send={"at": datetime.date(2024, 1, 1)}),))
    obs = await run_flow(url, flow, None, P)
    assert obs.stop_reason == "send_failed" and "cannot render" in obs.stop_detail


async def test_error_frame_ends_the_step(ws_server) -> None:
    async def err(ws: ServerConnection) -> None:
        await ws.recv()
        await ws.send(json.dumps({"type": "error", "message": "nope"}))
        await asyncio.sleep(1)

    url = await ws_server(err)
    obs = await run_flow(url, PUBSUB, None, P)
    assert obs.stop_reason == "error_frame" and "nope" in obs.stop_detail


async def test_subprotocols_and_auth_are_offered(ws_server) -> None:
    offered: list[list[str]] = []

    def select(conn, subprotocols):
        offered.append(list(subprotocols))
        return subprotocols[0] if subprotocols else None

    async def text_pong(ws: ServerConnection) -> None:
        async for raw in ws:
            await ws.send(raw.replace("PING", "PONG"))

    url = await ws_server(
        text_pong, select_subprotocol=select, subprotocols=["chat.v1", "jwt.t0k3n-abc"]
    )
    flow = Flow(
        "load", (FlowStep(send="PING {marker}"), FlowStep(expect_pattern="^PONG {marker}$"))
    )
    proto = ProtocolSettings(format="text", subprotocols=("chat.v1",))
    obs = await run_flow(url, flow, None, proto, auth=ConnectAuth(subprotocols=("jwt.t0k3n-abc",)))
    assert obs.completed and offered == [["chat.v1", "jwt.t0k3n-abc"]]
    assert obs.subprotocol == "chat.v1"


async def test_run_users_flags_another_users_marker(ws_server) -> None:
    """A broadcast server: each user sees the other's marker -> foreign frames."""
    sockets: set[ServerConnection] = set()

    async def broadcast(ws: ServerConnection) -> None:
        sockets.add(ws)
        try:
            async for raw in ws:
                for s in list(sockets):
                    await s.send(raw.replace("PING", "PONG"))
        finally:
            sockets.discard(ws)

    url = await ws_server(broadcast)
    flow = Flow(
        "isolation",
        (FlowStep(send="PING {marker}"), FlowStep(expect_pattern="^PONG {marker}$", timeout_s=2)),
    )
    a, b = await run_users(url, flow, TEXT, ["a", "b"], linger_s=0.5, stagger_s=0.05)
    assert a.completed and b.completed and a.marker != b.marker
    assert [f.text for f in a.foreign_frames] == [f"PONG {b.marker}"]
    # b connected after a's ping: it may or may not have seen a's pong, never its own as foreign.
    assert all(a.marker in f.text for f in b.foreign_frames)


async def test_run_named_flow_uses_the_default_seed_flow(ws_server) -> None:
    from runbook_lib.settings_load import load_settings

    async def pong(ws: ServerConnection) -> None:
        async for raw in ws:
            if json.loads(raw).get("type") == "ping":
                await ws.send(json.dumps({"type": "pong"}))

    url = await ws_server(pong)
    import pathlib
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        env = pathlib.Path(d) / "e.toml"
        env.write_text(f'name = "x"\n[target]\nbase_url = "http://127.0.0.1:1"\nws_url = "{url}"\n')
        settings = load_settings(str(env))
    obs = await run_named_flow(settings, "load", user_id="u")
    assert obs.completed and obs.flow == "load" and obs.user_id == "u"
