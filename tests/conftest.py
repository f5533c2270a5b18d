"""Shared fixtures: small loopback servers on port 0, cleaned up after each test.

Fixture factories (async, run in the test's event loop):

* ``raw_server(handler)`` -> port: an ``asyncio.start_server`` TCP server whose
  handler speaks whatever (bad) HTTP a test needs.
* ``ws_server(handler, **serve_kwargs)`` -> ``ws://127.0.0.1:port``: a
  ``websockets.asyncio.server.serve`` server.
* ``agent_server(**options)`` -> :class:`AgentServer`: a scripted agent protocol
  (welcome, ping/pong, five events) with optional faults and JWT auth.
* ``uvicorn_app(app)`` -> ``http://127.0.0.1:port``: an ASGI app under uvicorn.
* ``closed_port`` -> a port nothing listens on.

Every test starts and ends with the process's global state reset (autouse
``_clean_global_state``): no registered secret, no ``RUNBOOK_ENV_DIR`` and no
``RUNBOOK_SANDBOX_DIR`` from the caller's shell. Wall-clock bounds in tests are
scaled with :func:`tests.timing.T` (``RUNBOOK_TESTS_TIMEOUT_FACTOR``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import jwt
import pytest
from websockets.asyncio.server import ServerConnection, serve

from runbook_lib.redaction import clear_secrets

RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

# ---------------------------------------------------------------- the slow marker

# Fixtures that start a sandbox (daemon and revision processes): a test using one is
# slow, as is every end-to-end test, so ``-m "not slow"`` starts no process of that kind.
_PROCESS_FIXTURES = frozenset({"sandbox", "sandbox_factory"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``slow`` every test that is ``e2e`` or uses a sandbox-starting fixture."""
    for item in items:
        uses = set(getattr(item, "fixturenames", ()))
        if item.get_closest_marker("e2e") or uses & _PROCESS_FIXTURES:
            item.add_marker(pytest.mark.slow)


# ---------------------------------------------------------------- global state

# Environment variables that point the library at folders outside the test's own.
_LOCATION_VARS = ("RUNBOOK_ENV_DIR", "RUNBOOK_SANDBOX_DIR")


@pytest.fixture(autouse=True)
def _clean_global_state(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each test starts without registered secrets or location variables; none leak out.

    Secrets registered by a module-scoped fixture are cleared too: a test that needs
    them registered loads its settings (which registers them) itself.
    """
    for name in _LOCATION_VARS:
        monkeypatch.delenv(name, raising=False)
    clear_secrets()
    yield
    clear_secrets()


# ---------------------------------------------------------------- engine fixtures (ws/http)


@pytest.fixture
async def raw_server() -> AsyncIterator[Callable[[RawHandler], Awaitable[int]]]:
    """Factory: start a raw TCP server with ``handler``; returns its port."""
    servers: list[asyncio.Server] = []
    tasks: set[asyncio.Task[Any]] = set()

    async def start(handler: RawHandler) -> int:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            tasks.add(asyncio.current_task())  # type: ignore[arg-type]
            try:
                await handler(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(wrapped, "127.0.0.1", 0)
        servers.append(server)
        return server.sockets[0].getsockname()[1]

    yield start
    for s in servers:
        s.close()
    for t in list(tasks):
        t.cancel()
    for s in servers:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(s.wait_closed(), 2.0)


@pytest.fixture
async def ws_server() -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """Factory: start a websockets server with ``handler``; returns its ``ws://`` base URL."""
    servers: list[Any] = []

    async def start(handler: Callable[[ServerConnection], Awaitable[None]], **kw: Any) -> str:
        kw.setdefault("compression", None)
        server = await serve(handler, "127.0.0.1", 0, **kw)
        servers.append(server)
        port = next(iter(server.sockets)).getsockname()[1]
        return f"ws://127.0.0.1:{port}"

    yield start
    for s in servers:
        s.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(s.wait_closed(), 5.0)


@pytest.fixture
def closed_port() -> int:
    """A loopback port with nothing listening (connections are refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
async def uvicorn_app() -> AsyncIterator[Callable[[Any], Awaitable[str]]]:
    """Factory: serve an ASGI app with uvicorn on port 0; returns its ``http://`` base URL."""
    import uvicorn

    running: list[tuple[Any, asyncio.Task[Any]]] = []

    async def start(app: Any) -> str:
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        config = uvicorn.Config(
            app, log_level="warning", ws="websockets-sansio", lifespan="off", access_log=False
        )
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve(sockets=[sock]))
        running.append((server, task))
        for _ in range(500):
            if server.started or task.done():
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        return f"http://127.0.0.1:{port}"

    yield start
    for server, task in running:
        server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, 10.0)


