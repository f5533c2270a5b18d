"""Local WebSocket pub/sub target for the load benchmark's flow part (a separate process).

JSON frames, the shape of a JSON-RPC-less pub/sub service:

- ``{"op": "subscribe", "topic": T, "id": I}`` -> ``{"type": "ack", "id": I, "sub": S}``
  (``S`` names this socket's subscription to ``T``; subscribing again keeps it);
- ``{"op": "publish", "topic": T, "data": D}`` -> ``{"type": "notification", "sub": S,
  "topic": T, "data": D}`` to every subscriber of ``T``.

Answers close frames with a close and prints ``READY <port>`` once it listens. Minimal and
fast (picows, uvloop) so that the *generator* is what a benchmark run measures.

Usage: ``python benchmarks/pubsub_target.py [--port 0] [--cpu 0]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from itertools import count

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

__all__ = ["main"]

_TEXT = WSMsgType.TEXT
_topics: dict[str, dict[WSTransport, str]] = {}
_ids = count()


class _PubSub(WSListener):
    __slots__ = ("_mine",)

    def __init__(self) -> None:
        self._mine: list[str] = []

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is _TEXT:
            try:
                msg = json.loads(frame.get_payload_as_bytes())
                op, topic = msg["op"], msg["topic"]
            except (ValueError, KeyError, TypeError):
                transport.send(_TEXT, b'{"type":"error","message":"bad request"}')
                return
            if op == "subscribe":
                subs = _topics.setdefault(topic, {})
                sub = subs.get(transport)
                if sub is None:
                    sub = subs[transport] = f"s{next(_ids)}"
                    self._mine.append(topic)
                ack = {"type": "ack", "id": msg.get("id"), "sub": sub}
                transport.send(_TEXT, json.dumps(ack, separators=(",", ":")).encode())
            elif op == "publish":
                for peer, sub in _topics.get(topic, {}).items():
                    note = {"type": "notification", "sub": sub, "topic": topic}
                    note["data"] = msg.get("data")
                    peer.send(_TEXT, json.dumps(note, separators=(",", ":")).encode())
            else:
                transport.send(_TEXT, b'{"type":"error","message":"unknown op"}')
        elif kind is WSMsgType.CLOSE:
            code = frame.get_close_code()
            transport.send_close(WSCloseCode.OK if code is WSCloseCode.NO_INFO else code)
            transport.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        for topic in self._mine:
            subs = _topics.get(topic)
            if subs is not None:
                subs.pop(transport, None)
                if not subs:
                    del _topics[topic]
        self._mine.clear()


async def _serve(port: int) -> None:
    server = await ws_create_server(
        lambda _request: _PubSub(),
        "127.0.0.1",
        port,
        backlog=4096,
        read_buffer_init_size=1024,
        websocket_handshake_timeout=10,
    )
    print(f"READY {server.sockets[0].getsockname()[1]}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()


def main(argv: list[str] | None = None) -> int:
    """Run the pub/sub target until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--cpu", type=int, default=None, help="pin the target to this core")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    loop_factory = None
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:
        pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args.port))
    return 0


if __name__ == "__main__":
    sys.exit(main())
