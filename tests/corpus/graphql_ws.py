"""GraphQL over WebSocket, the ``graphql-transport-ws`` protocol.

The upgrade is refused (403) unless the client offers ``graphql-transport-ws``.
``connection_init`` -> ``connection_ack``; ``ping`` -> ``pong``; ``subscribe`` (id,
payload.query) before the ack closes with 4401; the subscriptions
``countdown(from: N)`` and ``echo(text: "...")`` (and the query ``{ __typename }``)
answer ``next`` frames (id, payload.data) then ``complete`` (id); an unknown query
answers ``error`` (id, payload: [errors]).
Health at ``/health``.
"""

from __future__ import annotations

import asyncio
import json
import re
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

SUBPROTOCOL = "graphql-transport-ws"

FAULTS = {
    "no_ack": "connection_init is never acknowledged",
    "no_complete": "subscriptions never send complete",
    "drop_next": "subscriptions complete without any next frame",
}

ENV = """\
name = "graphql-ws"
[target]
base_url = "{base_url}"
ws_paths = ["/graphql"]
primary_ws_path = "/graphql"
health_path = "/health"
ws_health_path = false
ws_test_path = false
[protocol]
subprotocols = ["graphql-transport-ws"]
ping = { type = "ping" }
pong_types = ["pong"]
ignore = ["connection_ack", "pong"]
event_type = ["type"]
critical_events = ["next", "complete"]
[protocol.required_fields]
next = ["id", "type", "payload.data"]
complete = ["id", "type"]
[thresholds]
critical_events_min = 2
[checks.not_applicable]
"chat.flow" = "GraphQL subscriptions: no chat conversation"
"auth.config" = "the service has no authentication"
"auth.health" = "the service has no authentication"
"auth.ws_authenticated" = "the service has no authentication"
"auth.rejects_invalid" = "the service has no authentication"
[[flows.load.steps]]
send = { type = "ping" }
[[flows.load.steps]]
expect = { type = "pong" }
timeout_s = 5
[[flows.agent.steps]]
send = { type = "connection_init", payload = {} }
[[flows.agent.steps]]
expect = { type = "connection_ack" }
timeout_s = 5
[[flows.agent.steps]]
send = { id = "{run_id}", type = "subscribe", payload = { query = 'subscription { echo(text: "{marker}") }' } }
[[flows.agent.steps]]
expect = { type = "next", id = "{run_id}", "payload.data.echo" = "{marker}" }
timeout_s = 5
[[flows.agent.steps]]
expect = { type = "complete", id = "{run_id}" }
timeout_s = 5
"""

_COUNTDOWN = re.compile(r"countdown\(from:\s*(\d+)\)")
_ECHO = re.compile(r'echo\(text:\s*"([^"]*)"\)')


def make_app(faults: frozenset[str]) -> Starlette:
    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def graphql(ws: WebSocket) -> None:
        offered = ws.scope.get("subprotocols") or []
        if SUBPROTOCOL not in offered:
            await ws.close(code=1002)  # before accept: uvicorn answers 403
            return
        await ws.accept(subprotocol=SUBPROTOCOL)
        acked = False
        try:
            while True:
                try:
                    msg = json.loads(await ws.receive_text())
                    kind = msg["type"]
                except (ValueError, KeyError, TypeError):
                    await ws.close(code=4400, reason="Invalid message")
                    return
                if kind == "connection_init":
                    if "no_ack" not in faults:
                        acked = True
                        await ws.send_text(json.dumps({"type": "connection_ack"}))
                elif kind == "ping":
                    await ws.send_text(json.dumps({"type": "pong"}))
                elif kind == "subscribe":
                    if not acked:
                        await ws.close(code=4401, reason="Unauthorized")
                        return
                    await _subscribe(ws, str(msg.get("id")), msg.get("payload") or {}, faults)
        except WebSocketDisconnect:
            pass

    return Starlette(routes=[Route("/health", health), WebSocketRoute("/graphql", graphql)])


async def _subscribe(
    ws: WebSocket, sid: str, payload: dict[str, Any], faults: frozenset[str]
) -> None:
    query = str(payload.get("query", ""))
    values: list[dict[str, Any]]
    if m := _COUNTDOWN.search(query):
        values = [{"countdown": n} for n in range(int(m.group(1)), -1, -1)]
    elif m := _ECHO.search(query):
        values = [{"echo": m.group(1)}]
    elif query.strip().strip("{}").strip() == "__typename":
        values = [{"__typename": "Query"}]  # a query operation: one result
    else:
        err = [{"message": f"Cannot query {query[:60]!r}"}]
        await ws.send_text(json.dumps({"id": sid, "type": "error", "payload": err}))
        return
    if "drop_next" not in faults:
        for data in values:
            await ws.send_text(json.dumps({"id": sid, "type": "next", "payload": {"data": data}}))
            await asyncio.sleep(0.01)
    if "no_complete" not in faults:
        await ws.send_text(json.dumps({"id": sid, "type": "complete"}))


app = make_app(frozenset())
