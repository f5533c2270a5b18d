"""Chat rooms over Socket.IO (python-socketio, Engine.IO v4), no auth; health at ``/health``.

The upgrade is at ``/socket.io/?EIO=4&transport=websocket``; the server opens with the
Engine.IO open packet ``0{"sid", "pingInterval", ...}``; ``40`` connects the default
namespace (``40{"sid"}``). Events (``42[name, data]``): ``join`` ``{room}`` ->
``joined`` ``{room}`` to the sender; ``say`` ``{room, user, text}`` -> ``said``
``{room, user, text}`` to every member of the room. The server's decoder drops the
socket on a frame that is not an Engine.IO packet (a JSON ``{"type": "ping"}`` included).
Every other HTTP request goes to a Starlette app (``/health``).
"""

from __future__ import annotations

from typing import Any

import socketio
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

FAULTS = {
    "leak": "said goes to every connected client, whatever room it joined",
    "drop": "say is accepted but never delivered",
    "refuse_connect": "the namespace connect is refused (44 connect_error)",
}

ENV = """\
name = "socketio-chat"
[target]
base_url = "{base_url}"
ws_paths = ["/socket.io/?EIO=4&transport=websocket"]
primary_ws_path = "/socket.io/?EIO=4&transport=websocket"
health_path = "/health"
ws_health_path = false
ws_test_path = false
[protocol]
format = "text"
ping = "3"  # Engine.IO pong: the client's heartbeat, safe at any time (the server does not answer)
event_patterns = { said = '^42\\["said"', joined = '^42\\["joined"' }
critical_events = ["joined", "said"]
[thresholds]
critical_events_min = 2
[checks.not_applicable]
"auth.config" = "the service has no authentication"
"auth.health" = "the service has no authentication"
"auth.ws_authenticated" = "the service has no authentication"
"auth.rejects_invalid" = "the service has no authentication"
"events.order" = "chat: nothing to order"
"events.structure" = "chat: text frames"
"e2e.agent_response" = "a chat room: no agent"
"events.critical_delivered" = "a chat room: no agent events"
"events.latency" = "a chat room: no agent events"
[[flows.load.steps]]
expect_pattern = '^0\\{'
timeout_s = 5
[[flows.load.steps]]
send = "40"
[[flows.load.steps]]
expect_pattern = "^40"
timeout_s = 5
[[flows.chat.steps]]
expect_pattern = '^0\\{'
timeout_s = 5
[[flows.chat.steps]]
send = "40"
[[flows.chat.steps]]
expect_pattern = "^40"
timeout_s = 5
[[flows.chat.steps]]
send = '42["join",{"room":"r-{marker}"}]'
[[flows.chat.steps]]
expect_pattern = 'joined.*r-{marker}'
timeout_s = 5
[[flows.chat.steps]]
send = '42["say",{"room":"r-{marker}","user":"{user_id}","text":"hello {marker}"}]'
[[flows.chat.steps]]
expect_pattern = 'said.*hello {marker}'
timeout_s = 5
[[flows.isolation.steps]]
expect_pattern = '^0\\{'
timeout_s = 5
[[flows.isolation.steps]]
send = "40"
[[flows.isolation.steps]]
expect_pattern = "^40"
timeout_s = 5
[[flows.isolation.steps]]
send = '42["join",{"room":"r-{marker}"}]'
[[flows.isolation.steps]]
expect_pattern = 'joined.*r-{marker}'
timeout_s = 5
[[flows.isolation.steps]]
send = '42["say",{"room":"r-{marker}","user":"{user_id}","text":"hello {marker}"}]'
[[flows.isolation.steps]]
expect_pattern = 'said.*hello {marker}'
timeout_s = 5
"""


def make_app(faults: frozenset[str]) -> socketio.ASGIApp:
    sio = socketio.AsyncServer(async_mode="asgi", cors_allowed_origins="*")

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> bool:
        return "refuse_connect" not in faults

    @sio.event
    async def join(sid: str, data: Any) -> None:
        room = str((data or {}).get("room", ""))
        await sio.enter_room(sid, room)
        await sio.emit("joined", {"room": room}, to=sid)

    @sio.event
    async def say(sid: str, data: Any) -> None:
        data = data or {}
        msg = {"room": data.get("room"), "user": data.get("user"), "text": data.get("text")}
        if "drop" in faults:
            return
        if "leak" in faults:
            await sio.emit("said", msg)
        else:
            await sio.emit("said", msg, room=str(data.get("room", "")))

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    web = Starlette(routes=[Route("/health", health)])
    return socketio.ASGIApp(sio, other_asgi_app=web)


app = make_app(frozenset())
