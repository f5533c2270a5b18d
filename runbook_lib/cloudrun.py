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
pure functions of data.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import random
import re
import shlex
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any, Protocol, TypeVar

from .exceptions import CloudRunError
from .redaction import redact_excerpt
from .settings import Settings

__all__ = [
    "CloudRun",
    "GoogleCloudRun",
    "OperationOutcome",
    "RequestPlan",
    "RevisionInfo",
    "ServiceInfo",
    "ServiceRef",
    "TrafficTarget",
    "cloudrun_client",
    "new_revision_name",
    "pinned",
    "plan_deploy",
    "plan_split",
    "plan_tag",
    "plan_untag",
    "split_targets",
    "with_tag",
    "without_tag",
]

log = logging.getLogger(__name__)

T = TypeVar("T")

_LATEST = "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST"
_REVISION = "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION"


@dataclass(frozen=True, slots=True)
class TrafficTarget:
    """One traffic target: ``LATEST`` (the latest ready revision) or a named ``REVISION``.

    ``uri`` is only known in the service's traffic *statuses*: the tag's own URL
    (``https://TAG---SERVICE-HASH-REGION.a.run.app`` on Google).
    """

    type: str
    revision: str
    percent: int
    tag: str = ""
    uri: str = ""


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
        """Revisions, newest first."""
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


def _target_json(t: TrafficTarget) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": _LATEST if t.type.upper() == "LATEST" else _REVISION,
        "percent": int(t.percent),
    }
    if t.type.upper() != "LATEST":
        out["revision"] = t.revision
    if t.tag:
        out["tag"] = t.tag
    return out


def _ready_condition(conditions: Sequence[Any]) -> tuple[bool, str]:
    for c in conditions:
        if c.type_ == "Ready":
            return getattr(c.state, "name", "") == "CONDITION_SUCCEEDED", c.message or ""
    return False, "no Ready condition reported"


# ------------------------------------------------------------------ traffic arithmetic (pure)

_TAG = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")


def _check_tag(tag: str) -> str:
    if not _TAG.fullmatch(tag or "") or len(tag) > 46:
        raise CloudRunError(
            f"invalid revision tag {tag!r}: use lowercase letters, digits and hyphens, "
            "starting with a letter, at most 46 characters"
        )
    return tag


def _plain(targets: Sequence[TrafficTarget]) -> list[TrafficTarget]:
    """Spec entries only (no status URIs); untagged 0 % entries dropped, untagged shares merged."""
    out: list[TrafficTarget] = []
    for t in targets:
        t = replace(t, uri="", revision="" if t.type.upper() == "LATEST" else t.revision)
        if not t.tag:
            if not t.percent:
                continue
            same = next(
                (
                    i
                    for i, o in enumerate(out)
                    if not o.tag and o.type == t.type and o.revision == t.revision
                ),
                None,
            )
            if same is not None:
                out[same] = replace(out[same], percent=out[same].percent + t.percent)
                continue
        out.append(t)
    return out


def with_tag(targets: Sequence[TrafficTarget], revision: str, tag: str) -> list[TrafficTarget]:
    """The traffic with ``tag`` on ``revision``: every share and every other tag kept.

    The tag moves if it pointed elsewhere (its old entry keeps its share, untagged);
    it rides on an untagged entry of ``revision`` when there is one, else a 0 % entry
    is added (Cloud Run's ``update-traffic --update-tags=TAG=REVISION``).

    Raises:
        CloudRunError: bad tag or empty revision.
    """
    _check_tag(tag)
    if not revision:
        raise CloudRunError("a revision tag needs a revision name")
    out = [replace(t, tag="") if t.tag == tag else t for t in targets]
    out = _plain(out)
    for i, t in enumerate(out):
        if t.type.upper() == "REVISION" and t.revision == revision and not t.tag:
            out[i] = replace(t, tag=tag)
            return out
    out.append(TrafficTarget("REVISION", revision, 0, tag))
    return out


def without_tag(targets: Sequence[TrafficTarget], tag: str) -> list[TrafficTarget]:
    """The traffic with ``tag`` removed (its entry keeps its share; a 0 % entry goes)."""
    return _plain([replace(t, tag="") if t.tag == tag else t for t in targets])


def pinned(targets: Sequence[TrafficTarget], latest_ready: str) -> list[TrafficTarget]:
    """The same split with every ``LATEST`` share pinned to the revision it means now.

    This is what ``gcloud run deploy --no-traffic`` sends: a new revision would
    otherwise become LATEST and take LATEST's share.

    Raises:
        CloudRunError: LATEST carries traffic but no revision is ready.
    """
    out = []
    for t in targets:
        if t.type.upper() == "LATEST":
            if not latest_ready:
                raise CloudRunError(
                    "cannot deploy with no traffic: LATEST carries traffic but no revision is "
                    "ready to pin it to; deploy directly or move traffic to a revision first"
                )
            t = TrafficTarget("REVISION", latest_ready, t.percent, t.tag)
        out.append(t)
    return _plain(out)


