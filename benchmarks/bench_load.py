#!/usr/bin/env python
"""Load-engine benchmark: the engine against Artillery 2 and bare client loops.

Run by hand (CI does not run it)::

    python benchmarks/bench_load.py            # everything (~10-15 min)
    python benchmarks/bench_load.py --quick    # shorter runs (~2-3 min)
    python benchmarks/bench_load.py --quick --only accuracy      # ~15 s
    python benchmarks/bench_load.py --only rate --no-artillery

Conditions: a local echo target (``benchmarks/echo_target.py``, picows + uvloop) pinned
to core 0; every generator (Artillery's ``ws`` engine, a bare ``websockets`` loop, a bare
``picows`` loop, the engine with one worker process) pinned to core 1, one after the
other. A session = connect, 10 echo round trips of a small JSON frame, close.

Parts (``--only``):

- ``rate``: each generator's sustained session rate, found by stepping the planned
  arrival rate up (x1.25) until a run misses: it is *sustained* when every planned
  session ran with zero errors and the run ended on schedule (duration x1.05 + 0.5 s);
  for the engine also p99 round trip < 50 ms and no arrival-lag flag. A miss is retried
  once (other work on the machine adds noise), then one step halfway is tried. Tools
  are interleaved per step so background noise hits them alike.
- ``flow``: a whole conversation against ``pubsub_target.py`` (subscribe -> ack with a
  subscription id, captured -> publish -> notification for that id; 5 times per
  session = 20 frames, as many as the echo session), next to the single round trip
  (echo) and Artillery's ``ws`` engine running the same conversation: frames per
  generator CPU-second at one modest rate (robust to other work on the machine), then
  each one's sustained rate found by the same step search as ``rate``.
- ``overload``: the engine planned at 2x its sustained rate: planned vs achieved rate
  and arrival lag, and whether the report marks itself (behind schedule / saturated).
  Artillery's first missed step is shown for comparison (its own error count).
- ``concurrency``: 10,000 sockets opened at 2,500/s and each held 30 s; memory per
  socket from the worker's RSS growth (the per-process open-file limit here is 20,000).
- ``accuracy``: the target adds 5 ms before each reply; engine p50 at light load.
- ``sandbox``: 1,000 concurrent authenticated sessions (ping/pong) held against the
  runbook's own sandbox backend (profile ``healthy``, pinned to core 0).

Artillery is installed on first use with npm into ``benchmarks/.node/`` (git-ignored).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from runbook_lib.flows import FlowStep  # noqa: E402
from runbook_lib.load.engine import LoadPlan, LoadReport, run_load  # noqa: E402

NODE_DIR = HERE / ".node"
ARTILLERY = NODE_DIR / "node_modules" / ".bin" / "artillery"
TARGET_CPU = 0
GEN_CPU = 1
PAYLOAD = '{"type":"echo","seq":1}'
MESSAGES = 10
P99_LIMIT_S = 0.050
PARTS = ("rate", "flow", "overload", "concurrency", "accuracy", "sandbox")
# The echo session as a flow: one send, one reply, MESSAGES times.
ECHO_STEPS = (FlowStep(send=PAYLOAD), FlowStep(expect_event="echo"))
# The flow part's conversation against pubsub_target.py, FLOW_RUNS times per session so
# that a session moves as many frames as the echo session (4 x 5 = 2 x 10 = 20).
FLOW_STEPS = (
    FlowStep(send={"op": "subscribe", "topic": "t-{marker}", "id": "{run_id}"}),
    FlowStep(expect={"type": "ack", "id": "{run_id}"}, capture={"sub": "sub"}),
    FlowStep(send={"op": "publish", "topic": "t-{marker}", "data": "{marker}"}),
    FlowStep(expect={"type": "notification", "sub": "{sub}"}),
)
FLOW_RUNS = 5
FRAMES_PER_SESSION = 2 * MESSAGES
FLOW_TOOLS = ("roundtrip", "flow", "artillery-flow")
FLOW_LABEL = {
    "roundtrip": "engine, single round trip (echo, 10 per session)",
    "flow": "engine, subscribe -> ack -> publish -> notification (x5 per session)",
    "artillery-flow": "Artillery 2 (ws engine), the same conversation (x5 per session)",
}
TOOLS = ("artillery", "websockets", "picows", "engine")
TOOL_LABEL = {
    "artillery": "Artillery 2 (ws engine)",
    "websockets": "bare websockets loop",
    "picows": "bare picows loop",
    "engine": "runbook engine (picows)",
}


def log(msg: str) -> None:
    """Progress on stderr; the table goes to stdout."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Step:
    """One run of one generator at one planned rate."""

    tool: str
    rate: float
    duration_s: float
    planned: int
    succeeded: int
    errors: dict[str, int]
    span_s: float
    p99_s: float | None = None
    ok: bool = False
    why: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def achieved(self) -> float:
        """Completed sessions per second over the run's actual span."""
        return self.succeeded / self.span_s if self.span_s > 0 else 0.0


