"""The Cloud Run state machine behind the sandbox's Admin API v2 emulator.

The emulator owns the *state* (services, revisions, traffic and tags,
operations, logs) and its rules: a new revision only for a changed template,
traffic that sums to 100 and names existing revisions, LATEST resolved to the
latest ready revision, revision tags with their own URLs. Starting and watching
revision processes is delegated to a :class:`RevisionRuntime` (the daemon's
supervisor), which feeds stdout lines and exits back through
:meth:`CloudRunEmulator.log_line` / :meth:`revision_exited`.

The rest of the emulator lives beside it: :mod:`.log_store` (Cloud Logging's
filter language), :mod:`.wire` (Google's JSON shapes) and :mod:`.api` (the
FastAPI app). The names they define are re-exported here for older imports.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import random
import re
import string
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from . import wire
from .jobs import JobRunner
from .log_store import SEVERITIES, LogStore
from .resources import OperationState, RevisionState, ServiceState
from .router import TagListeners, Upstream
from .wire import REQUEST_LOG_KEY, format_time, parse_time

__all__ = [
    "CloudRunEmulator",
    "RevisionExistsError",
    "RevisionRuntime",
    "RevisionStartError",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------ Cloud Run state


class RevisionExistsError(ValueError):
    """A revision of that name exists with another template (Google: 409)."""


class RevisionStartError(Exception):
    """A revision's container exited or never listened; the message says why."""


class RevisionRuntime(Protocol):
    """What starts revision processes (the daemon's supervisor)."""

    async def start(self, revision: RevisionState, sink: CloudRunEmulator) -> int:
        """Start ``revision``'s process and return its port once it listens.

        Raises:
            RevisionStartError: the process exited or did not listen in time.
        """
        ...

    async def stop(self, revision: RevisionState) -> None:
        """Stop ``revision``'s process (no-op when not running)."""
        ...


def _profile_of(image: str) -> str:
    from .profiles import profile_from_image

    return profile_from_image(image)


def _image_of(template: Mapping[str, Any]) -> str:
    containers = template.get("containers") or [{}]
    return str(containers[0].get("image", ""))


