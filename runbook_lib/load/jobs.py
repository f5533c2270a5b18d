"""Phase 4's load fanned out as a Cloud Run Job (issue 13).

:func:`run_load_job` creates or updates the job ``[load] job`` (default
``<service>-runbook-load``) whose tasks run ``python -m runbook_lib.load.task``
(:mod:`runbook_lib.load.task`), runs one execution through the real
``google.cloud.run_v2`` Jobs/Executions/Tasks clients (``api_endpoint`` as for the
services client, so the sandbox emulator and Google are the same code path), waits
for it with a bounded timeout, reads each task's one result line through the real
``google-cloud-logging`` client (filtered on the job and this run's id) and merges
them with :func:`~runbook_lib.load.task.merge_results`.

Nothing here judges: a task that failed, was killed or never reported is named in
:class:`JobLoadRun` (``merged.missing``, ``task_failures``) and the step makes the
``load.*`` results ``error``: missing data proves nothing.

Secrets: a token used by the load sessions is replaced by ``{token}`` in the plan and
never stored on the job. It travels in the execution's overrides
(``RunJobRequest.overrides.containerOverrides[].env``, ``RUNBOOK_LOAD_TOKEN``): the job
(readable with ``run.jobs.get``, and kept between runs) never holds it, and the
execution that did is deleted once its results are read.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from ..exceptions import CloudRunError
from ..redaction import redact_excerpt
from .task import PLAN_ENV, RAW_ENV, RUN_ID_ENV, TOKEN_ENV, MergedLoad, merge_results
from .task import parse_result_line as _parse_line

if TYPE_CHECKING:
    from ..settings import Settings
    from .engine import LoadPlan

__all__ = [
    "JobLoadRun",
    "execution_budget_s",
    "job_body",
    "job_path",
    "parse_result_line",
    "read_task_results",
    "run_load_job",
    "total_sessions",
]

log = logging.getLogger(__name__)

parse_result_line = _parse_line


@dataclass(frozen=True, slots=True)
class JobLoadRun:
    """One execution of the load job and what its tasks reported.

    Attributes:
        job: the job's full resource name.
        execution: the execution's full resource name ("" when it never started).
        run_id: the id every task line of this run carries.
        task_count: tasks the execution ran.
        succeeded_count, failed_count, cancelled_count: Cloud Run's task counts.
        finished: the execution completed within the wait.
        task_failures: task index -> why Cloud Run says it failed.
        merged: the merged result lines.
        duration_s: run call to the last log read.
        token_note: '' when the token left no trace, else what to do about it.
    """

    job: str
    execution: str
    run_id: str
    task_count: int
    succeeded_count: int
    failed_count: int
    cancelled_count: int
    finished: bool
    task_failures: dict[int, str]
    merged: MergedLoad
    duration_s: float
    records: list[dict[str, Any]] = field(default_factory=list, repr=False)
    token_note: str = ""

    def problems(self) -> list[str]:
        """Why this run is not complete evidence (empty when it is)."""
        out = []
        if not self.finished:
            out.append(f"the execution did not finish in time ({self.execution or 'not started'})")
        for i, why in sorted(self.task_failures.items()):
            out.append(f"task {i} failed: {why}")
        if self.merged.missing:
            out.append(
                "no result line from task(s) "
                + ", ".join(str(i) for i in self.merged.missing)
                + " (failed, killed, or its log line was lost)"
            )
        for i, why in sorted(self.merged.task_errors.items()):
            out.append(f"task {i} reported an error: {why}")
        return out


def job_path(settings: Settings) -> str:
    """``projects/P/locations/R/jobs/J`` of the load job."""
    ld, cr = settings.load, settings.cloudrun
    return (
        f"projects/{cr.project}/locations/{ld.region or cr.region}/jobs/{ld.job_name(cr.service)}"
    )


def total_sessions(settings: Settings) -> int:
    """Sessions of the whole test: tasks x sessions_per_task, else ``load_connections``."""
    ld = settings.load
    if ld.sessions_per_task:
        return ld.tasks * ld.sessions_per_task
    return settings.thresholds.load_connections


def execution_budget_s(settings: Settings) -> float:
    """The longest the runbook waits for one load execution, API calls included: every
    wave of ``parallelism`` tasks may use each attempt's whole timeout."""
    ld = settings.load
    waves = -(-ld.tasks // (ld.parallelism or ld.tasks))
    return ld.timeout_s * (1 + ld.max_retries) * waves + 4 * settings.timeouts.cloudrun_s


def _plan_json(plan: LoadPlan, token: str) -> str:
    raw = asdict(plan)
    raw.pop("workers", None)  # each task sizes its own workers to its container
    raw.pop("token", None)  # the flow's {token} travels as the job's token variable
    if token:
        raw["url"] = raw["url"].replace(token, "{token}")
        raw["headers"] = [[k, v.replace(token, "{token}")] for k, v in raw["headers"]]
        raw["subprotocols"] = [s.replace(token, "{token}") for s in raw["subprotocols"]]
    else:
        raw["headers"] = [list(h) for h in raw["headers"]]
        raw["subprotocols"] = list(raw["subprotocols"])
    return json.dumps(raw, separators=(",", ":"))


def job_body(settings: Settings, plan: LoadPlan, run_id: str, token: str = "") -> dict[str, Any]:
    """The Job resource (REST JSON) the runbook creates or updates for one run.

    ``token`` is only cut out of the plan: the job never carries it (see
    :func:`run_overrides`). Updating the job replaces its whole template, so a token an
    older version of the runbook left on it is removed too.
    """
    ld = settings.load
    env = [
        {"name": PLAN_ENV, "value": _plan_json(plan, token)},
        {"name": RUN_ID_ENV, "value": run_id},
    ]
    if os.environ.get(RAW_ENV) == "1":
        env.append({"name": RAW_ENV, "value": "1"})
    task: dict[str, Any] = {
        "containers": [{"image": ld.image, "env": env}],
        "maxRetries": ld.max_retries,
        "timeout": f"{ld.timeout_s:g}s",
    }
    if ld.service_account:
        task["serviceAccount"] = ld.service_account
    return {
        "labels": {"managed-by": "runbook"},
        "template": {
            "taskCount": ld.tasks,
            "parallelism": ld.parallelism or ld.tasks,
            "template": task,
        },
    }


def run_overrides(token: str) -> dict[str, Any]:
    """``RunJobRequest.overrides`` (REST JSON) that hand ``token`` to this execution only."""
    if not token:
        return {}
    return {"containerOverrides": [{"env": [{"name": TOKEN_ENV, "value": token}]}]}


class _Jobs:
    """The three run_v2 REST clients, built like the services client."""

    def __init__(self, settings: Settings) -> None:
        from google.api_core.client_options import ClientOptions
        from google.cloud import run_v2

        self.endpoint = settings.cloudrun.api_endpoint.rstrip("/")
        kwargs: dict[str, Any] = {"transport": "rest"}
        if self.endpoint:
            kwargs["client_options"] = ClientOptions(api_endpoint=self.endpoint)
            if self.endpoint.startswith("http://"):
                from google.auth.credentials import AnonymousCredentials

                kwargs["credentials"] = AnonymousCredentials()
        self.run_v2 = run_v2
        self.jobs = run_v2.JobsClient(**kwargs)
        self.executions = run_v2.ExecutionsClient(**kwargs)
        self.tasks = run_v2.TasksClient(**kwargs)


def _explain(what: str, where: str, exc: BaseException) -> CloudRunError:
    from google.api_core import exceptions as gexc

    from ..iam import role_hint

    if isinstance(exc, gexc.GoogleAPICallError):
        named = "Permission '" in str(exc.message or "")
        hint = {
            403: f" ({role_hint(str(exc.message), what)}; see docs/load.md)"
            if named
            else " (the runbook's identity needs run.jobs.create/update/run and "
            "run.executions.get: roles/run.developer; see docs/load.md)",
            404: " (check [cloudrun] project and [load] region)",
        }.get(int(exc.code or 0), "")
        return CloudRunError(
            f"Cloud Run Jobs {what} failed at {where}: HTTP {exc.code} {exc.message}{hint}"
        )
    name, text = type(exc).__name__, str(exc)
    if "ConnectionError" in name or "Connection refused" in text:
        return CloudRunError(
            f"Cloud Run Jobs {what}: cannot connect to {where}; is the sandbox running "
            "(`runbook sandbox up`) or the api_endpoint right?"
        )
    if isinstance(exc, TimeoutError) or "Timeout" in name:
        return CloudRunError(f"Cloud Run Jobs {what}: {where} did not answer in time")
    return CloudRunError(
        f"Cloud Run Jobs {what} failed at {where}: {name}: {redact_excerpt(text, 300)}"
    )


async def _call(what: str, where: str, fn: Any, timeout_s: float) -> Any:
    try:
        return await asyncio.wait_for(asyncio.to_thread(fn), timeout_s + 5.0)
    except CloudRunError:
        raise
    except Exception as exc:
        raise _explain(what, where, exc) from exc


async def read_task_results(
    settings: Settings, job: str, run_id: str, *, limit: int = 20_000
) -> list[dict[str, Any]]:
    """Every task result line of run ``run_id`` of ``job``, through google-cloud-logging.

    Raises:
        CloudRunError: the read failed (refused, unreachable, timed out, bad answer).
    """
    from ..logs import _explain, logging_client, logging_endpoint

    endpoint = logging_endpoint(settings)
    project = settings.cloudrun.project
    job_name = job.rsplit("/", 1)[-1]
    flt = (
        f'resource.type="cloud_run_job" AND resource.labels.job_name="{job_name}" '
        f'AND jsonPayload.run_id="{run_id}"'
    )
    timeout = settings.timeouts.cloudrun_s

    def fetch() -> list[dict[str, Any]]:
        from google.cloud import logging as glogging

        with logging_client(settings, timeout) as client:
            out = []
            for entry in client.list_entries(
                resource_names=[f"projects/{project}"],
                filter_=flt,
                order_by=glogging.ASCENDING,
                page_size=1000,
                max_results=limit,
            ):
                rec = parse_result_line(entry.payload)
                if rec is not None and rec.get("run_id", run_id) == run_id:
                    out.append(rec)
            return out

    try:
        return await asyncio.wait_for(asyncio.to_thread(fetch), timeout * 4 + 5.0)
    except CloudRunError:
        raise
    except Exception as exc:
        raise _explain(endpoint, exc) from exc


async def _clear_token(api: _Jobs, execution: str, where: str, call_s: float) -> str:
    """Delete the finished execution whose overrides held the token; '' when done, else
    what the operator must do (the token is still readable in that execution)."""
    from google.api_core import exceptions as gexc

    def delete() -> None:
        for attempt in range(5):  # a cancelled execution takes a moment to finish
            try:
                api.executions.delete_execution(name=execution, timeout=call_s).result(
                    timeout=call_s
                )
                return
            except gexc.FailedPrecondition:
                if attempt == 4:
                    raise
                time.sleep(1.0)

    try:
        await _call("delete execution", where, delete, call_s * 8)
    except CloudRunError as exc:
        return (
            f"the execution {execution} still holds the load token in its overrides "
            f"(deleting it failed: {exc}); delete it with `gcloud run jobs executions "
            f"delete {execution.rsplit('/', 1)[-1]}` and rotate the token"
        )
    return ""


async def run_load_job(
    settings: Settings,
    plan: LoadPlan,
    *,
    token: str = "",
    poll_interval_s: float = 1.0,
    settle_s: float = 10.0,
) -> JobLoadRun:
    """Create or update the load job, run one execution, wait for it, read and merge.

    Args:
        settings: ``[cloudrun]`` (project, api_endpoint), ``[load]`` (job, tasks, image...).
        plan: the whole test's plan (each task runs its shard).
        token: the auth token inside ``plan`` (moved to ``RUNBOOK_LOAD_TOKEN``).
        poll_interval_s: between execution polls.
        settle_s: after the execution ends, how long to keep reading for lines that
            Cloud Logging has not yet made visible.

    Raises:
        CloudRunError: an API call failed (the message says which and why).
    """
    t0 = time.monotonic()
    api = await asyncio.to_thread(_Jobs, settings)
    rv2 = api.run_v2
    where = api.endpoint or "https://run.googleapis.com"
    call_s = settings.timeouts.cloudrun_s
    name = job_path(settings)
    parent, _, job_id = name.rpartition("/jobs/")
    run_id = uuid.uuid4().hex[:16]
    body = job_body(settings, plan, run_id, token)
    job = rv2.Job.from_json(json.dumps(body), ignore_unknown_fields=False)

    from google.api_core import exceptions as gexc

    def upsert() -> None:
        try:
            api.jobs.get_job(name=name, timeout=call_s)
        except gexc.NotFound:
            op = api.jobs.create_job(parent=parent, job=job, job_id=job_id, timeout=call_s)
        else:
            job.name = name
            op = api.jobs.update_job(job=job, timeout=call_s)
        op.result(timeout=call_s)

    await _call("create/update job", where, upsert, call_s * 3)
    request = rv2.RunJobRequest.from_json(
        json.dumps({"name": name, "overrides": run_overrides(token)}), ignore_unknown_fields=False
    )
    op = await _call(
        "run", where, lambda: api.jobs.run_job(request=request, timeout=call_s), call_s
    )
    execution = op.metadata.name if op.metadata is not None else ""
    if not execution:
        raise CloudRunError(f"Cloud Run Jobs run at {where} returned no execution name")

    deadline = time.monotonic() + execution_budget_s(settings) - 3 * call_s
    ex = None
    while True:
        ex = await _call(
            "get execution",
            where,
            lambda: api.executions.get_execution(name=execution, timeout=call_s),
            call_s,
        )
        if ex.completion_time:
            break
        if time.monotonic() >= deadline:
            break
        await asyncio.sleep(min(poll_interval_s, max(0.0, deadline - time.monotonic())))
    finished = bool(ex.completion_time)
    if not finished:
        # Never leave load running against the service after the runbook gave up on it.
        await _call(
            "cancel execution",
            where,
            lambda: api.executions.cancel_execution(name=execution, timeout=call_s),
            call_s,
        )
    tasks = await _call(
        "list tasks",
        where,
        lambda: list(api.tasks.list_tasks(parent=execution, timeout=call_s)),
        call_s,
    )
    failures: dict[int, str] = {}
    for t in tasks:
        res = t.last_attempt_result
        code = res.status.code if res and res.status else 0
        done = any(
            c.type_ == "Completed" and c.state == rv2.Condition.State.CONDITION_SUCCEEDED
            for c in t.conditions
        )
        if code or not done:
            why = (res.status.message if res and res.status else "") or "did not complete"
            failures[int(t.index)] = why

    count = int(ex.task_count or settings.load.tasks)
    records = await read_task_results(settings, name, run_id)
    merged = merge_results(records, count)
    settle_until = time.monotonic() + settle_s
    while (
        merged.missing and time.monotonic() < settle_until and set(merged.missing) - set(failures)
    ):
        # Log lines can show up a little after the task ends (Cloud Logging ingestion).
        await asyncio.sleep(min(1.0, poll_interval_s))
        records = await read_task_results(settings, name, run_id)
        merged = merge_results(records, count)
    cleared = await _clear_token(api, execution, where, call_s) if token else ""
    return JobLoadRun(
        token_note=cleared,
        job=name,
        execution=execution,
        run_id=run_id,
        task_count=count,
        succeeded_count=int(ex.succeeded_count),
        failed_count=int(ex.failed_count),
        cancelled_count=int(ex.cancelled_count),
        finished=finished,
        task_failures=failures,
        merged=merged,
        duration_s=time.monotonic() - t0,
        records=records,
    )
