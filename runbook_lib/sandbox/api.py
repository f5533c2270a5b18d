"""The sandbox emulator's HTTP face: a FastAPI app with Google's REST routes.

- ``GET /v2/projects/*/locations/*/services``                list services
- ``GET /v2/projects/*/locations/*/services/*``              get service
- ``PATCH /v2/projects/*/locations/*/services/*``            update (deploy / traffic)
- ``GET /v2/projects/*/locations/*/services/*/revisions``    list revisions (no promised order)
- ``GET /v2/projects/*/locations/*/services/*/revisions/*``  get revision
- ``GET /v2/projects/*/locations/*/operations/*``            long-running operation
- ``POST /v2/entries:list``                                  Cloud Logging read
- ``GET /sandbox/state``                                     the sandbox's own view

Each call first asks for the IAM permission Google checks (``run.services.get``,
``run.services.update``, ``iam.serviceAccounts.actAs`` for a new template,
``logging.logEntries.list``...); one the sandbox was told to deny
(``runbook sandbox up --deny PERMISSION``) is a 403 PERMISSION_DENIED worded as
Google words it.

Cloud Run Jobs (issue 13; state in :mod:`.jobs`):

- ``POST /v2/projects/*/locations/*/jobs?jobId=``            create job (operation)
- ``GET|PATCH /v2/projects/*/locations/*/jobs/*``            get / update job
- ``POST /v2/projects/*/locations/*/jobs/*:run``             run (operation; metadata = Execution)
- ``GET /v2/projects/*/locations/*/jobs/*/executions/*``     get execution
- ``GET /v2/projects/*/locations/*/jobs/*/executions/*/tasks``  list tasks
- ``POST /v2/projects/*/locations/*/jobs/*/executions/*:cancel``  cancel (kill its tasks)
- ``DELETE /v2/projects/*/locations/*/jobs/*/executions/*``  delete a finished execution
- ``POST /sandbox/jobs:killTask``                            test hook: kill the next run's task
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from . import wire
from .log_store import FilterError

if TYPE_CHECKING:
    from .emulator import CloudRunEmulator
    from .resources import ServiceState

__all__ = ["create_emulator_app"]


def _error(code: int, status: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "status": status}}, status_code=code
    )


# The runtime service account a revision runs as (what a deploy must be allowed to actAs).
RUNTIME_SERVICE_ACCOUNT = "sandbox@sandbox-project.iam.gserviceaccount.com"


def _forbidden(emulator: CloudRunEmulator, permission: str, resource: str) -> JSONResponse | None:
    """Google's 403 when ``permission`` is denied to the caller, else None."""
    if permission.lower() not in emulator.denied:
        return None
    if permission.lower() == "iam.serviceaccounts.actas":
        message = (
            f"Permission 'iam.serviceaccounts.actAs' denied on service account "
            f"{resource} (or it may not exist)."
        )
    elif permission.startswith("logging."):
        message = f"Permission '{permission}' denied on resource (or it may not exist)."
    else:
        message = f"Permission '{permission}' denied on resource '{resource}' (or resource may not exist)."
    return _error(403, "PERMISSION_DENIED", message)


def _revision_order(rev: Any) -> str:
    # revisions.list promises no order: answer a stable but arbitrary one (by uid), so a
    # caller that trusts the first page to hold the newest revisions is caught.
    return str(rev.uid)


