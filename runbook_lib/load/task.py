"""One task of a load test fanned out as a Cloud Run Job (issue 13).

A Cloud Run Job runs ``python -m runbook_lib.load.task`` in ``TASK_COUNT`` containers;
each reads the environment Cloud Run sets (``CLOUD_RUN_TASK_INDEX``,
``CLOUD_RUN_TASK_COUNT``, ``CLOUD_RUN_TASK_ATTEMPT``) and the plan the runbook put in
the job's ``RUNBOOK_LOAD_PLAN`` (JSON of :class:`~runbook_lib.load.engine.LoadPlan` fields for
the *whole* test), runs its shard with the local engine and prints **one** structured
JSON line on stdout, which Cloud Logging keeps as the task's ``jsonPayload``::

    {"runbook_load_result": 1, "run_id": ..., "task_index": 2, "task_count": 4,
     "planned": 2500, "succeeded": 2498, "errors_by_kind": {...},
     "rtt_histogram": {...}, "connect_histogram": {...}, ...}

Secrets never travel in the plan: a header value or subprotocol may hold ``{token}``,
replaced by the task's ``RUNBOOK_LOAD_TOKEN`` (set on the job from Secret Manager); a
flow that sends the token in a frame (``[auth] mode = "message"``) gets it the same way.

:func:`merge_results` is the pure other half: it merges the lines of every task into
one :class:`MergedLoad` (counts added, histograms merged, so the percentiles are those
of the pooled samples within the histogram's bound) and names the tasks that failed or
never reported: missing data proves nothing, so a merge with a missing task is not a
complete result.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .histogram import LatencyHistogram

__all__ = [
    "RESULT_MARKER",
    "MergedLoad",
    "TaskShard",
    "main",
    "merge_results",
    "parse_result_line",
    "shard",
]

RESULT_MARKER = "runbook_load_result"
PLAN_ENV = "RUNBOOK_LOAD_PLAN"
TOKEN_ENV = "RUNBOOK_LOAD_TOKEN"
RUN_ID_ENV = "RUNBOOK_LOAD_RUN_ID"
# Debug knob: also print the raw round-trip samples (tests compare them with the merged
# histogram). Off by default: a 100k-session task would print megabytes.
RAW_ENV = "RUNBOOK_LOAD_RAW_SAMPLES"


@dataclass(frozen=True, slots=True)
class TaskShard:
    """The part of the whole plan one task runs."""

    index: int
    count: int
    sessions: int
    rate: float | None


def shard(total_sessions: int, rate: float | None, index: int, count: int) -> TaskShard:
    """Split ``total_sessions`` (and the arrival rate) evenly over ``count`` tasks.

    The first ``total % count`` tasks take one session more, so the shards add up to
    the whole plan exactly.
    """
    if count < 1 or not 0 <= index < count:
        raise ValueError(f"task {index} of {count} is not a valid task")
    base, extra = divmod(total_sessions, count)
    sessions = base + (1 if index < extra else 0)
    share = sessions / total_sessions if total_sessions else 0.0
    return TaskShard(index, count, sessions, rate * share if rate and sessions else None)


def _plan_from_env(environ: Mapping[str, str]) -> tuple[Any, TaskShard, str]:
    from ..flows import FlowStep
    from .engine import LoadPlan  # numpy and picows: only in the task itself

    try:
        raw = json.loads(environ[PLAN_ENV])
    except KeyError as exc:
        raise ValueError(f"{PLAN_ENV} is not set: the job must carry the plan") from exc
    except json.JSONDecodeError as exc:
        raise ValueError(f"{PLAN_ENV} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict):
        raise ValueError(f"{PLAN_ENV} must be a JSON object of LoadPlan fields")
    known = {f.name for f in fields(LoadPlan)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{PLAN_ENV} has unknown LoadPlan fields: {', '.join(unknown)}")
    try:
        index = int(environ.get("CLOUD_RUN_TASK_INDEX", "0"))
        count = int(environ.get("CLOUD_RUN_TASK_COUNT", "1"))
    except ValueError as exc:
        raise ValueError(f"CLOUD_RUN_TASK_INDEX/COUNT must be integers: {exc}") from exc
    part = shard(int(raw.get("sessions", 0)), raw.get("rate"), index, count)
    token = environ.get(TOKEN_ENV, "")
    headers = tuple(
        (str(k), str(v).replace("{token}", token)) for k, v in raw.pop("headers", []) or []
    )
    subprotocols = tuple(str(s).replace("{token}", token) for s in raw.pop("subprotocols", []))
    if isinstance(raw.get("url"), str):
        raw["url"] = raw["url"].replace("{token}", token)  # query-mode auth
    for key in ("type_paths", "ignore_types", "error_types"):
        if key in raw:
            raw[key] = tuple(raw[key])
    if "steps" in raw:
        raw["steps"] = tuple(FlowStep(**step) for step in raw["steps"])
    if "values" in raw:
        raw["values"] = tuple((str(k), str(v)) for k, v in raw["values"])
    if token and "token" not in raw:
        raw["token"] = token  # message-mode auth: the flow's {token}
    raw.update(sessions=part.sessions, rate=part.rate, headers=headers, subprotocols=subprotocols)
    return LoadPlan(**raw), part, environ.get(RUN_ID_ENV, "")


def _histogram(values: Iterable[float]) -> dict[str, Any]:
    h = LatencyHistogram()
    h.extend(values)
    return h.to_dict()


async def _run(environ: Mapping[str, str]) -> dict[str, Any]:
    from .engine import run_load

    plan, part, run_id = _plan_from_env(environ)
    report = await run_load(plan)
    rec = report.to_record()
    return {
        RESULT_MARKER: 1,
        "run_id": run_id,
        "task_index": part.index,
        "task_count": part.count,
        "attempt": int(environ.get("CLOUD_RUN_TASK_ATTEMPT", "0") or 0),
        "planned": report.planned,
        "attempted": report.attempted,
        "succeeded": report.succeeded,
        "failed": report.failed,
        "errors_by_kind": rec["errors_by_kind"],
        "handshake_statuses": rec["handshake_statuses"],
        "server_errors": rec["server_errors"],
        "duration_s": rec["duration_s"],
        "saturated": report.saturated,
        "saturation_reason": report.saturation_reason,
        "behind_schedule": report.behind_schedule,
        "schedule_reason": report.schedule_reason,
        "peak_open": report.peak_open,
        "rtt_histogram": _histogram(report.rtt_s.tolist()),
        "connect_histogram": _histogram(report.connect_s.tolist()),
        **({"rtt_raw": report.rtt_s.tolist()} if environ.get(RAW_ENV) == "1" else {}),
    }


def main(environ: Mapping[str, str] | None = None) -> int:
    """Run this task's shard and print its one result line. Exit 0 even when the target
    failed (that is the result); 2 when the task itself is misconfigured."""
    env = os.environ if environ is None else environ
    try:
        result = asyncio.run(_run(env))
    except ValueError as exc:
        line: dict[str, Any] = {RESULT_MARKER: 1, "error": str(exc)}
        try:  # name the task, so the merge reports its error rather than "missing"
            line["task_index"] = int(env.get("CLOUD_RUN_TASK_INDEX", "0"))
            line["attempt"] = int(env.get("CLOUD_RUN_TASK_ATTEMPT", "0") or 0)
        except ValueError:
            pass
        print(json.dumps(line), flush=True)
        return 2
    print(json.dumps(result, separators=(",", ":")), flush=True)
    return 0


# ---------------------------------------------------------------- merging (pure)


def parse_result_line(payload: Any) -> dict[str, Any] | None:
    """A task's result from a log entry's payload (dict or JSON text); None if it is not one."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except json.JSONDecodeError:
            return None
    if isinstance(payload, Mapping) and payload.get(RESULT_MARKER) == 1:
        return dict(payload)
    return None


