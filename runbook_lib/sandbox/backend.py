"""Sandbox backend: the FastAPI service one sandbox revision runs, one real process each.

It speaks the seed's protocol (``/health``, ``/ws/health``, ``/ws/test``, the
``/websocket`` and ``/ws/test`` WebSockets with JWT auth, ping/pong and the five
critical agent events) and carries one *profile* (see :mod:`.profiles`) whose
fault is real behaviour on the wire, not a flag in a response body.

Run as a process::

    SANDBOX_JWT_SECRET=... python -m runbook_lib.sandbox.backend \\
        --host 127.0.0.1 --port 0 --profile healthy --revision svc-00001-abc --service svc

The process binds its socket itself, prints exactly one line
``{"event": "listening", "port": N}``; then its own lines as a Cloud Run container
writes them (JSON lines with ``severity`` and ``message`` on stdout, uvicorn's text
lines on stderr) and one private request-log record per request (a WebSocket's when
it closes), which the emulator files under the request log as Cloud Run's front end
would.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import random
import signal
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, quote

import jwt
from fastapi import FastAPI, WebSocket
from fastapi.responses import JSONResponse

from .auth_service import decode_token
from .profiles import PROFILES, ProfileKnobs, run_fast
from .wire import REQUEST_LOG_KEY

__all__ = [
    "CRITICAL_EVENTS",
    "LISTENING_EVENT",
    "REQUEST_TYPES",
    "create_app",
    "log_entry",
    "main",
]

CRITICAL_EVENTS = (
    "agent_started",
    "agent_thinking",
    "tool_executing",
    "tool_completed",
    "agent_completed",
)
REQUEST_TYPES = frozenset({"agent_execute", "chat_message", "user_message"})
LISTENING_EVENT = "listening"

# Query parameters whose values are credentials and must never reach a log line.
_SECRET_QUERY_KEYS = frozenset({"token", "access_token", "jwt", "auth"})
_REDACTED = "[REDACTED]"
_EVENT_GAP_S = (0.02, 0.06)  # realistic spacing between agent events
_SEND_TIMEOUT_S = 5.0  # a reader that does not drain for this long loses its event

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


# --------------------------------------------------------------------------- logging


def _rfc3339(ts: float | None = None) -> str:
    moment = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def log_entry(severity: str, text: str) -> dict[str, Any]:
    """One structured log line as an app writes it for Cloud Run (``severity``, ``message``).

    Cloud Run turns a JSON line into ``jsonPayload`` and lifts ``severity`` (and the
    time) out of it; ``message`` stays in the payload.
    """
    return {"timestamp": _rfc3339(), "severity": severity, "message": text}


def _write(obj: dict[str, Any]) -> None:
    # stdout *is* the revision's log stream (Cloud Run collects container stdout).
    line = json.dumps(obj, separators=(",", ":"))
    try:
        sys.stdout.write(line + "\n")
        sys.stdout.flush()
    except (OSError, ValueError):
        pass  # the log reader went away; serving traffic matters more than logging it


def _emit(severity: str, text: str) -> None:
    _write(log_entry(severity, text))


def _uvicorn_logging() -> None:
    """uvicorn's own lines as uvicorn prints them: plain text on stderr (``ERROR:    ...``)."""
    from uvicorn.logging import DefaultFormatter

    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(DefaultFormatter("%(levelprefix)s %(message)s", use_colors=False))
    for name in ("uvicorn", "uvicorn.error"):
        logger = logging.getLogger(name)
        logger.handlers[:] = [handler] if name == "uvicorn" else []
        logger.propagate = name != "uvicorn"
        logger.setLevel(logging.INFO)


def _redacted_url(scope: Scope) -> str:
    path = scope.get("path", "/")
    raw_query = scope.get("query_string", b"").decode("latin-1")
    if not raw_query:
        return path
    parts = []
    for key, value in parse_qsl(raw_query, keep_blank_values=True):
        shown = _REDACTED if key.lower() in _SECRET_QUERY_KEYS else quote(value, safe="")
        parts.append(f"{quote(key, safe='')}={shown}")
    return f"{path}?{'&'.join(parts)}"


def _header(scope: Scope, name: bytes) -> str:
    for key, value in scope.get("headers", []):
        if key.lower() == name:
            return value.decode("latin-1")
    return ""


