"""Cloud Run Jobs in the sandbox emulator: jobs, executions, tasks as local processes.

The subset the runbook's load fan-out uses (issue 13), with Google's REST shapes
(:mod:`.wire`): create / get / update a job, run it (a long-running operation whose
metadata is the Execution), get an execution, list its tasks. Each task is a real
local process, ``python -m runbook_lib.load.task`` (the load worker image's entry
point), started with the environment Cloud Run sets (``CLOUD_RUN_JOB``,
``CLOUD_RUN_EXECUTION``, ``CLOUD_RUN_TASK_INDEX``, ``CLOUD_RUN_TASK_COUNT``,
``CLOUD_RUN_TASK_ATTEMPT``) plus the job's container env. ``parallelism``,
``maxRetries`` and the task ``timeout`` are honoured; every stdout/stderr line goes
to the emulated Cloud Logging as Cloud Run writes job logs (resource type
``cloud_run_job``; a JSON line becomes ``jsonPayload``).

Task processes stay in the daemon's process group and get ``PR_SET_PDEATHSIG``; a
timed-out or killed task is killed with its whole process tree, and
:meth:`JobRunner.aclose` kills every running task when the emulator stops.

Test hook: :meth:`JobRunner.kill_next` (``POST /sandbox/jobs:killTask``) makes the
next execution's task ``index`` die by SIGKILL ``after_s`` after it starts, as a
task killed by the platform (out of memory, preempted) would.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import random
import signal
import string
import sys
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from .resources import ExecutionState, JobState, TaskState
from .wire import format_time

if TYPE_CHECKING:
    from .log_store import LogStore

__all__ = ["JobRunner", "task_command"]

log = logging.getLogger(__name__)

JOB_TYPE = "type.googleapis.com/google.cloud.run.v2.Job"
EXECUTION_TYPE = "type.googleapis.com/google.cloud.run.v2.Execution"
# What a task inherits from the daemon (Cloud Run gives a clean container environment).
_INHERITED = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH", "SYSTEMROOT")


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()


def _pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL)  # PR_SET_PDEATHSIG: die with the daemon


def task_command() -> list[str]:
    """The command line of one task (the load worker image's entry point)."""
    return [sys.executable, "-m", "runbook_lib.load.task"]


def _seconds(text: Any, default: float) -> float:
    raw = str(text or "").strip()
    try:
        return float(raw[:-1]) if raw.endswith("s") else float(raw) if raw else default
    except ValueError as exc:
        raise ValueError(f"invalid duration {text!r}: use e.g. '300s'") from exc


def _suffix(n: int = 5) -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=n))


@dataclass
class _Operation:
    name: str
    kind: str  # "job" | "execution"
    target: JobState | ExecutionState


def _validate_template(template: Any) -> dict[str, Any]:
    """The Job's ExecutionTemplate, checked the way the API refuses bad ones."""
    if not isinstance(template, Mapping):
        raise ValueError("job.template is required (an ExecutionTemplate)")
    inner = template.get("template")
    if not isinstance(inner, Mapping) or not inner.get("containers"):
        raise ValueError("job.template.template.containers must name one container")
    containers = inner["containers"]
    if not isinstance(containers, list) or not isinstance(containers[0], Mapping):
        raise ValueError("job.template.template.containers must be a list of containers")
    if not containers[0].get("image"):
        raise ValueError("job.template.template.containers[0].image is required")
    count = int(template.get("taskCount") or 1)
    if not 1 <= count <= 10_000:
        raise ValueError(f"taskCount must be in [1, 10000], got {count}")
    if int(template.get("parallelism") or 0) < 0:
        raise ValueError("parallelism must be >= 0")
    if int(inner.get("maxRetries") or 0) < 0:
        raise ValueError("maxRetries must be >= 0")
    _seconds(inner.get("timeout"), 600.0)
    return dict(template)