def _prune(value: Any) -> Any:
    # Proto3 JSON omits default values (0, false, ""), so a client echoing a
    # template back may drop keys we stored: compare without them.
    if isinstance(value, Mapping):
        pruned = {k: _prune(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in (None, False, 0, "", [], {})}
    if isinstance(value, list):
        return [_prune(v) for v in value]
    return value


def _template_key(template: Mapping[str, Any]) -> str:
    # A new revision is created only when the template really changes; the
    # revision name field is an output-only echo and does not count.
    body = {k: v for k, v in template.items() if k != "revision"}
    return json.dumps(_prune(body), sort_keys=True)


# Cloud Run tags: DNS-label characters, as they become part of a host name.
_TAG = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# Cloud Run refuses a tag whose length plus the service name's exceeds this.
TAG_AND_SERVICE_MAX = 46

_INGRESS = {
    1: "INGRESS_TRAFFIC_ALL",
    2: "INGRESS_TRAFFIC_INTERNAL_ONLY",
    3: "INGRESS_TRAFFIC_INTERNAL_LOAD_BALANCER",
    4: "INGRESS_TRAFFIC_NONE",
}


class CloudRunEmulator:
    """State and behaviour of the emulated Cloud Run services and their logs.

    Args:
        runtime: starts/stops revision processes.
        project: project id of every service.
        region: location of every service.
        tag_listeners: serves revision tags on their own URLs (default: one
            loopback port per tag on 127.0.0.1).
        deny: IAM permissions the caller lacks (``run.services.update``,
            ``iam.serviceAccounts.actAs``...): the calls that need one answer 403.
        log_delay_s: ingestion delay of Cloud Logging: an entry is listed this many
            seconds after its timestamp.
    """

    def __init__(
        self,
        runtime: RevisionRuntime,
        *,
        project: str,
        region: str,
        tag_listeners: TagListeners | None = None,
        deny: Iterable[str] = (),
        log_delay_s: float = 0.0,
    ) -> None:
        self.runtime = runtime
        # IAM permission names are case-insensitive in Google's answers
        # ("iam.serviceaccounts.actAs"), so they are compared lowercased.
        self.denied = {p.strip().lower() for p in deny if p.strip()}
        self.project = project
        self.region = region
        self.services: dict[str, ServiceState] = {}
        self.operations: dict[str, OperationState] = {}
        self.logs = LogStore(delay_s=log_delay_s)
        # Cloud Run Jobs (issue 13): task processes started and stopped with the emulator.
        self.jobs = JobRunner(project=project, region=region, logs=self.logs)
        self.tags = tag_listeners if tag_listeners is not None else TagListeners()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random()

    # ---------------------------------------------------------------- logs

    def system_log(self, rev: RevisionState, severity: str, text: str) -> None:
        """Record an entry written by the platform itself (not by the container)."""
        self._append(
            rev, "run.googleapis.com%2Fvarlog%2Fsystem", severity, text, None, datetime.now(UTC)
        )

    def log_line(self, rev: RevisionState, line: str, stream: str = "stdout") -> None:
        """Record one line the revision's process printed, as Cloud Run files it.

        A request-log record (the backend's private line, see
        :data:`~runbook_lib.sandbox.wire.REQUEST_LOG_KEY`) becomes a
        ``run.googleapis.com%2Frequests`` entry with ``httpRequest`` only and the
        severity Cloud Run gives requests (5xx ERROR, 4xx WARNING, else INFO). A JSON
        line becomes ``jsonPayload`` under ``stdout``/``stderr`` with ``severity`` and
        the time lifted out of it; any other line is a ``textPayload`` with no severity
        (``DEFAULT``), whatever it says.
        """
        line = line.rstrip("\r\n")
        if not line.strip():
            return
        data: Any = None
        if line.lstrip().startswith("{"):
            try:
                data = json.loads(line)
            except ValueError:
                data = None
        if isinstance(data, dict) and data.get("event") == "listening":
            return
        now = datetime.now(UTC)
        log_id = f"run.googleapis.com%2F{stream}"
        if not isinstance(data, dict):
            self._append(rev, log_id, "DEFAULT", line, None, now)
            return
        payload = dict(data)
        ts = now
        for key in ("timestamp", "time"):
            raw = payload.pop(key, None)
            if raw:
                try:
                    ts = parse_time(str(raw))
                except ValueError:
                    pass
        request = payload.get(REQUEST_LOG_KEY)
        if isinstance(request, dict):
            status = int(request.get("status") or 0)
            severity = "ERROR" if status >= 500 else "WARNING" if status >= 400 else "INFO"
            self._append(rev, "run.googleapis.com%2Frequests", severity, None, request, ts)
            return
        severity = str(payload.pop("severity", "") or "DEFAULT").upper()
        http = payload.pop("httpRequest", None)
        self._append(
            rev,
            log_id,
            severity if severity in SEVERITIES else "DEFAULT",
            payload,
            http if isinstance(http, dict) else None,
            ts,
        )

    def _append(
        self,
        rev: RevisionState,
        log_id: str,
        severity: str,
        payload: str | Mapping[str, Any] | None,
        http: Mapping[str, Any] | None,
        ts: datetime,
    ) -> None:
        svc = rev.service
        entry: dict[str, Any] = {
            "logName": f"projects/{svc.project}/logs/{log_id}",
            "resource": {
                "type": "cloud_run_revision",
                "labels": {
                    "project_id": svc.project,
                    "location": svc.region,
                    "service_name": svc.name,
                    "revision_name": rev.name,
                    "configuration_name": svc.name,
                },
            },
            "timestamp": format_time(ts),
            "receiveTimestamp": format_time(datetime.now(UTC)),
            "severity": severity,
            "labels": {"instanceId": f"sandbox-{rev.pid or 0}"},
        }
        if isinstance(payload, str) and payload:
            entry["textPayload"] = payload
        elif isinstance(payload, Mapping) and payload:
            entry["jsonPayload"] = dict(payload)
        if http:
            entry["httpRequest"] = dict(http)
        self.logs.append(entry)

    # ---------------------------------------------------------------- lifecycle

    def create_service(self, name: str, template: dict[str, Any], uri: str = "") -> ServiceState:
        """Register a service with no revision yet (the daemon then deploys into it)."""
        svc = ServiceState(
            project=self.project, region=self.region, name=name, template={}, uri=uri
        )
        self.services[svc.full_name] = svc
        return svc

    def service(self, full_name: str) -> ServiceState | None:
        """The service called ``full_name`` (``projects/*/locations/*/services/*``)."""
        return self.services.get(full_name)

    def update_service(
        self,
        svc: ServiceState,
        body: Mapping[str, Any],
        mask: Iterable[str] | None,
        *,
        force: bool = False,
        validate_only: bool = False,
    ) -> OperationState:
        """Apply an UpdateService request; returns the (possibly still running) operation.

        ``force`` creates a new revision even for an unchanged template
        (``forceNewRevision``); otherwise an unchanged template creates none.
        ``validate_only`` runs every check and answers the service as it would
        be, committing nothing (``validateOnly=true``).

        Raises:
            ValueError: invalid request (bad image, traffic not summing to 100, unknown
                revision, a tag too long with the service name, a revision not ready).
        """
        paths = {p.strip() for p in mask} if mask is not None else None

        def wanted(key: str) -> bool:
            if paths is None:
                return key in body and bool(body[key])
            return any(p == key or p.startswith(key + ".") for p in paths)

        new_template = None
        if wanted("template"):
            template = dict(body.get("template") or {})
            image = _image_of(template)
            if not image:
                raise ValueError("template.containers[0].image is required")
            _profile_of(image)  # a bad image is refused up front, as a registry miss would be
            named = str(template.get("revision") or "")
            if named and named in svc.revisions:
                if _template_key(template) != _template_key(svc.revisions[named].template):
                    raise RevisionExistsError(
                        f"Revision named {named!r} with different configuration already exists"
                    )
            elif force or named or _template_key(template) != _template_key(svc.template):
                # A new revision name is a change of its own (`--revision-suffix`).
                new_template = template
        new_traffic = None
        if wanted("traffic"):
            new_traffic = self._validate_traffic(
                svc,
                body.get("traffic") or [],
                creating=new_template is not None,
                new_name=str(new_template.get("revision") or "") if new_template else "",
            )
        ingress = svc.ingress
        if wanted("ingress") and body.get("ingress"):
            raw = body["ingress"]
            # The REST transport sends enums as numbers (enum-encoding=int).
            ingress = _INGRESS.get(int(raw), str(raw)) if str(raw).isdigit() else str(raw)
        if validate_only:
            op = OperationState(
                name=f"projects/{svc.project}/locations/{svc.region}/operations/{uuid.uuid4()}",
                service=svc,
                done=True,
            )
            would = self.service_json(svc)
            if new_template is not None:
                would["template"] = new_template
            if new_traffic is not None:
                would["traffic"] = new_traffic
            would["ingress"] = ingress
            op.response = would
            return op
        svc.ingress = ingress

        svc.generation += 1
        svc.update_time = datetime.now(UTC)
        op = OperationState(
            name=f"projects/{svc.project}/locations/{svc.region}/operations/{uuid.uuid4()}",
            service=svc,
        )
        self.operations[op.name] = op
        if new_traffic is not None:
            svc.traffic = new_traffic
            self._sync_tags(svc)
        if new_template is None:
            svc.observed_generation = svc.generation
            svc.failure = ""
            op.done = True
            op.response = self.service_json(svc)
            return op
        rev = self._new_revision(svc, new_template)
        svc.reconciling = True
        task = asyncio.get_running_loop().create_task(self._rollout(svc, rev, op))
        op.task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return op

    async def deploy(self, svc: ServiceState, image: str, *, force: bool = False) -> OperationState:
        """Deploy ``image`` into ``svc`` (as PATCH with a new template) and wait for the rollout."""
        template = json.loads(json.dumps(svc.template or _default_template(image)))
        template.setdefault("containers", [{}])[0]["image"] = image
        op = self.update_service(svc, {"template": template}, ["template"], force=force)
        if op.task is not None:
            await op.task
        return op

    def _validate_traffic(
        self,
        svc: ServiceState,
        targets: list[Mapping[str, Any]],
        creating: bool,
        new_name: str = "",
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        total = 0
        tags: set[str] = set()
        for t in targets:
            kind = t.get("type") or (
                "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
                if t.get("revision")
                else "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
            )
            if kind in (1, "1"):
                kind = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
            if kind in (2, "2"):
                kind = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"
            percent = int(t.get("percent", 0))
            if percent < 0 or percent > 100:
                raise ValueError(f"traffic percent {percent} out of range 0-100")
            entry: dict[str, Any] = {"type": kind, "percent": percent}
            if kind == "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION":
                rev = str(t.get("revision", "")).rsplit("/", 1)[-1]
                if rev not in svc.revisions and not (new_name and rev == new_name):
                    raise ValueError(f"Revision {rev!r} does not exist in service {svc.name!r}")
                # A failed revision can carry neither traffic nor a tag (Cloud Run
                # keeps the service not ready while any target names it).
                if (percent or t.get("tag")) and rev in svc.revisions:
                    if svc.revisions[rev].ready is False:
                        raise ValueError(f"Revision '{rev}' is not ready and cannot serve traffic.")
                entry["revision"] = rev
            elif kind != "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST":
                raise ValueError(f"unknown traffic target type {kind!r}")
            if t.get("tag"):
                tag = str(t["tag"])
                if not _TAG.fullmatch(tag):
                    raise ValueError(
                        f"tag {tag!r} is invalid: use lowercase letters, digits and hyphens, "
                        "starting with a letter"
                    )
                if len(tag) + len(svc.name) > TAG_AND_SERVICE_MAX:
                    # Google's wording (the tag becomes TAG---SERVICE in a host name).
                    raise ValueError(
                        f"traffic[].tag: traffic tag '{tag}' and service name '{svc.name}' "
                        "together are too long. Combined traffic tag and service name cannot "
                        f"exceed {TAG_AND_SERVICE_MAX} characters."
                    )
                if tag in tags:
                    raise ValueError(f"tag {tag!r} is used by more than one traffic target")
                tags.add(tag)
                entry["tag"] = tag
            total += percent
            out.append(entry)
        if total != 100:
            raise ValueError(f"traffic percents must sum to 100, got {total}")
        if (
            not svc.latest_ready
            and not creating
            and any(e["type"].endswith("LATEST") and e["percent"] for e in out)
        ):
            raise ValueError("no ready revision to route LATEST traffic to")
        return out

    def _new_revision(self, svc: ServiceState, template: dict[str, Any]) -> RevisionState:
        image = _image_of(template)
        number = len(svc.revisions) + 1
        suffix = "".join(self._rng.choice(string.ascii_lowercase) for _ in range(3))
        name = str(template.get("revision") or f"{svc.name}-{number:05d}-{suffix}")
        if name in svc.revisions:
            raise ValueError(f"revision {name!r} already exists")
        tmpl = dict(template)
        tmpl.pop("revision", None)
        rev = RevisionState(
            name=name,
            service=svc,
            image=image,
            profile=_profile_of(image),
            template=tmpl,
            generation=svc.generation,
            create_time=datetime.now(UTC),
        )
        svc.template = tmpl
        svc.revisions[name] = rev
        svc.latest_created = name
        self.system_log(rev, "INFO", f"Starting new revision {name} from image {image}.")
        return rev

    async def _rollout(self, svc: ServiceState, rev: RevisionState, op: OperationState) -> None:
        try:
            rev.port = await self.runtime.start(rev, self)
        except RevisionStartError as exc:
            self._mark(rev, False, "reason", "REVISION_FAILED", str(exc))
            message = (
                f"Revision '{rev.name}' is not ready and cannot serve traffic. "
                f"The user-provided container failed to start and listen on the port: {exc}"
            )
            self.system_log(rev, "ERROR", f"Container failed to start: {exc}")
            svc.failure = message
            op.error = {"code": 9, "message": message, "details": []}
        except Exception as exc:  # the runtime itself broke: the operation must still end
            log.exception("revision %s failed to start", rev.name)
            self._mark(rev, False, "reason", "INTERNAL", f"internal error: {exc}")
            svc.failure = f"internal error starting revision {rev.name}: {exc}"
            op.error = {"code": 13, "message": svc.failure, "details": []}
        else:
            self._mark(rev, True, "", "", "")
            svc.latest_ready = rev.name
            svc.failure = ""
            self.system_log(rev, "INFO", f"Revision {rev.name} is ready and serving.")
            op.response = self.service_json(svc)
        svc.observed_generation = svc.generation
        svc.reconciling = False
        svc.update_time = datetime.now(UTC)
        op.done = True

    def _mark(
        self, rev: RevisionState, ready: bool, reason_field: str, reason: str, message: str
    ) -> None:
        rev.ready = ready
        rev.reason_field = reason_field
        rev.reason = reason
        rev.message = message
        rev.transition_time = datetime.now(UTC)

    def revision_exited(self, rev: RevisionState, returncode: int | None) -> None:
        """The runtime reports that a running revision's process ended."""
        if rev.ready is not True:
            return
        if returncode is not None and returncode < 0:
            why = f"Container terminated on signal {-returncode}."
        else:
            why = f"Container called exit({returncode})."
        rev.port = 0
        self._mark(rev, False, "revisionReason", "HEALTH_CHECK_CONTAINER_ERROR", why)
        self.system_log(rev, "ERROR", why)
        self.system_log(rev, "ERROR", f"Revision {rev.name} is not ready: {why}")

    async def aclose(self) -> None:
        """Cancel pending rollouts and close the tag listeners (the daemon is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.jobs.aclose()
        await self.tags.aclose()

    # ---------------------------------------------------------------- tags

    def _sync_tags(self, svc: ServiceState) -> None:
        """Give every tag in the traffic its own URL; close the URLs of dropped tags."""
        wanted = {t["tag"] for t in svc.traffic if t.get("tag")}
        for tag in list(svc.tag_uris):
            if tag not in wanted:
                self.tags.close(f"{svc.full_name}#{tag}")
                del svc.tag_uris[tag]
        for tag in sorted(wanted - set(svc.tag_uris)):
            svc.tag_uris[tag] = self.tags.open(
                f"{svc.full_name}#{tag}", functools.partial(self.tag_upstream, svc, tag)
            )

    def tag_upstream(self, svc: ServiceState, tag: str) -> Upstream | None:
        """Where a connection to ``tag``'s URL goes: only the tagged revision, when ready."""
        rev = svc.revisions.get(svc.tagged(tag))
        if rev is None or rev.ready is not True or not rev.port:
            return None
        from .profiles import ROUTER_STRIPS_UPGRADE

        return Upstream(
            self.tags.host, rev.port, rev.name, strip_upgrade=rev.profile in ROUTER_STRIPS_UPGRADE
        )

    # ---------------------------------------------------------------- routing

    def pick(self, svc: ServiceState) -> RevisionState | None:
        """Choose the revision for one client connection by the traffic split.

        Revisions that are not ready (crashed) are taken out of the split and
        the remaining shares renormalised; ``None`` (the router answers 503)
        when no revision with traffic is ready.
        """
        targets: list[tuple[RevisionState, int]] = []
        for name, percent, _ in svc.resolved_traffic():
            rev = svc.revisions.get(name)
            if percent > 0 and rev is not None and rev.ready is True and rev.port:
                targets.append((rev, percent))
        if not targets:
            return None
        roll = self._rng.uniform(0, sum(p for _, p in targets))
        for rev, percent in targets:
            if roll < percent:
                return rev
            roll -= percent
        return targets[-1][0]

    # ---------------------------------------------------------------- JSON

    def service_json(self, svc: ServiceState) -> dict[str, Any]:
        """The Service resource as the Admin API v2 returns it (see :func:`.wire.service_json`)."""
        return wire.service_json(svc)

    def revision_json(self, rev: RevisionState) -> dict[str, Any]:
        """The Revision resource as the Admin API v2 returns it."""
        return wire.revision_json(rev)

    def operation_json(self, op: OperationState) -> dict[str, Any]:
        """The google.longrunning.Operation (metadata and response are Services)."""
        return wire.operation_json(op)


def _default_template(image: str) -> dict[str, Any]:
    return {
        "scaling": {"minInstanceCount": 1, "maxInstanceCount": 10},
        # WebSocket-friendly settings (the incident is the missing routes, not these).
        "timeout": "3600s",
        "containers": [
            {
                "image": image,
                "ports": [{"name": "http1", "containerPort": 8080}],
                "resources": {"limits": {"cpu": "1", "memory": "512Mi"}, "cpuIdle": True},
            }
        ],
        "maxInstanceRequestConcurrency": 80,
        "sessionAffinity": True,
    }