def judge(step: Step) -> Step:
    """Apply the sustained-rate criteria shared by every generator."""
    reasons = []
    if step.succeeded < step.planned:
        reasons.append(f"{step.planned - step.succeeded} sessions failed/missing")
    if sum(step.errors.values()):
        reasons.append(f"errors {step.errors}")
    limit = step.duration_s * 1.05 + 0.5
    if step.span_s > limit:
        reasons.append(f"ran {step.span_s:.1f}s for a {step.duration_s:.0f}s schedule")
    if step.p99_s is not None and step.p99_s >= P99_LIMIT_S:
        reasons.append(f"p99 {step.p99_s * 1e3:.0f} ms")
    if step.extra.get("behind_schedule"):
        reasons.append(f"behind schedule: {step.extra.get('schedule_reason')}")
    step.ok = not reasons
    step.why = "; ".join(reasons)
    return step


# ------------------------------------------------------------------ target


@contextlib.contextmanager
def echo_target(
    delay_ms: float = 0.0, script: str = "echo_target.py"
) -> Iterator[tuple[str, list[str]]]:
    """Start the echo (or another) target pinned to core 0; yield its URL and (later)
    its output."""
    cmd = [sys.executable, str(HERE / script), "--cpu", str(TARGET_CPU)]
    if delay_ms:
        cmd += ["--delay-ms", str(delay_ms)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    tail: list[str] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY"):
            raise RuntimeError(f"echo target did not start: {line!r}")
        yield f"ws://127.0.0.1:{line.split()[1]}/", tail
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=10)
            tail.extend(out.splitlines())
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


# ------------------------------------------------------------------ generators


def ensure_artillery() -> str | None:
    """Path of the artillery binary, installing it with npm on first use."""
    if ARTILLERY.exists():
        return str(ARTILLERY)
    npm = shutil.which("npm")
    if npm is None:
        log("npm not found: Artillery skipped")
        return None
    NODE_DIR.mkdir(parents=True, exist_ok=True)
    log("installing artillery@2 with npm into benchmarks/.node (first run only)")
    env = dict(os.environ, PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD="1")
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--prefix", str(NODE_DIR), "artillery@2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    if done.returncode != 0 or not ARTILLERY.exists():
        log(f"npm install failed ({done.returncode}): {done.stderr[-500:]}")
        return None
    return str(ARTILLERY)


ECHO_LOOP = [{"send": {"payload": PAYLOAD, "match": {"json": "$.type", "value": "echo"}}}]
# The flow part's conversation in Artillery's ws engine: send and wait for the match,
# capture the subscription id; ``$uuid`` is per virtual user, as {marker} per session.
FLOW_LOOP = [
    {
        "send": {
            "payload": {"op": "subscribe", "topic": "t-{{ $uuid }}", "id": "{{ $uuid }}"},
            "match": {"json": "$.type", "value": "ack"},
            "capture": {"json": "$.sub", "as": "sub"},
        }
    },
    {
        "send": {
            "payload": {"op": "publish", "topic": "t-{{ $uuid }}", "data": "{{ $uuid }}"},
            "match": {"json": "$.sub", "value": "{{ sub }}"},
        }
    },
]