def _override_containers(inner: dict[str, Any], overrides: Any) -> dict[str, Any]:
    """The task template with ``RunJobRequest.overrides.containerOverrides`` applied: each
    override's ``env`` replaces or adds variables of the container it names (the only
    container when it names none), ``args`` replace the arguments (``clearArgs`` empties
    them), for this execution only."""
    if not isinstance(overrides, list):
        raise ValueError("overrides.containerOverrides must be a list")
    containers = [dict(c) for c in inner.get("containers") or []]
    for o in overrides:
        if not isinstance(o, Mapping):
            raise ValueError("overrides.containerOverrides[] must be objects")
        name = o.get("name") or ""
        target = next((c for c in containers if (c.get("name") or "") == name), None)
        if target is None:
            if name or len(containers) != 1:
                raise ValueError(f"container override names no container of the job: {name!r}")
            target = containers[0]
        env = {str(v["name"]): v for v in target.get("env") or [] if isinstance(v, Mapping)}
        for var in o.get("env") or []:
            if not isinstance(var, Mapping) or not var.get("name"):
                raise ValueError("overrides.containerOverrides[].env[] needs a name")
            env[str(var["name"])] = dict(var)
        target["env"] = list(env.values())
        if o.get("clearArgs"):
            target["args"] = []
        elif o.get("args"):
            target["args"] = list(o["args"])
    return {**inner, "containers": containers}