CRITICAL = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)


class AgentServer:
    """A scripted agent WebSocket service with switchable faults.

    Options:
        secret: require an HS256 JWT (query ``token``, bearer header or ``jwt.`` subprotocol);
            a bad token gets an error frame then close 1008.
        fault: ``None``, ``reorder``, ``leak`` (events go to every socket), ``drop``
            (tool events never sent), ``nested`` (ids under ``data``), ``no_welcome``,
            ``silent`` (never answers), ``close1011`` (closes on request).
        bypass: accept any token (the sub is read without verifying the signature).
    """

    def __init__(self, *, secret: str = "", fault: str | None = None, bypass: bool = False) -> None:
        self.secret = secret
        self.fault = fault
        self.bypass = bypass
        self.url = ""
        self.sockets: set[ServerConnection] = set()

    def _token(self, ws: ServerConnection) -> str | None:
        q = parse_qs(urlsplit(ws.request.path).query)
        if "token" in q:
            return q["token"][0]
        auth = ws.request.headers.get("Authorization", "")
        if auth.lower().startswith("bearer "):
            return auth[7:]
        if ws.subprotocol and ws.subprotocol.startswith("jwt."):
            return ws.subprotocol[4:]
        return None

    def _user(self, token: str | None) -> str | None:
        if not token:
            return None
        try:
            if self.bypass:
                return jwt.decode(token, options={"verify_signature": False})["sub"]
            return jwt.decode(token, self.secret, algorithms=["HS256"])["sub"]
        except (jwt.PyJWTError, KeyError):
            return None

    async def handler(self, ws: ServerConnection) -> None:
        user = "anonymous"
        if self.secret or self.bypass:
            found = self._user(self._token(ws))
            if found is None:
                await ws.send(json.dumps({"type": "error", "message": "authentication failed"}))
                await ws.close(1008, "authentication failed")
                return
            user = found
        self.sockets.add(ws)
        try:
            if self.fault != "no_welcome":
                await ws.send(json.dumps({"type": "connected", "user_id": user}))
            async for raw in ws:
                if self.fault == "silent":
                    continue
                msg = json.loads(raw)
                kind = msg.get("type")
                if kind == "ping":
                    await ws.send(json.dumps({"type": "pong"}))
                elif kind in ("agent_execute", "chat_message"):
                    if self.fault == "close1011":
                        await ws.close(1011, "internal error")
                        return
                    run_id = (msg.get("data") or {}).get("run_id") or "srv-run"
                    await self._run(ws, user, run_id)
        finally:
            self.sockets.discard(ws)

    async def _run(self, ws: ServerConnection, user: str, run_id: str) -> None:
        order = list(CRITICAL)
        if self.fault == "reorder":
            order[1], order[2] = order[2], order[1]
        if self.fault == "drop":
            order = [e for e in order if not e.startswith("tool_")]
        extra = {
            "agent_started": {"agent_name": "triage"},
            "agent_thinking": {"reasoning": "r"},
            "tool_executing": {"tool_name": "search"},
            "tool_completed": {"tool_name": "search", "results": []},
            "agent_completed": {"final_response": "done"},
        }
        for etype in order:
            body = {
                "user_id": user,
                "run_id": run_id,
                "timestamp": "2026-01-01T00:00:00Z",
                **extra[etype],
            }
            event = (
                {"type": etype, "data": body} if self.fault == "nested" else {"type": etype, **body}
            )
            targets = list(self.sockets) if self.fault == "leak" else [ws]
            for target in targets:
                with contextlib.suppress(Exception):
                    await target.send(json.dumps(event))
            await asyncio.sleep(0.01)


@pytest.fixture
async def agent_server(
    ws_server: Callable[..., Awaitable[str]],
) -> Callable[..., Awaitable[AgentServer]]:
    """Factory: start an :class:`AgentServer` with the given options."""

    async def start(**options: Any) -> AgentServer:
        srv = AgentServer(**options)
        srv.url = await ws_server(
            srv.handler,
            select_subprotocol=lambda conn, offered: offered[0] if offered else None,
        )
        return srv

    return start


# ---------------------------------------------------------------- servers for blocking callers


