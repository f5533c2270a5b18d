"""Run a flow against a live WebSocket service and record everything (the I/O side of flows).

How to call it (the checks that talk to a service run one of these):

* one user, one named flow, everything from the settings::

      obs = await run_named_flow(settings, "agent", user_id="alice", auth=connect_auth(...))

  ``url`` defaults to ``settings.target.ws()``; the flow is ``[flows.agent]`` or the
  seed's default (:func:`runbook_lib.settings.resolve_flow`); timeouts come from
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
from urllib.parse import urlsplit

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
    reply_timeout_s,
)
from .identity import user_agent
from .protocol import MAX_PARSE_BYTES, Frame, FrameKind, frame_text, parse_frame
from .redaction import REDACTED, redact, redact_excerpt, secret_spans
from .settings import resolve_flow
from .tokens import ConnectAuth

if TYPE_CHECKING:
    from .protocol import ProtocolSettings
    from .settings import Settings

__all__ = ["FLOW_MAX_SIZE", "open_connection", "run_flow", "run_named_flow", "run_users"]

log = logging.getLogger(__name__)

# The client refuses frames above this (close 1009) instead of buffering them.
FLOW_MAX_SIZE = 2 * 1024 * 1024
# Frames and characters of frame text kept per session. An endless stream is still read
# and judged (a leaked frame after the cap is still caught and kept), but only this much
# is recorded; the rest is counted in ``FlowObservation.frames_dropped``.
MAX_FRAMES_KEPT = 200
MAX_TEXT_KEPT = 256 * 1024
# How far either side of a frame boundary a secret split over two frames is looked for.
_JOIN_WINDOW = 4096
_FRAME_EXCERPT = 200  # characters of Frame.excerpt, as protocol.parse_frame cuts them
_BODY_EXCERPT = 500


class no_redirect_connect(connect):
    """websockets' ``connect`` that never follows a redirect.

    Following one would re-send the credentials to wherever it points (websockets strips
    ``Authorization`` for another origin, not the ``jwt.<token>`` subprotocol), and a
    browser fails a redirected WebSocket handshake anyway: a 3xx is a refused upgrade.
    """

    def process_redirect(self, exc: Exception) -> Exception | str:
        return exc


def _protocol(settings: Settings | ProtocolSettings) -> ProtocolSettings:
    return cast("ProtocolSettings", getattr(settings, "protocol", settings))


async def open_connection(
    url: str,
    auth: ConnectAuth,
    subprotocols: Sequence[str],
    headers: Sequence[tuple[str, str]],
    open_timeout_s: float,
    max_size: int,
) -> tuple[ClientConnection | None, dict[str, Any]]:
    """Open one WebSocket (every wait bounded by ``open_timeout_s``): the socket, or None,
    and what the connect gave (``connected``, ``status``, ``subprotocol``, ``connect_s``,
    on failure ``connect_error``, ``connect_detail``, ``body_excerpt``)."""
    offered = list(dict.fromkeys([*subprotocols, *auth.subprotocols]))
    start = time.perf_counter()
    try:
        ws = await asyncio.wait_for(
            no_redirect_connect(
                auth.url(url),
                additional_headers=[*headers, *auth.headers] or None,
                subprotocols=[Subprotocol(s) for s in offered] or None,
                open_timeout=open_timeout_s,
                ping_interval=None,
                close_timeout=2.0,
                max_size=max_size,
                compression=None,
                proxy=None,
                user_agent_header=user_agent(),
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
        detail = f"upgrade refused with HTTP {resp.status_code}"
        if 300 <= resp.status_code < 400:
            where = redact(urlsplit(resp.headers.get("Location", "")).netloc or "?")
            detail += (
                f" (a redirect to {where}, not followed: credentials stay with the configured "
                "origin, and browsers do not follow WebSocket redirects either; configure the "
                "final URL)"
            )
        out.update(
            status=resp.status_code,
            connect_error="http_status",
            connect_detail=detail,
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
            the one reply deadline, :func:`~runbook_lib.flows.reply_timeout_s`).
        send_timeout_s: bound on each send (default ``[timeouts] read_s`` or 10 s).
        linger_s: after the last step, keep reading this long (late or leaked frames).
        other_markers: the other simulated users' markers: a frame carrying one is foreign.
        max_size: frames above this close the socket (1009) instead of being buffered.
        max_text: characters of each frame's text kept in the record.
    """
    protocol = _protocol(settings)
    timeouts = getattr(settings, "timeouts", None)
    if open_timeout_s is None:
        open_timeout_s = timeouts.connect_s if timeouts is not None else 5.0
    if send_timeout_s is None:
        send_timeout_s = timeouts.read_s if timeouts is not None else 10.0
    if step_timeout_s is None:
        step_timeout_s = reply_timeout_s(settings)
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
    ws, conn = await open_connection(
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
        frames_dropped=session.dropped,
        steps=tuple(session.outcomes),
        captured=captured,
        stopped_at=session.stopped_at,
        stop_reason=session.stop_reason,
        close_code=session.close_code,
        close_reason=session.close_reason,
        closed_s=session.closed_s,
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
        # Frames that show the server echoed this user's id / run id: all that
        # ``is_foreign`` needs from the history, kept in constant space.
        self.witnesses: list[Frame] = []
        self.dropped = 0
        self.kept_chars = 0
        self._last = FlowFrame(Frame(t=0.0, size=0, kind=FrameKind.UNTYPED))
        self._last_msg: str | bytes = ""
        self._last_text = ""
        self._last_kept = True
        self._prev: tuple[int | None, str] = (None, "")  # the previous frame: index kept, text
        self.outcomes: list[StepOutcome] = []
        self.stopped_at: int | None = None
        self.stop_reason = ""
        self.close_code: int | None = None
        self.close_reason = ""
        self.closed_words = ""
        self.closed_s: float | None = None

    def now(self) -> float:
        return time.perf_counter() - self.t0

    def _record(self, msg: str | bytes) -> tuple[Frame, str, bool]:
        frame = parse_frame(msg, self.protocol, t=self.now(), values=self.values)
        text = frame_text(msg, MAX_PARSE_BYTES)
        foreign = is_foreign(
            frame, text, self.values, self.witnesses, other_markers=self.other_markers
        )
        for field_name in ("user_id", "run_id"):
            own = self.values.get(field_name)
            if own and getattr(frame, field_name) == own:
                if not any(getattr(w, field_name) == own for w in self.witnesses):
                    self.witnesses.append(frame)
        markers = (self.values.get("marker", ""), *self.other_markers)
        attributed = bool(frame.user_id or frame.run_id or frame.marker) or any(
            m and m in text for m in markers
        )
        shown = self._rejoin(text)
        if shown is not text:
            frame = dataclasses.replace(frame, excerpt=redact_excerpt(shown, _FRAME_EXCERPT, "…"))
        self._last = FlowFrame(frame, "", foreign=foreign, attributed=attributed)
        self._last_msg = msg
        self._last_text = shown
        self._prev = (None, shown)
        self._last_kept = False
        self.dropped += 1
        room = MAX_FRAMES_KEPT * (2 if foreign or frame.is_error else 1)
        if len(self.frames) < room and self.kept_chars < MAX_TEXT_KEPT:
            self._keep()
        return frame, text, foreign

    def _rejoin(self, text: str) -> str:
        """``text`` with the end of a secret that began in the previous frame redacted (and
        the previous frame's record fixed): a token split over two frames is still a token.
        """
        prev_idx, prev_text = self._prev
        if not prev_text:
            return text
        tail, head = prev_text[-_JOIN_WINDOW:], text[:_JOIN_WINDOW]
        spans = [(a, b) for a, b in secret_spans(tail + head) if a < len(tail) < b]
        if not spans:
            return text
        cut_prev = len(prev_text) - len(tail) + min(a for a, _ in spans)
        shown = REDACTED + text[max(b for _, b in spans) - len(tail) :]
        if prev_idx is not None:
            old = self.frames[prev_idx]
            fixed = prev_text[:cut_prev] + REDACTED
            self.frames[prev_idx] = dataclasses.replace(
                old,
                text=redact_excerpt(fixed, self.max_text, "…") if old.text else "",
                frame=dataclasses.replace(
                    old.frame, excerpt=redact_excerpt(fixed, _FRAME_EXCERPT, "…")
                ),
            )
        return shown

    def _keep(self) -> int:
        """Record the last frame read (evidence is kept even past the caps); its index."""
        if not self._last_kept:
            msg, text = self._last_msg, self._last_text
            if isinstance(msg, (bytes, bytearray)) and self._last.frame.kind == "binary":
                kept = ""
            else:
                kept = redact_excerpt(text, self.max_text, "…")
            self.kept_chars += len(kept)
            self.frames.append(dataclasses.replace(self._last, text=kept))
            self._last_kept = True
            self.dropped -= 1
            self._prev = (len(self.frames) - 1, self._last_text)
        return len(self.frames) - 1

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
        if self.closed_s is None:
            self.closed_s = self.now()

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
                idx = self._keep()
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
                idx = self._keep()
                took = self.now() - started
                # A refusal is often an error frame then a close (1008): say both, whatever
                # order the two reach the client in.
                closed = await self._closing_words(0.3)
                return StepOutcome(
                    i,
                    "expect",
                    "error_frame",
                    desc,
                    started,
                    took,
                    timeout,
                    frame_index=idx,
                    detail=f"the service answered with an error frame: {frame.excerpt[:200]}"
                    + (f", then {closed}" if closed else ""),
                )

    async def _closing_words(self, wait_s: float) -> str:
        """How the server ended the socket within ``wait_s`` ('' when it did not)."""
        deadline = time.perf_counter() + wait_s
        try:
            while (msg := await self._recv(deadline)) is not None:
                self._record(msg)
        except ConnectionClosed as exc:
            self._closed(exc)
            return self.closed_words
        return ""

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
        try:
            while (msg := await self._recv(deadline)) is not None:
                self._record(msg)
        except ConnectionClosed as exc:  # a close while lingering is evidence too
            self._closed(exc)


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
