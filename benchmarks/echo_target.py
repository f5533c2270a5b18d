"""Local WebSocket echo target for the load benchmark (run as a separate process).

Echoes every text/binary frame back, optionally after a fixed delay, answers close
frames with a close, and prints ``READY <port>`` on stdout once it listens. It is
deliberately minimal and fast (picows, uvloop when no delay is asked for) so the
*generator* is what a benchmark run measures, not the target.

Usage: ``python benchmarks/echo_target.py [--port 0] [--delay-ms 5] [--cpu 0]``
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time

from picows import WSCloseCode, WSFrame, WSListener, WSMsgType, WSTransport, ws_create_server

__all__ = ["main"]


def _close(transport: WSTransport, frame: WSFrame) -> None:
    code = frame.get_close_code()
    # A close without a status must not be echoed as status 0 (invalid on the wire).
    transport.send_close(WSCloseCode.OK if code is WSCloseCode.NO_INFO else code)
    transport.disconnect()


class _Echo(WSListener):
    __slots__ = ()

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            transport.send(kind, frame.get_payload_as_bytes())
        elif kind is WSMsgType.CLOSE:
            _close(transport, frame)


class _DelayedEcho(WSListener):
    """Replies ``delay_s`` after each frame, recording the delay actually applied."""

    __slots__ = ("_applied", "_delay")

    def __init__(self, delay_s: float, applied: list[float]) -> None:
        self._delay = delay_s
        self._applied = applied

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            payload = frame.get_payload_as_bytes()
            received = time.perf_counter()
            # A timer alone overshoots by the event loop's timer granularity (up to
            # 1 ms with epoll); wake up early and finish with short yields so the
            # added delay is the one announced, which the accuracy test relies on.
            asyncio.get_running_loop().call_later(
                max(self._delay - 0.0015, 0.0),
                self._finish,
                transport,
                kind,
                payload,
                received,
            )
        elif kind is WSMsgType.CLOSE:
            _close(transport, frame)

    def _finish(self, transport: WSTransport, kind: WSMsgType, payload: bytes, t0: float) -> None:
        now = time.perf_counter()
        if now - t0 < self._delay:
            asyncio.get_running_loop().call_soon(self._finish, transport, kind, payload, t0)
            return
        self._applied.append(now - t0)
        if not transport.is_disconnected:
            transport.send(kind, payload)


async def _serve(port: int, delay_s: float) -> None:
    applied: list[float] = []
    if delay_s > 0:

        def factory(_request: object) -> WSListener:
            return _DelayedEcho(delay_s, applied)
    else:

        def factory(_request: object) -> WSListener:
            return _Echo()

    server = await ws_create_server(
        factory,
        "127.0.0.1",
        port,
        backlog=4096,
        read_buffer_init_size=1024,
        websocket_handshake_timeout=10,
    )
    bound = server.sockets[0].getsockname()[1]
    print(f"READY {bound}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    server.close()
    if applied:
        applied.sort()
        print(
            f"APPLIED_DELAY_P50_MS {applied[len(applied) // 2] * 1e3:.3f} n={len(applied)}",
            flush=True,
        )


def main(argv: list[str] | None = None) -> int:
    """Run the echo target until SIGTERM/SIGINT."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--delay-ms", type=float, default=0.0)
    parser.add_argument("--cpu", type=int, default=None, help="pin the target to this core")
    args = parser.parse_args(argv)
    if args.cpu is not None:
        os.sched_setaffinity(0, {args.cpu})
    delay_s = args.delay_ms / 1e3
    loop_factory = None
    if delay_s == 0:
        try:
            import uvloop

            loop_factory = uvloop.new_event_loop
        except ImportError:
            pass
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(args.port, delay_s))
    return 0


if __name__ == "__main__":
    sys.exit(main())
