"""A hostile WebSocket service on loopback, for the slow tests and by hand.

    python -m tests.hostile_server MODE        # prints "PORT <n>" on stdout, serves until killed

Modes:

* ``endless``: ``/health`` answers 200; every WebSocket path accepts, then sends small
  JSON frames as fast as the client reads them, for ever, whatever the client says.
* ``redos``: text replies: every message is answered by ``"a" * 5000 + "!"`` (food for
  ``pong_pattern = "^(a+)+$"`` in a backtracking engine).

Standard library plus ``websockets`` only; binds 127.0.0.1 port 0.
"""

from __future__ import annotations

import asyncio
import http
import json
import sys

from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response


def _health(conn: ServerConnection, request: Request) -> Response | None:
    if request.headers.get("Upgrade", "").lower() != "websocket":
        return conn.respond(http.HTTPStatus.OK, '{"status": "ok"}\n')
    return None


async def _endless(ws: ServerConnection) -> None:
    n = 0
    pad = "x" * 200
    while True:
        n += 1
        await ws.send(json.dumps({"type": "tick", "n": n, "pad": pad}))
        if n % 100 == 0:
            await asyncio.sleep(0)


async def _redos(ws: ServerConnection) -> None:
    async for _ in ws:
        await ws.send("a" * 5000 + "!")


MODES = {"endless": _endless, "redos": _redos}


async def main(mode: str) -> None:
    async with serve(
        MODES[mode], "127.0.0.1", 0, process_request=_health, compression=None
    ) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        print(f"PORT {port}", flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
