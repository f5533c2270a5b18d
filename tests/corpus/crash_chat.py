"""JSON chat rooms whose handler can die right after accepting; health at ``/health``.

``{"type": "join", "room", "user"}`` -> ``{"type": "joined", "room", "user"}``;
``{"type": "say", "room", "user", "text"}`` -> ``{"type": "message", "room", "user",
"text"}`` to every member of the room; ``{"type": "ping"}`` -> ``{"type": "pong"}``;
anything else -> ``{"type": "error", "message"}``.

The ``crash`` fault is the bug this shape comes from: a socket that closed during a
broadcast left the room poisoned, and every later handler raised right after the accept
(the server closes 1011 within milliseconds; the request timeout has nothing to do with it).
"""

from __future__ import annotations

import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

FAULTS = {
    "crash": "the handler raises right after the accept (close 1011 at once)",
    "leak": "a message goes to every connected client, whatever room it joined",
    "drop": "say is accepted but never delivered",
}

ENV = """\
name = "crash-chat"
[target]
base_url = "{base_url}"
ws_paths = ["/ws/chat"]
primary_ws_path = "/ws/chat"
health_path = "/health"
ws_health_path = false
ws_test_path = false
[protocol]
critical_events = ["joined", "message"]
user_id = ["user"]
[thresholds]
critical_events_min = 2
[checks.not_applicable]
"auth.config" = "the service has no authentication"
"auth.health" = "the service has no authentication"
"auth.ws_authenticated" = "the service has no authentication"
"auth.rejects_invalid" = "the service has no authentication"
"e2e.agent_response" = "a chat room: no agent"
"events.critical_delivered" = "a chat room: no agent events"
"events.latency" = "a chat room: no agent events"
"events.order" = "a chat room: no agent events"
"events.structure" = "a chat room: no agent events"
[[flows.chat.steps]]
send = { type = "join", room = "r-{marker}", user = "{user_id}" }
[[flows.chat.steps]]
expect = { type = "joined", room = "r-{marker}" }
timeout_s = 5
[[flows.chat.steps]]
send = { type = "say", room = "r-{marker}", user = "{user_id}", text = "hello {marker}" }
[[flows.chat.steps]]
expect = { type = "message", text = "hello {marker}" }
timeout_s = 5
[[flows.isolation.steps]]
send = { type = "join", room = "r-{marker}", user = "{user_id}" }
[[flows.isolation.steps]]
expect = { type = "joined", room = "r-{marker}" }
timeout_s = 5
[[flows.isolation.steps]]
send = { type = "say", room = "r-{marker}", user = "{user_id}", text = "hello {marker}" }
[[flows.isolation.steps]]
expect = { type = "message", text = "hello {marker}" }
timeout_s = 5
"""


def make_app(faults: frozenset[str]) -> Starlette:
    rooms: dict[str, set[WebSocket]] = {}
    everyone: set[WebSocket] = set()

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def send(ws: WebSocket, msg: dict[str, Any]) -> None:
        await ws.send_text(json.dumps(msg))

    async def chat(ws: WebSocket) -> None:
        await ws.accept()
        if "crash" in faults:
            raise RuntimeError("room state poisoned by a socket closed during a broadcast")
        everyone.add(ws)
        joined: set[str] = set()
        try:
            while True:
                try:
                    msg = json.loads(await ws.receive_text())
                    kind = msg.get("type")
                except (ValueError, AttributeError):
                    await send(ws, {"type": "error", "message": "frames are JSON objects"})
                    continue
                if kind == "ping":
                    await send(ws, {"type": "pong"})
                elif kind == "join":
                    room = str(msg.get("room", ""))
                    rooms.setdefault(room, set()).add(ws)
                    joined.add(room)
                    await send(ws, {"type": "joined", "room": room, "user": msg.get("user")})
                elif kind == "say":
                    room = str(msg.get("room", ""))
                    out = {"type": "message", "room": room, "user": msg.get("user")}
                    out["text"] = msg.get("text")
                    if "drop" in faults:
                        continue
                    for peer in list(everyone if "leak" in faults else rooms.get(room, ())):
                        try:
                            await send(peer, out)
                        except Exception:  # a peer gone mid-broadcast
                            everyone.discard(peer)
                else:
                    await send(ws, {"type": "error", "message": f"unknown type {kind!r}"})
        except WebSocketDisconnect:
            pass
        finally:
            everyone.discard(ws)
            for room in joined:
                rooms.get(room, set()).discard(ws)

    return Starlette(routes=[Route("/health", health), WebSocketRoute("/ws/chat", chat)])


app = make_app(frozenset())