def create_emulator_app(
    emulator: CloudRunEmulator, extra_state: Callable[[], dict[str, Any]] | None = None
) -> FastAPI:
    """The FastAPI app serving the Admin API v2 subset and ``entries:list``.

    Args:
        emulator: the state to serve.
        extra_state: adds daemon facts (pids, urls) to ``GET /sandbox/state``.
    """
    app = FastAPI(
        title="Cloud Run Admin API v2 + Cloud Logging (sandbox emulator)",
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    svc_re = r"projects/[^/]+/locations/[^/]+/services/[^/:]+"

    def find(full: str, permission: str = "run.services.get") -> ServiceState | JSONResponse:
        if (denied := _forbidden(emulator, permission, full)) is not None:
            return denied
        svc = emulator.service(full)
        if svc is None:
            return _error(404, "NOT_FOUND", f"Resource '{full}' was not found")
        return svc

    @app.get("/v2/{path:path}", response_model=None)
    async def get_any(path: str, request: Request) -> Any:
        if (answer := jobs_get(path, request)) is not None:
            return answer
        if m := re.fullmatch(r"(projects/[^/]+/locations/[^/]+)/services", path):
            return list_services(m.group(1), request)
        if re.fullmatch(svc_re, path):
            svc = find(path)
            return svc if isinstance(svc, JSONResponse) else emulator.service_json(svc)
        if m := re.fullmatch(rf"({svc_re})/revisions", path):
            svc = find(m.group(1), "run.revisions.list")
            if isinstance(svc, JSONResponse):
                return svc
            revs = sorted(svc.revisions.values(), key=_revision_order)
            try:
                size = int(request.query_params.get("pageSize") or 100) or 100
                token = request.query_params.get("pageToken") or ""
                start = int(token) if token else 0
            except ValueError:
                return _error(400, "INVALID_ARGUMENT", "invalid pageSize or pageToken")
            page = revs[start : start + size]
            body: dict[str, Any] = {"revisions": [emulator.revision_json(r) for r in page]}
            if start + size < len(revs):
                body["nextPageToken"] = str(start + size)
            return body
        if m := re.fullmatch(rf"({svc_re})/revisions/([^/]+)", path):
            svc = find(m.group(1), "run.revisions.get")
            if isinstance(svc, JSONResponse):
                return svc
            rev = svc.revisions.get(m.group(2))
            if rev is None:
                return _error(404, "NOT_FOUND", f"Resource '{path}' was not found")
            return emulator.revision_json(rev)
        if re.fullmatch(r"projects/[^/]+/locations/[^/]+/operations/[^/]+", path):
            if (denied := _forbidden(emulator, "run.operations.get", path)) is not None:
                return denied
            op = emulator.operations.get(path)
            if op is None:
                return _error(404, "NOT_FOUND", f"Operation '{path}' was not found")
            return emulator.operation_json(op)
        return _error(404, "NOT_FOUND", f"Requested entity was not found: /v2/{path}")

    def list_services(parent: str, request: Request) -> Any:
        # services.list: every service under projects/P/locations/L, paged like revisions.
        if (denied := _forbidden(emulator, "run.services.list", parent)) is not None:
            return denied
        found = sorted(
            (s for s in emulator.services.values() if s.full_name.startswith(parent + "/")),
            key=lambda s: s.name,
        )
        try:
            size = int(request.query_params.get("pageSize") or 100) or 100
            token = request.query_params.get("pageToken") or ""
            start = int(token) if token else 0
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "invalid pageSize or pageToken")
        body: dict[str, Any] = {
            "services": [emulator.service_json(s) for s in found[start : start + size]]
        }
        if start + size < len(found):
            body["nextPageToken"] = str(start + size)
        return body

    @app.patch("/v2/{path:path}", response_model=None)
    async def patch_service(path: str, request: Request) -> Any:
        if (answer := await jobs_patch(path, request)) is not None:
            return answer
        if not re.fullmatch(svc_re, path):
            return _error(404, "NOT_FOUND", f"Requested entity was not found: /v2/{path}")
        svc = find(path, "run.services.update")
        if isinstance(svc, JSONResponse):
            return svc
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "request body is not valid JSON")
        if not isinstance(body, dict):
            return _error(400, "INVALID_ARGUMENT", "request body must be a Service object")
        mask_raw = request.query_params.get("updateMask")
        mask = [p for p in mask_raw.split(",") if p] if mask_raw else None
        template_in = (
            "template" in body
            if mask is None
            else any(p == "template" or p.startswith("template.") for p in mask)
        )
        if template_in:
            # Deploying a revision runs it as its service account: the caller must actAs it.
            denied = _forbidden(emulator, "iam.serviceAccounts.actAs", RUNTIME_SERVICE_ACCOUNT)
            if denied is not None:
                return denied
        etag = str(body.get("etag") or "")
        current = str(emulator.service_json(svc)["etag"])
        if etag and etag != current:
            return _error(
                409,
                "ABORTED",
                f"The service '{svc.name}' was modified since it was read: the request's "
                f"etag {etag} does not match the current etag {current}. Read the service "
                "again and retry.",
            )
        from .emulator import RevisionExistsError

        flag = ("true", "True", "1")
        try:
            op = emulator.update_service(
                svc,
                body,
                mask,
                force=request.query_params.get("forceNewRevision") in flag,
                validate_only=request.query_params.get("validateOnly") in flag,
            )
        except RevisionExistsError as exc:
            return _error(409, "ALREADY_EXISTS", str(exc))
        except ValueError as exc:
            return _error(400, "INVALID_ARGUMENT", str(exc))
        return emulator.operation_json(op)

    @app.post("/v2/entries:list", response_model=None)
    async def entries_list(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "INVALID_ARGUMENT", "request body is not valid JSON")
        if not isinstance(body, dict) or not body.get("resourceNames"):
            return _error(400, "INVALID_ARGUMENT", "resourceNames is required")
        if (denied := _forbidden(emulator, "logging.logEntries.list", "")) is not None:
            return denied
        try:
            return emulator.logs.query(
                resource_names=body.get("resourceNames") or [],
                filter_text=str(body.get("filter") or ""),
                order_by=str(body.get("orderBy") or ""),
                page_size=int(body.get("pageSize") or 50),
                page_token=str(body.get("pageToken") or ""),
            )
        except (FilterError, ValueError) as exc:
            return _error(400, "INVALID_ARGUMENT", f"Invalid filter or request: {exc}")

    @app.get("/sandbox/state", response_model=None)
    async def sandbox_state() -> Any:
        services = []
        for svc in emulator.services.values():
            split: dict[str, int] = {}
            for rev, pct, _ in svc.resolved_traffic():
                split[rev] = split.get(rev, 0) + pct
            services.append(
                {
                    "name": svc.full_name,
                    "uri": svc.uri,
                    "revisions": [
                        {
                            "name": r.name,
                            "profile": r.profile,
                            "image": r.image,
                            "ready": r.ready,
                            "message": r.message,
                            "pid": r.pid,
                            "port": r.port,
                            "percent": split.get(r.name, 0),
                        }
                        for r in sorted(
                            svc.revisions.values(), key=lambda r: r.create_time, reverse=True
                        )
                    ],
                    "traffic": svc.traffic,
                    "tags": {
                        tag: {"revision": svc.tagged(tag), "url": url}
                        for tag, url in sorted(svc.tag_uris.items())
                    },
                }
            )
        return {"services": services, **(extra_state() if extra_state else {})}

    # Registered last: the Jobs POST catch-all must not shadow ``entries:list``; the GET and
    # PATCH catch-alls above consult these handlers first (looked up when a request comes).
    jobs_get, jobs_patch = _jobs_routes(app, emulator)
    return app


