"""The Cloud Run adapter: describe the service, list revisions, deploy, move traffic.

A small protocol (:class:`CloudRun`) the runbook phases call, implemented by
:class:`GoogleCloudRun` over the real ``google.cloud.run_v2`` REST clients. With
``[cloudrun] api_endpoint`` set to the sandbox emulator, the sandbox and Google
are the same code path. Blocking client calls run in ``asyncio.to_thread``, each
bounded by ``settings.timeouts``; every failure becomes :class:`CloudRunError`
with a message a person can act on. A deploy whose operation fails is *not* an
exception: it is an :class:`OperationOutcome` with ``succeeded=False``.

Revision tags and safe rollouts (SPEC 9): :meth:`GoogleCloudRun.tag_revision`
gives a revision its own URL without moving traffic, ``deploy(no_traffic=True,
tag=...)`` creates a revision that serves nothing until it is verified on its tag
URL, and :meth:`GoogleCloudRun.set_traffic_split` moves traffic in steps (and back).
The traffic arithmetic (:func:`with_tag`, :func:`without_tag`, :func:`split_targets`,
:func:`pinned`) and the dry-run rendering (:class:`RequestPlan`, ``plan_*``) are
pure functions of data in :mod:`runbook_lib.cloudrun_plans`, re-exported here.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import json
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol, TypeVar

from .cloudrun_plans import (
    _LATEST,
    RequestPlan,
    ServiceRef,
    TrafficTarget,
    check_split,
    check_tag,
    new_revision_name,
    plan_deploy,
    plan_split,
    plan_tag,
    plan_untag,
    target_json,
)
from .exceptions import CloudRunError
from .iam import role_hint
from .redaction import redact_excerpt
from .settings import Settings

__all__ = [
    "CloudRun",
    "GoogleCloudRun",
    "OperationOutcome",
    "RevisionInfo",
    "ServiceInfo",
    "cloudrun_client",
]

log = logging.getLogger(__name__)

T = TypeVar("T")
# Cloud Run keeps at most 1,000 revisions per service: the bound on reading them all.
MAX_REVISIONS = 1000
# Former private names of helpers now public in :mod:`runbook_lib.cloudrun_plans`.
_target_json, _check_tag, _check_split = target_json, check_tag, check_split


@dataclass(frozen=True, slots=True)
class RevisionInfo:
    """One revision; ``percent`` is its serving share from the service's trafficStatuses."""

    name: str
    full_name: str
    create_time: datetime | None
    ready: bool
    ready_message: str
    image: str
    percent: int


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    """What ``gcloud run services describe`` shows, flattened for checks."""

    name: str
    uri: str
    latest_ready_revision: str
    latest_created_revision: str
    traffic: tuple[TrafficTarget, ...]
    traffic_statuses: tuple[TrafficTarget, ...]
    image: str
    timeout_s: float | None
    concurrency: int | None
    min_instances: int | None
    max_instances: int | None
    session_affinity: bool
    use_http2: bool
    ingress: str
    ready: bool
    ready_message: str
    generation: int
    # While ``reconciling`` (or ``observed_generation`` lags ``generation``) Google says the
    # split, latest revisions and URIs are transient; ``etag`` guards writes planned from it.
    observed_generation: int = 0
    reconciling: bool = False
    etag: str = ""

    @property
    def settled(self) -> bool:
        """No rollout in flight: the split and the latest revisions are final."""
        return not self.reconciling and self.observed_generation >= self.generation

    @property
    def tag_urls(self) -> dict[str, str]:
        """Tag -> its own URL, from the traffic statuses."""
        return {t.tag: t.uri for t in self.traffic_statuses if t.tag and t.uri}

    @property
    def tagged_revisions(self) -> dict[str, str]:
        """Tag -> the revision it points at now (LATEST resolved)."""
        out = {}
        for t in self.traffic_statuses or self.traffic:
            if t.tag:
                out[t.tag] = t.revision or self.latest_ready_revision
        return out

    @property
    def serving_revisions(self) -> dict[str, int]:
        """Revision -> percent of traffic it actually serves (LATEST resolved)."""
        out: dict[str, int] = {}
        for t in self.traffic_statuses or self.traffic:
            rev = t.revision or (self.latest_ready_revision if t.type == "LATEST" else "")
            if rev and t.percent:
                out[rev] = out.get(rev, 0) + t.percent
        return out


