"""One load generator: an event loop driving WebSocket sessions with picows.

This is the hot path of :mod:`runbook_lib.load`. It runs either inside the caller's
event loop (small plans) or as the body of a spawned worker process (one per core,
uvloop when installed). It knows nothing about ``LoadPlan``/``LoadReport``: it takes a
:class:`WorkerSpec` and returns a plain, picklable dict that ``engine`` merges.

Design notes (why it looks like this):

- Sessions are picows listeners driven by callbacks; the only per-session coroutine
  is the one that connects and then waits for the disconnect. Each session runs the
  load flow whole (sends, expects, patterns, captures): the steps are compiled once per
  worker (:class:`runbook_lib.flows.LoadMatcher`, the same matching rules as every other
  flow), sends without per-session values are pre-encoded, and verdicts of steps that
  name no per-session value are cached by payload. Per step there is no task, no future
  and no timer: an expect step's time is two ``perf_counter`` reads, and one sweeper per
  worker enforces each step's ``timeout_s`` and the close timeout.
- Samples go to ``array('d')`` (compact, fast to append, picklable as bytes), so a run
  of 100k+ sessions keeps every raw sample without numpy in the workers.
- Arrivals are open-loop: session *i* is planned at a fixed time; when the generator
  (or the concurrency cap) cannot start it on time, the lag is recorded, never hidden.
- Nothing here raises for target behaviour: every failure becomes an error kind.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import math
import os
import time
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from picows import (
    WSCloseCode,
    WSError,
    WSFrame,
    WSHandshakeError,
    WSInvalidStatusError,
    WSListener,
    WSMsgType,
    WSTransport,
    ws_connect,
)

from ..flows import FlowStep, LoadMatcher, SessionTemplate, load_session_names
from ..protocol import compile_pattern, placeholder_names, render_values

__all__ = ["WorkerSpec", "arrival_offset", "run_worker", "worker_process_main"]

logger = logging.getLogger(__name__)

_perf = time.perf_counter
_TEXT = WSMsgType.TEXT
_BINARY = WSMsgType.BINARY
_CLOSE = WSMsgType.CLOSE
# Small initial read buffer: picows' default (16 KiB) would dominate the memory cost
# of idle sockets; it grows on demand for bigger frames.
_READ_BUFFER = 1024
_CLOSE_TIMEOUT_S = 2.0
_MONITOR_INTERVAL_S = 0.02
_PAGE = os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """What one generator runs: its share of a plan (sessions offset, offset+stride, ...).

    Attributes mirror :class:`runbook_lib.load.engine.LoadPlan`; ``concurrency`` is this
    worker's share of the cap (None = uncapped).
    """

    url: str
    sessions_total: int
    offset: int
    stride: int
    concurrency: int | None
    rate: float | None
    ramp_s: float
    messages: int
    hold_s: float
    steps: tuple[FlowStep, ...]
    type_paths: tuple[str, ...]
    ignore_types: tuple[str, ...]
    headers: tuple[tuple[str, str], ...]
    connect_timeout_s: float
    message_timeout_s: float
    deadline_s: float
    values: tuple[tuple[str, str], ...] = ()
    error_types: tuple[str, ...] = ()
    error_pattern: str = ""
    token: str = field(default="", repr=False)


def arrival_offset(i: int, total: int, rate: float | None, ramp_s: float) -> float:
    """Planned start of session ``i`` (seconds after the run starts).

    With a rate, arrivals follow a linear ramp from 0 to ``rate`` over ``ramp_s`` and
    then stay constant; without one they are spread evenly over ``ramp_s`` (all at
    0 when ``ramp_s`` is 0, i.e. as fast as the concurrency cap allows).
    """
    if rate is None or rate <= 0:
        return ramp_s * i / total if ramp_s > 0 and total > 0 else 0.0
    if ramp_s <= 0:
        return i / rate
    during_ramp = rate * ramp_s / 2.0
    if i < during_ramp:
        return math.sqrt(2.0 * ramp_s * i / rate)
    return ramp_s + (i - during_ramp) / rate


_UNSEEN = object()


def placeholder_free(template: Any, names: frozenset[str]) -> bool:
    """True when ``template`` names none of ``names`` (it renders the same every session)."""
    return not (placeholder_names(template) & names)


def _frame_type(obj: Any, paths: tuple[tuple[str, ...], ...]) -> str | None:
    for path in paths:
        cur = obj
        for part in path:
            if isinstance(cur, dict) and part in cur:
                cur = cur[part]
            else:
                cur = None
                break
        if isinstance(cur, str):
            return cur
    return None


class _Generator:
    """State of one worker's run; sessions report into it."""

    def __init__(self, spec: WorkerSpec) -> None:
        self.spec = spec
        self.messages = spec.messages
        self.hold_s = spec.hold_s
        self.ignore_types = frozenset(spec.ignore_types)
        self.error_types = frozenset(spec.error_types)
        self.error_rx = compile_pattern(spec.error_pattern) if spec.error_pattern else None
        self.paths = tuple(tuple(p.split(".")) for p in spec.type_paths)
        values = dict(spec.values)
        session = load_session_names(spec.steps)
        self.base_values = values
        # One entry per step: bytes to send as they are, a template rendered per
        # session (None, template), or an expect step's matcher.
        self.steps: list[bytes | SessionTemplate | LoadMatcher] = []
        dynamic = False
        for step in spec.steps:
            if step.send is None:
                matcher = LoadMatcher(step, values, session, spec.message_timeout_s)
                self.steps.append(matcher)
                dynamic = dynamic or not matcher.cacheable
            elif placeholder_free(step.send, session):
                self.steps.append(render_values(step.send, values).encode())
            else:
                self.steps.append(SessionTemplate(step.send, values, session))
                dynamic = True
        self.dynamic = dynamic
        self.needs_json = any(isinstance(m, LoadMatcher) and m.needs_json for m in self.steps)
        self.needs_json = self.needs_json or bool(self.error_types)
        self.min_timeout_s = min(
            (m.timeout_s for m in self.steps if isinstance(m, LoadMatcher)),
            default=spec.message_timeout_s,
        )
        # Echo-style targets send the same few payloads over and over: remember the
        # verdict of steps that name no per-session value instead of parsing again.
        self.verdicts: dict[tuple[int, bytes], dict[str, str] | bool | None] = {}
        self.connect_s = array("d")
        self.first_s = array("d")
        self.rtt_s = array("d")
        self.rtt_step = array("H")
        self.lag_s = array("d")
        self.errors: Counter[str] = Counter()
        self.statuses: Counter[int] = Counter()
        self.attempted = 0
        self.succeeded = 0
        self.open = 0
        self.peak_open = 0
        self.live: set[_Session] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.slot_waiter: asyncio.Future[None] | None = None
        self.idle_waiter: asyncio.Future[None] | None = None
        self.stopping = False
        self.first_start: float | None = None
        self.last_start: float | None = None
        self.last_end: float | None = None
        self.headers = list(spec.headers)

    def session_values(self, index: int) -> dict[str, str] | None:
        """The placeholder values of session ``index`` (None when no step needs them)."""
        if not self.dynamic:
            return None
        values = dict(self.base_values)
        values["marker"] = f"{values.get('marker', 'mk')}s{index}"
        if self.spec.token:
            values["token"] = self.spec.token
        return values

    def match(
        self, index: int, payload: bytes, values: dict[str, str] | None
    ) -> dict[str, str] | bool | None:
        """Captures when ``payload`` satisfies step ``index``; None when it does not;
        False when it is an error frame the step did not expect."""
        matcher = self.steps[index]
        assert isinstance(matcher, LoadMatcher)
        key = (index, payload)
        if matcher.cacheable:
            cached = self.verdicts.get(key, _UNSEEN)
            if cached is not _UNSEEN:
                return cached  # type: ignore[return-value]
        obj = None
        if self.needs_json:
            try:
                obj = json.loads(payload)
            except ValueError:
                obj = None
        kind = _frame_type(obj, self.paths)
        text = payload.decode("utf-8", "replace") if matcher.pattern or self.error_rx else ""
        got: dict[str, str] | bool | None = matcher.match(
            text, obj, kind, values or self.base_values, self.ignore_types
        )
        if got is None and (
            (kind is not None and kind in self.error_types)
            or (self.error_rx is not None and self.error_rx.search(text) is not None)
        ):
            got = False
        if matcher.cacheable and len(payload) <= 512 and len(self.verdicts) < 4096:
            self.verdicts[key] = got
        return got

    def finish(self, error: str | None) -> None:
        """Account one session's outcome (exactly once per attempted session)."""
        if error is None:
            self.succeeded += 1
        else:
            self.errors[error] += 1
        self.last_end = _perf()
        self.open -= 1
        waiter = self.slot_waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        idle = self.idle_waiter
        if self.open == 0 and idle is not None and not idle.done():
            idle.set_result(None)