def _check_split(split: Mapping[str, int]) -> dict[str, int]:
    clean: dict[str, int] = {}
    for rev, pct in split.items():
        if not rev or not isinstance(pct, int) or isinstance(pct, bool) or not 0 <= pct <= 100:
            raise CloudRunError(
                f"bad traffic split entry {rev!r}: {pct!r} (want revision -> 0..100)"
            )
        clean[rev] = clean.get(rev, 0) + pct
    total = sum(clean.values())
    if total != 100:
        raise CloudRunError(f"traffic percents must sum to 100, got {total} in {dict(split)}")
    return clean


def split_targets(
    split: Mapping[str, int], current: Sequence[TrafficTarget] = ()
) -> list[TrafficTarget]:
    """REVISION entries for ``split`` (revision -> percent, summing to 100), tags kept.

    Every tag in ``current`` stays on the revision it points at (on that revision's
    new entry, or a 0 % one), so verification URLs survive a traffic step.

    Raises:
        CloudRunError: the split does not sum to 100 or names no revision.
    """
    clean = _check_split(split)
    out = [TrafficTarget("REVISION", rev, pct) for rev, pct in clean.items() if pct]
    for t in current:
        if not t.tag:
            continue
        if t.type.upper() == "LATEST":
            out.append(TrafficTarget("LATEST", "", 0, t.tag))
            continue
        i = next((i for i, o in enumerate(out) if o.revision == t.revision and not o.tag), None)
        if i is not None:
            out[i] = replace(out[i], tag=t.tag)
        else:
            out.append(TrafficTarget("REVISION", t.revision, 0, t.tag))
    return out


# ------------------------------------------------------------------ dry-run rendering (pure)


@dataclass(frozen=True, slots=True)
class ServiceRef:
    """Where a service lives: the API endpoint (empty = Google) and its coordinates."""

    project: str
    region: str
    service: str
    endpoint: str = ""

    @classmethod
    def from_settings(cls, settings: Settings) -> ServiceRef:
        """The ``[cloudrun]`` service of ``settings``."""
        cr = settings.cloudrun
        return cls(cr.project, cr.region, cr.service, cr.api_endpoint.rstrip("/"))

    @property
    def path(self) -> str:
        """``projects/P/locations/R/services/S``."""
        return f"projects/{self.project}/locations/{self.region}/services/{self.service}"

    @property
    def url(self) -> str:
        """The REST URL of the service resource."""
        return f"{self.endpoint or 'https://run.googleapis.com'}/v2/{self.path}"

    @property
    def gcloud_scope(self) -> str:
        """``--region=R --project=P``."""
        return f"--region={shlex.quote(self.region)} --project={shlex.quote(self.project)}"


@dataclass(frozen=True, slots=True)
class RequestPlan:
    """A mutating Cloud Run request as a dry run shows it, beside its gcloud and curl forms.

    ``request`` keeps the ``{"method", "url", "body"}`` shape of the older
    ``deploy_request``/``traffic_request``; ``body_json`` is pasteable JSON.
    """

    what: str
    method: str
    url: str
    body: dict[str, Any]
    gcloud: str
    google: bool = True
    traffic: tuple[TrafficTarget, ...] = field(default=())

    @property
    def request(self) -> dict[str, Any]:
        """``{"method", "url", "body"}``."""
        return {"method": self.method, "url": self.url, "body": self.body}

    @property
    def body_json(self) -> str:
        """The body as indented JSON (never a Python repr)."""
        return json.dumps(self.body, indent=2, sort_keys=False)

    @property
    def curl(self) -> str:
        """The same request with curl (Google: an access token from gcloud, never a literal)."""
        auth = (
            ' -H "Authorization: Bearer $(gcloud auth print-access-token)"' if self.google else ""
        )
        return (
            f"curl -sS -X {self.method} {shlex.quote(self.url)}{auth} "
            f"-H 'Content-Type: application/json' "
            f"-d {shlex.quote(json.dumps(self.body, separators=(',', ':')))}"
        )

    def to_record(self) -> dict[str, Any]:
        """Flat data for a table or an artifact."""
        return {
            "what": self.what,
            "method": self.method,
            "url": self.url,
            "request_json": self.body_json,
            "gcloud": self.gcloud,
            "curl": self.curl,
        }


