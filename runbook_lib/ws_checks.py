"""WebSocket session observers: auth, flows (one user or several at once), hold.

Each observer bounds every wait by a timeout and returns a frozen observation; a
refused upgrade, a silent server, a garbage answer, a 10 MB frame or a dropped TCP
connection are recorded, never raised. Every socket is opened by
:mod:`runbook_lib.flow_runner` (the one connect primitive); the raw upgrade probe
lives in :mod:`runbook_lib.handshake` and the monitoring scheduler in
:mod:`runbook_lib.monitor`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import httpx
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import (
    ConnectionClosed,
)

from .observations import (
    AuthAttempt,
    AuthObservation,
    ConnectOutcome,
    HoldObservation,
)
from .protocol import ProtocolSettings, parse_frame, render_message
from .redaction import redact
from .settings import AuthSettings
from .tokens import ConnectAuth, connect_auth, negative_cases, obtain_token

if TYPE_CHECKING:
    from .flows import Flow, FlowObservation
    from .settings import Settings

__all__ = [
    "DEFAULT_MAX_SIZE",
    "observe_auth",
    "observe_flow",
    "observe_flow_users",
    "observe_hold",
]

log = logging.getLogger(__name__)

# Frames above this are refused by the client (close 1009) instead of buffered: an
# observer must survive a server that sends 10 MB without holding it in memory.
DEFAULT_MAX_SIZE = 2 * 1024 * 1024
_BODY_EXCERPT = 500


# ---------------------------------------------------------------- websockets sessions


def _ending(exc: ConnectionClosed) -> tuple[str, int | None, str]:
    """(how the socket ended, close code, reason) from a ``ConnectionClosed``."""
    if exc.rcvd is not None:
        return "server_closed", exc.rcvd.code, redact(exc.rcvd.reason)
    if exc.sent is not None:
        if exc.sent.code == 1009:
            return "too_big", 1009, "frame larger than the client's max_size"
        return "protocol_error", exc.sent.code, redact(exc.sent.reason)
    return "abrupt", 1006, "connection dropped without a close frame"


async def _close(ws: ClientConnection) -> None:
    with contextlib.suppress(Exception):
        await asyncio.wait_for(ws.close(), 3.0)


# ---------------------------------------------------------------- auth


async def _attempt(
    url: str,
    protocol: ProtocolSettings,
    case: str,
    creds: ConnectAuth,
    *,
    open_timeout_s: float,
    probe_timeout_s: float,
    reason: str = "",
    flow: Flow | None = None,
) -> AuthAttempt:
    """Connect with ``creds`` and run the probe ``flow`` (the load flow: ping -> pong by
    default). Accepted = the flow completed (text or JSON, as the flow says); refused =
    an HTTP status on the upgrade, a close, or an error frame; undecided otherwise."""
    from .flow_runner import run_flow
    from .flows import default_flows

    probe = flow or default_flows(protocol)["load"]
    offered = bool(creds.subprotocols)
    base: dict[str, Any] = {"case": case, "reason": reason, "offered_subprotocol": offered}
    obs = await run_flow(
        url,
        probe,
        None,
        protocol,
        auth=creds,
        open_timeout_s=open_timeout_s,
        step_timeout_s=probe_timeout_s,
        send_timeout_s=probe_timeout_s,
        linger_s=0.0,
    )
    took = obs.duration_s
    if not obs.connected:
        if obs.status is not None:
            return AuthAttempt(
                accepted=False,
                how=f"HTTP {obs.status}",
                status=obs.status,
                excerpt=obs.body_excerpt,
                latency_s=took,
                **base,
            )
        return AuthAttempt(
            accepted=None,
            how=f"connect failed: {obs.connect_error}",
            excerpt=obs.connect_detail,
            latency_s=took,
            **base,
        )
    sub = obs.subprotocol
    if obs.completed:
        return AuthAttempt(
            accepted=True,
            how=f"answered per the {probe.name} flow ({len(obs.frames)} frame(s))",
            subprotocol=sub,
            latency_s=took,
            **base,
        )
    errors = [f for f in obs.frames if f.frame.is_error]
    if errors or obs.stop_reason == "error_frame":
        return AuthAttempt(
            accepted=False,
            how="error frame",
            subprotocol=sub,
            excerpt=errors[0].frame.excerpt if errors else "",
            close_code=obs.close_code,
            latency_s=took,
            **base,
        )
    if obs.close_code is not None:
        how = f"close {obs.close_code}" + (f" ({obs.close_reason})" if obs.close_reason else "")
        if obs.close_code == 1006:
            how = "connection dropped without a close frame (1006)"
        return AuthAttempt(
            accepted=False,
            how=how,
            close_code=obs.close_code,
            subprotocol=sub,
            latency_s=took,
            **base,
        )
    if creds.in_message:
        # The token rode in a frame: only the flow completing proves it was accepted;
        # no acknowledgement within the step's time is the refusal.
        return AuthAttempt(
            accepted=False,
            how=f"not acknowledged: {obs.stop_detail}",
            subprotocol=sub,
            latency_s=took,
            **base,
        )
    if any(f.frame.is_event for f in obs.frames):
        # The service talked to us (an event, not an error) even if the probe's step did
        # not match: a working socket.
        return AuthAttempt(
            accepted=True,
            how=f"answered with {obs.frames[0].frame.event_type or obs.frames[0].kind!s}",
            subprotocol=sub,
            latency_s=took,
            **base,
        )
    return AuthAttempt(
        accepted=None,
        subprotocol=sub,
        how=f"socket stayed open but the {probe.name} flow did not complete: {obs.stop_detail}",
        latency_s=took,
        **base,
    )


async def observe_auth(
    url: str,
    protocol: ProtocolSettings,
    auth: AuthSettings,
    *,
    user_id: str | None = None,
    client: httpx.AsyncClient | None = None,
    open_timeout_s: float = 5.0,
    probe_timeout_s: float = 5.0,
    flow: Flow | None = None,
) -> AuthObservation:
    """Connect with a valid token, then with each invalid credential, and record the answers.

    Each connect runs the probe ``flow`` (default: the seed's load flow, ping -> pong,
    JSON or text per ``[protocol] format``). A connect counts as accepted when the flow
    completes (or the server sends an event); refused when the upgrade gets an HTTP
    error, the server closes (1008 expected) or sends an error frame. Cases the
    configuration cannot produce are listed as such.
    """
    user = user_id or auth.default_user
    token = await obtain_token(auth, user, client=client, timeout_s=open_timeout_s)
    authenticated: AuthAttempt | None = None
    if token.ok:
        authenticated = await _attempt(
            url,
            protocol,
            "valid",
            connect_auth(auth, token.token),
            open_timeout_s=open_timeout_s,
            probe_timeout_s=probe_timeout_s,
            reason=f"token from {token.source}",
            flow=flow,
        )
    cases = await negative_cases(auth, user_id=user, client=client, timeout_s=open_timeout_s)
    negatives = []
    for case in cases:
        if not case.produced:
            negatives.append(AuthAttempt(case=case.name, produced=False, reason=case.reason))
            continue
        negatives.append(
            await _attempt(
                url,
                protocol,
                case.name,
                case.auth,
                open_timeout_s=open_timeout_s,
                probe_timeout_s=probe_timeout_s,
                reason=case.reason,
                flow=flow,
            )
        )
    return AuthObservation(
        mode=auth.mode,
        authenticated=authenticated,
        negatives=tuple(negatives),
        token_error=token.error,
    )


# ---------------------------------------------------------------- flows


def _token_failure(url: str, flow: Flow, user: str, error: str) -> FlowObservation:
    from .flows import FlowObservation, StepOutcome, describe_step

    steps = tuple(
        StepOutcome(i, s.kind, "not_reached", describe_step(s)) for i, s in enumerate(flow.steps)
    )
    return FlowObservation(
        url=url,
        flow=flow.name,
        user_id=user,
        marker="",
        connect_error="token",
        connect_detail=error,
        steps=steps,
        stopped_at=0 if steps else None,
        stop_reason="connect_failed",
    )


async def _auth_for(
    settings: Settings, user: str, client: httpx.AsyncClient | None, index: int | None = None
) -> tuple[ConnectAuth, str]:
    auth = settings.auth
    if not auth.enabled:
        return ConnectAuth(), ""
    token = await obtain_token(
        auth, user, client=client, timeout_s=settings.timeouts.connect_s, index=index
    )
    if not token.ok:
        return ConnectAuth(), token.error or "no token"
    return connect_auth(auth, token.token), ""


async def observe_flow(
    settings: Settings,
    name: str,
    *,
    user_id: str | None = None,
    url: str | None = None,
    values: Mapping[str, str] | None = None,
    client: httpx.AsyncClient | None = None,
) -> FlowObservation:
    """Run the flow ``name`` (``[flows.NAME]`` or the seed's default) as ``user_id``,
    with a token for that user when ``[auth]`` is on; never raises for the service.

    A token that cannot be had gives an observation with ``connect_error = "token"``.
    """
    from .flow_runner import run_flow
    from .settings import resolve_flow

    flow = resolve_flow(settings, name)
    user = user_id or settings.auth.default_user
    target = url or settings.target.ws()
    creds, err = await _auth_for(settings, user, client)
    if err:
        return _token_failure(target, flow, user, err)
    return await run_flow(target, flow, {**(values or {}), "user_id": user}, settings, auth=creds)


async def observe_flow_users(
    settings: Settings,
    name: str,
    *,
    users: int,
    user_prefix: str = "runbook-iso",
    url: str | None = None,
    client: httpx.AsyncClient | None = None,
) -> list[FlowObservation]:
    """Run the flow ``name`` for ``users`` simulated users at once, each with its own
    token and a unique ``{marker}``; every frame is checked against the other users'
    markers (``FlowFrame.foreign``)."""
    from .flow_runner import run_users
    from .settings import resolve_flow

    flow = resolve_flow(settings, name)
    target = url or settings.target.ws()
    suffix = uuid.uuid4().hex[:6]
    names = [f"{user_prefix}-{suffix}-{i}" for i in range(max(1, users))]
    auths: dict[str, ConnectAuth | None] = {}
    failed: dict[str, str] = {}
    for i, user in enumerate(names):
        creds, err = await _auth_for(settings, user, client, index=i)
        if err:
            failed[user] = err
        auths[user] = creds
    ok_users = [u for u in names if u not in failed]
    runs = await run_users(target, flow, settings, ok_users, auths=auths) if ok_users else []
    by_user = {r.user_id: r for r in runs}
    return [
        by_user[u] if u in by_user else _token_failure(target, flow, u, failed[u]) for u in names
    ]


# ---------------------------------------------------------------- hold


async def observe_hold(
    url: str,
    protocol: ProtocolSettings,
    *,
    hold_s: float,
    auth: ConnectAuth | None = None,
    ping_every_s: float | None = None,
    open_timeout_s: float = 5.0,
    max_size: int = DEFAULT_MAX_SIZE,
) -> HoldObservation:
    """Keep one socket open for ``hold_s`` (pinging every ``ping_every_s`` if set), then close."""
    from .flow_runner import open_connection

    ws, info = await open_connection(url, auth or ConnectAuth(), (), (), open_timeout_s, max_size)
    outcome = ConnectOutcome(
        bool(info["connected"]),
        status=info.get("status"),
        latency_s=info.get("connect_s", 0.0),
        subprotocol=info.get("subprotocol"),
        error=info.get("connect_error"),
        error_detail=info.get("connect_detail", ""),
        body_excerpt=info.get("body_excerpt", ""),
    )
    if ws is None:
        return HoldObservation(url=url, connect=outcome, hold_s=hold_s, outcome="connect_failed")
    t0 = time.perf_counter()
    pings = pongs = nframes = 0
    last_send_s: float | None = None
    ping = render_message(protocol, "ping")
    next_ping = t0 + ping_every_s if ping_every_s else None
    try:
        while True:
            now = time.perf_counter()
            left = t0 + hold_s - now
            if left <= 0:
                break
            if next_ping is not None and now >= next_ping:
                with contextlib.suppress(ConnectionClosed, TimeoutError):
                    last_send_s = now - t0
                    await asyncio.wait_for(ws.send(ping), 5.0)
                    pings += 1
                next_ping = now + (ping_every_s or 0)
            wait = left if next_ping is None else max(0.01, min(left, next_ping - now))
            try:
                msg = await asyncio.wait_for(ws.recv(), wait)
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                ended, code, reason = _ending(exc)
                return HoldObservation(
                    url=url,
                    connect=outcome,
                    hold_s=hold_s,
                    outcome=ended,
                    ended_at_s=time.perf_counter() - t0,
                    close_code=code,
                    close_reason=reason,
                    pings_sent=pings,
                    pongs=pongs,
                    frames=nframes,
                    last_send_s=last_send_s,
                    last_sent=ping[:120] if last_send_s is not None else "",
                )
            nframes += 1
            if parse_frame(msg, protocol).event_type in protocol.pong_types:
                pongs += 1
        held = time.perf_counter() - t0
        try:
            await asyncio.wait_for(ws.close(), 5.0)
        except (TimeoutError, OSError):
            pass
        clean = ws.close_code == 1000 and ws.protocol.close_rcvd is not None
        return HoldObservation(
            url=url,
            connect=outcome,
            hold_s=hold_s,
            outcome="held",
            ended_at_s=held,
            close_code=ws.close_code,
            close_reason=ws.close_reason or "",
            clean_close=clean,
            pings_sent=pings,
            pongs=pongs,
            frames=nframes,
        )
    finally:
        await _close(ws)