def run_artillery(
    binary: str,
    url: str,
    rate: float,
    duration: float,
    loop: list[dict[str, Any]] | None = None,
    count: int = MESSAGES,
    tool: str = "artillery",
) -> Step:
    """One Artillery phase at ``rate`` arrivals/s for ``duration`` s."""
    scenario = {
        "config": {
            "target": url,
            "phases": [{"duration": int(duration), "arrivalRate": int(rate)}],
        },
        "scenarios": [
            {"engine": "ws", "flow": [{"loop": loop or ECHO_LOOP, "count": count}]},
        ],
    }
    planned = int(rate) * int(duration)
    with tempfile.TemporaryDirectory() as tmp:
        cfg, out = Path(tmp) / "scenario.json", Path(tmp) / "report.json"
        cfg.write_text(json.dumps(scenario))
        env = dict(os.environ, ARTILLERY_DISABLE_TELEMETRY="true", DO_NOT_TRACK="1")
        proc = subprocess.run(
            ["taskset", "-c", str(GEN_CPU), binary, "run", "--output", str(out), str(cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=duration * 10 + 120,
            check=False,
            cwd=tmp,
        )
        if not out.exists():
            return Step(
                tool,
                rate,
                duration,
                planned,
                0,
                {"no_report": 1},
                0.0,
                why=proc.stderr[-300:],
            )
        agg = json.loads(out.read_text())["aggregate"]
    counters = agg.get("counters", {})
    errors = {k[len("errors.") :]: v for k, v in counters.items() if k.startswith("errors.")}
    if counters.get("vusers.failed"):
        errors.setdefault("vusers.failed", counters["vusers.failed"])
    span = (agg.get("lastCounterAt", 0) - agg.get("firstCounterAt", 0)) / 1e3
    session = agg.get("summaries", {}).get("vusers.session_length", {})
    return Step(
        tool,
        rate,
        duration,
        planned,
        int(counters.get("vusers.completed", 0)),
        errors,
        span,
        extra={
            "created": counters.get("vusers.created", 0),
            "session_p99_ms": session.get("p99"),
            "reported_errors": sum(errors.values()),
        },
    )


def run_bare(lib: str, url: str, rate: float, duration: float) -> Step:
    """One bare-loop run in a fresh process pinned to the generator core."""
    proc = subprocess.run(
        [
            "taskset",
            "-c",
            str(GEN_CPU),
            sys.executable,
            str(HERE / "bare_clients.py"),
            lib,
            url,
            str(rate),
            str(duration),
        ],
        capture_output=True,
        text=True,
        timeout=duration * 10 + 60,
        check=False,
    )
    try:
        res = json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        planned = int(rate * duration)
        return Step(lib, rate, duration, planned, 0, {"crashed": 1}, 0.0, why=proc.stderr[-300:])
    return Step(
        lib,
        rate,
        duration,
        res["planned"],
        res["succeeded"],
        res["errors"],
        res["span_s"],
        extra={"max_arrival_lag_s": res["max_arrival_lag_s"]},
    )


def engine_plan(url: str, **kw: Any) -> LoadPlan:
    """The benchmark session as a LoadPlan (one worker process on the generator core)."""
    base: dict[str, Any] = dict(
        url=url,
        messages=MESSAGES,
        steps=ECHO_STEPS,
        workers=1,
        connect_timeout_s=10.0,
        message_timeout_s=10.0,
    )
    base.update(kw)
    return LoadPlan(**base)


def run_engine(
    url: str, rate: float, duration: float, tool: str = "engine", **kw: Any
) -> tuple[Step, LoadReport]:
    """One engine run at ``rate`` sessions/s for ``duration`` s."""
    planned = int(rate * duration)
    plan = engine_plan(url, sessions=planned, rate=rate, deadline_s=duration * 4 + 30, **kw)
    report = asyncio.run(run_load(plan))
    step = Step(
        tool,
        rate,
        duration,
        planned,
        report.succeeded,
        report.errors_by_kind,
        report.duration_s,
        p99_s=report.p99_s,
        extra={
            "behind_schedule": report.behind_schedule,
            "schedule_reason": report.schedule_reason,
            "saturated": report.saturated,
            "generator_cpu": report.generator_cpu,
            "p50_ms": None if report.p50_s is None else report.p50_s * 1e3,
        },
    )
    return step, report


# ------------------------------------------------------------------ parts


def part_rate(args: argparse.Namespace, artillery: str | None) -> dict[str, Any]:
    """Sustained rate of every generator (interleaved step search)."""
    tools = [t for t in TOOLS if t != "artillery" or artillery]
    best: dict[str, Step | None] = {t: None for t in tools}
    first_miss: dict[str, Step | None] = {t: None for t in tools}
    history: list[Step] = []

    def attempt(tool: str, url: str, rate: float) -> Step:
        d = args.duration
        if tool == "artillery":
            step = run_artillery(artillery or "", url, rate, d)
        elif tool == "engine":
            step = run_engine(url, rate, d)[0]
        else:
            step = run_bare(tool, url, rate, d)
        judge(step)
        history.append(step)
        log(f"  {tool:10s} {rate:7.0f}/s -> {'ok' if step.ok else 'MISS: ' + step.why}")
        return step

    def attempt_twice(tool: str, url: str, rate: float) -> Step:
        step = attempt(tool, url, rate)
        return step if step.ok else attempt(tool, url, rate)

    with echo_target() as (url, _):
        rate, active = float(args.start_rate), list(tools)
        while active and rate <= args.max_rate:
            log(f"rate step {rate:.0f}/s: {', '.join(active)}")
            for tool in list(active):
                step = attempt_twice(tool, url, rate)
                if step.ok:
                    best[tool] = step
                else:
                    first_miss[tool] = step
                    active.remove(tool)
            rate = round(rate * 1.25)
        # One step halfway between the last pass and the first miss.
        for tool in tools:
            ok, miss = best[tool], first_miss[tool]
            if ok is not None and miss is not None:
                mid = round((ok.rate + miss.rate) / 2)
                log(f"refine {tool} at {mid}/s")
                step = attempt_twice(tool, url, mid)
                if step.ok:
                    best[tool] = step
    return {"best": best, "first_miss": first_miss, "history": history}


def _search(
    tools: list[str], attempt: Any, starts: dict[str, float], max_rate: float
) -> tuple[dict[str, Step | None], dict[str, Step | None]]:
    """Step every tool's rate up (x1.25 from its start) until a run misses twice, then
    try once halfway between its last pass and its miss; tools interleaved per step. A
    tool that misses its first rate is stepped down (halved, not below 10/s) first."""
    best: dict[str, Step | None] = {t: None for t in tools}
    miss: dict[str, Step | None] = {t: None for t in tools}
    rates = dict(starts)
    active = list(tools)
    while active:
        for tool in list(active):
            rate = rates[tool]
            step = attempt(tool, rate)
            if not step.ok:
                step = attempt(tool, rate)
            if step.ok:
                best[tool] = step
                rates[tool] = round(rate * 1.25)
            elif best[tool] is None and rate > 10:
                # Missed its very first rate (a busy machine): step down instead.
                rates[tool] = max(round(rate / 2), 10)
                continue
            else:
                miss[tool] = step
            if not step.ok or rates[tool] > max_rate:
                active.remove(tool)
    for tool in tools:
        ok, missed = best[tool], miss[tool]
        if ok is not None and missed is not None:
            mid = round((ok.rate + missed.rate) / 2)
            step = attempt(tool, mid)
            if step.ok or attempt(tool, mid).ok:
                best[tool] = step if step.ok else best[tool]
    return best, miss


def part_flow(args: argparse.Namespace, artillery: str | None) -> dict[str, Any]:
    """Frame rate of a whole conversation next to the single round trip's, and Artillery
    running the same conversation (same frames per session, same cores)."""
    tools = [t for t in FLOW_TOOLS if t != "artillery-flow" or artillery]
    history: list[Step] = []
    with echo_target() as (echo_url, _), echo_target(script="pubsub_target.py") as (ps_url, _):

        def attempt(tool: str, rate: float) -> Step:
            d = args.duration
            if tool == "roundtrip":
                step = run_engine(echo_url, rate, d, tool)[0]
            elif tool == "flow":
                step = run_engine(
                    ps_url, rate, d, tool, steps=FLOW_STEPS, messages=FLOW_RUNS,
                    values=(("run_id", "bench"), ("marker", "mk")),
                )[0]  # fmt: skip
            else:
                step = run_artillery(
                    artillery or "", ps_url, rate, d, FLOW_LOOP, FLOW_RUNS, "artillery-flow"
                )
            judge(step)
            history.append(step)
            log(f"  {tool:14s} {rate:7.0f}/s -> {'ok' if step.ok else 'MISS: ' + step.why}")
            return step

        cpu = flow_cpu(args, artillery, tools, echo_url, ps_url)
        starts = {t: args.flow_start_rate for t in tools}
        if "artillery-flow" in starts:
            starts["artillery-flow"] = args.flow_artillery_start
        best, miss = _search(tools, attempt, starts, args.max_rate)
    return {"best": best, "first_miss": miss, "history": history, "cpu": cpu}


def _children_cpu() -> float:
    use = resource.getrusage(resource.RUSAGE_CHILDREN)
    return use.ru_utime + use.ru_stime


def flow_cpu(
    args: argparse.Namespace, artillery: str | None, tools: list[str], echo_url: str, ps_url: str
) -> dict[str, dict[str, Any]]:
    """Frames per second of generator CPU, each tool at the same modest rate: what the
    generator itself costs per frame, whatever else the machine is running (the step
    search's figures move with other work; CPU seconds per frame barely do).

    The engine's figure is its worker's CPU during the run; Artillery's is its process
    tree's CPU minus that of a one-session run (start-up and shutdown)."""
    rate, d = args.flow_cpu_rate, args.flow_cpu_duration
    startup = 0.0
    if artillery and "artillery-flow" in tools:
        c0 = _children_cpu()
        run_artillery(artillery, ps_url, 1, 1, FLOW_LOOP, FLOW_RUNS, "artillery-flow")
        startup = _children_cpu() - c0
    out: dict[str, dict[str, Any]] = {}
    for _ in range(2):  # interleaved twice; the cheaper run of each counts
        for tool in tools:
            if tool == "artillery-flow":
                c0 = _children_cpu()
                step = run_artillery(
                    artillery or "", ps_url, rate, d, FLOW_LOOP, FLOW_RUNS, "artillery-flow"
                )
                cpu_s = max(_children_cpu() - c0 - startup, 1e-9)
            else:
                kw: dict[str, Any] = {}
                if tool == "flow":
                    kw = dict(
                        steps=FLOW_STEPS,
                        messages=FLOW_RUNS,
                        values=(("run_id", "bench"), ("marker", "mk")),
                    )
                step, rep = run_engine(
                    echo_url if tool == "roundtrip" else ps_url, rate, d, tool, **kw
                )
                cpu_s = max(rep.generator_cpu * rep.duration_s, 1e-9)
            frames = step.succeeded * FRAMES_PER_SESSION
            rec = {
                "rate": rate,
                "sessions": step.succeeded,
                "planned": step.planned,
                "frames": frames,
                "cpu_s": round(cpu_s, 3),
                "frames_per_cpu_s": frames / cpu_s,
                "errors": step.errors,
            }
            log(f"  cpu {tool:14s} {frames} frames in {cpu_s:.2f} CPU s")
            if tool not in out or rec["frames_per_cpu_s"] > out[tool]["frames_per_cpu_s"]:
                out[tool] = rec
    return out


def part_overload(args: argparse.Namespace, sustained: float | None) -> dict[str, Any]:
    """Engine planned well above what it sustains: is the shortfall reported?"""
    rate = 2.0 * (sustained or 4000.0)
    with echo_target() as (url, _):
        step, report = run_engine(url, rate, args.overload_duration)
    judge(step)
    return {"rate": rate, "step": step, "report": report.to_record()}


def part_concurrency(args: argparse.Namespace) -> dict[str, Any]:
    """Many sockets opened fast and held: peak open, open rate, memory per socket."""
    n, hold, rate = args.sockets, args.hold, args.open_rate
    with echo_target() as (url, _):
        report = asyncio.run(
            run_load(
                engine_plan(
                    url,
                    sessions=n,
                    rate=rate,
                    messages=1,
                    hold_s=hold,
                    deadline_s=hold + n / rate + 60,
                )
            )
        )
    return {"sockets": n, "hold_s": hold, "rate": rate, "report": report.to_record()}


def part_accuracy(args: argparse.Namespace) -> dict[str, Any]:
    """Target adds a fixed delay; does the engine's p50 report it (light load)?"""
    delay_ms = 5.0
    with echo_target(delay_ms) as (url, tail):
        report = asyncio.run(
            run_load(
                engine_plan(
                    url,
                    sessions=int(50 * args.accuracy_duration),
                    rate=50.0,
                    deadline_s=args.accuracy_duration * 3 + 30,
                )
            )
        )
    applied = next((ln.split()[1] for ln in tail if ln.startswith("APPLIED_DELAY")), None)
    return {"delay_ms": delay_ms, "target_applied_p50_ms": applied, "report": report.to_record()}


def part_sandbox(args: argparse.Namespace) -> dict[str, Any]:
    """1,000 concurrent sessions held against the sandbox backend (JWT bearer auth)."""
    from runbook_lib.sandbox.auth_service import mint_token

    secret = os.urandom(32).hex()
    env = dict(os.environ, SANDBOX_JWT_SECRET=secret)
    cmd = ["taskset", "-c", str(TARGET_CPU), sys.executable, "-m", "runbook_lib.sandbox.backend",
           "--host", "127.0.0.1", "--port", "0", "--profile", "healthy",
           "--revision", "bench-00001", "--service", "bench"]  # fmt: skip
    # The backend logs every connection on stdout: send it to a file, since an unread
    # pipe would fill up and stall the backend mid-benchmark.
    logfile = tempfile.NamedTemporaryFile("w+", suffix=".log")
    proc = subprocess.Popen(cmd, stdout=logfile, text=True, env=env, cwd=ROOT)
    try:
        port = None
        limit = time.monotonic() + 30
        while port is None and time.monotonic() < limit and proc.poll() is None:
            time.sleep(0.1)
            with open(logfile.name) as fh:
                for line in fh:
                    with contextlib.suppress(ValueError, AttributeError):
                        port = json.loads(line).get("port") or port
        if not port:
            raise RuntimeError("sandbox backend did not start")
        token = mint_token(secret, "bench-user")
        n, hold = args.sandbox_sessions, args.sandbox_hold
        report = asyncio.run(
            run_load(
                LoadPlan(
                    url=f"ws://127.0.0.1:{port}/websocket",
                    sessions=n,
                    ramp_s=1.0,
                    messages=1,
                    hold_s=hold,
                    headers=(("Authorization", f"Bearer {token}"),),
                    connect_timeout_s=10.0,
                    deadline_s=hold + 60,
                )
            )
        )
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)
        logfile.close()
    return {"sessions": n, "hold_s": hold, "report": report.to_record()}


# ------------------------------------------------------------------ table


def _rate(step: Step | None) -> str:
    return (
        "none passed" if step is None else f"{step.rate:,.0f}/s (achieved {step.achieved:,.0f}/s)"
    )


def build_rows(results: dict[str, Any]) -> tuple[list[tuple[str, str, str, str]], list[str]]:
    """Rows of (measure, figure, goal, met) and closing notes."""
    rows: list[tuple[str, str, str, str]] = []
    notes: list[str] = []
    rate = results.get("rate")
    if rate:
        best = rate["best"]
        for tool in TOOLS:
            if tool in best:
                miss = rate["first_miss"][tool]
                figure = _rate(best[tool])
                if miss is not None:
                    figure += f"; missed at {miss.rate:,.0f}/s"
                rows.append((f"sustained rate: {TOOL_LABEL[tool]}", figure, "-", "-"))
        eng, art, pic = best.get("engine"), best.get("artillery"), best.get("picows")
        if eng and art:
            ratio = eng.rate / art.rate
            met = ratio >= 1.25
            rows.append(
                ("session rate vs Artillery", f"{ratio:.2f}x", ">= 1.25x", "yes" if met else "NO")
            )
            if not met:
                notes.append(
                    f"Session rate missed: engine {eng.rate:.0f}/s vs Artillery {art.rate:.0f}/s."
                )
        else:
            rows.append(("session rate vs Artillery", "not measured", ">= 1.25x", "n/a"))
            notes.append(
                "Session rate vs Artillery not measured (Artillery skipped or no passing step)."
            )
        if eng and pic:
            ratio = eng.rate / pic.rate
            met = ratio >= 0.8
            rows.append(
                (
                    "instrumentation cost (engine / bare picows)",
                    f"{ratio:.2f}x",
                    ">= 0.8x",
                    "yes" if met else "NO",
                )
            )
            if not met:
                notes.append(
                    "Instrumentation cost missed: the engine's per-message "
                    "bookkeeping costs more than 20% of the bare loop's rate."
                )
        if eng:
            rows.append(
                (
                    "engine p99 round trip at its sustained rate",
                    f"{eng.p99_s * 1e3:.1f} ms" if eng.p99_s else "n/a",
                    "< 50 ms",
                    "yes" if eng.p99_s is not None and eng.p99_s < P99_LIMIT_S else "NO",
                )
            )
        art_miss = rate["first_miss"].get("artillery")
        if art_miss is not None:
            rows.append(
                (
                    "Artillery beyond its rate (planned vs delivered)",
                    f"planned {art_miss.rate:,.0f}/s for {art_miss.duration_s:.0f}s, ran "
                    f"{art_miss.span_s:.1f}s, delivered {art_miss.achieved:,.0f}/s, "
                    f"errors reported: {art_miss.extra.get('reported_errors', '?')}",
                    "-",
                    "-",
                )
            )
    flow = results.get("flow")
    if flow:
        best = flow["best"]
        frames: dict[str, float] = {}
        for tool in FLOW_TOOLS:
            if tool not in best:
                continue
            step = best[tool]
            if step is not None:
                frames[tool] = step.rate * FRAMES_PER_SESSION
            figure = (
                "none passed"
                if step is None
                else f"{step.rate * FRAMES_PER_SESSION:,.0f} frames/s ({step.rate:,.0f} "
                f"sessions/s x {FRAMES_PER_SESSION} frames)"
            )
            if step is not None and step.p99_s is not None:
                figure += f", p99 {step.p99_s * 1e3:.1f} ms"
            missed = flow["first_miss"][tool]
            if missed is not None:
                figure += f"; missed at {missed.rate:,.0f}/s"
            rows.append((f"frame rate: {FLOW_LABEL[tool]}", figure, "-", "-"))
        for tool, rec in flow.get("cpu", {}).items():
            rows.append(
                (
                    f"frames per generator CPU-second: {FLOW_LABEL[tool]}",
                    f"{rec['frames_per_cpu_s']:,.0f} ({rec['frames']:,} frames of "
                    f"{rec['sessions']:,}/{rec['planned']:,} sessions at {rec['rate']:.0f}/s "
                    f"in {rec['cpu_s']:.2f} CPU s)",
                    "-",
                    "-",
                )
            )
        cpu = {t: r["frames_per_cpu_s"] for t, r in flow.get("cpu", {}).items()}
        if cpu.get("roundtrip") and cpu.get("flow"):
            ratio = cpu["flow"] / cpu["roundtrip"]
            rows.append(
                ("flow / round trip, frames per CPU-second", f"{ratio:.2f}x", ">= 0.8x",
                 "yes" if ratio >= 0.8 else "NO")
            )  # fmt: skip
        if cpu.get("artillery-flow") and cpu.get("flow"):
            ratio = cpu["flow"] / cpu["artillery-flow"]
            rows.append(
                ("flow vs Artillery, frames per CPU-second", f"{ratio:.2f}x", "> 1x",
                 "yes" if ratio > 1 else "NO")
            )  # fmt: skip
        rt, fl, art = frames.get("roundtrip"), frames.get("flow"), frames.get("artillery-flow")
        if rt and fl:
            ratio = fl / rt
            rows.append(
                ("flow frame rate / round trip's", f"{ratio:.2f}x", ">= 0.8x",
                 "yes" if ratio >= 0.8 else "NO")
            )  # fmt: skip
            if ratio < 0.8:
                notes.append(f"Flow frame rate missed: {fl:,.0f}/s vs {rt:,.0f}/s.")
        if fl and art:
            ratio = fl / art
            rows.append(
                ("flow frame rate vs Artillery's", f"{ratio:.2f}x", "> 1x",
                 "yes" if ratio > 1 else "NO")
            )  # fmt: skip
        elif fl:
            rows.append(("flow frame rate vs Artillery's", "not measured", "> 1x", "n/a"))
    over = results.get("overload")
    if over:
        rec = over["report"]
        marked = rec["behind_schedule"] or rec["saturated"]
        rows.append(
            (
                "honest overload (engine at 2x sustained)",
                f"planned {rec['planned_rate']:,.0f}/s, arrivals {rec['achieved_rate']:,.0f}/s, "
                f"sessions done {rec['session_rate']:,.0f}/s, arrival lag max "
                f"{rec['max_arrival_lag_s']:.2f}s, p99 {rec['p99_s'] * 1e3:.0f} ms; "
                f"behind_schedule={rec['behind_schedule']}, saturated={rec['saturated']}",
                "marked",
                "yes" if marked else "NO",
            )
        )
        if not marked:
            notes.append("Overload was not marked by the report.")
    conc = results.get("concurrency")
    if conc:
        rec = conc["report"]
        kib = rec["rss_per_socket_kib"]
        all_open = rec["peak_open"] >= conc["sockets"] and rec["succeeded"] == conc["sockets"]
        fast = rec["achieved_rate"] >= 2000
        rows.append(
            (
                f"{conc['sockets']:,} sockets held {conc['hold_s']:.0f}s",
                f"peak open {rec['peak_open']:,}, succeeded {rec['succeeded']:,}, opened at "
                f"{rec['achieved_rate']:,.0f}/s, errors {rec['errors_by_kind'] or 0}",
                "all, >= 2,000/s",
                "yes" if all_open and fast else "NO",
            )
        )
        rows.append(
            (
                "memory per socket (generator RSS growth)",
                "n/a" if kib is None else f"{kib:.1f} KiB",
                "<= 16 KiB",
                "yes" if kib is not None and kib <= 16 else "NO",
            )
        )
        if not (all_open and fast):
            notes.append(f"Concurrency missed: {rec['errors_by_kind']}, {rec['schedule_reason']}")
    acc = results.get("accuracy")
    if acc:
        rec = acc["report"]
        p50 = rec["p50_s"]
        err = None if p50 is None else p50 * 1e3 - acc["delay_ms"]
        rows.append(
            (
                f"accuracy: p50 vs {acc['delay_ms']:.0f} ms target delay",
                "n/a"
                if p50 is None
                else f"p50 {p50 * 1e3:.2f} ms (error {err:+.2f} ms; target "
                f"applied p50 {acc['target_applied_p50_ms']} ms)",
                "within 1 ms",
                "yes" if err is not None and abs(err) <= 1.0 else "NO",
            )
        )
    sb = results.get("sandbox")
    if sb:
        rec = sb["report"]
        met = rec["succeeded"] == sb["sessions"] and rec["peak_open"] >= sb["sessions"]
        rows.append(
            (
                f"sandbox backend: {sb['sessions']:,} concurrent sessions held {sb['hold_s']:.0f}s",
                f"peak open {rec['peak_open']:,}, succeeded {rec['succeeded']:,}, p95 "
                f"{(rec['p95_s'] or 0) * 1e3:.1f} ms, connect p95 "
                f"{(rec['connect_p95_s'] or 0) * 1e3:.0f} ms, errors {rec['errors_by_kind'] or 0}",
                "all held",
                "yes" if met else "NO",
            )
        )
        if not met:
            notes.append(f"Sandbox hold missed: {rec['errors_by_kind']}")
    return rows, notes


def print_table(rows: list[tuple[str, str, str, str]], notes: list[str], header: str) -> None:
    """One table with every figure, then the closing notes."""
    cols = ("measure", "figure", "goal", "met")
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    line = "+".join("-" * (w + 2) for w in widths)
    print(header)
    print(line)
    print("|".join(f" {c:<{w}} " for c, w in zip(cols, widths, strict=True)))
    print(line)
    for r in rows:
        print("|".join(f" {c:<{w}} " for c, w in zip(r, widths, strict=True)))
    print(line)
    for n in notes or ["Every measured target met."]:
        print(f"note: {n}")


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, Step):
        return {**asdict(obj), "achieved": obj.achieved}
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_jsonable(v) for v in obj]
    return obj