def _log_request(scope: Scope, status: int, started: float) -> None:
    """The request-log record of one request (a WebSocket's when it closes: 101 and
    latency = the connection's whole duration, as Cloud Run writes it)."""
    method = scope.get("method", "GET")  # WebSocket handshakes are GETs
    latency = time.monotonic() - started
    began = time.time() - latency
    client = scope.get("client") or ("", 0)
    http_request = {
        "requestMethod": method,
        "requestUrl": _redacted_url(scope),
        "status": status,
        "latency": f"{latency:.3f}s",
        "protocol": f"HTTP/{scope.get('http_version', '1.1')}",
        "userAgent": _header(scope, b"user-agent"),
        "remoteIp": client[0] if client else "",
    }
    _write({REQUEST_LOG_KEY: http_request, "timestamp": _rfc3339(began)})


# --------------------------------------------------------------------------- helpers


async def _deny_websocket(scope: Scope, send: Send, status: int, body: dict[str, Any]) -> None:
    """Refuse a WebSocket handshake with a real HTTP status (ASGI denial response)."""
    if "websocket.http.response" in scope.get("extensions", {}):
        payload = json.dumps(body).encode()
        await send(
            {
                "type": "websocket.http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(payload)).encode()),
                ],
            }
        )
        await send({"type": "websocket.http.response.body", "body": payload})
    else:  # servers without the extension can only answer 403
        await send({"type": "websocket.close", "code": 1008})


@dataclass(eq=False, slots=True)
class _Conn:
    """One open, authenticated socket."""

    connection_id: str
    user_id: str
    path: str
    websocket: WebSocket
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    closed: bool = False

    async def send(self, frame: dict[str, Any]) -> bool:
        if self.closed:
            return False
        try:
            async with self.lock:
                await asyncio.wait_for(self.websocket.send_text(json.dumps(frame)), _SEND_TIMEOUT_S)
        except Exception:  # a dead or stuck peer must not break the sender's loop
            self.closed = True
            return False
        return True


class _Registry:
    """Per-process registry: user id -> open sockets."""

    def __init__(self) -> None:
        self._by_user: dict[str, set[_Conn]] = {}

    def add(self, conn: _Conn) -> None:
        self._by_user.setdefault(conn.user_id, set()).add(conn)

    def remove(self, conn: _Conn) -> None:
        conns = self._by_user.get(conn.user_id)
        if conns is not None:
            conns.discard(conn)
            if not conns:
                del self._by_user[conn.user_id]

    def for_user(self, user_id: str) -> list[_Conn]:
        return list(self._by_user.get(user_id, ()))

    def everyone(self) -> list[_Conn]:
        return [conn for conns in self._by_user.values() for conn in conns]

    @property
    def active(self) -> int:
        return sum(len(conns) for conns in self._by_user.values())


def _extract_token(websocket: WebSocket) -> tuple[str | None, str, str | None]:
    """Return (token, mode, selected subprotocol) from header, subprotocol or query."""
    subprotocol = next(
        (p for p in websocket.scope.get("subprotocols", []) if p.startswith("jwt.")), None
    )
    authorization = websocket.headers.get("authorization", "")
    if authorization:
        scheme, _, value = authorization.partition(" ")
        if scheme.lower() == "bearer":
            return value.strip() or None, "bearer", subprotocol
        return None, "bearer", subprotocol
    if subprotocol is not None:
        return subprotocol[len("jwt.") :] or None, "subprotocol", subprotocol
    token = websocket.query_params.get("token")
    if token is not None:
        return token or None, "query", subprotocol
    return None, "none", subprotocol


def _unverified_sub(token: str | None) -> str | None:
    if not token:
        return None
    try:
        claims = jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return None
    sub = claims.get("sub")
    return str(sub) if sub else None


def _now_iso() -> str:
    return _rfc3339()


# --------------------------------------------------------------------------- app


