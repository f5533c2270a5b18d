"""Phase 4's load on a Cloud Run Job (``[load] engine = "cloudrun-job"``, issue 13).

Called by :func:`runbook_lib.steps.mission.load_test` with the plan it built for the
local engine: the same plan (sessions = the whole test) runs as one execution of the
load job, the tasks' results are merged, and the ``load.*`` judges read the merged
result exactly as they read a local :class:`~runbook_lib.load.engine.LoadReport`. A task that
failed, was killed or never reported makes every ``load.*`` result ``error`` naming
the tasks: missing data proves nothing.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING, Any

from ..checks import judge_load, step_ids
from ..checks.causes import Verdict
from .common import report, table

if TYPE_CHECKING:
    from ..context import PhaseContext, StepReport
    from ..load.engine import LoadPlan

__all__ = ["load_on_job"]


def _token_in(plan: LoadPlan) -> str:
    """The registered secret the plan's auth carries (moved to the job's token variable)."""
    from ..redaction import registered_secrets

    if plan.token:
        return plan.token
    hay = " ".join([plan.url, *(v for _, v in plan.headers), *plan.subprotocols])
    found = [s for s in registered_secrets() if s and s in hay]
    return max(found, key=len) if found else ""


async def load_on_job(ctx: PhaseContext, plan: LoadPlan) -> StepReport:
    """Run ``plan`` as a Cloud Run Job execution and judge ``load.*`` on the merged result."""
    from ..load.jobs import run_load_job, total_sessions
    from ..plots import plot_load_tasks

    th = ctx.settings.thresholds
    plan = replace(plan, sessions=total_sessions(ctx.settings))
    run = await run_load_job(ctx.settings, plan, token=_token_in(plan))
    merged = run.merged
    problems = run.problems()
    rec = {
        **merged.to_record(),
        "job": run.job,
        "execution": run.execution,
        "run_id": run.run_id,
        "succeeded_tasks": run.succeeded_count,
        "failed_tasks": run.failed_count,
        "execution_finished": run.finished,
        "job_duration_s": round(run.duration_s, 3),
        "problems": problems,
        "token_note": run.token_note,
    }
    ctx.artifacts["load"] = rec
    if problems:
        detail = (
            f"the load job's evidence is incomplete ({run.execution or run.job}): "
            + "; ".join(problems)
            + ". Missing data proves nothing: read the task logs "
            f'(gcloud logging read \'resource.type="cloud_run_job" AND '
            f'jsonPayload.run_id="{run.run_id}"\') and rerun.'
        )
        results = [
            Verdict(i, phase=ctx.phase).error(detail, observed=merged.succeeded)
            for i in step_ids("load_test")
        ]
    else:
        results = judge_load(merged, success_rate=th.load_success_rate, p95_s=th.load_p95_s)
    fig = plot_load_tasks(
        {i: r["rtt_histogram"] for i, r in merged.per_task.items()},
        merged.rtt.to_dict(),
        threshold_s=th.load_p95_s,
        missing=sorted({*merged.missing, *run.task_failures, *merged.task_errors}),
    )
    rows = [
        {
            "task": i,
            "planned": r.get("planned"),
            "succeeded": r.get("succeeded"),
            "failed": r.get("failed"),
            "p95_s": _q(r, 0.95),
            "attempt": r.get("attempt"),
        }
        for i, r in sorted(merged.per_task.items())
    ]
    rows += [
        {
            "task": i,
            "planned": None,
            "succeeded": None,
            "failed": None,
            "p95_s": None,
            "attempt": None,
            "problem": why,
        }
        for i, why in sorted(
            {**{i: "no result line" for i in merged.missing}, **run.task_failures}.items()
        )
    ]
    rows.append(
        {
            "task": "merged",
            "planned": merged.planned,
            "succeeded": merged.succeeded,
            "failed": merged.failed,
            "p95_s": merged.p95_s,
            "attempt": None,
        }
    )
    # A token left readable in the execution is a finding the operator must act on.
    return report(
        results,
        table=table(rows),
        figure=fig,
        note=run.token_note,
        caption="Load latency per Cloud Run Job task, and merged",
    )


def _q(rec: dict[str, Any], q: float) -> float | None:
    from ..load.histogram import LatencyHistogram

    try:
        return LatencyHistogram.from_dict(rec["rtt_histogram"]).quantile(q)
    except (KeyError, ValueError):
        return None
