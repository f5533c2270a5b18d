"""An agent event stream: events nested under ``payload``, token in ``?access_token=``.

A valid token (``TOKENS``: token -> user) gets ``{"payload": {"type": "session", "user"}}``;
a missing or unknown one gets an error frame then close 1008. ``{"action": "run",
"input": ..., "run": id}`` streams ``run_started``, ``token`` (x2) and ``run_finished``,
each ``{"payload": {"type", "user", "run", "seq", ...}}``; ``{"action": "ping"}`` ->
``{"payload": {"type": "pong"}}``. Health at ``/health``.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

TOKENS = {"agent-token-alice-5f2c9a": "alice", "agent-token-bob-77d1e0": "bob"}
EVENTS = ("run_started", "token", "token", "run_finished")

FAULTS = {
    "leak": "every run's events go to every connected client",
    "drop": "run_finished is never sent",
    "bypass": "any token is accepted (user read from the token's text)",
}

ENV = """\
name = "agent-stream"
[target]
base_url = "{base_url}"
ws_paths = ["/agent/stream"]
primary_ws_path = "/agent/stream"
health_path = "/health"
ws_health_path = false
ws_test_path = false
[auth]
mode = "query"
query_param = "access_token"
token_envs = ["CORPUS_AGENT_TOKEN", "CORPUS_AGENT_TOKEN_B"]
[protocol]
event_type = ["payload.type"]
user_id = ["payload.user"]
run_id = ["payload.run"]
ignore = ["session", "pong"]
ping = { action = "ping" }
critical_events = ["run_started", "token", "run_finished"]
agent_request = { action = "run", input = "{text} {marker}", run = "{run_id}" }
chat_message = { action = "run", input = "{text} {marker}", run = "{run_id}" }
[protocol.required_fields]
run_started = ["payload.type", "payload.user", "payload.run"]
run_finished = ["payload.type", "payload.user", "payload.run", "payload.output"]
[thresholds]
critical_events_min = 3
isolation_users = 2
"""


def make_app(faults: frozenset[str]) -> Starlette:
    sockets: dict[WebSocket, str] = {}

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def stream(ws: WebSocket) -> None:
        await ws.accept()
        token = ws.query_params.get("access_token", "")
        user = TOKENS.get(token) or (token[:16] if "bypass" in faults and token else None)
        if user is None:
            await ws.send_text(
                json.dumps({"payload": {"type": "error", "message": "invalid token"}})
            )
            await ws.close(code=1008, reason="invalid token")
            return
        sockets[ws] = user
        await ws.send_text(json.dumps({"payload": {"type": "session", "user": user}}))
        try:
            while True:
                try:
                    msg = json.loads(await ws.receive_text())
                except ValueError:
                    await ws.send_text(
                        json.dumps({"payload": {"type": "error", "message": "bad json"}})
                    )
                    continue
                if msg.get("action") == "ping":
                    await ws.send_text(json.dumps({"payload": {"type": "pong"}}))
                    continue
                if msg.get("action") != "run":
                    await ws.send_text(
                        json.dumps({"payload": {"type": "error", "message": "unknown action"}})
                    )
                    continue
                run = str(msg.get("run") or "run-x")
                for seq, etype in enumerate(EVENTS):
                    if etype == "run_finished" and "drop" in faults:
                        break
                    body: dict[str, Any] = {"type": etype, "user": user, "run": run, "seq": seq}
                    if etype == "token":
                        body["text"] = str(msg.get("input", ""))[:200]
                    if etype == "run_finished":
                        body["output"] = f"done: {msg.get('input', '')}"[:200]
                    frame = json.dumps({"payload": body})
                    targets = list(sockets) if "leak" in faults else [ws]
                    for sock in targets:
                        try:
                            await sock.send_text(frame)
                        except Exception:
                            pass
                    await asyncio.sleep(0.02)
        except WebSocketDisconnect:
            pass
        finally:
            sockets.pop(ws, None)

    return Starlette(routes=[Route("/health", health), WebSocketRoute("/agent/stream", stream)])


app = make_app(frozenset())