class JobRunner:
    """Jobs, executions and their task processes for the emulator.

    Args:
        project: project id of every job.
        region: location of every job.
        logs: the emulated Cloud Logging store task output goes to.
        command: the task command line (default :func:`task_command`).
    """

    def __init__(
        self,
        *,
        project: str,
        region: str,
        logs: LogStore,
        command: list[str] | None = None,
    ) -> None:
        self.project = project
        self.region = region
        self.logs = logs
        self.command = command or task_command()
        self.jobs: dict[str, JobState] = {}
        self.operations: dict[str, _Operation] = {}
        self._procs: dict[int, asyncio.subprocess.Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._kill_next: dict[int, float] = {}
        self._closing = False

    # ------------------------------------------------------------ jobs

    def job(self, full_name: str) -> JobState | None:
        return self.jobs.get(full_name)

    def create_job(self, parent: str, job_id: str, body: Mapping[str, Any]) -> _Operation:
        """``jobs.create``: the job exists at once (the operation is done).

        Raises:
            ValueError: bad id or template (400); KeyError: the job exists (409).
        """
        m = parent.split("/")
        if len(m) != 4 or m[0] != "projects" or m[2] != "locations":
            raise ValueError(f"invalid parent {parent!r}")
        if not job_id or not all(c.isalnum() or c == "-" for c in job_id) or len(job_id) > 63:
            raise ValueError(f"invalid jobId {job_id!r}: lowercase letters, digits and '-'")
        full = f"{parent}/jobs/{job_id}"
        if full in self.jobs:
            raise KeyError(full)
        job = JobState(
            project=m[1],
            region=m[3],
            name=job_id,
            template=_validate_template(body.get("template")),
            labels=dict(body.get("labels") or {}),
        )
        self.jobs[full] = job
        return self._operation("job", job)

    def update_job(self, job: JobState, body: Mapping[str, Any]) -> _Operation:
        """``jobs.patch``: replace the template (a new generation)."""
        job.template = _validate_template(body.get("template"))
        if "labels" in body:
            job.labels = dict(body.get("labels") or {})
        job.generation += 1
        job.update_time = datetime.now(UTC)
        return self._operation("job", job)

    def _operation(self, kind: str, target: JobState | ExecutionState) -> _Operation:
        where = target.job if isinstance(target, ExecutionState) else target
        name = f"projects/{where.project}/locations/{where.region}/operations/{uuid.uuid4()}"
        op = _Operation(name, kind, target)
        self.operations[name] = op
        return op

    # ------------------------------------------------------------ executions

    def execution(self, full_name: str) -> ExecutionState | None:
        job_name, _, short = full_name.partition("/executions/")
        job = self.jobs.get(job_name)
        if job is None:
            return None
        return next((e for e in job.executions if e.name == short), None)

    def kill_next(self, index: int, after_s: float = 0.0) -> None:
        """Test hook: the next execution's task ``index`` is SIGKILLed ``after_s`` in."""
        self._kill_next[int(index)] = max(0.0, float(after_s))

    def run_job(self, job: JobState, overrides: Mapping[str, Any] | None = None) -> _Operation:
        """``jobs.run``: start an execution; the operation is done when it completes."""
        tmpl = job.template
        inner = dict(tmpl.get("template") or {})
        count = int(tmpl.get("taskCount") or 1)
        timeout = _seconds(inner.get("timeout"), 600.0)
        if overrides:
            count = int(overrides.get("taskCount") or count)
            timeout = _seconds(overrides.get("timeout"), timeout)
            inner = _override_containers(inner, overrides.get("containerOverrides") or [])
        ex = ExecutionState(
            name=f"{job.name}-{_suffix()}",
            job=job,
            task_count=count,
            parallelism=int(tmpl.get("parallelism") or 0) or count,
            max_retries=int(inner.get("maxRetries") or 0),
            timeout_s=timeout,
            template=inner,
        )
        ex.tasks = [TaskState(i) for i in range(count)]
        job.executions.append(ex)
        kills, self._kill_next = self._kill_next, {}
        task = asyncio.get_running_loop().create_task(self._execute(ex, kills))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return self._operation("execution", ex)

    def delete_execution(self, ex: ExecutionState) -> _Operation:
        """``executions.delete``: forget a finished execution (and the overrides it held)."""
        if not ex.done:
            raise ValueError(f"execution {ex.name} is still running: cancel it first")
        ex.job.executions.remove(ex)
        return self._operation("execution", ex)

    async def _execute(self, ex: ExecutionState, kills: dict[int, float]) -> None:
        ex.start_time = datetime.now(UTC)
        gate = asyncio.Semaphore(ex.parallelism)

        async def one(t: TaskState) -> None:
            async with gate:
                for attempt in range(ex.max_retries + 1):
                    if ex.cancelled:
                        t.state, t.message = "CANCELLED", "the execution was cancelled"
                        break
                    t.attempt, t.retried = attempt, attempt
                    code, why = await self._attempt(ex, t, kills.pop(t.index, None))
                    t.exit_code = code
                    if code == 0:
                        t.state, t.message = "SUCCEEDED", ""
                        break
                    t.state, t.message = "FAILED", why
                    if self._closing or ex.cancelled:
                        t.state = "CANCELLED" if ex.cancelled else t.state
                        break
                t.completion_time = datetime.now(UTC)

        try:
            await asyncio.gather(*(one(t) for t in ex.tasks))
        finally:
            for t in ex.tasks:
                if t.state in ("PENDING", "RUNNING"):
                    t.state, t.message = "CANCELLED", "the emulator stopped"
            ex.completion_time = datetime.now(UTC)

    async def _attempt(
        self, ex: ExecutionState, t: TaskState, kill_after: float | None
    ) -> tuple[int | None, str]:
        env = {k: os.environ[k] for k in _INHERITED if k in os.environ}
        container = (ex.template.get("containers") or [{}])[0]
        for var in container.get("env") or []:
            if isinstance(var, Mapping) and var.get("name"):
                env[str(var["name"])] = str(var.get("value", ""))
        env.update(
            CLOUD_RUN_JOB=ex.job.name,
            CLOUD_RUN_EXECUTION=ex.name,
            CLOUD_RUN_TASK_INDEX=str(t.index),
            CLOUD_RUN_TASK_COUNT=str(ex.task_count),
            CLOUD_RUN_TASK_ATTEMPT=str(t.attempt),
            PYTHONUNBUFFERED="1",
        )
        t.state, t.start_time, t.exit_code = "RUNNING", datetime.now(UTC), None
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.command,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=env,
                preexec_fn=_pdeathsig,
                limit=1 << 24,
            )
        except OSError as exc:
            self._log(ex, t, "ERROR", f"Task could not start: {exc}")
            return None, f"the container could not start: {exc}"
        t.pid = proc.pid
        self._procs[proc.pid] = proc
        ex.pids.add(proc.pid)
        assert proc.stdout is not None and proc.stderr is not None
        pumps = [
            asyncio.create_task(self._pump(proc.stdout, ex, t, "stdout")),
            asyncio.create_task(self._pump(proc.stderr, ex, t, "stderr")),
        ]
        killer = (
            asyncio.create_task(self._kill_later(proc, kill_after))
            if kill_after is not None
            else None
        )
        why = ""
        try:
            await asyncio.wait_for(proc.wait(), ex.timeout_s)
        except TimeoutError:
            _kill_tree(proc.pid)
            await proc.wait()
            why = f"Task exceeded its timeout of {ex.timeout_s:g}s and was killed"
        finally:
            if killer is not None:
                killer.cancel()
            if proc.returncode is None:  # cancelled: the emulator is stopping
                _kill_tree(proc.pid)
                with contextlib.suppress(Exception):
                    await asyncio.shield(proc.wait())
            self._procs.pop(proc.pid, None)
            ex.pids.discard(proc.pid)
            await asyncio.gather(*pumps, return_exceptions=True)
        code = proc.returncode
        if not why and code:
            why = (
                f"Task was killed by signal {-code}"
                if code < 0
                else f"Task exited with code {code}"
            )
        if why:
            self._log(ex, t, "ERROR", f"Task {t.index} attempt {t.attempt}: {why}")
        return (None if why.startswith("Task exceeded") else code), why

    def cancel(self, ex: ExecutionState) -> _Operation:
        """``executions.cancel``: kill the running tasks, start no more."""
        ex.cancelled = True
        for pid in list(ex.pids):
            _kill_tree(pid)
        return self._operation("execution", ex)

    async def _kill_later(self, proc: asyncio.subprocess.Process, after_s: float) -> None:
        await asyncio.sleep(after_s)
        if proc.returncode is None:
            _kill_tree(proc.pid)

    async def _pump(
        self, stream: asyncio.StreamReader, ex: ExecutionState, t: TaskState, name: str
    ) -> None:
        while True:
            try:
                line = await stream.readline()
            except (ValueError, asyncio.LimitOverrunError):
                continue  # an over-long line is dropped, as Cloud Logging truncates
            if not line:
                return
            self.log_line(ex, t, line.decode("utf-8", "replace"), name)

    # ------------------------------------------------------------ logs

    def log_line(self, ex: ExecutionState, t: TaskState, line: str, stream: str) -> None:
        """One line a task printed: a JSON object is ``jsonPayload``, else ``textPayload``."""
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        payload: Any = None
        if line.lstrip().startswith("{"):
            with contextlib.suppress(ValueError):
                payload = json.loads(line)
        if isinstance(payload, dict):
            sev = str(payload.get("severity") or "DEFAULT").upper()
            self._append(ex, t, stream, sev, json_payload=payload)
        else:
            sev = "ERROR" if stream == "stderr" and "Error" in line else "DEFAULT"
            self._append(ex, t, stream, sev, text=line)

    def _log(self, ex: ExecutionState, t: TaskState, severity: str, text: str) -> None:
        self._append(ex, t, "varlog/system", severity, text=text)

    def _append(
        self,
        ex: ExecutionState,
        t: TaskState,
        stream: str,
        severity: str,
        *,
        text: str = "",
        json_payload: dict[str, Any] | None = None,
    ) -> None:
        job = ex.job
        now = format_time(datetime.now(UTC))
        entry: dict[str, Any] = {
            "logName": f"projects/{job.project}/logs/run.googleapis.com%2F{stream.replace('/', '%2F')}",
            "resource": {
                "type": "cloud_run_job",
                "labels": {
                    "project_id": job.project,
                    "location": job.region,
                    "job_name": job.name,
                    # Google keeps these two as entry labels (below); the resource copies
                    # let a filter on resource.labels find them too.
                    "execution_name": ex.name,
                    "task_index": str(t.index),
                },
            },
            "timestamp": now,
            "receiveTimestamp": now,
            "severity": severity,
            "labels": {
                "run.googleapis.com/execution_name": ex.name,
                "run.googleapis.com/task_index": str(t.index),
                "run.googleapis.com/task_attempt": str(t.attempt),
                "instanceId": f"sandbox-task-{t.pid or 0}",
            },
        }
        if json_payload is not None:
            entry["jsonPayload"] = json_payload
        else:
            entry["textPayload"] = text
        self.logs.append(entry)

    # ------------------------------------------------------------ lifecycle

    async def aclose(self) -> None:
        """Kill every running task (with its process tree) and wait for the executions."""
        self._closing = True
        for pid in list(self._procs):
            _kill_tree(pid)
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and every descendant (a task's own load workers included)."""
    try:
        import psutil

        parent = psutil.Process(pid)
        victims = [*parent.children(recursive=True), parent]
    except Exception:  # gone already, or psutil missing: kill what we know
        victims = []
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for proc in victims:
        with contextlib.suppress(Exception):
            proc.kill()
