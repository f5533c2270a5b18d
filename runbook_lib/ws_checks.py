"""WebSocket session observers: round trip, agent run, auth, isolation, hold.

Each observer opens its own connection(s), bounds every wait by a timeout and
returns a frozen observation; a refused upgrade, a silent server, a garbage
answer, a 10 MB frame or a dropped TCP connection are recorded, never raised.
The session observers use ``websockets``' asyncio client; the raw upgrade probe
lives in :mod:`runbook_lib.handshake` and the monitoring scheduler in
:mod:`runbook_lib.monitor` (both names stay importable from here).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
import uuid
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import TYPE_CHECKING, Any

import httpx
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.typing import Subprotocol

from .checks.causes import connect_failure_words

# The raw upgrade probe moved to runbook_lib.handshake; its names stay importable here.
from .handshake import WS_GUID as WS_GUID
from .handshake import expected_accept as expected_accept
from .handshake import observe_handshake as observe_handshake
from .handshake import observe_handshakes as observe_handshakes
from .http_checks import error_kind, exc_text
from .observations import (
    AgentRunObservation,
    AuthAttempt,
    AuthObservation,
    ConnectOutcome,
    HoldObservation,
    IsolationObservation,
    RoundTripObservation,
    is_own_frame,
)
from .protocol import Frame, parse_frame, render_message
from .redaction import redact, redact_excerpt
from .settings import AuthSettings, ProtocolSettings
from .tokens import ConnectAuth, connect_auth, negative_cases, obtain_token

if TYPE_CHECKING:
    from .flows import Flow, FlowObservation
    from .settings import Settings

__all__ = [
    "DEFAULT_MAX_SIZE",
    "observe_agent_run",
    "observe_auth",
    "observe_flow",
    "observe_flow_users",
    "observe_hold",
    "observe_isolation",
    "observe_roundtrip",
]

log = logging.getLogger(__name__)

# Frames above this are refused by the client (close 1009) instead of buffered: an
# observer must survive a server that sends 10 MB without holding it in memory.
DEFAULT_MAX_SIZE = 2 * 1024 * 1024
_BODY_EXCERPT = 500


# ---------------------------------------------------------------- websockets sessions


def _connect_failure(exc: BaseException, latency: float) -> ConnectOutcome:
    detail = redact(exc_text(exc))
    if isinstance(exc, InvalidStatus):
        resp = exc.response
        body = redact_excerpt((resp.body or b"").decode("utf-8", "replace"), _BODY_EXCERPT)
        return ConnectOutcome(
            False,
            status=resp.status_code,
            latency_s=latency,
            error="http_status",
            error_detail=detail,
            body_excerpt=body,
        )
    if isinstance(exc, InvalidMessage):
        cause = exc.__cause__
        kind = "closed" if isinstance(cause, EOFError) else "protocol"
        return ConnectOutcome(False, latency_s=latency, error=kind, error_detail=detail)
    if isinstance(exc, (InvalidHandshake, InvalidURI)):
        return ConnectOutcome(False, latency_s=latency, error="protocol", error_detail=detail)
    return ConnectOutcome(False, latency_s=latency, error=error_kind(exc), error_detail=detail)


async def _open(
    url: str, auth: ConnectAuth | None, open_timeout_s: float, max_size: int
) -> tuple[ClientConnection | None, ConnectOutcome]:
    creds = auth or ConnectAuth()
    start = time.perf_counter()
    try:
        ws = await asyncio.wait_for(
            connect(
                creds.url(url),
                additional_headers=list(creds.headers) or None,
                subprotocols=[Subprotocol(s) for s in creds.subprotocols] or None,
                open_timeout=open_timeout_s,
                ping_interval=None,
                close_timeout=2.0,
                max_size=max_size,
                compression=None,
                proxy=None,
                user_agent_header="runbook-ws-probe",
            ),
            open_timeout_s + 1.0,
        )
    except (OSError, TimeoutError, ssl.SSLError, InvalidHandshake, InvalidURI, EOFError) as exc:
        return None, _connect_failure(exc, time.perf_counter() - start)
    sub = ws.subprotocol
    return ws, ConnectOutcome(
        True,
        status=101,
        latency_s=time.perf_counter() - start,
        subprotocol=redact(sub) if sub else None,
    )


async def _frames(
    ws: ClientConnection, protocol: ProtocolSettings, t0: float, deadline: Callable[[], float]
) -> AsyncGenerator[Frame, None]:
    """Parsed frames (``t`` relative to ``t0``) until ``deadline()`` passes.

    A close by the server propagates as ``ConnectionClosed``; ``deadline`` is read before
    every wait so a caller may shorten it (e.g. to linger after the final event).
    """
    while (left := deadline() - time.perf_counter()) > 0:
        try:
            msg = await asyncio.wait_for(ws.recv(), left)
        except TimeoutError:
            return
        yield parse_frame(msg, protocol, t=time.perf_counter() - t0)


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


async def observe_roundtrip(
    url: str,
    protocol: ProtocolSettings,
    *,
    auth: ConnectAuth | None = None,
    timeout_s: float = 10.0,
    open_timeout_s: float = 5.0,
    max_size: int = DEFAULT_MAX_SIZE,
) -> RoundTripObservation:
    """Connect, send ``protocol.ping``, skip other frames, expect a pong within ``timeout_s``."""
    ws, outcome = await _open(url, auth, open_timeout_s, max_size)
    if ws is None:
        return RoundTripObservation(url=url, connect=outcome, ended="connect_failed")
    frames: list[Frame] = []
    sent = True
    ended, code, reason = "timeout", None, ""
    t0 = time.perf_counter()
    try:
        try:
            await asyncio.wait_for(ws.send(render_message(protocol, "ping")), timeout_s)
        except (ConnectionClosed, TimeoutError):
            sent = False  # still read what the server said before it closed, briefly
        deadline = t0 + (timeout_s if sent else min(1.0, timeout_s))
        try:
            async with contextlib.aclosing(_frames(ws, protocol, t0, lambda: deadline)) as stream:
                async for frame in stream:
                    frames.append(frame)
                    if frame.event_type in protocol.pong_types:
                        ended = "pong"
                        break
        except ConnectionClosed as exc:
            ended, code, reason = _ending(exc)
    finally:
        await _close(ws)
    pong = ended == "pong"
    return RoundTripObservation(
        url=url,
        connect=outcome,
        sent=sent,
        pong=pong,
        latency_s=frames[-1].t if pong else None,
        frames=tuple(frames),
        ended="send_failed" if not sent and ended == "timeout" else ended,
        close_code=code,
        close_reason=reason,
    )


async def observe_agent_run(
    url: str,
    protocol: ProtocolSettings,
    *,
    auth: ConnectAuth | None = None,
    user_id: str = "runbook-user",
    text: str = "runbook end-to-end check",
    template: str = "agent_request",
    event_timeout_s: float = 30.0,
    open_timeout_s: float = 5.0,
    linger_s: float = 0.3,
    run_id: str | None = None,
    thread_id: str | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
) -> AgentRunObservation:
    """Send one agent request as ``user_id`` and record every frame until the run ends.

    The run ends at the last critical event of this run (then ``linger_s`` more to catch
    stragglers of a reordered stream), an error frame, the server closing, or
    ``event_timeout_s`` after the send.
    """
    rid = run_id or f"run-{uuid.uuid4().hex[:12]}"
    tid = thread_id or f"thread-{uuid.uuid4().hex[:12]}"
    base: dict[str, Any] = {
        "url": url,
        "user_id": user_id,
        "run_id": rid,
        "thread_id": tid,
        "template": template,
        "timeout_s": event_timeout_s,
        "final_event": protocol.critical_events[-1] if protocol.critical_events else "",
    }
    ws, outcome = await _open(url, auth, open_timeout_s, max_size)
    if ws is None:
        return AgentRunObservation(
            connect=outcome, ended="connect_failed", error=connect_failure_words(outcome), **base
        )
    final = protocol.critical_events[-1] if protocol.critical_events else None
    frames: list[Frame] = []
    ended, code, reason = "timeout", None, ""
    t0 = time.perf_counter()
    try:
        msg_out = render_message(
            protocol, template, text=text, user_id=user_id, thread_id=tid, run_id=rid
        )
        sent = True
        try:
            await asyncio.wait_for(ws.send(msg_out), open_timeout_s)
        except (ConnectionClosed, TimeoutError):
            # Refused after accept (auth error frame + 1008 is typical): still read what
            # the server said before closing, briefly.
            sent = False
        deadline = t0 + (event_timeout_s if sent else min(1.0, event_timeout_s))
        try:
            # The deadline shrinks to ``linger_s`` after the final event: read it each time.
            async with contextlib.aclosing(_frames(ws, protocol, t0, lambda: deadline)) as stream:
                async for frame in stream:
                    frames.append(frame)
                    done = frame.is_error or (
                        frame.is_event
                        and frame.event_type == final
                        and is_own_frame(frame, frames, user_id, rid)
                    )
                    if done:
                        ended = "error_frame" if frame.is_error else "completed"
                        deadline = min(deadline, time.perf_counter() + linger_s)
        except ConnectionClosed as exc:
            how, code, reason = _ending(exc)
            # A close after the final event (while lingering) does not undo the completion.
            ended = ended if ended == "completed" else how
    finally:
        await _close(ws)
    if not sent and ended == "timeout":
        ended = "send_failed"
    return AgentRunObservation(
        connect=outcome,
        sent=sent,
        frames=tuple(frames),
        ended=ended,
        close_code=code,
        close_reason=reason,
        duration_s=time.perf_counter() - t0,
        error="" if sent else "the socket closed before the request was sent",
        **base,
    )


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


# ---------------------------------------------------------------- isolation


async def observe_isolation(
    url: str,
    protocol: ProtocolSettings,
    auth: AuthSettings,
    *,
    users: int = 5,
    user_prefix: str = "runbook-iso",
    template: str = "agent_request",
    event_timeout_s: float = 30.0,
    open_timeout_s: float = 5.0,
    client: httpx.AsyncClient | None = None,
) -> IsolationObservation:
    """Run ``users`` agent sessions concurrently, each as its own user with its own token."""
    suffix = uuid.uuid4().hex[:6]

    async def one(i: int) -> AgentRunObservation:
        user = f"{user_prefix}-{suffix}-{i}"
        creds = ConnectAuth()
        if auth.enabled:
            token = await obtain_token(auth, user, client=client, timeout_s=open_timeout_s)
            if not token.ok:
                return AgentRunObservation(
                    url=url,
                    user_id=user,
                    run_id="",
                    thread_id="",
                    template=template,
                    ended="token_failed",
                    connect=ConnectOutcome(False, error="token"),
                    timeout_s=event_timeout_s,
                    error=token.error,
                )
            creds = connect_auth(auth, token.token)
        return await observe_agent_run(
            url,
            protocol,
            auth=creds,
            user_id=user,
            text=f"isolation check for {user}",
            template=template,
            event_timeout_s=event_timeout_s,
            open_timeout_s=open_timeout_s,
        )

    runs = await asyncio.gather(*(one(i) for i in range(max(1, users))))
    return IsolationObservation(runs=tuple(runs))


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
    from .flows import resolve_flow

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
    from .flows import resolve_flow

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
    ws, outcome = await _open(url, auth, open_timeout_s, max_size)
    if ws is None:
        return HoldObservation(url=url, connect=outcome, hold_s=hold_s, outcome="connect_failed")
    t0 = time.perf_counter()
    pings = pongs = nframes = 0
    next_ping = t0 + ping_every_s if ping_every_s else None
    try:
        while True:
            now = time.perf_counter()
            left = t0 + hold_s - now
            if left <= 0:
                break
            if next_ping is not None and now >= next_ping:
                with contextlib.suppress(ConnectionClosed, TimeoutError):
                    await asyncio.wait_for(ws.send(render_message(protocol, "ping")), 5.0)
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


def __getattr__(name: str) -> Any:
    # observe_monitor moved to runbook_lib.monitor (it schedules this module's observers).
    if name == "observe_monitor":
        from .monitor import observe_monitor

        return observe_monitor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