@dataclass(frozen=True, slots=True)
class MergedLoad:
    """Every task's result merged.

    Attributes:
        task_count: tasks the job ran.
        reported: task indexes whose result line was read.
        missing: task indexes that never reported (failed, killed, or their line lost).
        task_errors: task index -> the task's own error (misconfigured task).
        planned, attempted, succeeded, failed: summed over the reporting tasks.
        errors_by_kind, handshake_statuses: summed.
        rtt, connect: the merged histograms.
        per_task: task index -> its result line (for per-task figures).
    """

    task_count: int
    reported: tuple[int, ...]
    missing: tuple[int, ...]
    task_errors: dict[int, str]
    planned: int
    attempted: int
    succeeded: int
    failed: int
    errors_by_kind: dict[str, int]
    handshake_statuses: dict[str, int]
    saturated: bool
    behind_schedule: bool
    rtt: LatencyHistogram
    connect: LatencyHistogram
    per_task: dict[int, dict[str, Any]] = field(default_factory=dict)
    saturation_reason: str = ""
    schedule_reason: str = ""

    # The LoadReportView the load.* judges read (observations.py), from the merged data.

    @property
    def p50_s(self) -> float | None:
        """Round-trip p50 of the pooled samples (within the histogram's bound)."""
        return self.rtt.quantile(0.50)

    @property
    def p95_s(self) -> float | None:
        """Round-trip p95 of the pooled samples (within the histogram's bound)."""
        return self.rtt.quantile(0.95)

    @property
    def p99_s(self) -> float | None:
        """Round-trip p99 of the pooled samples (within the histogram's bound)."""
        return self.rtt.quantile(0.99)

    @property
    def trusted(self) -> bool:
        """True when no task's generator was saturated or behind its schedule."""
        return not (self.saturated or self.behind_schedule)

    def server_error_count(self) -> int:
        """Sessions the server failed: 5xx upgrade answers and 1011-1014 closes."""
        return sum(
            n
            for kind, n in self.errors_by_kind.items()
            if kind.startswith("handshake_5")
            or kind in ("closed_1011", "closed_1012", "closed_1013", "closed_1014")
        )

    def to_record(self) -> dict[str, Any]:
        """JSON-able summary (no per-task raw data)."""

        def q(h: LatencyHistogram, p: float) -> float | None:
            v = h.quantile(p)
            return None if v is None else round(v, 9)

        return {
            "engine": "cloudrun-job",
            "task_count": self.task_count,
            "reported": list(self.reported),
            "missing": list(self.missing),
            "task_errors": {str(k): v for k, v in self.task_errors.items()},
            "planned": self.planned,
            "attempted": self.attempted,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "server_errors": self.server_error_count(),
            "success_rate": round(self.success_rate(), 6),
            "errors_by_kind": dict(self.errors_by_kind),
            "handshake_statuses": dict(self.handshake_statuses),
            "p50_s": q(self.rtt, 0.5),
            "p95_s": q(self.rtt, 0.95),
            "p99_s": q(self.rtt, 0.99),
            "connect_p95_s": q(self.connect, 0.95),
            "rtt_samples": self.rtt.count,
            "relative_error": self.rtt.relative_error,
            "saturated": self.saturated,
            "saturation_reason": self.saturation_reason,
            "behind_schedule": self.behind_schedule,
            "schedule_reason": self.schedule_reason,
            "trusted": self.trusted,
        }

    @property
    def complete(self) -> bool:
        """True when every task reported a result of its own shard."""
        return not self.missing and not self.task_errors

    def success_rate(self) -> float:
        """Succeeded / planned over the reporting tasks (0.0 with no evidence)."""
        return self.succeeded / self.planned if self.planned else 0.0