class _Session(WSListener):
    """One WebSocket session: run the flow ``messages`` times, hold, close."""

    __slots__ = (
        "closing_at",
        "counted",
        "error",
        "gen",
        "got_frame",
        "hold_handle",
        "index",
        "iteration",
        "mark",
        "ok",
        "opened_at",
        "started_at",
        "step",
        "transport",
        "values",
        "wait_until",
    )

    def __init__(self, gen: _Generator, started_at: float, index: int) -> None:
        self.gen = gen
        self.started_at = started_at
        self.index = index
        self.transport: WSTransport | None = None
        self.opened_at = 0.0
        self.mark = 0.0  # when the previous step ended: an expect step's latency base
        self.wait_until = 0.0  # 0 = no expect step pending
        self.step = 0
        self.iteration = 0
        self.values: dict[str, str] | None = None
        self.closing_at = 0.0
        self.got_frame = False
        self.ok = False
        self.error: str | None = None
        self.hold_handle: asyncio.TimerHandle | None = None
        self.counted = False

    def on_ws_connected(self, transport: WSTransport) -> None:
        now = _perf()
        gen = self.gen
        self.transport = transport
        self.opened_at = now
        self.mark = now
        gen.connect_s.append(now - self.started_at)
        gen.live.add(self)
        if gen.messages > 0:
            self.values = gen.session_values(self.index)
            self._advance(transport)
        else:
            self._messages_done()

    def _advance(self, transport: WSTransport) -> None:
        """Run send steps until the next expect step (armed with its deadline) or the end."""
        gen = self.gen
        steps = gen.steps
        while True:
            if self.step >= len(steps):
                self.iteration += 1
                if self.iteration >= gen.messages:
                    self.wait_until = 0.0
                    self._messages_done()
                    return
                self.step = 0
            step = steps[self.step]
            if isinstance(step, LoadMatcher):
                self.wait_until = _perf() + step.timeout_s
                return
            payload = step if isinstance(step, bytes) else step.render(self.values or {}).encode()
            self.mark = _perf()
            transport.send(_TEXT, payload)
            self.step += 1

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        now = _perf()
        kind = frame.msg_type
        if kind is _TEXT or kind is _BINARY:
            gen = self.gen
            if not self.got_frame:
                self.got_frame = True
                gen.first_s.append(now - self.opened_at)
            if self.wait_until == 0.0:
                return
            got = gen.match(self.step, frame.get_payload_as_bytes(), self.values)
            if got is None:
                return
            if got is False:
                # The service answered with an error: an answer, not a timeout.
                self.error = "error_frame"
                self.wait_until = 0.0
                self._close(False)
                return
            gen.rtt_s.append(now - self.mark)
            gen.rtt_step.append(self.step)
            if got and self.values is not None:
                self.values.update(got)  # type: ignore[arg-type]
            self.mark = now
            self.step += 1
            self.wait_until = 0.0
            self._advance(transport)
        elif kind is _CLOSE:
            if self.closing_at == 0.0:
                # The server closed first: the session did not finish its work.
                code = frame.get_close_code()
                value = 1005 if code is WSCloseCode.NO_INFO else getattr(code, "value", code)
                self.error = f"closed_{value}"
                self.ok = False
                transport.send_close(WSCloseCode.OK)
            transport.disconnect()

    def _messages_done(self) -> None:
        if self.gen.hold_s > 0:
            loop = asyncio.get_running_loop()
            self.hold_handle = loop.call_later(self.gen.hold_s, self._close, True)
        else:
            self._close(True)

    def _close(self, ok: bool) -> None:
        self.hold_handle = None
        transport = self.transport
        if transport is None or transport.is_disconnected:
            return
        self.ok = ok and self.error is None
        self.closing_at = _perf()
        # Close politely: the server answers with its own close and, per RFC 6455,
        # drops TCP first, so TIME_WAIT (and its port) mostly stays on its side even
        # at thousands of sessions per second. The sweeper bounds the wait.
        transport.send_close(WSCloseCode.OK)

    def abort(self, reason: str) -> None:
        if self.error is None and not self.ok:
            self.error = reason
        if self.hold_handle is not None:
            self.hold_handle.cancel()
            self.hold_handle = None
        if self.transport is not None and not self.transport.is_disconnected:
            self.transport.disconnect(graceful=False)

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        self.gen.live.discard(self)
        if self.hold_handle is not None:
            self.hold_handle.cancel()
            self.hold_handle = None
        if not self.ok and self.error is None:
            # TCP went away without a close frame: what browsers report as 1006.
            self.error = "closed_1006"
        if not self.counted and self.transport is not None:
            # Once connected, the listener (not a task) owns the session: an idle
            # open socket then costs no coroutine, task or future.
            self.counted = True
            self.gen.finish(None if self.ok else self.error)


