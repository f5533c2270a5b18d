"""JSON-RPC 2.0 pub/sub over WebSocket, no auth; health at ``/healthz``.

``subscribe {"topic"}`` -> result: a subscription id; ``publish {"topic", "data"}`` ->
result ``{"delivered": n}``, and every subscriber of the topic gets the notification
``{"jsonrpc": "2.0", "method": "message", "params": {"subscription", "topic", "data"}}``.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

FAULTS = {
    "route_removed": "the /rpc WebSocket route is not registered",
    "drop": "publish is acknowledged but no notification is ever sent",
    "leak": "every notification goes to every subscriber of every topic",
}

ENV = """\
name = "jsonrpc-pubsub"
[target]
base_url = "{base_url}"
ws_paths = ["/rpc"]
primary_ws_path = "/rpc"
health_path = "/healthz"
ws_health_path = false
ws_test_path = false
[protocol]
event_type = ["method"]
ping = { jsonrpc = "2.0", id = "{marker}", method = "ping" }
critical_events = ["message"]
[protocol.required_fields]
message = ["jsonrpc", "method", "params.subscription", "params.data"]
[thresholds]
critical_events_min = 1
[checks.not_applicable]
"events.order" = "one notification per publish: nothing to order"
"chat.flow" = "pub/sub: no chat conversation"
"auth.config" = "the service has no authentication"
"auth.health" = "the service has no authentication"
"auth.ws_authenticated" = "the service has no authentication"
"auth.rejects_invalid" = "the service has no authentication"
[[flows.load.steps]]
send = { jsonrpc = "2.0", id = "{marker}", method = "ping" }
[[flows.load.steps]]
expect = { id = "{marker}", result = "pong" }
timeout_s = 5
[[flows.agent.steps]]
send = { jsonrpc = "2.0", id = 1, method = "subscribe", params = { topic = "t-{marker}" } }
[[flows.agent.steps]]
expect = { id = 1 }
capture = { sub = "result" }
timeout_s = 5
[[flows.agent.steps]]
send = { jsonrpc = "2.0", id = 2, method = "publish", params = { topic = "t-{marker}", data = "{marker}" } }
[[flows.agent.steps]]
expect = { method = "message", "params.subscription" = "{sub}", "params.data" = "{marker}" }
timeout_s = 5
"""


def make_app(faults: frozenset[str]) -> Starlette:
    counter = itertools.count(1)
    # topic -> {(socket, subscription id)}
    topics: dict[str, set[tuple[WebSocket, str]]] = {}

    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def reply(ws: WebSocket, rid: Any, *, result: Any = None, error: Any = None) -> None:
        body: dict[str, Any] = {"jsonrpc": "2.0", "id": rid}
        body["error" if error is not None else "result"] = error if error is not None else result
        await ws.send_text(json.dumps(body))

    async def rpc(ws: WebSocket) -> None:
        await ws.accept()
        mine: list[tuple[str, tuple[WebSocket, str]]] = []
        try:
            while True:
                raw = await ws.receive_text()
                try:
                    msg = json.loads(raw)
                    method, rid = msg["method"], msg.get("id")
                    params = msg.get("params") or {}
                except (ValueError, KeyError, TypeError):
                    await reply(ws, None, error={"code": -32700, "message": "Parse error"})
                    continue
                if method == "subscribe":
                    sid = f"sub-{next(counter)}"
                    entry = (ws, sid)
                    topics.setdefault(str(params.get("topic")), set()).add(entry)
                    mine.append((str(params.get("topic")), entry))
                    await reply(ws, rid, result=sid)
                elif method == "publish":
                    topic = str(params.get("topic"))
                    targets = (
                        {e for subs in topics.values() for e in subs}
                        if "leak" in faults
                        else set(topics.get(topic, ()))
                    )
                    delivered = 0
                    if "drop" not in faults:
                        for sock, sid in targets:
                            note = {
                                "jsonrpc": "2.0",
                                "method": "message",
                                "params": {
                                    "subscription": sid,
                                    "topic": topic,
                                    "data": params.get("data"),
                                },
                            }
                            try:
                                await sock.send_text(json.dumps(note))
                                delivered += 1
                            except Exception:
                                pass
                    await reply(ws, rid, result={"delivered": delivered})
                elif method == "ping":
                    await reply(ws, rid, result="pong")
                else:
                    await reply(ws, rid, error={"code": -32601, "message": "Method not found"})
        except WebSocketDisconnect:
            pass
        finally:
            for topic, entry in mine:
                topics.get(topic, set()).discard(entry)

    routes: list[Any] = [Route("/healthz", healthz)]
    if "route_removed" not in faults:
        routes.append(WebSocketRoute("/rpc", rpc))
    return Starlette(routes=routes)


app = make_app(frozenset())