def _traffic_plan(
    ref: ServiceRef, what: str, targets: Sequence[TrafficTarget], gcloud: str
) -> RequestPlan:
    return RequestPlan(
        what=what,
        method="PATCH",
        url=f"{ref.url}?updateMask=traffic",
        body={"name": ref.path, "traffic": [_target_json(t) for t in targets]},
        gcloud=gcloud,
        google=not ref.endpoint.startswith("http://"),
        traffic=tuple(targets),
    )


def plan_tag(
    ref: ServiceRef, current: Sequence[TrafficTarget], revision: str, tag: str
) -> RequestPlan:
    """Give ``revision`` the tag ``tag`` at 0 % (``update-traffic --update-tags``).

    Raises:
        CloudRunError: bad tag or revision.
    """
    targets = with_tag(current, revision, tag)
    gcloud = (
        f"gcloud run services update-traffic {shlex.quote(ref.service)} "
        f"--update-tags={shlex.quote(f'{tag}={revision}')} {ref.gcloud_scope}"
    )
    return _traffic_plan(ref, f"tag {revision} as {tag!r} (0 % of traffic)", targets, gcloud)


def plan_untag(ref: ServiceRef, current: Sequence[TrafficTarget], tag: str) -> RequestPlan:
    """Remove the tag ``tag`` (``update-traffic --remove-tags``)."""
    targets = without_tag(current, tag)
    gcloud = (
        f"gcloud run services update-traffic {shlex.quote(ref.service)} "
        f"--remove-tags={shlex.quote(tag)} {ref.gcloud_scope}"
    )
    return _traffic_plan(ref, f"remove the tag {tag!r}", targets, gcloud)


def plan_split(
    ref: ServiceRef, current: Sequence[TrafficTarget], split: Mapping[str, int]
) -> RequestPlan:
    """Set the traffic split, tags kept (``update-traffic --to-revisions=A=10,B=90``).

    Raises:
        CloudRunError: the split does not sum to 100.
    """
    targets = split_targets(split, current)
    spec = ",".join(f"{t.revision}={t.percent}" for t in targets if t.percent)
    gcloud = (
        f"gcloud run services update-traffic {shlex.quote(ref.service)} "
        f"--to-revisions={shlex.quote(spec)} {ref.gcloud_scope}"
    )
    words = ", ".join(f"{t.revision} {t.percent} %" for t in targets if t.percent)
    return _traffic_plan(ref, f"traffic split: {words}", targets, gcloud)


def plan_deploy(
    ref: ServiceRef,
    template: Mapping[str, Any] | None,
    image: str,
    *,
    no_traffic: bool = False,
    tag: str = "",
    revision_name: str = "",
    current: Sequence[TrafficTarget] = (),
    latest_ready: str = "",
) -> RequestPlan:
    """A deploy of ``image`` (the current template with a new image).

    With ``no_traffic`` the request also sends the current split pinned to the
    revisions serving now (``gcloud run deploy --no-traffic``), so the new
    revision gets 0 %; ``tag`` gives it its own URL (``--tag``), which needs a
    revision name chosen up front (``revision_name``, i.e. ``--revision-suffix``).

    Raises:
        CloudRunError: a tag without ``no_traffic`` or a name, or nothing to pin.
    """
    body_template = dict(template or {"containers": [{}]})
    containers = [dict(c) for c in body_template.get("containers") or [{}]]
    containers[0]["image"] = image
    body_template["containers"] = containers
    body_template.pop("revision", None)
    if revision_name:
        body_template["revision"] = revision_name
    body: dict[str, Any] = {"name": ref.path, "template": body_template}
    flags = f"--image={shlex.quote(image)}"
    mask = "template"
    targets: list[TrafficTarget] = []
    if tag and not (no_traffic and revision_name):
        raise CloudRunError("a deploy tag needs no_traffic=True and a revision name")
    if no_traffic:
        targets = pinned(current, latest_ready)
        if tag:
            targets = with_tag(targets, revision_name, tag)
        body["traffic"] = [_target_json(t) for t in targets]
        mask = "template,traffic"
        flags += " --no-traffic"
        if tag:
            flags += f" --tag={shlex.quote(tag)}"
    if revision_name:
        suffix = revision_name.removeprefix(f"{ref.service}-")
        flags += f" --revision-suffix={shlex.quote(suffix)}"
    what = f"deploy {image}" + (" with no traffic" if no_traffic else "")
    if tag:
        what += f" as revision {revision_name} tagged {tag!r}"
    return RequestPlan(
        what=what,
        method="PATCH",
        url=f"{ref.url}?updateMask={mask}",
        body=body,
        gcloud=f"gcloud run deploy {shlex.quote(ref.service)} {flags} {ref.gcloud_scope}",
        google=not ref.endpoint.startswith("http://"),
        traffic=tuple(targets),
    )


