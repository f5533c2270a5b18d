"""Cloud Run's traffic arithmetic and dry-run request plans: pure functions of data.

The traffic arithmetic (:func:`with_tag`, :func:`without_tag`, :func:`pinned`,
:func:`split_targets`) turns a service's traffic and an intent into the targets
to send; the plans (:class:`RequestPlan`, ``plan_*``) render a mutating request as
a dry run shows it, beside its gcloud and curl forms. :mod:`runbook_lib.cloudrun`
sends them (and re-exports every name here). No network library is imported here
(a test proves it), so rollback and rollout logic can be tested on plain data.
"""

from __future__ import annotations

import json
import random
import re
import shlex
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from .exceptions import CloudRunError

if TYPE_CHECKING:
    from .settings import Settings

__all__ = [
    "RequestPlan",
    "ServiceRef",
    "TrafficTarget",
    "check_split",
    "check_tag",
    "fitting_tag",
    "new_revision_name",
    "pinned",
    "plan_deploy",
    "plan_split",
    "plan_tag",
    "plan_untag",
    "split_targets",
    "target_json",
    "with_tag",
    "without_tag",
]

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


def target_json(t: TrafficTarget) -> dict[str, Any]:
    out: dict[str, Any] = {
        "type": _LATEST if t.type.upper() == "LATEST" else _REVISION,
        "percent": int(t.percent),
    }
    if t.type.upper() != "LATEST":
        out["revision"] = t.revision
    if t.tag:
        out["tag"] = t.tag
    return out


# ------------------------------------------------------------------ traffic arithmetic (pure)

_TAG = re.compile(r"[a-z]([-a-z0-9]*[a-z0-9])?")
# Cloud Run serves a tag at TAG---SERVICE-...: the tag and the service name together may
# not exceed 46 characters (the API refuses longer ones with INVALID_ARGUMENT).
TAG_AND_SERVICE_MAX = 46


def check_tag(tag: str, service: str = "") -> str:
    """``tag`` when Cloud Run accepts it on ``service``.

    Raises:
        CloudRunError: not a DNS-label-like tag, or too long together with the service name.
    """
    if not _TAG.fullmatch(tag or ""):
        raise CloudRunError(
            f"invalid revision tag {tag!r}: use lowercase letters, digits and hyphens, "
            "starting with a letter"
        )
    if len(tag) + len(service) > TAG_AND_SERVICE_MAX:
        raise CloudRunError(
            f"revision tag {tag!r} is too long for the service {service!r}: Cloud Run "
            f"allows at most {TAG_AND_SERVICE_MAX} characters for tag and service name "
            f"together ({len(tag)} + {len(service)})"
        )
    return tag


def fitting_tag(service: str, preferred: Sequence[str]) -> str:
    """The first of ``preferred`` that fits beside ``service`` ('' when none does)."""
    return next((t for t in preferred if len(t) + len(service) <= TAG_AND_SERVICE_MAX), "")


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
    check_tag(tag)
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


def check_split(split: Mapping[str, int]) -> dict[str, int]:
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
    clean = check_split(split)
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
    ref: ServiceRef, what: str, targets: Sequence[TrafficTarget], gcloud: str, etag: str = ""
) -> RequestPlan:
    body: dict[str, Any] = {"name": ref.path, "traffic": [target_json(t) for t in targets]}
    if etag:
        # Written with the etag it was planned from: a change in between is a 409, not lost.
        body["etag"] = etag
    return RequestPlan(
        what=what,
        method="PATCH",
        url=f"{ref.url}?updateMask=traffic",
        body=body,
        gcloud=gcloud,
        google=not ref.endpoint.startswith("http://"),
        traffic=tuple(targets),
    )


def plan_tag(
    ref: ServiceRef,
    current: Sequence[TrafficTarget],
    revision: str,
    tag: str,
    *,
    etag: str = "",
) -> RequestPlan:
    """Give ``revision`` the tag ``tag`` at 0 % (``update-traffic --update-tags``).

    Raises:
        CloudRunError: bad tag (also too long with the service name) or revision.
    """
    check_tag(tag, ref.service)
    targets = with_tag(current, revision, tag)
    gcloud = (
        f"gcloud run services update-traffic {shlex.quote(ref.service)} "
        f"--update-tags={shlex.quote(f'{tag}={revision}')} {ref.gcloud_scope}"
    )
    return _traffic_plan(ref, f"tag {revision} as {tag!r} (0 % of traffic)", targets, gcloud, etag)


def plan_untag(
    ref: ServiceRef, current: Sequence[TrafficTarget], tag: str, *, etag: str = ""
) -> RequestPlan:
    """Remove the tag ``tag`` (``update-traffic --remove-tags``)."""
    targets = without_tag(current, tag)
    gcloud = (
        f"gcloud run services update-traffic {shlex.quote(ref.service)} "
        f"--remove-tags={shlex.quote(tag)} {ref.gcloud_scope}"
    )
    return _traffic_plan(ref, f"remove the tag {tag!r}", targets, gcloud, etag)


def plan_split(
    ref: ServiceRef,
    current: Sequence[TrafficTarget],
    split: Mapping[str, int],
    *,
    etag: str = "",
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
    return _traffic_plan(ref, f"traffic split: {words}", targets, gcloud, etag)


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
    etag: str = "",
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
    # The v2 API refuses system annotations in a request ("v2 does not support annotations
    # with run.googleapis.com/..."): send back only the user's own.
    if isinstance(body_template.get("annotations"), Mapping):
        body_template["annotations"] = {
            k: v
            for k, v in body_template["annotations"].items()
            if not k.startswith(_SYSTEM_ANNOTATIONS)
        }
    if revision_name:
        body_template["revision"] = revision_name
    body: dict[str, Any] = {"name": ref.path, "template": body_template}
    if etag:
        body["etag"] = etag
    flags = f"--image={shlex.quote(image)}"
    mask = "template"
    targets: list[TrafficTarget] = []
    if tag and not (no_traffic and revision_name):
        raise CloudRunError("a deploy tag needs no_traffic=True and a revision name")
    if no_traffic:
        targets = pinned(current, latest_ready)
        if tag:
            check_tag(tag, ref.service)
            targets = with_tag(targets, revision_name, tag)
        body["traffic"] = [target_json(t) for t in targets]
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


_SYSTEM_ANNOTATIONS = (
    "run.googleapis.com/",
    "serving.knative.dev/",
    "autoscaling.knative.dev/",
    "cloud.googleapis.com/",
)


def new_revision_name(service: str, rng: random.Random | None = None) -> str:
    """A fresh revision name, ``SERVICE-xxxxx`` (what ``--revision-suffix`` makes)."""
    pick = rng or random.SystemRandom()
    return f"{service}-{''.join(pick.choice(string.ascii_lowercase + string.digits) for _ in range(5))}"