@dataclass(frozen=True, slots=True)
class OperationOutcome:
    """How a long-running update ended (a failed rollout is data, not an exception).

    ``tag_url`` is the URL of the tag the update asked for (empty otherwise);
    ``traffic`` the service's traffic statuses once the update ended (empty when
    it did not end), so a caller can record the split over time.
    """

    name: str
    done: bool
    succeeded: bool
    error: str
    revision: str
    duration_s: float
    tag_url: str = ""
    traffic: tuple[TrafficTarget, ...] = ()

    @property
    def split(self) -> dict[str, int]:
        """Revision -> percent after the update (tags at 0 % left out)."""
        out: dict[str, int] = {}
        for t in self.traffic:
            if t.percent and t.revision:
                out[t.revision] = out.get(t.revision, 0) + t.percent
        return out


class CloudRun(Protocol):
    """What the runbook needs from Cloud Run (build one with :func:`cloudrun_client`)."""

    async def get_service(self) -> ServiceInfo:
        """Describe the service."""
        ...

    async def list_revisions(self, limit: int | None = None) -> list[RevisionInfo]:
        """Every revision (all pages), newest first by ``createTime``."""
        ...

    async def settled_service(self, wait_s: float | None = None) -> ServiceInfo:
        """Describe the service once no rollout is in flight (bounded wait)."""
        ...

    async def deploy(
        self, image: str, *, no_traffic: bool = False, tag: str = "", revision_name: str = ""
    ) -> OperationOutcome:
        """Roll out ``image`` as a new revision (optionally at 0 %, tagged); wait for it."""
        ...

    async def tag_revision(self, revision: str, tag: str) -> str:
        """Tag ``revision`` at 0 % of traffic; return the tag's URL."""
        ...

    async def untag(self, tag: str) -> OperationOutcome:
        """Remove a tag (shares unchanged)."""
        ...

    async def set_traffic_split(self, split: Mapping[str, int]) -> OperationOutcome:
        """Set revision -> percent, tags kept."""
        ...

    async def list_services(self) -> list[ServiceInfo]:
        """Services in the configured project and region."""
        ...

    async def set_traffic(self, targets: list[TrafficTarget]) -> OperationOutcome:
        """Replace the traffic split; wait for the operation."""
        ...

    def deploy_request(self, image: str) -> dict[str, Any]:
        """The exact REST request :meth:`deploy` sends (for dry runs)."""
        ...

    def traffic_request(self, targets: Sequence[TrafficTarget]) -> dict[str, Any]:
        """The exact REST request :meth:`set_traffic` sends (for dry runs)."""
        ...

    def gcloud_deploy_command(self, image: str) -> str:
        """The equivalent ``gcloud run deploy`` command."""
        ...

    def gcloud_traffic_command(self, targets: Sequence[TrafficTarget]) -> str:
        """The equivalent ``gcloud run services update-traffic`` command."""
        ...


def _short(name: str) -> str:
    return name.rsplit("/", 1)[-1] if name else ""


def _target(t: Any) -> TrafficTarget:
    kind = "LATEST" if getattr(t.type_, "name", str(t.type_)) == _LATEST else "REVISION"
    return TrafficTarget(
        type=kind,
        revision=_short(t.revision),
        percent=int(t.percent),
        tag=t.tag or "",
        uri=getattr(t, "uri", "") or "",  # only TrafficTargetStatus has one
    )


def _ready_condition(conditions: Sequence[Any]) -> tuple[bool, str]:
    for c in conditions:
        if c.type_ == "Ready":
            return getattr(c.state, "name", "") == "CONDITION_SUCCEEDED", c.message or ""
    return False, "no Ready condition reported"


