"""The sandbox's own mission-critical suite: what the seed runs as
``tests/mission_critical/test_websocket_agent_events_suite.py``.

The sandbox environment file configures it as a ``[[commands.predeploy]]`` (``--local``:
against the fixed code, started in-process) and a ``[[commands.mission_critical]]``
(against the service URL), so phases 2 and 4 run a real suite with a real JUnit report.

    python -m runbook_lib.sandbox.suite --base-url URL --auth-url URL --junit PATH
    python -m runbook_lib.sandbox.suite --local --junit PATH
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import sys
import threading
import time
import traceback
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed
from websockets.typing import Subprotocol

__all__ = ["main"]

CRITICAL = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)
_TIMEOUT_S = 10.0


class _Target:
    def __init__(self, ws_url: str, token_for: Callable[[str], Awaitable[str]]) -> None:
        self.ws_url = ws_url
        self.token_for = token_for

    async def open(self, user: str, token: str | None = None):  # type: ignore[no-untyped-def]
        tok = token if token is not None else await self.token_for(user)
        return connect(
            self.ws_url,
            subprotocols=[Subprotocol(f"jwt.{tok}")],
            open_timeout=_TIMEOUT_S,
            close_timeout=2,
        )


async def _frames_until(ws, done: Callable[[dict], bool]) -> list[dict]:  # type: ignore[no-untyped-def]
    out: list[dict] = []
    async with asyncio.timeout(_TIMEOUT_S):
        while True:
            frame = json.loads(await ws.recv())
            out.append(frame)
            if done(frame):
                return out


async def test_ping_pong(t: _Target) -> None:
    async with await t.open("suite-ping") as ws:
        await ws.send(json.dumps({"type": "ping"}))
        frames = await _frames_until(ws, lambda f: f.get("type") == "pong")
        assert frames[-1]["type"] == "pong"


async def test_agent_events_complete_and_ordered(t: _Target) -> None:
    async with await t.open("suite-agent") as ws:
        await ws.send(json.dumps({"type": "agent_execute", "data": {"message": "suite"}}))
        frames = await _frames_until(ws, lambda f: f.get("type") in ("agent_completed", "error"))
        types = [f["type"] for f in frames if f.get("type") in CRITICAL]
        assert types == list(CRITICAL), f"events {types}, expected {list(CRITICAL)}"
        assert all(f.get("user_id") == "suite-agent" for f in frames if f.get("type") in CRITICAL)


async def test_invalid_token_refused(t: _Target) -> None:
    try:
        async with await t.open("suite-bad", token="not-a-jwt") as ws:
            await ws.send(json.dumps({"type": "ping"}))
            frames = await _frames_until(ws, lambda f: f.get("type") in ("pong", "error"))
            assert frames[-1]["type"] == "error", "an invalid token was accepted"
            await asyncio.wait_for(ws.wait_closed(), _TIMEOUT_S)
            assert ws.close_code == 1008, f"closed with {ws.close_code}, expected 1008"
    except ConnectionClosed as exc:
        assert exc.rcvd is not None and exc.rcvd.code == 1008, f"closed with {exc}"


TESTS = (test_ping_pong, test_agent_events_complete_and_ordered, test_invalid_token_refused)


async def _run(t: _Target) -> list[tuple[str, float, str | None]]:
    results = []
    for test in TESTS:
        start = time.perf_counter()
        failure = None
        try:
            await test(t)
        except Exception as exc:  # a failing test is a result, reported in the JUnit file
            failure = f"{type(exc).__name__}: {exc}\n{traceback.format_exc(limit=3)}"
        results.append((test.__name__, time.perf_counter() - start, failure))
    return results


def _write_junit(path: Path, results: list[tuple[str, float, str | None]]) -> None:
    suite = ET.Element(
        "testsuite",
        name="websocket_agent_events",
        tests=str(len(results)),
        failures=str(sum(1 for r in results if r[2])),
        errors="0",
        skipped="0",
        time=f"{sum(r[1] for r in results):.3f}",
    )
    for name, duration, failure in results:
        case = ET.SubElement(
            suite, "testcase", classname="sandbox.suite", name=name, time=f"{duration:.3f}"
        )
        if failure:
            ET.SubElement(case, "failure", message=failure.splitlines()[0]).text = failure
    path.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(suite).write(path, encoding="utf-8", xml_declaration=True)


def _serve_local() -> tuple[str, str]:
    """Start the fixed (healthy) backend in this process on a free port: (ws url, secret)."""
    import uvicorn

    from .backend import create_app

    secret = secrets.token_urlsafe(32)
    app = create_app(profile="healthy", revision="local", service="local", jwt_secret=secret)
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    server = uvicorn.Server(
        uvicorn.Config(
            app, log_config=None, access_log=False, lifespan="off", ws="websockets-sansio"
        )
    )
    threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True).start()
    deadline = time.monotonic() + 10
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    return f"ws://127.0.0.1:{sock.getsockname()[1]}/websocket", secret


def main(argv: list[str] | None = None) -> int:
    """Run the suite; exit 0 when every test passed, 1 otherwise, 2 on usage errors."""
    parser = argparse.ArgumentParser(prog="python -m runbook_lib.sandbox.suite")
    parser.add_argument("--base-url", help="service URL (http://...)")
    parser.add_argument("--auth-url", help="sandbox auth service URL (dev-token endpoint)")
    parser.add_argument("--local", action="store_true", help="test the fixed code in-process")
    parser.add_argument("--junit", required=True, help="where to write the JUnit XML report")
    args = parser.parse_args(argv)
    out = sys.stdout
    if args.local:
        from .auth_service import mint_token

        # The in-process backend writes its JSON request log to stdout: keep it out of
        # the report (the revision logs of the real target live in Cloud Logging).
        sys.stdout = open(os.devnull, "w")
        ws_url, secret = _serve_local()

        async def token_for(user: str) -> str:
            return mint_token(secret, user)
    elif args.base_url and args.auth_url:
        ws_url = args.base_url.replace("http://", "ws://", 1).rstrip("/") + "/websocket"

        async def token_for(user: str) -> str:
            async with httpx.AsyncClient(timeout=_TIMEOUT_S) as client:
                r = await client.post(
                    args.auth_url.rstrip("/") + "/auth/dev-token", json={"user_id": user}
                )
                r.raise_for_status()
                return str(r.json()["token"])
    else:
        parser.error("give --local, or --base-url and --auth-url")
    results = asyncio.run(_run(_Target(ws_url, token_for)))
    _write_junit(Path(args.junit), results)
    for name, duration, failure in results:
        print(f"{'FAIL' if failure else 'ok  '} {name} ({duration:.2f}s)", file=out)
        if failure:
            print("     " + failure.splitlines()[0], file=out)
    failed = sum(1 for r in results if r[2])
    print(f"{len(results) - failed} passed, {failed} failed", file=out)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