_JOB_RE = r"projects/[^/]+/locations/[^/]+/jobs/[^/:]+"


async def _json_body(request: Request) -> dict[str, Any] | JSONResponse:
    raw = await request.body()
    if not raw.strip():
        return {}
    try:
        body = await request.json()
    except ValueError:
        return _error(400, "INVALID_ARGUMENT", "request body is not valid JSON")
    if not isinstance(body, dict):
        return _error(400, "INVALID_ARGUMENT", "request body must be a JSON object")
    return body


def _jobs_routes(app: FastAPI, emulator: CloudRunEmulator) -> tuple[Any, Any]:
    """Add the Jobs POST routes; return the GET and PATCH handlers the catch-alls consult
    first (each answers None for a path that is not a job's)."""
    jobs = emulator.jobs

    def not_found(path: str) -> JSONResponse:
        return _error(404, "NOT_FOUND", f"Resource '{path}' was not found")

    def jobs_get(path: str, request: Request) -> Any:
        if re.fullmatch(r"projects/[^/]+/locations/[^/]+/operations/[^/]+", path):
            op = jobs.operations.get(path)
            if op is not None and (no := _forbidden(emulator, "run.operations.get", path)):
                return no
            return None if op is None else wire.job_operation_json(op.name, op.target)
        for pattern, permission in (
            (_JOB_RE, "run.jobs.get"),
            (rf"{_JOB_RE}/executions/[^/]+", "run.executions.get"),
            (rf"{_JOB_RE}/executions/[^/]+/tasks", "run.tasks.list"),
        ):
            if re.fullmatch(pattern, path) and (no := _forbidden(emulator, permission, path)):
                return no
        if re.fullmatch(_JOB_RE, path):
            job = jobs.job(path)
            return not_found(path) if job is None else wire.job_json(job)
        if re.fullmatch(rf"{_JOB_RE}/executions/[^/]+", path):
            ex = jobs.execution(path)
            return not_found(path) if ex is None else wire.execution_json(ex)
        if m := re.fullmatch(rf"({_JOB_RE}/executions/[^/]+)/tasks", path):
            ex = jobs.execution(m.group(1))
            if ex is None:
                return not_found(m.group(1))
            return {"tasks": [wire.task_json(ex, t) for t in ex.tasks]}
        return None

    async def jobs_patch(path: str, request: Request) -> Any:
        if not re.fullmatch(_JOB_RE, path):
            return None
        job = jobs.job(path)
        permission = "run.jobs.update" if job is not None else "run.jobs.create"
        if (no := _forbidden(emulator, permission, path)) is not None:
            return no
        # A job's tasks run as its service account: writing the job needs actAs on it.
        if no := _forbidden(emulator, "iam.serviceAccounts.actAs", RUNTIME_SERVICE_ACCOUNT):
            return no
        if job is None:
            if request.query_params.get("allowMissing") not in ("true", "True", "1"):
                return not_found(path)
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            if job is None:
                parent, _, job_id = path.rpartition("/jobs/")
                op = jobs.create_job(parent, job_id, body)
            else:
                op = jobs.update_job(job, body)
        except ValueError as exc:
            return _error(400, "INVALID_ARGUMENT", str(exc))
        return wire.job_operation_json(op.name, op.target)

    @app.post("/v2/{path:path}", response_model=None)
    async def jobs_post(path: str, request: Request) -> Any:
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        for pattern, permission in (
            (r"projects/[^/]+/locations/[^/]+/jobs", "run.jobs.create"),
            (rf"{_JOB_RE}:run", "run.jobs.run"),
            (rf"{_JOB_RE}/executions/[^/]+:cancel", "run.executions.cancel"),
        ):
            if re.fullmatch(pattern, path) and (no := _forbidden(emulator, permission, path)):
                return no
        if m := re.fullmatch(r"(projects/[^/]+/locations/[^/]+)/jobs", path):
            if no := _forbidden(emulator, "iam.serviceAccounts.actAs", RUNTIME_SERVICE_ACCOUNT):
                return no
            try:
                op = jobs.create_job(m.group(1), request.query_params.get("jobId", ""), body)
            except KeyError:
                return _error(409, "ALREADY_EXISTS", f"Resource '{path}' already exists")
            except ValueError as exc:
                return _error(400, "INVALID_ARGUMENT", str(exc))
            return wire.job_operation_json(op.name, op.target)
        if m := re.fullmatch(rf"({_JOB_RE}):run", path):
            job = jobs.job(m.group(1))
            if job is None:
                return not_found(m.group(1))
            overrides = body.get("overrides") if isinstance(body.get("overrides"), dict) else None
            try:
                op = jobs.run_job(job, overrides)
            except ValueError as exc:
                return _error(400, "INVALID_ARGUMENT", str(exc))
            return wire.job_operation_json(op.name, op.target)
        if m := re.fullmatch(rf"({_JOB_RE}/executions/[^/]+):cancel", path):
            ex = jobs.execution(m.group(1))
            if ex is None:
                return not_found(m.group(1))
            op = jobs.cancel(ex)
            return wire.job_operation_json(op.name, op.target)
        return _error(404, "NOT_FOUND", f"Requested entity was not found: /v2/{path}")

    @app.delete("/v2/{path:path}", response_model=None)
    async def jobs_delete(path: str, request: Request) -> Any:
        if not re.fullmatch(rf"{_JOB_RE}/executions/[^/]+", path):
            return _error(404, "NOT_FOUND", f"Requested entity was not found: /v2/{path}")
        ex = jobs.execution(path)
        if ex is None:
            return not_found(path)
        try:
            op = jobs.delete_execution(ex)
        except ValueError as exc:
            return _error(400, "FAILED_PRECONDITION", str(exc))
        return wire.job_operation_json(op.name, op.target)

    @app.post("/sandbox/jobs:killTask", response_model=None)
    async def kill_task(request: Request) -> Any:
        body = await _json_body(request)
        if isinstance(body, JSONResponse):
            return body
        try:
            jobs.kill_next(int(body["task_index"]), float(body.get("after_s", 0.0)))
        except (KeyError, TypeError, ValueError):
            return _error(400, "INVALID_ARGUMENT", "give task_index (int) and after_s (seconds)")
        return {"armed": body}

    return jobs_get, jobs_patch