def _is_conflict(exc: BaseException | None) -> bool:
    """A 409 that a fresh read can resolve (ABORTED: stale etag), not ALREADY_EXISTS."""
    if getattr(exc, "code", None) != 409:
        return False
    try:
        status = exc.response.json()["error"]["status"]  # type: ignore[union-attr]
    except Exception:
        return True
    return status != "ALREADY_EXISTS"


def _service_info(svc: Any) -> ServiceInfo:
    tmpl = svc.template
    containers = list(tmpl.containers)
    first = containers[0] if containers else None
    ports = list(first.ports) if first is not None else []
    timeout = tmpl.timeout.total_seconds() if "timeout" in tmpl else None
    scaling = tmpl.scaling if "scaling" in tmpl else None
    cond = svc.terminal_condition
    ready = getattr(cond.state, "name", "") == "CONDITION_SUCCEEDED"
    return ServiceInfo(
        name=_short(svc.name),
        uri=svc.uri,
        latest_ready_revision=_short(svc.latest_ready_revision),
        latest_created_revision=_short(svc.latest_created_revision),
        traffic=tuple(_target(t) for t in svc.traffic),
        traffic_statuses=tuple(_target(t) for t in svc.traffic_statuses),
        image=first.image if first is not None else "",
        timeout_s=timeout,
        concurrency=tmpl.max_instance_request_concurrency or None,
        min_instances=int(scaling.min_instance_count) if scaling is not None else None,
        max_instances=(int(scaling.max_instance_count) or None) if scaling is not None else None,
        session_affinity=bool(tmpl.session_affinity),
        use_http2=any(p.name == "h2c" for p in ports),
        ingress=getattr(svc.ingress, "name", str(svc.ingress)),
        ready=ready,
        ready_message=cond.message or ("" if ready else "service is not ready"),
        generation=int(svc.generation),
        observed_generation=int(svc.observed_generation),
        reconciling=bool(svc.reconciling),
        etag=str(svc.etag or ""),
    )