class _EdgeMiddleware:
    """Request log, warm-up guard and added latency: what sits in front of every route."""

    def __init__(self, app: ASGIApp, *, profile: str, knobs: ProfileKnobs, started: float):
        self.app = app
        self.profile = profile
        self.knobs = knobs
        self.started = started

    def _warming(self) -> bool:
        return (
            self.profile == "slow-warmup" and time.monotonic() - self.started < self.knobs.warmup_s
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "websocket":
            await self._websocket(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        if self._warming():
            response = JSONResponse({"status": "starting"}, status_code=503)
            await response(scope, receive, send)
            _log_request(scope, 503, started)
            return
        if self.profile == "slow-responses":
            await asyncio.sleep(self.knobs.delay_s)
        status = 500

        async def capture(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            _log_request(scope, 500, started)
            _emit("ERROR", f"exception in {scope.get('path')}: {type(exc).__name__}: {exc}")
            raise
        _log_request(scope, status, started)

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.monotonic()
        # idle-close needs the raw transport to drop TCP without a close frame; uvicorn's
        # receive callable is a bound method of the connection's protocol object.
        scope["sandbox.transport"] = getattr(getattr(receive, "__self__", None), "transport", None)
        if self._warming():
            await _deny_websocket(scope, send, 503, {"status": "starting"})
            _log_request(scope, 503, started)
            return
        if self.profile == "slow-responses":
            await asyncio.sleep(self.knobs.delay_s)
        logged = accepted = False

        async def capture(message: Message) -> None:
            nonlocal logged, accepted
            kind = message["type"]
            if not logged and kind == "websocket.accept":
                logged = accepted = True  # its entry is written when the socket closes
            elif not logged and kind == "websocket.http.response.start":
                logged = True
                _log_request(scope, int(message["status"]), started)
            elif not logged and kind == "websocket.close":
                logged = True  # closing before accept is answered as HTTP 403 by uvicorn
                _log_request(scope, 403, started)
            await send(message)

        try:
            await self.app(scope, receive, capture)
        except Exception as exc:
            _log_request(scope, 101 if accepted else 500, started)
            _emit(
                "ERROR", f"exception in websocket {scope.get('path')}: {type(exc).__name__}: {exc}"
            )
            raise
        if accepted:
            _log_request(scope, 101, started)


def create_app(
    *, profile: str, revision: str, service: str, jwt_secret: str, version: str = "1.0.0"
) -> FastAPI:
    """Build the sandbox backend app for one revision.

    Timing knobs (``SANDBOX_WARMUP_S``, ``SANDBOX_IDLE_CLOSE_S``, ``SANDBOX_DELAY_S``)
    are read from the process environment now.

    Raises:
        ValueError: unknown profile or a malformed knob.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown sandbox profile {profile!r}; known: {sorted(PROFILES)}")
    knobs = ProfileKnobs.from_env()
    started = time.monotonic()
    registry = _Registry()
    tasks: set[asyncio.Task[None]] = set()

    app = FastAPI(
        title=f"sandbox backend ({service})",
        version=version,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.profile = profile
    app.state.revision = revision
    app.state.registry = registry
    app.add_middleware(_EdgeMiddleware, profile=profile, knobs=knobs, started=started)

    stock_not_found = app.router.not_found

    async def not_found(scope: Scope, receive: Receive, send: Send) -> None:
        # Stock Starlette answers an unmatched WebSocket path with a close before accept,
        # which uvicorn turns into 403. We answer 404 like the incident's front end did
        # (and like an HTTP GET to the same path), so "route not registered" shows as 404.
        if scope["type"] == "websocket":
            await _deny_websocket(scope, send, 404, {"detail": "Not Found"})
            return
        await stock_not_found(scope, receive, send)

    app.router.default = not_found

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return {
            "status": "ok",
            "timestamp": _now_iso(),
            "version": version,
            "revision": revision,
            "service": service,
            "environment": "sandbox",
            "profile": profile,
        }

    async def ws_health() -> dict[str, Any]:
        return {
            "status": "ok",
            "connections": {"active": registry.active},
            "revision": revision,
            "timestamp": _now_iso(),
        }

    async def ws_test_get() -> dict[str, Any]:
        return {
            "status": "ok",
            "message": "websocket test endpoint",
            "websocket_paths": ["/websocket", "/ws/test"],
            "revision": revision,
            "timestamp": _now_iso(),
        }

    def authenticate(token: str | None) -> tuple[str | None, str]:
        """Return (user_id, reason); user_id None means refused."""
        if profile == "auth-bypass":
            return _unverified_sub(token) or "anonymous", ""
        if token is None:
            return None, "missing token"
        try:
            claims = decode_token(jwt_secret, token)
        except jwt.ExpiredSignatureError:
            return None, "token expired"
        except jwt.InvalidSignatureError:
            return None, "invalid signature"
        except jwt.DecodeError:
            return None, "malformed token"
        except jwt.InvalidTokenError as exc:
            return None, f"invalid token: {exc}"
        return str(claims["sub"]), ""

    async def reply(conn: _Conn, frame: dict[str, Any]) -> None:
        if profile == "slow-responses":
            await asyncio.sleep(knobs.delay_s)
        await conn.send(frame)

    async def run_agent(conn: _Conn, message: dict[str, Any]) -> None:
        raw_data = message.get("data")
        data: dict[str, Any] = raw_data if isinstance(raw_data, dict) else {}
        text = str(data.get("message") or message.get("message") or "")
        run_id = str(data.get("run_id") or message.get("run_id") or f"run-{uuid.uuid4().hex[:12]}")
        thread_id = str(
            data.get("thread_id") or message.get("thread_id") or f"thread-{uuid.uuid4().hex[:12]}"
        )
        agent = str(data.get("agent") or "triage")
        tool = "search_knowledge_base"
        tool_started = time.monotonic()
        events: dict[str, dict[str, Any]] = {
            "agent_started": {"agent_name": agent},
            "agent_thinking": {"reasoning": f"Working out how to answer: {text[:200]!r}"},
            "tool_executing": {"tool_name": tool, "parameters": {"query": text[:200]}},
            "tool_completed": {"tool_name": tool, "results": {"matches": 3}},
            "agent_completed": {
                "status": "success",
                "final_response": f"Handled {message.get('type')} for {conn.user_id}.",
            },
        }
        order = list(CRITICAL_EVENTS)
        if profile == "drop-events":
            order.remove("tool_completed")
        elif profile == "reorder-events":
            order = [
                "agent_started",
                "tool_executing",
                "agent_thinking",
                "tool_completed",
                "agent_completed",
            ]
        if profile == "slow-responses":
            await asyncio.sleep(knobs.delay_s)
        for kind in order:
            await asyncio.sleep(random.uniform(*_EVENT_GAP_S))
            frame: dict[str, Any] = {
                "type": kind,
                "user_id": conn.user_id,
                "run_id": run_id,
                "thread_id": thread_id,
                "timestamp": _now_iso(),
                **events[kind],
            }
            if kind == "tool_completed":
                frame["duration"] = round(time.monotonic() - tool_started, 3)
            targets = (
                registry.everyone()
                if profile == "cross-user-leak"
                else registry.for_user(conn.user_id)
            )
            await asyncio.gather(*(target.send(frame) for target in targets))

    def spawn(coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def idle_close(conn: _Conn, transport: Any) -> None:
        await asyncio.sleep(knobs.idle_close_s)
        if conn.closed:
            return
        conn.closed = True
        _emit("WARNING", f"dropping idle connection {conn.connection_id} without close frame")
        if transport is not None:
            transport.abort()
        else:  # no transport reachable: the closest real fault is an abnormal server close
            with contextlib.suppress(Exception):
                await conn.websocket.close(code=1011)

    async def handle_frame(conn: _Conn, raw: str) -> None:
        try:
            message = json.loads(raw)
        except ValueError:
            await reply(conn, {"type": "error", "error": "invalid_json", "timestamp": _now_iso()})
            return
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "ping":
            await reply(conn, {"type": "pong", "timestamp": _now_iso()})
        elif kind in REQUEST_TYPES:
            spawn(run_agent(conn, message))
        else:
            await reply(
                conn,
                {
                    "type": "ack",
                    "received_type": kind,
                    "connection_id": conn.connection_id,
                    "timestamp": _now_iso(),
                },
            )

    async def websocket_endpoint(websocket: WebSocket) -> None:
        token, mode, subprotocol = _extract_token(websocket)
        user_id, reason = authenticate(token)
        # The client offered jwt.<token>: the handshake must select it or the client aborts.
        await websocket.accept(subprotocol=subprotocol)
        path = websocket.scope.get("path", "/websocket")
        if user_id is None:
            _emit("WARNING", f"websocket auth failed on {path} (mode={mode}): {reason}")
            with contextlib.suppress(Exception):
                await websocket.send_text(
                    json.dumps({"type": "error", "error": "auth_failed", "reason": reason})
                )
                await websocket.close(code=1008, reason="auth_failed")
            return
        conn = _Conn(f"conn-{uuid.uuid4().hex[:12]}", user_id, path, websocket)
        registry.add(conn)
        if profile == "idle-close":
            spawn(idle_close(conn, websocket.scope.get("sandbox.transport")))
        close_code: int | None = None
        try:
            await conn.send(
                {
                    "type": "connected",
                    "user_id": user_id,
                    "connection_id": conn.connection_id,
                    "revision": revision,
                    "timestamp": _now_iso(),
                }
            )
            while True:
                message = await websocket.receive()
                if message["type"] == "websocket.disconnect":
                    close_code = int(message.get("code", 1005))
                    break
                text = message.get("text")
                if text is None and message.get("bytes") is not None:
                    text = message["bytes"].decode("utf-8", "replace")
                if text is not None:
                    await handle_frame(conn, text)
        finally:
            conn.closed = True
            registry.remove(conn)
            _emit(
                "INFO",
                f"websocket {conn.connection_id} on {path} closed (code={close_code}, "
                f"user={user_id}, active={registry.active})",
            )

    # "The WS router module was not included": none of the WebSocket-side routes exist,
    # registered flat on the app so an import of the app lists exactly what serves.
    if profile != "ws-routes-missing":
        app.add_api_route("/ws/health", ws_health, methods=["GET"])
        app.add_api_route("/ws/test", ws_test_get, methods=["GET"])
        # The main route and the echo/ping route follow the same protocol and auth rules.
        app.add_api_websocket_route("/websocket", websocket_endpoint)
        app.add_api_websocket_route("/ws/test", websocket_endpoint)
    return app


# --------------------------------------------------------------------------- entry point


def _parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m runbook_lib.sandbox.backend",
        description="Run one sandbox backend revision (JWT secret from SANDBOX_JWT_SECRET).",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--profile", required=True)
    parser.add_argument("--revision", required=True)
    parser.add_argument("--service", required=True)
    parser.add_argument("--version", default="1.0.0")
    return parser.parse_args(argv)


async def _serve(server: Any, sock: socket.socket, port: int, startup_text: str) -> None:
    serving = asyncio.ensure_future(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 30
    # uvicorn exposes readiness only as a flag, so poll it (bounded) before announcing.
    while not server.started and not serving.done() and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    if server.started:
        sys.stdout.write(json.dumps({"event": LISTENING_EVENT, "port": port}) + "\n")
        sys.stdout.flush()
        _emit("INFO", startup_text)
    await serving


def _exit_on_signal(signum: int, frame: object) -> None:
    raise SystemExit(0)


def __getattr__(name: str) -> Any:
    """Module attribute ``app``: the healthy app, as "the local source" an ASGI import sees.

    ``runbook_lib.sandbox.backend:app`` is what the sandbox environment names as its
    source app, so ``source.ws_routes_present`` lists the routes the fixed code has.
    Built lazily so importing the module stays cheap.
    """
    if name == "app":
        global _LOCAL_APP
        if _LOCAL_APP is None:
            _LOCAL_APP = create_app(
                profile="healthy",
                revision="local",
                service="local",
                jwt_secret=os.environ.get("SANDBOX_JWT_SECRET") or uuid.uuid4().hex * 2,
            )
        return _LOCAL_APP
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_LOCAL_APP: FastAPI | None = None


def main(argv: list[str] | None = None) -> int:
    """Entry point: bind, announce the port, serve until SIGTERM/SIGINT. Returns the exit code."""
    import uvicorn  # imported here so create_app users do not pay for it

    args = _parse_args(argv)
    if args.profile not in PROFILES:
        _emit("ERROR", f"startup failed: unknown profile {args.profile!r}")
        return 2
    if args.profile == "deploy-fails":
        # What a crashing container looks like: an error in the log, exit 1, no port.
        _emit(
            "ERROR",
            f"startup failed: revision {args.revision} could not initialise "
            "(RuntimeError: required configuration missing: DATABASE_URL)",
        )
        return 1
    secret = os.environ.get("SANDBOX_JWT_SECRET", "")
    if not secret:
        _emit("ERROR", "startup failed: SANDBOX_JWT_SECRET is not set")
        return 1
    try:
        app = create_app(
            profile=args.profile,
            revision=args.revision,
            service=args.service,
            jwt_secret=secret,
            version=args.version,
        )
    except ValueError as exc:
        _emit("ERROR", f"startup failed: {exc}")
        return 1

    _uvicorn_logging()

    sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as exc:
        _emit("ERROR", f"startup failed: cannot bind {args.host}:{args.port}: {exc}")
        sock.close()
        return 1
    sock.listen(4096)
    sock.setblocking(False)
    port = sock.getsockname()[1]

    config = uvicorn.Config(
        app,
        log_config=None,
        access_log=False,
        lifespan="off",
        ws="websockets-sansio",
        backlog=4096,
        timeout_graceful_shutdown=3,
    )
    server = uvicorn.Server(config)
    knobs = ProfileKnobs.from_env()
    startup_text = (
        f"sandbox backend {args.service}/{args.revision} version {args.version} "
        f"profile {args.profile} listening on {args.host}:{port}"
    )
    if args.profile == "slow-warmup":
        startup_text += f" (warming up for {knobs.warmup_s:g}s)"
    # uvicorn shuts down gracefully on SIGTERM and then re-raises the signal; ending with
    # SystemExit instead turns a supervisor's normal stop into exit code 0 plus a log line.
    signal.signal(signal.SIGTERM, _exit_on_signal)
    try:
        run_fast(_serve(server, sock, port, startup_text))
    except (KeyboardInterrupt, SystemExit):
        pass
    _emit("INFO", f"sandbox backend {args.revision} stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
