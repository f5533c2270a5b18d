"""A plain-text chat room with a static bearer token (no JSON anywhere).

Connect with ``Authorization: Bearer <token>`` (anything else: the upgrade is refused,
403). Lines: ``NICK name`` -> ``NICK name``; ``JOIN room`` -> ``JOINED room``;
``SAY room text`` -> every member of the room gets ``[room] name: text``;
``PING x`` -> ``PONG x``; anything else -> ``ERR unknown command``. ``/health``.
"""

from __future__ import annotations

import itertools
import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

TOKEN_ENV = "CORPUS_CHAT_TOKEN"
DEFAULT_TOKEN = "chat-static-token-0123456789"
# A second member's token: isolation needs two identities, not one token shared.
SECOND_TOKEN = "chat-static-token-second-9876543210"

FAULTS = {
    "leak": "SAY goes to every connected client, whatever room it joined",
    "drop": "SAY is accepted but never delivered",
    "reject_token": "the valid token is refused (403 on upgrade)",
}

ENV = """\
name = "text-chat"
[target]
base_url = "{base_url}"
ws_paths = ["/chat"]
primary_ws_path = "/chat"
health_path = "/health"
ws_health_path = false
ws_test_path = false
[auth]
mode = "bearer"
token_envs = ["CORPUS_CHAT_TOKEN", "CORPUS_CHAT_TOKEN_B"]
[protocol]
format = "text"
ping = "PING {marker}"
pong_pattern = "^PONG {marker}$"
error_pattern = "^ERR "
event_patterns = { said = '^\\[(?P<room>[^\\]]+)\\] (?P<user_id>\\S+): ', joined = "^JOINED " }
critical_events = ["joined", "said"]
[thresholds]
critical_events_min = 2
isolation_users = 2
[checks.not_applicable]
"e2e.agent_response" = "a chat room: no agent"
"events.critical_delivered" = "a chat room: no agent events"
"events.order" = "a chat room: no agent events"
"events.structure" = "a chat room: no agent events"
"events.latency" = "a chat room: no agent events"
[[flows.chat.steps]]
send = "NICK {user_id}"
[[flows.chat.steps]]
send = "JOIN r-{marker}"
[[flows.chat.steps]]
expect_pattern = "^JOINED r-{marker}$"
timeout_s = 5
[[flows.chat.steps]]
send = "SAY r-{marker} hello {marker}"
[[flows.chat.steps]]
expect_pattern = '^\\[r-{marker}\\] {user_id}: hello {marker}$'
timeout_s = 5
[[flows.isolation.steps]]
send = "NICK {user_id}"
[[flows.isolation.steps]]
send = "JOIN r-{marker}"
[[flows.isolation.steps]]
expect_pattern = "^JOINED r-{marker}$"
timeout_s = 5
[[flows.isolation.steps]]
send = "SAY r-{marker} hello {marker}"
[[flows.isolation.steps]]
expect_pattern = '^\\[r-{marker}\\] {user_id}: hello {marker}$'
timeout_s = 5
"""


def make_app(faults: frozenset[str], token: str | None = None) -> Starlette:
    secret = token or os.environ.get(TOKEN_ENV) or DEFAULT_TOKEN
    guests = itertools.count(1)
    members: dict[WebSocket, dict[str, Any]] = {}

    async def health(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    async def chat(ws: WebSocket) -> None:
        auth = ws.headers.get("authorization", "")
        if auth not in (f"Bearer {secret}", f"Bearer {SECOND_TOKEN}") or "reject_token" in faults:
            await ws.close(code=1008)  # before accept: uvicorn answers 403
            return
        await ws.accept()
        me: dict[str, Any] = {"nick": f"guest{next(guests)}", "rooms": set()}
        members[ws] = me
        try:
            while True:
                line = (await ws.receive_text()).strip()
                cmd, _, rest = line.partition(" ")
                if cmd == "NICK" and rest:
                    me["nick"] = rest.split()[0]
                    await ws.send_text(f"NICK {me['nick']}")
                elif cmd == "JOIN" and rest:
                    me["rooms"].add(rest.split()[0])
                    await ws.send_text(f"JOINED {rest.split()[0]}")
                elif cmd == "SAY" and " " in rest:
                    room, _, text = rest.partition(" ")
                    if "drop" in faults:
                        continue
                    for sock, who in list(members.items()):
                        if "leak" in faults or room in who["rooms"]:
                            try:
                                await sock.send_text(f"[{room}] {me['nick']}: {text}")
                            except Exception:
                                pass
                elif cmd == "PING":
                    await ws.send_text(f"PONG {rest}".rstrip())
                else:
                    await ws.send_text("ERR unknown command")
        except WebSocketDisconnect:
            pass
        finally:
            members.pop(ws, None)

    return Starlette(routes=[Route("/health", health), WebSocketRoute("/chat", chat)])


app = make_app(frozenset())