def _connect_error(exc: BaseException) -> tuple[str, int | None]:
    """Error kind (and HTTP status, if any) for a failed connect/handshake."""
    if isinstance(exc, WSInvalidStatusError):
        status = int(exc.response.status) if exc.response is not None else 0
        return f"handshake_{status}", status
    if isinstance(exc, TimeoutError):
        return "timeout_connect", None
    if isinstance(exc, ConnectionRefusedError):
        return "refused", None
    if isinstance(exc, ConnectionResetError):
        return "reset", None
    if isinstance(exc, WSHandshakeError):
        return "handshake_invalid", None
    if isinstance(exc, OSError) and exc.errno is not None:
        return "os_" + errno.errorcode.get(exc.errno, str(exc.errno)).lower(), None
    if isinstance(exc, OSError | WSError):
        return "connect_error", None
    return f"error_{type(exc).__name__}", None


def _rss_bytes() -> int:
    try:
        with open("/proc/self/statm", "rb") as fh:
            return int(fh.read().split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        return 0


async def _run_session(gen: _Generator, planned: float, index: int) -> None:
    # Lateness is taken when the session actually starts running, not when its task
    # was queued: a busy loop delays the first, and hiding that would flatter the run.
    started = _perf()
    gen.lag_s.append(started - planned if started > planned else 0.0)
    if gen.first_start is None:
        gen.first_start = started
    gen.last_start = started
    spec = gen.spec
    sess = _Session(gen, started, index)
    try:
        async with asyncio.timeout(spec.connect_timeout_s):
            await ws_connect(
                lambda: sess,
                spec.url,
                extra_headers=gen.headers,
                websocket_handshake_timeout=spec.connect_timeout_s,
                read_buffer_init_size=_READ_BUFFER,
                logger_name="runbook_load",
            )
    except asyncio.CancelledError:
        # The run deadline cancelled this session while it was connecting.
        _fail_connect(gen, sess, "deadline", None)
        raise
    except Exception as exc:  # classified, never raised
        _fail_connect(gen, sess, *_connect_error(exc))
        return
    gen.statuses[101] += 1


def _fail_connect(gen: _Generator, sess: _Session, kind: str, status: int | None) -> None:
    if status is not None:
        gen.statuses[status] += 1
    if sess.transport is not None:
        # The upgrade completed just as the connect bound fired: the listener
        # accounts for it when the abort below disconnects it.
        sess.abort(kind)
        return
    sess.counted = True
    gen.finish(kind)


async def _sweep(gen: _Generator) -> None:
    """Enforce reply and close timeouts for all open sessions of this worker."""
    interval = min(max(min(gen.min_timeout_s, _CLOSE_TIMEOUT_S) / 20.0, 0.02), 0.25)
    while True:
        await asyncio.sleep(interval)
        now = _perf()
        for sess in list(gen.live):
            if sess.wait_until and now > sess.wait_until:
                sess.abort("timeout_reply")
            elif sess.closing_at and now - sess.closing_at > _CLOSE_TIMEOUT_S:
                sess.abort("timeout_close")


async def _monitor(gen: _Generator, lags: list[float], rss: list[int]) -> None:
    """Sample event-loop lag (generator saturation) and RSS (memory per socket)."""
    while True:
        before = _perf()
        await asyncio.sleep(_MONITOR_INTERVAL_S)
        lags.append(max(_perf() - before - _MONITOR_INTERVAL_S, 0.0))
        rss.append(_rss_bytes())


async def _arrivals(gen: _Generator, start: float) -> None:
    spec = gen.spec
    loop = asyncio.get_running_loop()
    cap = spec.concurrency
    for i in range(spec.offset, spec.sessions_total, spec.stride):
        planned = start + arrival_offset(i, spec.sessions_total, spec.rate, spec.ramp_s)
        delay = planned - _perf()
        if delay > 0.0002:
            # uvloop/libuv timers have 1 ms granularity: shorter sleeps return at
            # once and the loop would spin. Sleep at least 1 ms and launch every
            # arrival that fell due meanwhile (their lag is recorded).
            await asyncio.sleep(max(delay, 0.001))
        while cap is not None and gen.open >= cap:
            gen.slot_waiter = loop.create_future()
            await gen.slot_waiter
            gen.slot_waiter = None
        if gen.stopping:
            return
        gen.attempted += 1
        gen.open += 1
        if gen.open > gen.peak_open:
            gen.peak_open = gen.open
        task = loop.create_task(_run_session(gen, planned, i))
        gen.tasks.add(task)
        task.add_done_callback(gen.tasks.discard)


async def run_worker(spec: WorkerSpec, start_wall: float | None = None) -> dict[str, Any]:
    """Run ``spec`` in the current event loop and return the raw, picklable result.

    Args:
        spec: this worker's share of the plan.
        start_wall: ``time.time()`` at which arrivals begin (a shared barrier across
            workers); None = now.

    Returns:
        dict with counters, error kinds, handshake statuses, sample arrays as bytes
        (float64), times relative to the start, CPU share, loop lag and memory.
    """
    gen = _Generator(spec)
    rss_base = _rss_bytes()
    now_wall, now_perf = time.time(), _perf()
    start = now_perf + max((start_wall or now_wall) - now_wall, 0.0)
    if start > now_perf:
        await asyncio.sleep(start - now_perf)
    cpu0, t0 = time.process_time(), _perf()
    lags: list[float] = []
    rss: list[int] = [rss_base]
    helpers = [
        asyncio.create_task(_sweep(gen)),
        asyncio.create_task(_monitor(gen, lags, rss)),
    ]
    arrivals = asyncio.create_task(_arrivals(gen, start))
    deadline_hit = False
    loop = asyncio.get_running_loop()
    try:
        remaining = spec.deadline_s - (_perf() - start)
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                await arrivals
                if gen.open > 0:
                    gen.idle_waiter = loop.create_future()
                    await gen.idle_waiter
        except TimeoutError:
            deadline_hit = True
            gen.stopping = True
            arrivals.cancel()
            for task in list(gen.tasks):
                task.cancel()
            for sess in list(gen.live):
                sess.abort("deadline")
            # Aborted sockets close without waiting for the peer; give the loop a
            # bounded moment to deliver their disconnect callbacks.
            async with asyncio.timeout(_CLOSE_TIMEOUT_S + 1.0):
                while gen.tasks:
                    await asyncio.gather(*list(gen.tasks), return_exceptions=True)
                if gen.open > 0:
                    gen.idle_waiter = loop.create_future()
                    await gen.idle_waiter
    except TimeoutError:
        logger.warning("load worker %d: sessions still open after the deadline", spec.offset)
    finally:
        for task in helpers:
            task.cancel()
        for task in helpers:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if not arrivals.done():
            arrivals.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await arrivals
    # Sessions cancelled before their first step never ran their bookkeeping.
    unaccounted = gen.attempted - gen.succeeded - sum(gen.errors.values())
    if unaccounted > 0:
        gen.errors["deadline"] += unaccounted
    wall = _perf() - t0
    cpu = (time.process_time() - cpu0) / wall if wall > 0 else 0.0
    lags.sort()

    def rel(t: float | None) -> float | None:
        return None if t is None else t - start

    return {
        "offset": spec.offset,
        "attempted": gen.attempted,
        "succeeded": gen.succeeded,
        "errors": dict(gen.errors),
        "statuses": dict(gen.statuses),
        "connect_s": gen.connect_s.tobytes(),
        "first_response_s": gen.first_s.tobytes(),
        "rtt_s": gen.rtt_s.tobytes(),
        "rtt_step": gen.rtt_step.tobytes(),
        "arrival_lag_s": gen.lag_s.tobytes(),
        "first_start": rel(gen.first_start),
        "last_start": rel(gen.last_start),
        "last_end": rel(gen.last_end),
        "duration_s": _perf() - start,
        "cpu": cpu,
        "loop_lag_p95_s": lags[int(0.95 * (len(lags) - 1))] if lags else 0.0,
        "loop_lag_max_s": lags[-1] if lags else 0.0,
        "peak_open": gen.peak_open,
        "rss_base": rss_base,
        "rss_peak": max(rss),
        "deadline_hit": deadline_hit,
    }


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def worker_process_main(spec: WorkerSpec, conn: Any) -> None:
    """Entry point of a spawned worker process (see ``load._run_processes``).

    Protocol on ``conn``: send ``("ready", pid)``; receive ``("go", start_wall)`` or
    ``("stop",)``; send ``("result", dict)`` or ``("error", text)``.
    """
    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            conn.send(("ready", os.getpid()))
            msg = conn.recv()
            if msg[0] != "go":
                return
            result = runner.run(run_worker(spec, msg[1]))
        conn.send(("result", result))
    except (EOFError, BrokenPipeError):
        return  # the parent is gone; nothing to report to
    except BaseException as exc:  # report, never die silently
        with contextlib.suppress(OSError):
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
    finally:
        conn.close()
