"""Diagnosis that fits the evidence, against small loopback servers written here: a
handler that fails right after the accept, one that drops the socket on the runbook's
first frame, one that answers with an error frame in 10 ms, one that drops an event.
Each check's detail must name the cause the timing and the frames show."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.server import ServerConnection

from runbook_lib.checks.agent import judge_events_order
from runbook_lib.checks.monitor import judge_monitor_hold, judge_monitor_ws_failure_rate
from runbook_lib.checks.ws import judge_ws_roundtrip
from runbook_lib.flow_runner import run_flow
from runbook_lib.flows import default_flows
from runbook_lib.monitor import observe_monitor
from runbook_lib.results import Status
from runbook_lib.settings import ProtocolSettings
from runbook_lib.ws_checks import observe_hold

P = ProtocolSettings()
FLOWS = default_flows(P)


async def crash_raising(ws: ServerConnection) -> None:
    raise RuntimeError("room poisoned")  # websockets closes 1011


async def crash_dropping(ws: ServerConnection) -> None:
    ws.transport.abort()  # no close frame: the client sees 1006


async def drop_on_first_frame(ws: ServerConnection) -> None:
    await ws.recv()
    ws.transport.abort()


async def error_in_10ms(ws: ServerConnection) -> None:
    async for _ in ws:
        await asyncio.sleep(0.01)
        await ws.send(json.dumps({"type": "error", "message": "unknown op 'ping'"}))


async def agent_dropping_tool_completed(ws: ServerConnection) -> None:
    req = json.loads(await ws.recv())
    run_id = req["data"]["run_id"]
    for kind in ("agent_started", "agent_thinking", "tool_executing", "agent_completed"):
        await ws.send(json.dumps({"type": kind, "user_id": "runbook-user", "run_id": run_id}))
    await asyncio.sleep(5)


@pytest.mark.parametrize("handler", [crash_raising, crash_dropping])
async def test_socket_dropped_at_once_after_accept_is_the_handler_not_a_timeout(
    ws_server, handler
) -> None:
    url = await ws_server(handler)
    hold = await observe_hold(url, P, hold_s=2.0, open_timeout_s=5.0)
    r = judge_monitor_hold(hold, request_timeout_s=300)
    assert r.status is Status.FAIL and r.data["cause"] == "handler_failed", r.detail
    assert "handler fails right after accepting" in r.detail
    assert "--timeout" not in r.detail

    obs = await run_flow(url, FLOWS["load"], None, P, linger_s=0)
    rt = judge_ws_roundtrip(obs)
    assert rt.status is Status.FAIL and rt.data["cause"] == "handler_failed", rt.detail
    assert "--timeout" not in rt.detail and "handler fails" in rt.detail

    mon = await observe_monitor(
        None, url, window_s=0.1, interval_s=0.1, protocol=P, ping_flow=FLOWS["load"]
    )
    m = judge_monitor_ws_failure_rate(mon, max_rate=0.01, min_samples=1)
    assert m.status is Status.FAIL and "handler fails" in m.detail, m.detail


@pytest.mark.slow
async def test_drop_right_after_the_runbooks_own_frame_is_a_protocol_mismatch(
    ws_server,
) -> None:
    """The socket is quiet for a second, then dropped as the hold's ping arrives."""
    url = await ws_server(drop_on_first_frame)
    hold = await observe_hold(url, P, hold_s=4.0, ping_every_s=1.0, open_timeout_s=5.0)
    r = judge_monitor_hold(hold, request_timeout_s=300)
    assert r.status is Status.FAIL and r.data["cause"] == "protocol_mismatch", r.detail
    assert '"ping"' in r.detail  # the frame is named
    assert "--timeout" not in r.detail


async def test_error_frame_in_10ms_is_an_answer_quoted_not_a_timeout(ws_server) -> None:
    url = await ws_server(error_in_10ms)
    obs = await run_flow(url, FLOWS["load"], None, P, linger_s=0)
    r = judge_ws_roundtrip(obs)
    assert r.status is Status.FAIL and r.observed == "error frame", r.detail
    assert "unknown op" in r.detail and "timeout" not in r.detail
    assert obs.duration_s < 2

    mon = await observe_monitor(
        None, url, window_s=0.1, interval_s=0.1, protocol=P, ping_flow=FLOWS["load"]
    )
    m = judge_monitor_ws_failure_rate(mon, max_rate=0.01, min_samples=1)
    assert m.status is Status.FAIL and "unknown op" in m.detail, m.detail
    assert "ping unanswered" not in m.detail


async def test_a_dropped_event_is_missing_not_out_of_order(ws_server) -> None:
    url = await ws_server(agent_dropping_tool_completed)
    obs = await run_flow(url, FLOWS["agent"], None, P, step_timeout_s=0.5, linger_s=0)
    r = judge_events_order(obs, critical=P.critical_events)
    assert r.status is Status.FAIL and "tool_completed never arrived" in r.detail, r.detail
    assert "out of order" not in r.detail
