"""The Admin API v2 wire format: Google's JSON shapes for the emulator's state.

Timestamps are RFC 3339 UTC with a ``Z``, durations ``"300s"``, int64 fields
strings, enums their names: what ``google.cloud.run_v2``'s REST transport and
``google.cloud.logging``'s HTTP client parse. Renderers are pure functions of
the state objects (:mod:`.resources`).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .resources import (
        ExecutionState,
        JobState,
        OperationState,
        RevisionState,
        ServiceState,
        TaskState,
    )

__all__ = [
    "REQUEST_LOG_KEY",
    "SERVICE_TYPE",
    "condition",
    "duration",
    "format_time",
    "operation_json",
    "parse_time",
    "revision_json",
    "service_json",
    "task_json",
]

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"

# The key of the private stdout line on which a sandbox backend hands one request-log
# record to the emulator: on Cloud Run the platform's front end writes request logs,
# never the container, so this line is never filed as the container's own output.
REQUEST_LOG_KEY = "sandbox.requestLog"


def format_time(ts: datetime) -> str:
    """RFC 3339 UTC with microseconds and a ``Z``, as Google prints timestamps."""
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})(?:[T ](\d{2}:\d{2}(?::\d{2})?)(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?"
)


def parse_time(text: str) -> datetime:
    """Parse an RFC 3339 timestamp (``Z`` or offset, up to nanoseconds) to an aware datetime.

    Raises:
        ValueError: not a timestamp.
    """
    raw = text.strip()
    m = _TIME.fullmatch(raw)
    if not m:
        raise ValueError(f"not an RFC 3339 timestamp: {text!r}")
    date, clock, frac, zone = m.groups()
    clock = clock or "00:00:00"
    if clock.count(":") == 1:
        clock += ":00"
    micros = (frac[1:] + "000000")[:6] if frac else "000000"
    zone = "+00:00" if zone in (None, "Z") else zone
    return datetime.fromisoformat(f"{date}T{clock}.{micros}{zone}")


def duration(seconds: float) -> str:
    """A protobuf Duration in JSON (``"300s"``)."""
    return f"{seconds:g}s"


def condition(
    ctype: str,
    ready: bool | None,
    when: datetime | None,
    message: str = "",
    reason_field: str = "",
    reason: str = "",
) -> dict[str, Any]:
    state = {
        True: "CONDITION_SUCCEEDED",
        False: "CONDITION_FAILED",
        None: "CONDITION_RECONCILING",
    }[ready]
    cond: dict[str, Any] = {"type": ctype, "state": state}
    if message:
        cond["message"] = message
    cond["lastTransitionTime"] = format_time(when or datetime.now(UTC))
    if ready is False:
        cond["severity"] = "ERROR"
    if reason_field and reason:
        cond[reason_field] = reason
    return cond


def service_json(svc: ServiceState) -> dict[str, Any]:
    """The Service resource as the Admin API v2 returns it."""
    serving = [(r, p, t) for r, p, t in svc.resolved_traffic()]
    broken = [
        r
        for r, p, _ in serving
        if p and svc.revisions.get(r) and svc.revisions[r].ready is not True
    ]
    if svc.reconciling:
        ready: bool | None = None
        message = "Deploying revision."
    elif svc.failure:
        ready, message = False, svc.failure
    elif broken:
        ready, message = False, f"Revision {broken[0]!r} is serving traffic but is not ready."
    else:
        ready, message = True, ""
    terminal = condition(
        "Ready",
        ready,
        svc.update_time,
        message,
        "reason",
        "REVISION_FAILED" if ready is False else "",
    )
    out: dict[str, Any] = {
        "name": svc.full_name,
        "uid": svc.uid,
        "generation": str(svc.generation),
        "labels": {},
        "createTime": format_time(svc.create_time),
        "updateTime": format_time(svc.update_time),
        "creator": "sandbox@local",
        "lastModifier": "sandbox@local",
        "ingress": svc.ingress,
        "launchStage": "GA",
        "template": svc.template,
        "traffic": svc.traffic,
        "observedGeneration": str(svc.observed_generation),
        "terminalCondition": terminal,
        "conditions": [
            condition("RoutesReady", None if svc.reconciling else not broken, svc.update_time),
            condition(
                "ConfigurationsReady",
                None if svc.reconciling else not svc.failure,
                svc.update_time,
            ),
        ],
        "latestReadyRevision": f"{svc.full_name}/revisions/{svc.latest_ready}"
        if svc.latest_ready
        else "",
        "latestCreatedRevision": f"{svc.full_name}/revisions/{svc.latest_created}"
        if svc.latest_created
        else "",
        "trafficStatuses": [
            {
                k: v
                for k, v in {
                    "type": t.get("type"),
                    "revision": rev,
                    "percent": pct,
                    "tag": tag,
                    "uri": svc.tag_uris.get(tag, "") if tag else "",
                }.items()
                if v not in ("", None)
            }
            for t, (rev, pct, tag) in zip(svc.traffic, serving, strict=True)
        ],
        "uri": svc.uri,
        "urls": [svc.uri] if svc.uri else [],
        "reconciling": svc.reconciling,
        "etag": f'"{svc.generation}-{svc.uid[:8]}"',
    }
    if not out["latestReadyRevision"]:
        del out["latestReadyRevision"]
    if not out["latestCreatedRevision"]:
        del out["latestCreatedRevision"]
    return out


def revision_json(rev: RevisionState) -> dict[str, Any]:
    """The Revision resource as the Admin API v2 returns it."""
    tmpl = rev.template
    ready_cond = condition(
        "Ready",
        rev.ready,
        rev.transition_time or rev.create_time,
        rev.message,
        rev.reason_field,
        rev.reason,
    )
    out: dict[str, Any] = {
        "name": rev.full_name,
        "uid": rev.uid,
        "generation": "1",
        "labels": {
            "serving.knative.dev/service": rev.service.name,
            "sandbox-profile": rev.profile,
        },
        "createTime": format_time(rev.create_time),
        "updateTime": format_time(rev.transition_time or rev.create_time),
        "launchStage": "GA",
        "service": rev.service.full_name,
        "scaling": tmpl.get("scaling", {}),
        "maxInstanceRequestConcurrency": tmpl.get("maxInstanceRequestConcurrency", 80),
        "timeout": tmpl.get("timeout", "300s"),
        "serviceAccount": "sandbox@sandbox-project.iam.gserviceaccount.com",
        "containers": tmpl.get("containers", []),
        "executionEnvironment": "EXECUTION_ENVIRONMENT_GEN2",
        "conditions": [
            ready_cond,
            condition("ContainerHealthy", rev.ready, rev.transition_time or rev.create_time),
        ],
        "observedGeneration": "1",
        "logUri": f"http://sandbox.local/logs?revision={rev.name}",
        "reconciling": rev.ready is None,
        "etag": f'"{rev.uid[:8]}"',
    }
    if tmpl.get("sessionAffinity"):
        out["sessionAffinity"] = True
    return out


def operation_json(op: OperationState) -> dict[str, Any]:
    """The google.longrunning.Operation (metadata and response are Services)."""
    out: dict[str, Any] = {
        "name": op.name,
        "metadata": {"@type": SERVICE_TYPE, **service_json(op.service)},
        "done": op.done,
    }
    if op.error is not None:
        out["error"] = op.error
    elif op.response is not None:
        out["response"] = {"@type": SERVICE_TYPE, **op.response}
    return out


# ---------------------------------------------------------------- Cloud Run Jobs (issue 13)

JOB_TYPE = "type.googleapis.com/google.cloud.run.v2.Job"
EXECUTION_TYPE = "type.googleapis.com/google.cloud.run.v2.Execution"


def _latest(job: JobState) -> dict[str, Any] | None:
    if not job.executions:
        return None
    ex = job.executions[-1]
    status = "EXECUTION_RUNNING"
    if ex.done:
        status = (
            "EXECUTION_SUCCEEDED"
            if ex.count("SUCCEEDED") == ex.task_count
            else "EXECUTION_CANCELLED"
            if ex.count("CANCELLED")
            else "EXECUTION_FAILED"
        )
    out = {"name": ex.name, "createTime": format_time(ex.create_time), "completionStatus": status}
    if ex.completion_time:
        out["completionTime"] = format_time(ex.completion_time)
    return out


def job_json(job: JobState) -> dict[str, Any]:
    """The Job resource as the Admin API v2 returns it."""
    out: dict[str, Any] = {
        "name": job.full_name,
        "uid": job.uid,
        "generation": str(job.generation),
        "labels": job.labels,
        "createTime": format_time(job.create_time),
        "updateTime": format_time(job.update_time),
        "creator": "sandbox@local",
        "lastModifier": "sandbox@local",
        "launchStage": "GA",
        "template": job.template,
        "observedGeneration": str(job.generation),
        "terminalCondition": condition("Ready", True, job.update_time),
        "executionCount": len(job.executions),
        "reconciling": False,
        "etag": f'"{job.generation}-{job.uid[:8]}"',
    }
    latest = _latest(job)
    if latest:
        out["latestCreatedExecution"] = latest
    return out


def execution_json(ex: ExecutionState) -> dict[str, Any]:
    """The Execution resource (counts of tasks per state, Completed condition)."""
    succeeded, failed = ex.count("SUCCEEDED"), ex.count("FAILED")
    cancelled, running = ex.count("CANCELLED"), ex.count("RUNNING")
    completed: bool | None = None
    message = f"{running} task(s) running"
    if ex.done:
        completed = succeeded == ex.task_count
        message = (
            f"Execution completed successfully: {succeeded} task(s)."
            if completed
            else f"Task(s) failed: {failed} failed, {cancelled} cancelled of {ex.task_count}."
        )
    when = ex.completion_time or ex.start_time or ex.create_time
    out: dict[str, Any] = {
        "name": ex.full_name,
        "uid": ex.uid,
        "creator": "sandbox@local",
        "generation": "1",
        "labels": {"run.googleapis.com/jobUid": ex.job.uid},
        "createTime": format_time(ex.create_time),
        "updateTime": format_time(when),
        "launchStage": "GA",
        "job": ex.job.name,
        "parallelism": ex.parallelism,
        "taskCount": ex.task_count,
        "template": ex.template,
        "reconciling": not ex.done,
        "conditions": [
            condition("ResourcesAvailable", True, ex.create_time),
            condition("Started", True if ex.start_time else None, ex.start_time),
            condition("Completed", completed, when, message),
        ],
        "observedGeneration": "1",
        "runningCount": running,
        "succeededCount": succeeded,
        "failedCount": failed,
        "cancelledCount": cancelled,
        "retriedCount": sum(t.retried for t in ex.tasks),
        "logUri": f"http://sandbox.local/logs?execution={ex.name}",
        "etag": f'"{ex.uid[:8]}"',
    }
    if ex.start_time:
        out["startTime"] = format_time(ex.start_time)
    if ex.completion_time:
        out["completionTime"] = format_time(ex.completion_time)
    return out


def task_json(ex: ExecutionState, t: TaskState) -> dict[str, Any]:
    """One Task resource of an execution."""
    ready = {"SUCCEEDED": True, "FAILED": False, "CANCELLED": False}.get(t.state)
    out: dict[str, Any] = {
        "name": f"{ex.full_name}/tasks/{ex.name}-task{t.index}",
        "uid": t.uid,
        "generation": "1",
        "createTime": format_time(ex.create_time),
        "job": ex.job.name,
        "execution": ex.name,
        "containers": ex.template.get("containers", []),
        "maxRetries": ex.max_retries,
        "timeout": duration(ex.timeout_s),
        "reconciling": ready is None,
        "conditions": [condition("Completed", ready, t.completion_time or t.start_time, t.message)],
        "observedGeneration": "1",
        "index": t.index,
        "retried": t.retried,
        "etag": f'"{t.uid[:8]}"',
    }
    if t.start_time:
        out["startTime"] = format_time(t.start_time)
    if t.completion_time:
        out["completionTime"] = format_time(t.completion_time)
    if t.state in ("SUCCEEDED", "FAILED"):
        result: dict[str, Any] = {"status": {"code": 0 if t.state == "SUCCEEDED" else 2}}
        if t.message:
            result["status"]["message"] = t.message
        if t.exit_code is not None:
            result["exitCode"] = t.exit_code
        out["lastAttemptResult"] = result
    return out


def job_operation_json(name: str, target: JobState | ExecutionState) -> dict[str, Any]:
    """The google.longrunning.Operation of a job create/update (done) or run (done when
    the execution completes; its metadata is the Execution from the start)."""
    if hasattr(target, "executions"):
        body, kind, done = job_json(target), JOB_TYPE, True  # type: ignore[arg-type]
    else:
        body, kind = execution_json(target), EXECUTION_TYPE  # type: ignore[arg-type]
        done = target.done  # type: ignore[union-attr]
    out: dict[str, Any] = {"name": name, "metadata": {"@type": kind, **body}, "done": done}
    if done:
        out["response"] = {"@type": kind, **body}
    return out