class LoopThread:
    """An asyncio loop in a daemon thread, for servers that must keep answering while the
    test blocks (``runner.run`` executes notebooks in kernels and waits for them)."""

    def __init__(self) -> None:
        import threading

        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="servers", daemon=True)
        self._thread.start()
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self.tasks: set[asyncio.Task[Any]] = set()

    def call(self, coro: Awaitable[Any], timeout_s: float = 15.0) -> Any:
        """Run ``coro`` on the loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout_s)  # type: ignore[arg-type]

    def raw(self, handler: RawHandler) -> int:
        """Start a raw TCP server with ``handler`` on 127.0.0.1:0; returns its port."""

        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.tasks.add(asyncio.current_task())  # type: ignore[arg-type]
            try:
                await handler(reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
                pass
            finally:
                writer.close()
                self.tasks.discard(asyncio.current_task())  # type: ignore[arg-type]

        async def start() -> int:
            server = await asyncio.start_server(wrapped, "127.0.0.1", 0)

            async def close() -> None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 2.0)

            self._closers.append(close)
            return server.sockets[0].getsockname()[1]

        return self.call(start())

    def websocket(self, handler: Callable[[ServerConnection], Awaitable[None]], **kw: Any) -> int:
        """Start a ``websockets`` server on 127.0.0.1:0; returns its port."""
        kw.setdefault("compression", None)

        async def start() -> int:
            server = await serve(handler, "127.0.0.1", 0, **kw)

            async def close() -> None:
                server.close()
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(server.wait_closed(), 5.0)

            self._closers.append(close)
            return next(iter(server.sockets)).getsockname()[1]

        return self.call(start())

    @staticmethod
    async def read_http_head(reader: asyncio.StreamReader) -> tuple[str, dict[str, str]]:
        """Read one HTTP request head: (request line, lowercase header names -> values)."""
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30.0)
        lines = head.decode("latin-1").split("\r\n")
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                k, v = line.split(":", 1)
                headers[k.strip().lower()] = v.strip()
        return lines[0], headers

    def close(self) -> None:
        """Close every server, cancel leftover connections, stop the loop and its thread."""

        async def shutdown() -> None:
            for t in list(self.tasks):
                t.cancel()
            for close in self._closers:
                await close()

        with contextlib.suppress(Exception):
            self.call(shutdown(), 15.0)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(5.0)
        if not self._thread.is_alive():
            self.loop.close()


# ---------------------------------------------------------------- sandboxes


@pytest.fixture(scope="module")
def sandbox_factory(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """Factory ``start(serving=None, knobs=None)`` -> the running sandbox's info.

    ``serving`` is the profile of the serving revision (None: the incident, as
    ``runbook sandbox up``); ``knobs`` are extra environment variables for the sandbox's
    processes (e.g. ``SANDBOX_IDLE_CLOSE_S``).

    Each sandbox has its own state folder (so its lock, ports and env file are its own)
    and is stopped when the module's tests are done.
    """
    from runbook_lib.sandbox import manager

    states: list[Any] = []

    def start(serving: str | None = None, knobs: dict[str, str] | None = None) -> Any:
        state = tmp_path_factory.mktemp("sandbox")
        states.append(state)
        return manager.up(
            serving=serving, state_dir=state, env_file=state / "local.toml", env=dict(knobs or {})
        )

    yield start
    for state in states:
        manager.down(state)


@pytest.fixture(scope="session")
def run_phase() -> Any:
    """Function ``run_phase(phase, environment, run_dir, *, overrides=None, approve=True,
    only=None)`` -> the phase's ``phases/NN.json`` record: one phase on the in-process
    engine (``only``: just these steps), for tests that judge phases one by one.
    """
    import json as _json
    from pathlib import Path

    from runbook_lib.engines import InProcessEngine, PhaseRequest
    from runbook_lib.phases import PHASES, phase_file
    from runbook_lib.runner import notebook_parameters, notebooks_dir, repo_root

    def run(
        phase: int,
        environment: str | Path,
        run_dir: Path,
        *,
        overrides: dict[str, Any] | None = None,
        approve: bool = True,
        only: Any = None,
    ) -> dict[str, Any]:
        params = notebook_parameters(
            phase,
            environment=str(environment),
            run_dir=str(run_dir),
            approve=approve,
            overrides=overrides,
        )
        nb = notebooks_dir() / PHASES[phase].notebook
        outcome = InProcessEngine(only=only).execute(
            PhaseRequest(phase, nb, run_dir / nb.name, params, repo_root())
        )
        assert outcome.status == "pass", outcome
        record: dict[str, Any] = _json.loads(phase_file(run_dir, phase).read_text())
        return record

    return run


@pytest.fixture
def loop_thread() -> Any:
    """A :class:`LoopThread` for servers a blocking test talks to; closed after the test."""
    lt = LoopThread()
    try:
        yield lt
    finally:
        lt.close()