def merge_results(records: Iterable[Mapping[str, Any]], task_count: int) -> MergedLoad:
    """Merge task result lines; the newest attempt of each task wins.

    Raises:
        ValueError: a record's histogram is malformed (a garbled line is not data).
    """
    best: dict[int, dict[str, Any]] = {}
    for rec in records:
        idx = rec.get("task_index")
        if not isinstance(idx, int) or not 0 <= idx < task_count:
            continue
        if idx not in best or int(rec.get("attempt", 0)) >= int(best[idx].get("attempt", 0)):
            best[idx] = dict(rec)
    errors = {i: str(r["error"]) for i, r in best.items() if r.get("error")}
    good = {i: r for i, r in best.items() if i not in errors}
    kinds: Counter[str] = Counter()
    statuses: Counter[str] = Counter()
    rtt_parts, connect_parts = [], []
    for r in good.values():
        kinds.update({str(k): int(v) for k, v in dict(r.get("errors_by_kind", {})).items()})
        statuses.update({str(k): int(v) for k, v in dict(r.get("handshake_statuses", {})).items()})
        rtt_parts.append(LatencyHistogram.from_dict(r["rtt_histogram"]))
        connect_parts.append(LatencyHistogram.from_dict(r["connect_histogram"]))
    return MergedLoad(
        task_count=task_count,
        reported=tuple(sorted(good)),
        missing=tuple(i for i in range(task_count) if i not in best),
        task_errors=errors,
        planned=sum(int(r.get("planned", 0)) for r in good.values()),
        attempted=sum(int(r.get("attempted", 0)) for r in good.values()),
        succeeded=sum(int(r.get("succeeded", 0)) for r in good.values()),
        failed=sum(int(r.get("failed", 0)) for r in good.values()),
        errors_by_kind=dict(sorted(kinds.items())),
        handshake_statuses=dict(sorted(statuses.items())),
        saturated=any(bool(r.get("saturated")) for r in good.values()),
        behind_schedule=any(bool(r.get("behind_schedule")) for r in good.values()),
        rtt=LatencyHistogram.merged(rtt_parts),
        connect=LatencyHistogram.merged(connect_parts),
        per_task=good,
        saturation_reason="; ".join(
            f"task {i}: {r['saturation_reason']}"
            for i, r in sorted(good.items())
            if r.get("saturated") and r.get("saturation_reason")
        ),
        schedule_reason="; ".join(
            f"task {i}: {r['schedule_reason']}"
            for i, r in sorted(good.items())
            if r.get("behind_schedule") and r.get("schedule_reason")
        ),
    )


if __name__ == "__main__":
    sys.exit(main())