def main(argv: list[str] | None = None) -> int:
    """CLI entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--only", action="append", choices=PARTS, help="run only these parts")
    parser.add_argument("--quick", action="store_true", help="short runs (about 2-3 min)")
    parser.add_argument("--no-artillery", action="store_true")
    parser.add_argument("--duration", type=float, help="seconds per rate step (15)")
    parser.add_argument("--start-rate", type=float, default=1000.0)
    parser.add_argument("--max-rate", type=float, default=12000.0)
    parser.add_argument("--sockets", type=int, help="concurrent sockets (10000)")
    parser.add_argument("--hold", type=float, help="seconds to hold them (30)")
    parser.add_argument("--open-rate", type=float, default=2500.0)
    parser.add_argument(
        "--flow-start-rate", type=float, default=250.0, help="the engine's first flow-part rate"
    )
    parser.add_argument(
        "--flow-cpu-rate", type=float, default=200.0, help="sessions/s of the CPU comparison"
    )
    parser.add_argument(
        "--flow-artillery-start", type=float, default=100.0, help="Artillery's first flow rate"
    )
    parser.add_argument("--json", type=Path, help="also write every figure to this file")
    args = parser.parse_args(argv)
    q = args.quick
    args.duration = args.duration or (3.0 if q else 15.0)
    args.sockets = args.sockets or (2000 if q else 10000)
    args.hold = args.hold or (5.0 if q else 30.0)
    args.overload_duration = 3.0 if q else 10.0
    args.accuracy_duration = 3.0 if q else 10.0
    args.flow_cpu_duration = 5.0 if q else 10.0
    args.sandbox_sessions = 1000
    args.sandbox_hold = 5.0 if q else 10.0
    parts = args.only or list(PARTS)
    if len(os.sched_getaffinity(0)) < 2 or not {TARGET_CPU, GEN_CPU} <= os.sched_getaffinity(0):
        print("needs cores 0 and 1", file=sys.stderr)
        return 2
    # Generators (this process, its worker processes, node) run on core 1 only.
    os.sched_setaffinity(0, {GEN_CPU})
    artillery = None
    if {"rate", "flow"} & set(parts) and not args.no_artillery:
        artillery = ensure_artillery()
    results: dict[str, Any] = {}
    started = time.time()
    if "rate" in parts:
        log("part: sustained session rate")
        results["rate"] = part_rate(args, artillery)
    if "flow" in parts:
        log("part: flow frame rate (subscribe -> ack -> publish -> notification)")
        results["flow"] = part_flow(args, artillery)
    if "overload" in parts:
        log("part: overload")
        best = results.get("rate", {}).get("best", {}).get("engine")
        results["overload"] = part_overload(args, best.rate if best else None)
    if "concurrency" in parts:
        log("part: concurrency")
        results["concurrency"] = part_concurrency(args)
    if "accuracy" in parts:
        log("part: accuracy")
        results["accuracy"] = part_accuracy(args)
    if "sandbox" in parts:
        log("part: sandbox")
        results["sandbox"] = part_sandbox(args)
    rows, notes = build_rows(results)
    load1 = os.getloadavg()[0]
    notes.append(
        f"Conditions: target pinned to core {TARGET_CPU}, generators to core {GEN_CPU}; "
        f"{args.duration:.0f}s per rate step; Python generators on uvloop; Artillery has no "
        "per-message timing, so its steps are judged on schedule and errors only; "
        f"load average at the end {load1:.2f} (other work on the machine adds noise); "
        f"benchmark took {time.time() - started:.0f}s."
    )
    print_table(rows, notes, f"Load engine benchmark ({'quick' if q else 'full'})")
    if args.json:
        args.json.write_text(json.dumps(_jsonable(results), indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
