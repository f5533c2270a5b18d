"""Every request the runbook makes carries ``User-Agent: runbook/<version> (run <run_id>)``.

A real WebSocket server on loopback (port 0) records the User-Agent of every HTTP request
and handshake it receives: a plain GET, the raw handshake probe, a websockets client
round trip and a load-engine session (picows).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from http import HTTPStatus

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

from runbook_lib import __version__
from runbook_lib.flow_runner import run_flow
from runbook_lib.flows import default_flows
from runbook_lib.handshake import observe_handshake
from runbook_lib.http_checks import observe_get
from runbook_lib.identity import bind_run, run_id, user_agent
from runbook_lib.load.engine import LoadPlan, run_load
from runbook_lib.settings import ProtocolSettings

RUN = "20261207T120000Z-local"


def test_the_user_agent_names_the_version_and_the_bound_run() -> None:
    bind_run(RUN)
    try:
        assert run_id() == RUN
        assert user_agent() == f"runbook/{__version__} (run {RUN})"
    finally:
        bind_run(None)
    assert run_id().startswith("interactive-")


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[str]]]:
    seen: list[str] = []

    def process_request(conn: ServerConnection, request: Request) -> Response | None:
        seen.append(request.headers.get("User-Agent", ""))
        if request.path == "/health":
            return conn.respond(HTTPStatus.OK, "ok\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        async for message in ws:
            if json.loads(message).get("type") == "ping":
                await ws.send(json.dumps({"type": "pong"}))

    async with serve(handler, "127.0.0.1", 0, process_request=process_request) as srv:
        port = srv.sockets[0].getsockname()[1]
        yield f"127.0.0.1:{port}", seen


async def test_every_kind_of_request_carries_the_runs_user_agent(
    server: tuple[str, list[str]],
) -> None:
    host, seen = server
    bind_run(RUN)
    try:
        expected = user_agent()
        assert (await observe_get(f"http://{host}/health", timeout_s=5)).status == 200
        assert (await observe_handshake(f"ws://{host}/websocket", timeout_s=5)).status == 101
        protocol = ProtocolSettings()
        flow = default_flows(protocol)["load"]
        obs = await run_flow(f"ws://{host}/websocket", flow, None, protocol, open_timeout_s=5)
        assert obs.completed, obs
        report = await run_load(LoadPlan(url=f"ws://{host}/websocket", sessions=1, workers=0))
        assert report.succeeded == 1
    finally:
        bind_run(None)
    assert len(seen) == 4, seen
    assert set(seen) == {expected}