class GoogleCloudRun:
    """:class:`CloudRun` over the real ``google.cloud.run_v2`` REST clients.

    Args:
        settings: ``[cloudrun]`` names the service; ``[timeouts]`` bounds every call.
        poll_interval_s: first delay between operation polls (grows to 2 s).
    """

    def __init__(self, settings: Settings, *, poll_interval_s: float = 0.25) -> None:
        cr = settings.cloudrun
        if not cr.configured:
            raise CloudRunError(
                f"{settings.path}: [cloudrun] needs project, region and service "
                "to talk to Cloud Run"
            )
        self.settings = settings
        self.endpoint = cr.api_endpoint.rstrip("/")
        self.service_path = cr.service_path
        self.call_timeout_s = settings.timeouts.cloudrun_s
        self.operation_timeout_s = settings.timeouts.operation_s
        self.poll_interval_s = poll_interval_s
        self._services: Any = None
        self._revisions: Any = None
        self._last_template: dict[str, Any] | None = None

    # ------------------------------------------------------------ plumbing

    def _where(self) -> str:
        return self.endpoint or "https://run.googleapis.com"

    def _clients(self) -> tuple[Any, Any]:
        if self._services is None:
            from google.api_core.client_options import ClientOptions
            from google.cloud import run_v2

            kwargs: dict[str, Any] = {"transport": "rest"}
            if self.endpoint:
                kwargs["client_options"] = ClientOptions(api_endpoint=self.endpoint)
                if self.endpoint.startswith("http://"):
                    from google.auth.credentials import AnonymousCredentials

                    kwargs["credentials"] = AnonymousCredentials()
            self._services = run_v2.ServicesClient(**kwargs)
            self._revisions = run_v2.RevisionsClient(**kwargs)
        return self._services, self._revisions

    def _explain(self, what: str, exc: BaseException) -> CloudRunError:
        from google.api_core import exceptions as gexc
        from google.auth import exceptions as auth_exc

        where = self._where()
        if isinstance(exc, gexc.GoogleAPICallError):
            code = exc.code
            hint = {
                401: "credentials were refused: run `gcloud auth application-default login`",
                403: role_hint(str(exc.message or ""), what),
                404: f"not found: check [cloudrun] project/region/service ({self.service_path})",
                409: "conflict: the service changed since it was read (another deploy or "
                "traffic change?); read it again before writing",
                429: "rate limited by the API: retry in a minute",
            }.get(int(code) if code else 0, "")
            msg = f"Cloud Run {what} failed at {where}: HTTP {code} {exc.message}"
            return CloudRunError(f"{msg} ({hint})" if hint else msg)
        if isinstance(exc, auth_exc.DefaultCredentialsError):
            return CloudRunError(
                f"Cloud Run {what}: no Google credentials found; run "
                "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
            )
        if isinstance(exc, (TimeoutError, concurrent.futures.TimeoutError)):
            return CloudRunError(
                f"Cloud Run {what}: {where} did not answer within {self.call_timeout_s:g}s"
            )
        name = type(exc).__name__
        text = str(exc)
        if "ConnectionError" in name or "Connection refused" in text or "NewConnection" in text:
            return CloudRunError(
                f"Cloud Run {what}: cannot connect to {where} (connection refused or host "
                "unreachable); is the sandbox running (`runbook sandbox up`) or the "
                "api_endpoint right?"
            )
        if "Timeout" in name:
            return CloudRunError(
                f"Cloud Run {what}: {where} did not answer within {self.call_timeout_s:g}s"
            )
        if "ParseError" in name or isinstance(exc, ValueError):
            return CloudRunError(
                f"Cloud Run {what}: {where} answered something that is not a valid API "
                f"response (malformed JSON?): {redact_excerpt(text, 200)}"
            )
        return CloudRunError(
            f"Cloud Run {what} failed at {where}: {name}: {redact_excerpt(text, 300)}"
        )

    async def _run(self, what: str, fn: Callable[[], T], timeout_s: float | None = None) -> T:
        bound = (timeout_s or self.call_timeout_s) + 5.0
        try:
            return await asyncio.wait_for(asyncio.to_thread(fn), bound)
        except CloudRunError:
            raise
        except Exception as exc:
            raise self._explain(what, exc) from exc

    def _read_retry(self) -> Any:
        from google.api_core import exceptions as gexc
        from google.api_core import retry as gretry

        # Bounded: a transient 503 is retried briefly, everything else fails at once.
        return gretry.Retry(
            predicate=gretry.if_exception_type(gexc.ServiceUnavailable),
            initial=0.2,
            maximum=1.0,
            timeout=min(self.call_timeout_s, 10.0),
        )

    # ------------------------------------------------------------ reads

    def _get_raw(self) -> Any:
        services, _ = self._clients()
        svc = services.get_service(
            name=self.service_path, timeout=self.call_timeout_s, retry=self._read_retry()
        )
        self._remember(svc)
        return svc

    def _remember(self, svc: Any) -> None:
        from google.protobuf import json_format

        self._last_template = json_format.MessageToDict(type(svc).pb(svc).template)

    async def get_service(self) -> ServiceInfo:
        """Describe the service (``gcloud run services describe``).

        Raises:
            CloudRunError: the API refused, failed, timed out or answered garbage.
        """
        svc = await self._run("get service", self._get_raw)
        try:
            return _service_info(svc)
        except (AttributeError, TypeError, ValueError) as exc:
            raise CloudRunError(f"Cloud Run get service: unexpected Service shape: {exc}") from exc

    async def list_revisions(self, limit: int | None = None) -> list[RevisionInfo]:
        """Every revision newest first by ``createTime``, each with its serving percent.

        ``revisions.list`` promises no order, so every page is read (Cloud Run keeps at
        most 1,000 revisions) and sorted here; ``limit`` cuts the sorted list.

        Raises:
            CloudRunError: as :meth:`get_service`.
        """
        info = await self.get_service()
        serving = info.serving_revisions

        def fetch() -> list[Any]:
            _, revisions = self._clients()
            pager = revisions.list_revisions(
                parent=self.service_path, timeout=self.call_timeout_s, retry=self._read_retry()
            )
            return list(itertools.islice(pager, MAX_REVISIONS))

        raw = await self._run("list revisions", fetch)
        rows = []
        for rev in raw:
            ready, message = _ready_condition(list(rev.conditions))
            containers = list(rev.containers)
            created = rev.create_time if "create_time" in rev else None
            rows.append(
                RevisionInfo(
                    name=_short(rev.name),
                    full_name=rev.name,
                    create_time=datetime.fromtimestamp(created.timestamp(), created.tzinfo)
                    if created is not None
                    else None,
                    ready=ready,
                    ready_message=message,
                    image=containers[0].image if containers else "",
                    percent=serving.get(_short(rev.name), 0),
                )
            )
        rows.sort(key=lambda r: r.create_time.timestamp() if r.create_time else 0.0, reverse=True)
        return rows[:limit] if limit is not None else rows

    # ------------------------------------------------------------ writes

    def _url(self) -> str:
        return f"{self._where()}/v2/{self.service_path}"

    def deploy_request(self, image: str) -> dict[str, Any]:
        """The PATCH :meth:`deploy` sends: the current template with the new image.

        Uses the template from the last :meth:`get_service`; before any read,
        only the image is shown (the rest of the template is kept as is).
        """
        template = dict(self._last_template or {"containers": [{}]})
        containers = [dict(c) for c in template.get("containers") or [{}]]
        containers[0]["image"] = image
        template["containers"] = containers
        template.pop("revision", None)
        return {
            "method": "PATCH",
            "url": f"{self._url()}?updateMask=template",
            "body": {"name": self.service_path, "template": template},
        }

    def traffic_request(self, targets: Sequence[TrafficTarget]) -> dict[str, Any]:
        """The PATCH :meth:`set_traffic` sends."""
        return {
            "method": "PATCH",
            "url": f"{self._url()}?updateMask=traffic",
            "body": {"name": self.service_path, "traffic": [target_json(t) for t in targets]},
        }

    def _gcloud_scope(self) -> str:
        cr = self.settings.cloudrun
        return f"--region={shlex.quote(cr.region)} --project={shlex.quote(cr.project)}"

    def gcloud_deploy_command(self, image: str) -> str:
        """``gcloud run deploy SERVICE --image=IMAGE --region=R --project=P``."""
        return (
            f"gcloud run deploy {shlex.quote(self.settings.cloudrun.service)} "
            f"--image={shlex.quote(image)} {self._gcloud_scope()}"
        )

    def gcloud_traffic_command(self, targets: Sequence[TrafficTarget]) -> str:
        """``gcloud run services update-traffic SERVICE --to-revisions=...`` or ``--to-latest``."""
        svc = shlex.quote(self.settings.cloudrun.service)
        if len(targets) == 1 and targets[0].type.upper() == "LATEST":
            return f"gcloud run services update-traffic {svc} --to-latest {self._gcloud_scope()}"
        spec = ",".join(
            f"{'LATEST' if t.type.upper() == 'LATEST' else t.revision}={t.percent}" for t in targets
        )
        return (
            f"gcloud run services update-traffic {svc} --to-revisions={spec} {self._gcloud_scope()}"
        )

    async def _update(
        self, what: str, request: dict[str, Any], mask: str, *, tag: str = ""
    ) -> OperationOutcome:
        from google.api_core import exceptions as gexc
        from google.api_core.future import polling
        from google.cloud import run_v2
        from google.protobuf import field_mask_pb2

        started = time.monotonic()
        service = run_v2.Service.from_json(json.dumps(request["body"]), ignore_unknown_fields=True)

        def send() -> Any:
            services, _ = self._clients()
            return services.update_service(
                request=run_v2.UpdateServiceRequest(
                    service=service,
                    update_mask=field_mask_pb2.FieldMask(paths=mask.split(",")),
                ),
                timeout=self.call_timeout_s,
            )

        op = await self._run(what, send)
        name = op.operation.name
        waited = polling.DEFAULT_POLLING.with_delay(
            initial=self.poll_interval_s, maximum=2.0, multiplier=1.5
        )

        def wait() -> Any:
            return op.result(
                timeout=self.operation_timeout_s,
                polling=waited.with_timeout(self.operation_timeout_s),
            )

        def revision_of(svc: Any) -> str:
            return _short(getattr(svc, "latest_created_revision", "") or "")

        try:
            result = await asyncio.wait_for(
                asyncio.to_thread(wait), self.operation_timeout_s + 10.0
            )
        except (TimeoutError, concurrent.futures.TimeoutError, gexc.RetryError):
            return OperationOutcome(
                name=name,
                done=False,
                succeeded=False,
                error=f"operation still running after {self.operation_timeout_s:g}s "
                f"(see its state with `gcloud run services describe "
                f"{shlex.quote(self.settings.cloudrun.service)} {self._gcloud_scope()} "
                "--format='yaml(status.conditions)'`, or the service's Revisions tab in "
                "the console)",
                revision=revision_of(op.metadata) if op.metadata else "",
                duration_s=time.monotonic() - started,
            )
        except gexc.GoogleAPICallError as exc:
            if op.done() and op.exception() is exc:
                return OperationOutcome(
                    name=name,
                    done=True,
                    succeeded=False,
                    error=str(exc.message or exc),
                    revision=revision_of(op.metadata) if op.metadata else "",
                    duration_s=time.monotonic() - started,
                )
            raise self._explain(f"{what} (polling the operation)", exc) from exc
        except Exception as exc:
            raise self._explain(f"{what} (polling the operation)", exc) from exc
        self._remember(result)
        revision = revision_of(result)
        after = _service_info(result)
        if mask == "traffic":
            # For a traffic move the interesting revision is the one now serving most.
            shares = after.serving_revisions
            revision = max(shares, key=lambda r: shares[r]) if shares else ""
        return OperationOutcome(
            name=name,
            done=True,
            succeeded=True,
            error="",
            revision=revision,
            duration_s=time.monotonic() - started,
            tag_url=after.tag_urls.get(tag, "") if tag else "",
            traffic=after.traffic_statuses,
        )

    async def deploy(
        self,
        image: str,
        *,
        no_traffic: bool = False,
        tag: str = "",
        revision_name: str = "",
    ) -> OperationOutcome:
        """Roll out ``image`` (the current template with a new image); wait up to operation_s.

        Args:
            image: the container image.
            no_traffic: keep the current split (pinned to the revisions serving now),
                so the new revision serves 0 % (``gcloud run deploy --no-traffic``).
            tag: with ``no_traffic``, give the new revision this tag and its own URL
                (``outcome.tag_url``).
            revision_name: the new revision's name (default: a fresh ``SERVICE-xxxxx``,
                so every deploy creates a revision, even of an unchanged image tag).

        Returns:
            The outcome (``revision`` = the new revision); a failed rollout has
            ``succeeded=False`` and the API's reason.

        Raises:
            CloudRunError: the API itself could not be used, or bad arguments.
        """
        # A named revision is always a new one, even when the template is otherwise
        # unchanged: a fix pushed under the same (mutable) image tag really rolls out,
        # as `gcloud run deploy --revision-suffix` does (this client has no
        # forceNewRevision field).
        name = revision_name or new_revision_name(self.settings.cloudrun.service)
        return await self._write(
            lambda: self.deploy_plan(image, no_traffic=no_traffic, tag=tag, revision_name=name),
            tag,
        )

    # ------------------------------------------------------------ tags and steps

    def ref(self) -> ServiceRef:
        """The service's coordinates (for the pure ``plan_*`` functions)."""
        return ServiceRef.from_settings(self.settings)

    async def settled_service(self, wait_s: float | None = None) -> ServiceInfo:
        """Describe the service once no rollout is in flight.

        Polls (backoff to 2 s, bounded by ``wait_s``, default ``[timeouts] operation_s``)
        until ``reconciling`` is false and ``observedGeneration`` caught up with
        ``generation``: before that Google calls the split and the latest revisions
        transient, so nothing is planned from them.

        Raises:
            CloudRunError: still reconciling at the bound, or the service cannot be read.
        """
        bound = self.operation_timeout_s if wait_s is None else wait_s
        deadline = time.monotonic() + bound
        delay = self.poll_interval_s
        while True:
            info = await self.get_service()
            if info.settled:
                return info
            if time.monotonic() >= deadline:
                raise CloudRunError(
                    f"Cloud Run service {info.name} is still reconciling after {bound:g}s "
                    f"(generation {info.generation}, observed {info.observed_generation}): "
                    "another deploy or traffic change is in progress, so its split is not "
                    "final; let it finish and run again"
                )
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 1.5, 2.0)

    async def deploy_plan(
        self, image: str, *, no_traffic: bool = False, tag: str = "", revision_name: str = ""
    ) -> RequestPlan:
        """The request :meth:`deploy` would send, read-only (for dry runs).

        The revision is named up front (``SERVICE-xxxxx``) unless ``revision_name`` is
        given, so the deploy always creates a revision.

        Raises:
            CloudRunError: the service could not be read, or bad arguments.
        """
        service = self.settings.cloudrun.service
        if tag:
            check_tag(tag, service)
        svc = await self._run("get service", self._get_raw)
        info = _service_info(svc)
        return plan_deploy(
            self.ref(),
            self._last_template,
            image,
            no_traffic=no_traffic,
            tag=tag,
            revision_name=revision_name or new_revision_name(service),
            current=info.traffic,
            latest_ready=info.latest_ready_revision,
            etag=info.etag,
        )

    async def tag_plan(self, revision: str, tag: str) -> RequestPlan:
        """The request :meth:`tag_revision` would send (read-only)."""
        info = await self.get_service()
        return plan_tag(self.ref(), info.traffic, revision, tag, etag=info.etag)

    async def untag_plan(self, tag: str) -> RequestPlan:
        """The request :meth:`untag` would send (read-only)."""
        info = await self.get_service()
        return plan_untag(self.ref(), info.traffic, tag, etag=info.etag)

    async def split_plan(self, split: Mapping[str, int]) -> RequestPlan:
        """The request :meth:`set_traffic_split` would send (read-only)."""
        info = await self.get_service()
        return plan_split(self.ref(), info.traffic, split, etag=info.etag)

    async def validate(self, plan: RequestPlan) -> str:
        """Send ``plan`` with ``validateOnly=true``: Google checks it and commits nothing.

        Returns:
            What the API answered, in one line (accepted, or its refusal).
        """
        from google.api_core import exceptions as gexc
        from google.cloud import run_v2
        from google.protobuf import field_mask_pb2

        mask = plan.url.rsplit("updateMask=", 1)[-1]
        service = run_v2.Service.from_json(json.dumps(plan.body), ignore_unknown_fields=True)

        def send() -> Any:
            services, _ = self._clients()
            op = services.update_service(
                request=run_v2.UpdateServiceRequest(
                    service=service,
                    update_mask=field_mask_pb2.FieldMask(paths=mask.split(",")),
                    validate_only=True,
                ),
                timeout=self.call_timeout_s,
            )
            return op.result(timeout=self.call_timeout_s)

        try:
            await self._run(f"validate {plan.what}", send)
        except CloudRunError as exc:
            cause = exc.__cause__
            if isinstance(cause, gexc.GoogleAPICallError):
                return f"validateOnly: refused: {exc}"
            return f"validateOnly: not checked ({exc})"
        return "validateOnly: accepted (the API validated the request and committed nothing)"

    async def _write(
        self,
        make_plan: Callable[[], Awaitable[RequestPlan]],
        tag: str = "",
        *,
        must_succeed: bool = False,
    ) -> OperationOutcome:
        """Send a plan made from a fresh read; on a 409 (the service changed since that
        read) read again, plan again and send once more, never overwriting blindly.

        Raises:
            CloudRunError: refused (twice for a conflict), or with ``must_succeed`` the
                operation failed.
        """
        outcome: OperationOutcome | None = None
        for attempt in (1, 2):
            plan = await make_plan()
            mask = plan.url.rsplit("updateMask=", 1)[-1]
            try:
                outcome = await self._update(plan.what, plan.request, mask, tag=tag)
                break
            except CloudRunError as exc:
                if not _is_conflict(exc.__cause__):
                    raise
                if attempt == 2:
                    raise CloudRunError(
                        f"{exc}; it changed again after a fresh read: someone else is "
                        "writing this service now, let them finish and run again"
                    ) from exc
                log.warning("%s: the service changed since it was read; re-planning", plan.what)
        assert outcome is not None
        if must_succeed and not outcome.succeeded:
            raise CloudRunError(f"Cloud Run {plan.what}: the operation failed: {outcome.error}")
        return outcome

    async def _apply(
        self, make_plan: Callable[[], Awaitable[RequestPlan]], tag: str = ""
    ) -> OperationOutcome:
        return await self._write(make_plan, tag, must_succeed=True)

    async def tag_revision(self, revision: str, tag: str) -> str:
        """Give ``revision`` the tag ``tag`` at 0 % of traffic; return the tag's URL.

        The split and every other tag are kept. Cloud Run serves the tag at
        ``https://TAG---SERVICE-HASH-REGION.a.run.app``; the sandbox on a loopback port.

        Raises:
            CloudRunError: bad tag, unknown revision, refused update, or no URL came back.
        """
        outcome = await self._apply(lambda: self.tag_plan(revision, tag), tag)
        if not outcome.tag_url:
            raise CloudRunError(
                f"Cloud Run tagged {revision} as {tag!r} but reported no URL for it "
                "(trafficStatuses[].uri is empty)"
            )
        return outcome.tag_url

    async def untag(self, tag: str) -> OperationOutcome:
        """Remove the tag ``tag`` (its revision keeps its share of traffic).

        Raises:
            CloudRunError: the update was refused or failed.
        """
        return await self._apply(lambda: self.untag_plan(tag))

    async def set_traffic_split(self, split: Mapping[str, int]) -> OperationOutcome:
        """Set revision -> percent (summing to 100), keeping every tag on its revision.

        One step of a staged shift (e.g. ``{new: 10, old: 90}``), or the return to a
        recorded split (``outcome.split`` of an earlier step).

        Raises:
            CloudRunError: the split does not sum to 100, or the update was refused.
        """
        return await self._apply(lambda: self.split_plan(split))

    async def list_services(self) -> list[ServiceInfo]:
        """Every service in the configured project and region (``services.list``).

        Raises:
            CloudRunError: the API refused, failed or timed out.
        """
        cr = self.settings.cloudrun
        parent = f"projects/{cr.project}/locations/{cr.region}"

        def fetch() -> list[Any]:
            services, _ = self._clients()
            pager = services.list_services(
                parent=parent, timeout=self.call_timeout_s, retry=self._read_retry()
            )
            return list(pager)

        raw = await self._run("list services", fetch)
        try:
            return [_service_info(s) for s in raw]
        except (AttributeError, TypeError, ValueError) as exc:
            raise CloudRunError(f"Cloud Run list services: unexpected shape: {exc}") from exc

    async def set_traffic(self, targets: list[TrafficTarget]) -> OperationOutcome:
        """Replace the traffic split (e.g. ``[TrafficTarget("REVISION", "x", 100)]``).

        Raises:
            CloudRunError: the API refused (unknown revision, percents not 100) or failed.
        """
        if sum(t.percent for t in targets) != 100:
            raise CloudRunError(
                f"traffic percents must sum to 100, got {sum(t.percent for t in targets)}"
            )
        return await self._update("traffic update", self.traffic_request(targets), "traffic")


def cloudrun_client(settings: Settings) -> CloudRun:
    """The Cloud Run adapter for ``settings`` (sandbox emulator or Google).

    Raises:
        CloudRunError: ``[cloudrun]`` lacks project, region or service.
    """
    return GoogleCloudRun(settings)
