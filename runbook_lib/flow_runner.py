"""Run a flow against a live WebSocket service and record everything (the I/O side of flows).

How to call it (the checks that talk to a service run one of these):

* one user, one named flow, everything from the settings::

      obs = await run_named_flow(settings, "agent", user_id="alice", auth=connect_auth(...))

  ``url`` defaults to ``settings.target.ws()``; the flow is ``[flows.agent]`` or the
  seed's default (:func:`runbook_lib.flows.resolve_flow`); timeouts come from
  ``[timeouts]`` (connect) and ``[thresholds] event_timeout_s`` (expect steps without
  their own ``timeout_s``); ``[protocol] subprotocols`` are offered on the connect.

* several users at once (isolation, load)::

      observations = await run_users(url, flow, settings, ["u1", "u2"], auths={...})

  every user gets a unique ``{marker}``; each one's frames are checked against the
  others' markers (``FlowFrame.foreign``), so a leak shows up in the observation.

* full control: :func:`run_flow` (``url``, ``flow``, ``values``, ``settings`` or a bare
  ``ProtocolSettings``, keyword-only auth, subprotocols, headers and timeouts).

Every wait is bounded (connect, each send, each expect step, the linger after the
last step). Nothing raises for what the service does: a refused upgrade, a silent
server, a close, a garbage, binary or 10 MB frame all end up in the returned
:class:`~runbook_lib.flows.FlowObservation`. Recorded frame text is redacted and cut
at ``max_text`` characters; credentials never appear in it.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import ssl
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, cast

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import (
    ConnectionClosed,
    InvalidHandshake,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
)
from websockets.typing import Subprotocol

from .flows import (
    Flow,
    FlowFrame,
    FlowObservation,
    StepOutcome,
    describe_step,
    flow_values,
    is_foreign,
    match_step,
    new_marker,
    render_step,
    resolve_flow,
)
from .protocol import MAX_PARSE_BYTES, Frame, frame_text, parse_frame
from .redaction import redact, redact_excerpt
from .tokens import ConnectAuth

if TYPE_CHECKING:
    from .settings import ProtocolSettings, Settings

__all__ = ["FLOW_MAX_SIZE", "run_flow", "run_named_flow", "run_users"]

log = logging.getLogger(__name__)

# The client refuses frames above this (close 1009) instead of buffering them.
FLOW_MAX_SIZE = 2 * 1024 * 1024
_BODY_EXCERPT = 500


def _protocol(settings: Settings | ProtocolSettings) -> ProtocolSettings:
    return cast("ProtocolSettings", getattr(settings, "protocol", settings))


async def _connect(
    url: str,
    auth: ConnectAuth,
    subprotocols: Sequence[str],
    headers: Sequence[tuple[str, str]],
    open_timeout_s: float,
    max_size: int,
) -> tuple[ClientConnection | None, dict[str, Any]]:
    offered = list(dict.fromkeys([*subprotocols, *auth.subprotocols]))
    start = time.perf_counter()
    try:
        ws = await asyncio.wait_for(
            connect(
                auth.url(url),
                additional_headers=[*headers, *auth.headers] or None,
                subprotocols=[Subprotocol(s) for s in offered] or None,
                open_timeout=open_timeout_s,
                ping_interval=None,
                close_timeout=2.0,
                max_size=max_size,
                compression=None,
                proxy=None,
                user_agent_header="runbook-flow",
            ),
            open_timeout_s + 1.0,
        )
    except (OSError, TimeoutError, ssl.SSLError, InvalidHandshake, InvalidURI, EOFError) as exc:
        return None, _failure(exc, time.perf_counter() - start)
    sub = ws.subprotocol
    return ws, {
        "connected": True,
        "status": 101,
        "subprotocol": redact(sub) if sub else None,
        "connect_s": time.perf_counter() - start,
    }


def _failure(exc: BaseException, latency: float) -> dict[str, Any]:
    detail = redact(f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
    out: dict[str, Any] = {"connected": False, "connect_s": latency, "connect_detail": detail}
    if isinstance(exc, InvalidStatus):
        resp = exc.response
        body = (resp.body or b"").decode("utf-8", "replace")
        out.update(
            status=resp.status_code,
            connect_error="http_status",
            connect_detail=f"upgrade refused with HTTP {resp.status_code}",
            body_excerpt=redact_excerpt(body, _BODY_EXCERPT),
        )
    elif isinstance(exc, InvalidMessage):
        out["connect_error"] = "closed" if isinstance(exc.__cause__, EOFError) else "protocol"
    elif isinstance(exc, (InvalidHandshake, InvalidURI)):
        out["connect_error"] = "protocol"
    elif isinstance(exc, TimeoutError):
        out["connect_error"] = "timeout"
    elif isinstance(exc, ConnectionRefusedError):
        out["connect_error"] = "refused"
    elif isinstance(exc, ssl.SSLError):
        out["connect_error"] = "tls"
    else:
        out["connect_error"] = "connect"
    return out


def _ending(exc: ConnectionClosed) -> tuple[int | None, str, str]:
    """(close code, reason, words) from a ``ConnectionClosed``."""
    if exc.rcvd is not None:
        reason = redact(exc.rcvd.reason)
        return exc.rcvd.code, reason, f"the server closed the socket ({exc.rcvd.code} {reason})"
    if exc.sent is not None and exc.sent.code == 1009:
        return 1009, "frame too big", "a frame larger than the client's max_size arrived"
    if exc.sent is not None:
        return exc.sent.code, redact(exc.sent.reason), f"protocol error ({exc.sent.code})"
    return 1006, "", "the connection dropped without a close frame (1006)"


async def run_flow(
    url: str,
    flow: Flow,
    values: Mapping[str, str] | None,
    settings: Settings | ProtocolSettings,
    *,
    auth: ConnectAuth | None = None,
    subprotocols: Sequence[str] | None = None,
    headers: Sequence[tuple[str, str]] = (),
    open_timeout_s: float | None = None,
    step_timeout_s: float | None = None,
    send_timeout_s: float | None = None,
    linger_s: float = 0.3,
    other_markers: Sequence[str] = (),
    max_size: int = FLOW_MAX_SIZE,
    max_text: int = 4096,
) -> FlowObservation:
    """Connect to ``url``, run ``flow``'s steps in order, record every frame; never raises
    for what the service does.

    Args:
        url: the WebSocket URL (``ws://`` or ``wss://``), without credentials.
        flow: the steps to run.
        values: placeholder values (``user_id``, ``run_id``, ``thread_id``, ``marker``,
            ``text``, extras); missing ones are generated (:func:`flow_values`).
        settings: the settings (or just their ``ProtocolSettings``): frame format,
            patterns, event type paths, subprotocols, default timeouts.
        auth: credentials laid out for the connect (header, subprotocol or query).
        subprotocols: offered on the connect (default: ``[protocol] subprotocols``);
            the auth subprotocol is added after them.
        headers: extra request headers.
        open_timeout_s: bound on the connect (default ``[timeouts] connect_s`` or 5 s).
        step_timeout_s: bound on an expect step without its own ``timeout_s`` (default
            ``[thresholds] event_timeout_s`` or 30 s).
        send_timeout_s: bound on each send (default ``[timeouts] read_s`` or 10 s).
        linger_s: after the last step, keep reading this long (late or leaked frames).
        other_markers: the other simulated users' markers: a frame carrying one is foreign.
        max_size: frames above this close the socket (1009) instead of being buffered.
        max_text: characters of each frame's text kept in the record.
    """
    protocol = _protocol(settings)
    timeouts = getattr(settings, "timeouts", None)
    thresholds = getattr(settings, "thresholds", None)
    if open_timeout_s is None:
        open_timeout_s = timeouts.connect_s if timeouts is not None else 5.0
    if send_timeout_s is None:
        send_timeout_s = timeouts.read_s if timeouts is not None else 10.0
    if step_timeout_s is None:
        step_timeout_s = thresholds.event_timeout_s if thresholds is not None else 30.0
    if subprotocols is None:
        subprotocols = protocol.subprotocols
    vals = dict(values or {})
    base = flow_values(
        user_id=vals.get("user_id", "runbook-user"),
        run_id=vals.get("run_id"),
        thread_id=vals.get("thread_id"),
        marker=vals.get("marker"),
        text=vals.get("text", "runbook end-to-end check"),
    )
    vals = {**vals, **base}
    # ``{token}`` (``[auth] mode = "message"``): the credential rides in a frame. It is
    # a registered secret, kept out of the observation's recorded values below.
    vals["token"] = auth.token if auth is not None else ""
    start = time.perf_counter()
    ws, conn = await _connect(
        url, auth or ConnectAuth(), subprotocols, headers, open_timeout_s, max_size
    )
    common: dict[str, Any] = {
        "url": url,
        "flow": flow.name,
        "user_id": vals["user_id"],
        "marker": vals["marker"],
        "run_id": vals["run_id"],
    }
    if ws is None:
        steps = tuple(
            StepOutcome(i, s.kind, "not_reached", describe_step(s))
            for i, s in enumerate(flow.steps)
        )
        return FlowObservation(
            **common,
            **conn,
            steps=steps,
            stopped_at=0 if steps else None,
            stop_reason="connect_failed",
            duration_s=time.perf_counter() - start,
            values=_shown(vals),
        )
    session = _Session(ws, protocol, vals, other_markers, max_text)
    try:
        await session.run(flow, step_timeout_s, send_timeout_s, linger_s)
    finally:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(ws.close(), 3.0)
    captured = {k: v for s in session.outcomes for k, v in s.captured.items()}
    return FlowObservation(
        **common,
        **conn,
        frames=tuple(session.frames),
        steps=tuple(session.outcomes),
        captured=captured,
        stopped_at=session.stopped_at,
        stop_reason=session.stop_reason,
        close_code=session.close_code,
        close_reason=session.close_reason,
        duration_s=time.perf_counter() - start,
        values=_shown(session.values),
    )


def _shown(values: Mapping[str, str]) -> dict[str, str]:
    """The values a record may hold: never the token."""
    return {k: v for k, v in values.items() if k != "token"}


class _Session:
    """The state of one flow on one open socket (frames, outcomes, values)."""

    def __init__(
        self,
        ws: ClientConnection,
        protocol: ProtocolSettings,
        values: dict[str, str],
        other_markers: Sequence[str],
        max_text: int,
    ) -> None:
        self.ws = ws
        self.protocol = protocol
        self.values = values
        self.other_markers = tuple(m for m in other_markers if m != values.get("marker"))
        self.max_text = max_text
        self.t0 = time.perf_counter()
        self.frames: list[FlowFrame] = []
        self.parsed: list[Frame] = []
        self.outcomes: list[StepOutcome] = []
        self.stopped_at: int | None = None
        self.stop_reason = ""
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_words = ""

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _record(self, msg: str | bytes) -> tuple[Frame, str, bool]:
        frame = parse_frame(msg, self.protocol, t=self.now(), values=self.values)
        text = frame_text(msg, MAX_PARSE_BYTES)
        if isinstance(msg, (bytes, bytearray)) and frame.kind == "binary":
            kept = ""
        else:
            kept = redact_excerpt(text, self.max_text, "…")
        foreign = is_foreign(
            frame, text, self.values, self.parsed, other_markers=self.other_markers
        )
        markers = (self.values.get("marker", ""), *self.other_markers)
        attributed = bool(frame.user_id or frame.run_id or frame.marker) or any(
            m and m in text for m in markers
        )
        self.parsed.append(frame)
        self.frames.append(FlowFrame(frame, kept, foreign=foreign, attributed=attributed))
        return frame, text, foreign

    async def _recv(self, deadline: float) -> str | bytes | None:
        """The next frame, or None when ``deadline`` passes; ``ConnectionClosed`` propagates."""
        left = deadline - time.perf_counter()
        if left <= 0:
            return None
        try:
            return await asyncio.wait_for(self.ws.recv(), left)
        except TimeoutError:
            return None

    def _closed(self, exc: ConnectionClosed) -> None:
        self.close_code, self.close_reason, self.closed_words = _ending(exc)

    async def run(
        self, flow: Flow, step_timeout_s: float, send_timeout_s: float, linger_s: float
    ) -> None:
        for i, step in enumerate(flow.steps):
            outcome = (
                await self._send(i, step, send_timeout_s)
                if step.send is not None
                else await self._expect(i, step, step_timeout_s)
            )
            self.outcomes.append(outcome)
            if not outcome.ok:
                self.stopped_at, self.stop_reason = i, outcome.outcome
                self.outcomes.extend(
                    StepOutcome(j, s.kind, "not_reached", describe_step(s))
                    for j, s in enumerate(flow.steps[i + 1 :], start=i + 1)
                )
                return
        await self._linger(linger_s)

    async def _send(self, i: int, step: Any, send_timeout_s: float) -> StepOutcome:
        started = self.now()
        desc = describe_step(step)
        try:
            message = render_step(step, self.values)
        except (TypeError, ValueError) as exc:  # e.g. a TOML datetime in a table template
            return StepOutcome(
                i, "send", "send_failed", desc, started, 0.0, detail=f"cannot render: {exc}"
            )
        try:
            await asyncio.wait_for(self.ws.send(message), send_timeout_s)
        except ConnectionClosed as exc:
            self._closed(exc)
            # Refused after accept (an error frame, then 1008, is typical): keep what the
            # server said before it closed.
            errors = [f for f in await self._drain() if f.is_error]
            if errors:
                return StepOutcome(
                    i,
                    "send",
                    "error_frame",
                    desc,
                    started,
                    self.now() - started,
                    detail=f"the service answered with an error frame ({errors[0].excerpt[:200]}) "
                    f"and closed the socket before the send: {self.closed_words}",
                )
            return StepOutcome(
                i,
                "send",
                "send_failed",
                desc,
                started,
                self.now() - started,
                detail=self.closed_words,
            )
        except TimeoutError:
            return StepOutcome(
                i,
                "send",
                "send_failed",
                desc,
                started,
                self.now() - started,
                detail=f"the send did not complete within {send_timeout_s:g}s",
            )
        return StepOutcome(i, "send", "sent", desc, started, self.now() - started)

    async def _expect(self, i: int, step: Any, default_timeout_s: float) -> StepOutcome:
        timeout = step.timeout_s if step.timeout_s is not None else default_timeout_s
        started = self.now()
        deadline = time.perf_counter() + timeout
        desc = describe_step(step)
        seen = 0
        while True:
            try:
                msg = await self._recv(deadline)
            except ConnectionClosed as exc:
                self._closed(exc)
                return StepOutcome(
                    i,
                    "expect",
                    "closed",
                    desc,
                    started,
                    self.now() - started,
                    timeout,
                    detail=f"{self.closed_words} after {seen} frame(s) during this step",
                )
            if msg is None:
                return StepOutcome(
                    i,
                    "expect",
                    "timeout",
                    desc,
                    started,
                    self.now() - started,
                    timeout,
                    detail=f"no matching frame within {timeout:g}s ({seen} other frame(s) received)",
                )
            seen += 1
            frame, text, foreign = self._record(msg)
            captured = None if foreign else match_step(step, frame, text, self.values)
            if captured is not None:
                self.values.update(captured)
                idx = len(self.frames) - 1
                self.frames[idx] = dataclasses.replace(self.frames[idx], step=i)
                return StepOutcome(
                    i,
                    "expect",
                    "matched",
                    desc,
                    started,
                    frame.t - started,
                    timeout,
                    frame_index=idx,
                    captured=captured,
                )
            if frame.is_error and not foreign:
                return StepOutcome(
                    i,
                    "expect",
                    "error_frame",
                    desc,
                    started,
                    self.now() - started,
                    timeout,
                    frame_index=len(self.frames) - 1,
                    detail=f"the service answered with an error frame: {frame.excerpt[:200]}",
                )

    async def _drain(self, wait_s: float = 0.5) -> list[Frame]:
        """Record the frames still buffered on a closed socket."""
        got: list[Frame] = []
        deadline = time.perf_counter() + wait_s
        with contextlib.suppress(ConnectionClosed):
            while (msg := await self._recv(deadline)) is not None:
                got.append(self._record(msg)[0])
        return got

    async def _linger(self, linger_s: float) -> None:
        deadline = time.perf_counter() + linger_s
        with contextlib.suppress(ConnectionClosed):
            while (msg := await self._recv(deadline)) is not None:
                self._record(msg)


async def run_named_flow(
    settings: Settings,
    name: str,
    *,
    url: str | None = None,
    user_id: str | None = None,
    auth: ConnectAuth | None = None,
    values: Mapping[str, str] | None = None,
    other_markers: Sequence[str] = (),
    linger_s: float = 0.3,
) -> FlowObservation:
    """Run the user's ``[flows.NAME]`` (or the seed's default) with the settings' timeouts.

    Raises:
        KeyError: no flow of that name, neither configured nor default.
    """
    flow = resolve_flow(settings, name)
    vals = dict(values or {})
    vals.setdefault("user_id", user_id or settings.auth.default_user)
    return await run_flow(
        url or settings.target.ws(),
        flow,
        vals,
        settings,
        auth=auth,
        linger_s=linger_s,
        other_markers=other_markers,
    )


async def run_users(
    url: str,
    flow: Flow,
    settings: Settings | ProtocolSettings,
    users: Sequence[str],
    *,
    auths: Mapping[str, ConnectAuth | None] | None = None,
    values: Mapping[str, str] | None = None,
    stagger_s: float = 0.0,
    **kwargs: Any,
) -> list[FlowObservation]:
    """Run ``flow`` once per user, concurrently, each with a unique marker.

    Every user knows the others' markers, so a frame carrying one is recorded as
    foreign (a leak unless the room is shared). ``kwargs`` go to :func:`run_flow`.
    """
    markers = {u: new_marker() for u in users}
    all_markers = tuple(markers.values())

    async def one(k: int, user: str) -> FlowObservation:
        if stagger_s:
            await asyncio.sleep(k * stagger_s)
        vals = {**(values or {}), "user_id": user, "marker": markers[user]}
        return await run_flow(
            url,
            flow,
            vals,
            settings,
            auth=(auths or {}).get(user),
            other_markers=all_markers,
            **kwargs,
        )

    return list(await asyncio.gather(*(one(k, u) for k, u in enumerate(users))))