def new_revision_name(service: str, rng: random.Random | None = None) -> str:
    """A fresh revision name, ``SERVICE-xxxxx`` (what ``--revision-suffix`` makes)."""
    pick = rng or random.SystemRandom()
    return f"{service}-{''.join(pick.choice(string.ascii_lowercase + string.digits) for _ in range(5))}"


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
                403: "permission denied: the caller needs roles/run.developer (or viewer for "
                "reads) on the project",
                404: f"not found: check [cloudrun] project/region/service ({self.service_path})",
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
        """Revisions newest first, each with its serving percent.

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
            out = []
            for rev in pager:
                out.append(rev)
                if limit is not None and len(out) >= limit:
                    break  # the API lists newest first: no need to page through years
            return out

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
            "body": {"name": self.service_path, "traffic": [_target_json(t) for t in targets]},
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
                "(check `gcloud run operations list`)",
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
            revision_name: the new revision's name (default: ``SERVICE-xxxxx`` when
                tagging, else the platform's choice).

        Returns:
            The outcome (``revision`` = the new revision); a failed rollout has
            ``succeeded=False`` and the API's reason.

        Raises:
            CloudRunError: the API itself could not be used, or bad arguments.
        """
        if not no_traffic and not tag and not revision_name:
            await self._run("get service", self._get_raw)
            return await self._update("deploy", self.deploy_request(image), "template")
        plan = await self.deploy_plan(
            image, no_traffic=no_traffic, tag=tag, revision_name=revision_name
        )
        mask = plan.url.rsplit("updateMask=", 1)[-1]
        return await self._update("deploy", plan.request, mask, tag=tag)

    # ------------------------------------------------------------ tags and steps

    def ref(self) -> ServiceRef:
        """The service's coordinates (for the pure ``plan_*`` functions)."""
        return ServiceRef.from_settings(self.settings)

    async def deploy_plan(
        self, image: str, *, no_traffic: bool = False, tag: str = "", revision_name: str = ""
    ) -> RequestPlan:
        """The request :meth:`deploy` would send, read-only (for dry runs).

        Raises:
            CloudRunError: the service could not be read, or bad arguments.
        """
        if tag:
            _check_tag(tag)
        svc = await self._run("get service", self._get_raw)
        info = _service_info(svc)
        if tag and not revision_name:
            revision_name = new_revision_name(self.settings.cloudrun.service)
        return plan_deploy(
            self.ref(),
            self._last_template,
            image,
            no_traffic=no_traffic,
            tag=tag,
            revision_name=revision_name,
            current=info.traffic,
            latest_ready=info.latest_ready_revision,
        )

    async def tag_plan(self, revision: str, tag: str) -> RequestPlan:
        """The request :meth:`tag_revision` would send (read-only)."""
        info = await self.get_service()
        return plan_tag(self.ref(), info.traffic, revision, tag)

    async def untag_plan(self, tag: str) -> RequestPlan:
        """The request :meth:`untag` would send (read-only)."""
        info = await self.get_service()
        return plan_untag(self.ref(), info.traffic, tag)

    async def split_plan(self, split: Mapping[str, int]) -> RequestPlan:
        """The request :meth:`set_traffic_split` would send (read-only)."""
        info = await self.get_service()
        return plan_split(self.ref(), info.traffic, split)

    async def _apply(self, plan: RequestPlan, tag: str = "") -> OperationOutcome:
        outcome = await self._update(plan.what, plan.request, "traffic", tag=tag)
        if not outcome.succeeded:
            raise CloudRunError(f"Cloud Run {plan.what}: the operation failed: {outcome.error}")
        return outcome

    async def tag_revision(self, revision: str, tag: str) -> str:
        """Give ``revision`` the tag ``tag`` at 0 % of traffic; return the tag's URL.

        The split and every other tag are kept. Cloud Run serves the tag at
        ``https://TAG---SERVICE-HASH-REGION.a.run.app``; the sandbox on a loopback port.

        Raises:
            CloudRunError: bad tag, unknown revision, refused update, or no URL came back.
        """
        outcome = await self._apply(await self.tag_plan(revision, tag), tag)
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
        return await self._apply(await self.untag_plan(tag))

    async def set_traffic_split(self, split: Mapping[str, int]) -> OperationOutcome:
        """Set revision -> percent (summing to 100), keeping every tag on its revision.

        One step of a staged shift (e.g. ``{new: 10, old: 90}``), or the return to a
        recorded split (``outcome.split`` of an earlier step).

        Raises:
            CloudRunError: the split does not sum to 100, or the update was refused.
        """
        return await self._apply(await self.split_plan(split))

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
