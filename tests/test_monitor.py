"""The monitoring window's observer (``runbook_lib.monitor``) against a real server."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from runbook_lib.monitor import observe_monitor


async def test_monitor_without_a_health_route_samples_the_websocket_only(uvicorn_app) -> None:
    """health_path = false: no GET is sent; every tick still carries a handshake."""

    async def ws_endpoint(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.close()

    base = await uvicorn_app(Starlette(routes=[WebSocketRoute("/ws", ws_endpoint)]))
    mon = await observe_monitor(
        None, base.replace("http", "ws", 1) + "/ws", window_s=0.3, interval_s=0.1, timeout_s=5
    )
    assert mon.ticks and mon.health_url == ""
    assert all(t.ws_upgraded and t.health_status is None for t in mon.ticks)
    assert {t.health_error for t in mon.ticks} == {"not configured"}
