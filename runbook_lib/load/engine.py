"""Load engine: thousands of WebSocket sessions with per-message timing, honestly reported.

``run_load(plan)`` opens ``plan.sessions`` sessions (connect, the load flow run
``messages`` times: every send, expect, pattern and capture; optional hold, close)
against one WebSocket URL and returns a :class:`LoadReport` with every raw sample
(connect time, first response, each expect step's time with its step, arrival lag),
errors by kind and the handshake statuses seen. It never raises for target behaviour:
refusals, HTTP statuses, timeouts and abrupt closes are counted as error kinds.

Honesty rules the report follows:

- ``success_rate()`` divides by the *planned* sessions: sessions the engine never got
  to start (deadline, lost worker) count as failures (``not_started``).
- With a planned ``rate``, arrivals are open-loop and each session's lateness is
  recorded; ``behind_schedule`` is set when the plan could not be delivered.
- The generator watches its own CPU and event-loop lag; ``saturated`` marks a run
  whose latencies include the generator's own queueing.

Small plans run in the caller's event loop (a notebook cell can ``await run_load``);
larger ones run one spawned worker process per available core (each with its own
event loop, uvloop when installed) and the results are merged. See
``benchmarks/bench_load.py`` for measured rates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any

import numpy as np

from ..flows import Flow, FlowStep, describe_step, load_flow_problem
from ..identity import user_agent
from ._worker import WorkerSpec, run_worker, worker_process_main

__all__ = ["LoadPlan", "LoadReport", "run_load"]

logger = logging.getLogger(__name__)

# Plans up to this many sessions run in the caller's loop: spawning workers costs
# about a second, far more than such a plan needs.
SMALL_PLAN_SESSIONS = 200
CPU_SATURATION = 0.90
MIN_CPU_JUDGED_S = 0.5
LOOP_LAG_SATURATION_S = 0.020
ARRIVAL_LAG_TOLERANCE_S = 0.100
ACHIEVED_RATE_TOLERANCE = 0.95
_SPAWN_TIMEOUT_S = 60.0
_COLLECT_GRACE_S = 15.0
_SERVER_CLOSES = frozenset({"closed_1011", "closed_1012", "closed_1013", "closed_1014"})
# The seed's load conversation: one ping, one pong.
SEED_LOAD_STEPS = (FlowStep(send={"type": "ping"}), FlowStep(expect_event="pong"))
_QUANTILES = (0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 100.0)


@dataclass(frozen=True, slots=True)
class LoadPlan:
    """What to run.

    Attributes:
        url: ``ws://`` or ``wss://`` URL of the WebSocket endpoint.
        sessions: number of sessions to run in total.
        concurrency: most sessions open at once (None = no cap).
        rate: planned session arrivals per second (None = as fast as ``concurrency``
            allows, or all at once spread over ``ramp_s``).
        ramp_s: with ``rate``, the arrival rate rises linearly from 0 over ``ramp_s``;
            without, arrivals are spread evenly over ``ramp_s``.
        messages: times each session runs the flow (0 = connect, hold, close).
        hold_s: how long to keep the socket open after the last reply.
        steps: the flow each session runs (``[flows.load]``): send steps and expect
            steps, with patterns and captures, exactly as :mod:`runbook_lib.flows`
            matches them. Default: the seed's ``{"type": "ping"}`` -> ``pong``.
        values: placeholder values of the run (user id, run id, text, marker); each
            session gets its own ``{marker}`` (this one plus the session number).
        type_paths: where the type is looked up in a JSON frame, first match wins.
        ignore_types: frame types that never satisfy an expect step without
            conditions (welcome, heartbeat), nor ``expect_event = "*"``.
        error_types: frame types that are the service's error answer: a session
            that gets one instead of the frame it waits for fails as ``error_frame``.
        error_pattern: the same for text frames (a regex searched in the frame).
        token: the value of ``{token}`` in the flow (``[auth] mode = "message"``);
            never serialised into a job's plan.
        headers: extra handshake headers (e.g. ``Authorization``).
        subprotocols: offered in ``Sec-WebSocket-Protocol`` (e.g. ``jwt.<token>``).
        connect_timeout_s: TCP connect + upgrade handshake bound.
        message_timeout_s: bound on each expect step without its own ``timeout_s``.
        deadline_s: bound on the whole run; unfinished sessions are aborted.
        workers: generator processes (0 = the caller's event loop; None = auto: the
            caller's loop for plans of at most 200 sessions, else one per available core).
    """

    url: str
    sessions: int
    concurrency: int | None = None
    rate: float | None = None
    ramp_s: float = 0.0
    messages: int = 1
    hold_s: float = 0.0
    steps: tuple[FlowStep, ...] = SEED_LOAD_STEPS
    values: tuple[tuple[str, str], ...] = ()
    type_paths: tuple[str, ...] = ("type", "data.type", "payload.type")
    ignore_types: tuple[str, ...] = ("connected", "welcome", "heartbeat", "ack")
    error_types: tuple[str, ...] = ("error",)
    error_pattern: str = ""
    token: str = field(default="", repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()
    connect_timeout_s: float = 5.0
    message_timeout_s: float = 10.0
    deadline_s: float = 120.0
    workers: int | None = None

    def __post_init__(self) -> None:
        if not self.url.startswith(("ws://", "wss://")):
            raise ValueError(f"LoadPlan.url must be ws:// or wss://, got {self.url!r}")
        if self.sessions < 0 or self.messages < 0:
            raise ValueError("LoadPlan.sessions and messages must be >= 0")
        if self.concurrency is not None and self.concurrency < 1:
            raise ValueError("LoadPlan.concurrency must be >= 1 or None")
        if self.rate is not None and not self.rate > 0:
            raise ValueError("LoadPlan.rate must be > 0 or None")
        if self.workers is not None and self.workers < 0:
            raise ValueError("LoadPlan.workers must be >= 0 or None")
        for name in ("connect_timeout_s", "message_timeout_s", "deadline_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"LoadPlan.{name} must be > 0")
        if self.ramp_s < 0 or self.hold_s < 0:
            raise ValueError("LoadPlan.ramp_s and hold_s must be >= 0")
        problem = load_flow_problem(Flow("load", self.steps))
        if problem:
            raise ValueError(f"LoadPlan.steps: {problem}")


def _empty() -> np.ndarray:
    return np.zeros(0, dtype=np.float64)


# eq=False: the raw sample arrays make field-wise equality meaningless (and numpy
# refuses to turn an element-wise comparison into one bool).
@dataclass(frozen=True, slots=True, eq=False)
class LoadReport:
    """What happened, with every raw sample kept (times in seconds).

    Attributes:
        planned: sessions in the plan.
        attempted: sessions started (a connect was tried).
        succeeded: sessions whose every message was answered (and hold completed).
        failed: ``planned - succeeded``; ``errors_by_kind`` sums to it.
        errors_by_kind: e.g. ``handshake_404``, ``refused``, ``timeout_connect``,
            ``timeout_reply``, ``closed_1006``, ``closed_1011``, ``deadline``,
            ``not_started``.
        handshake_statuses: HTTP status of each answered upgrade (101 = accepted).
        connect_s: TCP connect + handshake time per opened session.
        first_response_s: handshake done -> first data frame, per session.
        rtt_s: per matched expect step, the time since the step before it ended
            (the send it answers, or the previous frame awaited).
        rtt_step: the flow step index of each ``rtt_s`` sample.
        step_names: what each step of the flow does (``describe_step``).
        arrival_lag_s: actual minus planned start, per attempted session.
        p50_s, p95_s, p99_s: round-trip percentiles (None without samples).
        connect_p95_s: connect percentile (None without samples).
        planned_rate: planned arrivals per second (None = unpaced).
        achieved_rate: arrivals per second actually delivered.
        session_rate: succeeded sessions per second of run time.
        max_arrival_lag_s, arrival_lag_p99_s: lateness of arrivals.
        behind_schedule: the planned arrivals could not be delivered on time.
        schedule_reason: why (empty when on schedule).
        duration_s: run start to the last session's end.
        generator_cpu: CPU share of the busiest worker (0..1).
        loop_lag_p95_s: event-loop lag of the most lagging worker.
        saturated: the generator itself was the bottleneck; latencies not trusted.
        saturation_reason: why (empty when not saturated).
        workers: worker processes used (0 = ran in the caller's loop).
        peak_open: most sockets open at once (summed over workers).
        rss_per_socket_kib: generator memory growth per open socket (None when
            fewer than 100 sockets were open at once).
    """

    planned: int
    attempted: int
    succeeded: int
    failed: int
    errors_by_kind: dict[str, int]
    handshake_statuses: dict[int, int]
    connect_s: np.ndarray = field(default_factory=_empty, repr=False)
    first_response_s: np.ndarray = field(default_factory=_empty, repr=False)
    rtt_s: np.ndarray = field(default_factory=_empty, repr=False)
    rtt_step: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint16), repr=False)
    step_names: tuple[str, ...] = ()
    arrival_lag_s: np.ndarray = field(default_factory=_empty, repr=False)
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None
    connect_p95_s: float | None = None
    planned_rate: float | None = None
    achieved_rate: float = 0.0
    session_rate: float = 0.0
    max_arrival_lag_s: float = 0.0
    arrival_lag_p99_s: float = 0.0
    behind_schedule: bool = False
    schedule_reason: str = ""
    duration_s: float = 0.0
    generator_cpu: float = 0.0
    loop_lag_p95_s: float = 0.0
    saturated: bool = False
    saturation_reason: str = ""
    workers: int = 0
    peak_open: int = 0
    rss_per_socket_kib: float | None = None

    def success_rate(self) -> float:
        """Succeeded / planned (0.0 for an empty plan: no evidence is not a pass)."""
        return self.succeeded / self.planned if self.planned else 0.0

    def server_error_count(self) -> int:
        """Sessions the server itself failed: 5xx upgrade answers and 1011-1014 closes."""
        total = 0
        for kind, count in self.errors_by_kind.items():
            if kind.startswith("handshake_5") or kind in _SERVER_CLOSES:
                total += count
        return total

    @property
    def trusted(self) -> bool:
        """True when the plan was delivered on schedule by an unsaturated generator."""
        return not (self.saturated or self.behind_schedule)

    def rtt_quantiles(self, points: int = 101) -> tuple[np.ndarray, np.ndarray]:
        """``(percent, seconds)`` of the round trips at ``points`` evenly spaced
        percentiles: a small curve that stays readable for 100k+ samples."""
        pct = np.linspace(0.0, 100.0, points)
        if self.rtt_s.size == 0:
            return pct, np.full(points, np.nan)
        return pct, np.percentile(self.rtt_s, pct)

    def step_records(self) -> list[dict[str, Any]]:
        """Per expect step of the flow: what it waits for, samples, p50 and p95 (s)."""
        rows = []
        for i, name in enumerate(self.step_names):
            if name.startswith("send"):
                continue
            times = self.rtt_s[self.rtt_step == i] if self.rtt_s.size else self.rtt_s
            rows.append(
                {
                    "step": i + 1,
                    "what": name,
                    "samples": int(times.size),
                    "p50_s": _num(_pct(times, 50)),
                    "p95_s": _num(_pct(times, 95)),
                }
            )
        return rows

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary (no raw arrays; sample counts and quantiles instead)."""
        rec: dict[str, Any] = {
            "planned": self.planned,
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "server_errors": self.server_error_count(),
            "success_rate": round(self.success_rate(), 6),
            "errors_by_kind": dict(sorted(self.errors_by_kind.items())),
            "handshake_statuses": {str(k): v for k, v in sorted(self.handshake_statuses.items())},
        }
        for name in (
            "p50_s",
            "p95_s",
            "p99_s",
            "connect_p95_s",
            "planned_rate",
            "achieved_rate",
            "session_rate",
            "max_arrival_lag_s",
            "arrival_lag_p99_s",
            "duration_s",
            "generator_cpu",
            "loop_lag_p95_s",
            "rss_per_socket_kib",
        ):
            rec[name] = _num(getattr(self, name))
        rec.update(
            behind_schedule=self.behind_schedule,
            schedule_reason=self.schedule_reason,
            saturated=self.saturated,
            saturation_reason=self.saturation_reason,
            trusted=self.trusted,
            workers=self.workers,
            peak_open=self.peak_open,
            steps=self.step_records(),
            samples={
                "connect": int(self.connect_s.size),
                "first_response": int(self.first_response_s.size),
                "rtt": int(self.rtt_s.size),
            },
            rtt_quantiles_s={
                str(q): _num(v)
                for q, v in zip(
                    _QUANTILES,
                    np.percentile(self.rtt_s, _QUANTILES) if self.rtt_s.size else [None] * 12,
                    strict=True,
                )
            },
        )
        return rec


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return None if math.isnan(value) else round(value, 9)


def _resolve_workers(plan: LoadPlan) -> int:
    if plan.workers is not None:
        wanted = plan.workers
    elif plan.sessions <= SMALL_PLAN_SESSIONS:
        wanted = 0
    else:
        wanted = len(os.sched_getaffinity(0))
    if wanted == 0:
        return 0
    wanted = min(wanted, max(plan.sessions, 1))
    if plan.concurrency is not None:
        wanted = min(wanted, plan.concurrency)
    return max(wanted, 1)


def _specs(plan: LoadPlan, workers: int) -> list[WorkerSpec]:
    headers = list(plan.headers)
    if not any(k.lower() == "user-agent" for k, _ in headers):
        headers.append(("User-Agent", user_agent()))
    if plan.subprotocols:
        headers.append(("Sec-WebSocket-Protocol", ", ".join(plan.subprotocols)))
    stride = max(workers, 1)
    specs = []
    for k in range(stride):
        cap = None
        if plan.concurrency is not None:
            cap = plan.concurrency // stride + (1 if k < plan.concurrency % stride else 0)
        specs.append(
            WorkerSpec(
                url=plan.url,
                sessions_total=plan.sessions,
                offset=k,
                stride=stride,
                concurrency=cap,
                rate=plan.rate,
                ramp_s=plan.ramp_s,
                messages=plan.messages,
                hold_s=plan.hold_s,
                steps=plan.steps,
                values=plan.values,
                type_paths=plan.type_paths,
                ignore_types=plan.ignore_types,
                error_types=plan.error_types,
                error_pattern=plan.error_pattern,
                token=plan.token,
                headers=tuple(headers),
                connect_timeout_s=plan.connect_timeout_s,
                message_timeout_s=plan.message_timeout_s,
                deadline_s=plan.deadline_s,
            )
        )
    return specs


def _run_processes(specs: list[WorkerSpec], deadline_s: float) -> list[dict[str, Any] | str]:
    """Spawn one process per spec, start them together, collect their results.

    Blocking (run it in a thread). Every wait is bounded; a worker that does not
    answer is killed and reported as a string (the reason) instead of a result.
    """
    ctx = multiprocessing.get_context("spawn")
    procs: list[Any] = []
    conns: list[Connection] = []
    outcome: list[dict[str, Any] | str] = ["worker did not start"] * len(specs)
    try:
        for k, spec in enumerate(specs):
            parent, child = ctx.Pipe()
            proc = ctx.Process(
                target=worker_process_main,
                args=(spec, child),
                name=f"runbook-load-{k}",
                daemon=True,
            )
            proc.start()
            child.close()
            procs.append(proc)
            conns.append(parent)
        ready: set[int] = set()
        limit = time.monotonic() + _SPAWN_TIMEOUT_S
        while len(ready) < len(conns) and time.monotonic() < limit:
            for got in wait([c for i, c in enumerate(conns) if i not in ready], 0.5):
                k = conns.index(got)  # type: ignore[arg-type]
                try:
                    msg = conns[k].recv()
                except (EOFError, OSError):
                    msg = ("error", "worker exited while starting")
                if msg[0] == "ready":
                    ready.add(k)
                else:
                    outcome[k] = str(msg[1])
                    ready.add(k)
        start_wall = time.time() + 0.05
        pending: set[int] = set()
        for k, conn in enumerate(conns):
            if isinstance(outcome[k], str) and outcome[k] != "worker did not start":
                continue
            if k not in ready:
                outcome[k] = "worker did not start in time"
                continue
            try:
                conn.send(("go", start_wall))
                pending.add(k)
                outcome[k] = "worker lost"
            except OSError:
                outcome[k] = "worker lost before start"
        limit = time.monotonic() + deadline_s + _COLLECT_GRACE_S
        while pending and time.monotonic() < limit:
            for got in wait([conns[k] for k in pending], 0.5):
                k = conns.index(got)  # type: ignore[arg-type]
                pending.discard(k)
                try:
                    msg = conns[k].recv()
                except (EOFError, OSError):
                    continue
                outcome[k] = msg[1] if msg[0] == "result" else f"worker failed: {msg[1]}"
    finally:
        for conn in conns:
            conn.close()
        for proc in procs:
            proc.join(timeout=2.0)
            if proc.is_alive():
                proc.kill()
                proc.join(timeout=2.0)
    return outcome


def _pct(arr: np.ndarray, q: float) -> float | None:
    return float(np.percentile(arr, q)) if arr.size else None


def _merge(
    plan: LoadPlan, parts: list[dict[str, Any] | str], workers: int, lost_share: list[int]
) -> LoadReport:
    errors: Counter[str] = Counter()
    statuses: Counter[int] = Counter()
    arrays: dict[str, list[np.ndarray]] = {
        k: [] for k in ("connect_s", "first_response_s", "rtt_s", "arrival_lag_s")
    }
    step_chunks: list[np.ndarray] = []
    attempted = succeeded = peak_open = 0
    rss_growth = 0
    cpu = lag95 = duration = 0.0
    first_start = last_start = None
    lost = 0
    for k, part in enumerate(parts):
        if isinstance(part, str):
            logger.warning("load worker %d: %s", k, part)
            lost += lost_share[k]
            continue
        attempted += part["attempted"]
        succeeded += part["succeeded"]
        errors.update(part["errors"])
        statuses.update(part["statuses"])
        for name, chunks in arrays.items():
            chunks.append(np.frombuffer(part[name], dtype=np.float64))
        step_chunks.append(np.frombuffer(part["rtt_step"], dtype=np.uint16))
        peak_open += part["peak_open"]
        rss_growth += max(part["rss_peak"] - part["rss_base"], 0)
        cpu = max(cpu, part["cpu"])
        lag95 = max(lag95, part["loop_lag_p95_s"])
        duration = max(duration, part["duration_s"])
        if part["first_start"] is not None:
            fs, ls = part["first_start"], part["last_start"]
            first_start = fs if first_start is None else min(first_start, fs)
            last_start = ls if last_start is None else max(last_start, ls)
    if lost:
        errors["worker_lost"] += lost
    not_started = plan.sessions - attempted - lost
    if not_started > 0:
        errors["not_started"] += not_started
    merged = {
        name: (np.concatenate(chunks) if chunks else _empty()) for name, chunks in arrays.items()
    }
    rtt, lags = merged["rtt_s"], merged["arrival_lag_s"]

    span = (last_start - first_start) if first_start is not None else 0.0
    if attempted > 1 and span > 0:
        achieved = (attempted - 1) / span
    else:
        achieved = attempted / duration if duration > 0 else 0.0
    max_lag = float(lags.max()) if lags.size else 0.0
    lag99 = float(np.percentile(lags, 99)) if lags.size else 0.0

    reasons = []
    if attempted < plan.sessions:
        reasons.append(f"only {attempted} of {plan.sessions} sessions started")
    if plan.rate is not None and attempted > 1:
        if achieved < ACHIEVED_RATE_TOLERANCE * plan.rate:
            reasons.append(f"achieved {achieved:.0f}/s of {plan.rate:.0f}/s planned")
        if lag99 > ARRIVAL_LAG_TOLERANCE_S:
            reasons.append(f"arrival lag p99 {lag99 * 1e3:.0f} ms")
    sat = []
    # CPU share over a burst of a few milliseconds says nothing; judge it on runs
    # long enough to have a steady state.
    if cpu >= CPU_SATURATION and duration >= MIN_CPU_JUDGED_S:
        sat.append(f"generator CPU {cpu:.0%} >= {CPU_SATURATION:.0%}")
    if lag95 > LOOP_LAG_SATURATION_S:
        sat.append(f"event-loop lag p95 {lag95 * 1e3:.0f} ms")
    return LoadReport(
        planned=plan.sessions,
        attempted=attempted,
        succeeded=succeeded,
        failed=plan.sessions - succeeded,
        errors_by_kind=dict(errors),
        handshake_statuses=dict(statuses),
        connect_s=merged["connect_s"],
        first_response_s=merged["first_response_s"],
        rtt_s=rtt,
        rtt_step=np.concatenate(step_chunks) if step_chunks else np.zeros(0, np.uint16),
        step_names=tuple(describe_step(st) for st in plan.steps),
        arrival_lag_s=lags,
        p50_s=_pct(rtt, 50),
        p95_s=_pct(rtt, 95),
        p99_s=_pct(rtt, 99),
        connect_p95_s=_pct(merged["connect_s"], 95),
        planned_rate=plan.rate,
        achieved_rate=achieved,
        session_rate=succeeded / duration if duration > 0 else 0.0,
        max_arrival_lag_s=max_lag,
        arrival_lag_p99_s=lag99,
        behind_schedule=bool(reasons),
        schedule_reason="; ".join(reasons),
        duration_s=duration,
        generator_cpu=cpu,
        loop_lag_p95_s=lag95,
        saturated=bool(sat),
        saturation_reason="; ".join(sat) + ("; latencies include generator delay" if sat else ""),
        workers=workers,
        peak_open=peak_open,
        rss_per_socket_kib=(rss_growth / 1024 / peak_open if peak_open >= 100 else None),
    )


async def run_load(plan: LoadPlan) -> LoadReport:
    """Run ``plan`` and report what happened; never raises for target behaviour.

    Every wait is bounded: the run ends within ``plan.deadline_s`` (plus worker
    start-up and a short grace when worker processes are used).
    """
    workers = _resolve_workers(plan)
    specs = _specs(plan, workers)
    logger.info(
        "load: %d sessions to %s (rate=%s, concurrency=%s, workers=%d)",
        plan.sessions,
        plan.url,
        plan.rate,
        plan.concurrency,
        workers,
    )
    share = [len(range(s.offset, s.sessions_total, s.stride)) for s in specs]
    if plan.sessions == 0:
        parts: list[dict[str, Any] | str] = []
    elif workers == 0:
        parts = [await run_worker(specs[0])]
    else:
        parts = await asyncio.to_thread(_run_processes, specs, plan.deadline_s)
    report = _merge(plan, parts, workers, share)
    logger.info(
        "load: %d/%d succeeded, p95=%s, achieved %.0f/s, saturated=%s, behind=%s",
        report.succeeded,
        report.planned,
        report.p95_s,
        report.achieved_rate,
        report.saturated,
        report.behind_schedule,
    )
    return report
