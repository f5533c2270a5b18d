"""A service with one WebSocket route and no HTTP endpoint at all (every GET is 404).

JSON frames: ``{"type": "ping"}`` -> ``{"type": "pong"}``; ``{"type": "echo", "text"}``
-> ``{"type": "echoed", "text"}``.
"""

from __future__ import annotations

import asyncio
import json

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

FAULTS = {
    "route_moved": "the WebSocket route is served at /ws/v2 instead of /ws",
    "slow": "every answer takes 3 s",
    "close_1011": "an echo request closes the socket with 1011",
}

ENV = """\
name = "no-health"
[target]
base_url = "{base_url}"
ws_paths = ["/ws"]
primary_ws_path = "/ws"
health_path = false
ws_health_path = false
ws_test_path = false
[protocol]
critical_events = ["echoed"]
chat_message = { type = "echo", text = "{text} {marker}" }
agent_request = { type = "echo", text = "{text} {marker}" }
[protocol.required_fields]
echoed = ["type", "text"]
[thresholds]
critical_events_min = 1
[checks.not_applicable]
"events.order" = "one echo per request: nothing to order"
"auth.config" = "the service has no authentication"
"auth.health" = "the service has no authentication"
"auth.ws_authenticated" = "the service has no authentication"
"auth.rejects_invalid" = "the service has no authentication"
"""


def make_app(faults: frozenset[str]) -> Starlette:
    async def ws_route(ws: WebSocket) -> None:
        await ws.accept()
        try:
            while True:
                try:
                    msg = json.loads(await ws.receive_text())
                except ValueError:
                    continue
                if "slow" in faults:
                    await asyncio.sleep(3)
                if msg.get("type") == "ping":
                    await ws.send_text(json.dumps({"type": "pong"}))
                elif msg.get("type") == "echo":
                    if "close_1011" in faults:
                        await ws.close(code=1011, reason="internal error")
                        return
                    await ws.send_text(json.dumps({"type": "echoed", "text": msg.get("text")}))
        except WebSocketDisconnect:
            pass

    path = "/ws/v2" if "route_moved" in faults else "/ws"
    return Starlette(routes=[WebSocketRoute(path, ws_route)])


app = make_app(frozenset())
