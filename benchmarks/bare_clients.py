"""Bare WebSocket client loops: the "no instrumentation" baselines of the benchmark.

Each runs the benchmark's session (connect, N echo round trips of a small JSON frame,
close) at a planned open-loop arrival rate with the plain library API and no
measurement beyond counting errors and timing the whole run. Same event loop
(uvloop when installed) as the engine's workers, so the difference between a bare
loop and the engine is the engine's bookkeeping.

Usage: ``python benchmarks/bare_clients.py {picows,websockets} URL RATE DURATION_S``;
prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["main"]

PAYLOAD = b'{"type":"echo","seq":1}'
MESSAGES = 10
TIMEOUT_S = 10.0


def _picows_listener_class() -> type:
    from picows import WSCloseCode, WSListener, WSMsgType

    text, close, ok = WSMsgType.TEXT, WSMsgType.CLOSE, WSCloseCode.OK

    class Listener(WSListener):  # type: ignore[misc]
        __slots__ = ("n",)

        def __init__(self) -> None:
            self.n = 0

        def on_ws_connected(self, transport: Any) -> None:
            transport.send(text, PAYLOAD)

        def on_ws_frame(self, transport: Any, frame: Any) -> None:
            if frame.msg_type is text:
                self.n += 1
                if self.n < MESSAGES:
                    transport.send(text, PAYLOAD)
                else:
                    transport.send_close(ok)
            elif frame.msg_type is close:
                transport.disconnect()

    return Listener


_LISTENER: Any = None


async def _picows_session() -> None:
    from picows import ws_connect

    transport, listener = await ws_connect(_LISTENER, _URL, read_buffer_init_size=1024)
    await transport.wait_disconnected()
    if listener.n < MESSAGES:
        raise ConnectionError("closed before all replies")


async def _websockets_session() -> None:
    from websockets.asyncio.client import connect

    async with connect(_URL, compression=None, open_timeout=TIMEOUT_S) as ws:
        for _ in range(MESSAGES):
            await ws.send(PAYLOAD.decode())
            await ws.recv()


_URL = ""


async def _run(session: Callable[[], Awaitable[None]], rate: float, duration: float) -> dict:
    loop = asyncio.get_running_loop()
    total = int(rate * duration)
    errors: Counter[str] = Counter()
    ok = 0
    tasks: set[asyncio.Task[None]] = set()

    async def one() -> None:
        nonlocal ok
        try:
            async with asyncio.timeout(TIMEOUT_S * 2):
                await session()
            ok += 1
        except Exception as exc:
            errors[type(exc).__name__] += 1

    start = time.perf_counter()
    max_lag = 0.0
    for i in range(total):
        planned = start + i / rate
        delay = planned - time.perf_counter()
        if delay > 0.0002:
            await asyncio.sleep(max(delay, 0.001))
        max_lag = max(max_lag, time.perf_counter() - planned)
        task = loop.create_task(one())
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    while tasks:
        await asyncio.gather(*list(tasks))
    end = time.perf_counter()
    return {
        "planned": total,
        "succeeded": ok,
        "errors": dict(errors),
        "span_s": end - start,
        "max_arrival_lag_s": max_lag,
        "cpu": time.process_time(),
    }


def main(argv: list[str] | None = None) -> int:
    """Run one bare loop and print its JSON result line."""
    global _URL, _LISTENER
    args = sys.argv[1:] if argv is None else argv
    lib, _URL, rate, duration = args[0], args[1], float(args[2]), float(args[3])
    if lib == "picows":
        _LISTENER = _picows_listener_class()
    session = _picows_session if lib == "picows" else _websockets_session
    try:
        import uvloop

        factory = uvloop.new_event_loop
    except ImportError:
        factory = None
    with asyncio.Runner(loop_factory=factory) as runner:
        result = runner.run(_run(session, rate, duration))
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
