"""Cloud Run Admin API v2 and Cloud Logging emulators for the sandbox.

One FastAPI app answers the REST subset the runbook uses, with JSON shaped as
Google sends it (camelCase, RFC 3339 timestamps, ``"300s"`` durations, int64 as
strings) so the real ``google.cloud.run_v2`` REST transport and the real
``google.cloud.logging`` HTTP client parse it unchanged:

- ``GET /v2/projects/*/locations/*/services/*``              get service
- ``PATCH /v2/projects/*/locations/*/services/*``            update (deploy / traffic)
- ``GET /v2/projects/*/locations/*/services/*/revisions``    list revisions (newest first)
- ``GET /v2/projects/*/locations/*/services/*/revisions/*``  get revision
- ``GET /v2/projects/*/locations/*/operations/*``            long-running operation
- ``POST /v2/entries:list``                                  Cloud Logging read

The emulator owns the *state* (services, revisions, traffic, operations, logs).
Starting and watching revision processes is delegated to a
:class:`RevisionRuntime` (the daemon's supervisor), which feeds stdout lines and
exits back through :meth:`CloudRunEmulator.log_line` / :meth:`revision_exited`.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import random
import re
import string
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

__all__ = [
    "SEVERITIES",
    "CloudRunEmulator",
    "FilterError",
    "LogStore",
    "OperationState",
    "RevisionRuntime",
    "RevisionStartError",
    "RevisionState",
    "ServiceState",
    "compile_filter",
    "create_emulator_app",
    "format_time",
    "parse_time",
]

log = logging.getLogger(__name__)

SERVICE_TYPE = "type.googleapis.com/google.cloud.run.v2.Service"

# Cloud Logging's LogSeverity ranks: filters compare severities by rank, not by name.
SEVERITIES: dict[str, int] = {
    "DEFAULT": 0,
    "DEBUG": 100,
    "INFO": 200,
    "NOTICE": 300,
    "WARNING": 400,
    "ERROR": 500,
    "CRITICAL": 600,
    "ALERT": 700,
    "EMERGENCY": 800,
}


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


def _duration(seconds: float) -> str:
    return f"{seconds:g}s"


# ------------------------------------------------------------------ logging filter


class FilterError(ValueError):
    """A Cloud Logging filter that does not parse (Google answers 400 INVALID_ARGUMENT)."""


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<lpar>\()|(?P<rpar>\))|
        (?P<op>>=|<=|!=|=~|!~|=|<|>|:)|
        (?P<str>"(?:[^"\\]|\\.)*")|
        (?P<word>[^\s()"<>=!:]+)
    )""",
    re.VERBOSE,
)

Predicate = Callable[[Mapping[str, Any]], bool]


def _tokenize(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise FilterError(f"unexpected character {text[pos:].strip()[:1]!r} at offset {pos}")
        pos = m.end()
        kind = m.lastgroup or ""
        value = m.group(kind)
        if kind == "str":
            value = re.sub(r"\\(.)", r"\1", value[1:-1])
        tokens.append((kind, value))
    return tokens


def _lookup(entry: Mapping[str, Any], path: str) -> Any:
    node: Any = entry
    for part in path.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


def _compare(field_name: str, actual: Any, op: str, expected: str) -> bool:
    if actual is None:
        return False
    if op == ":":
        return expected.lower() in _flatten(actual).lower()
    if op in ("=~", "!~"):
        try:
            found = re.search(expected, _flatten(actual)) is not None
        except re.error:
            return False
        return found if op == "=~" else not found
    left: Any
    right: Any
    if field_name == "severity":
        left = SEVERITIES.get(str(actual).upper(), 0)
        right = SEVERITIES.get(expected.upper())
        if right is None:
            return False
    elif field_name.endswith("timestamp") or field_name.endswith("Timestamp"):
        try:
            left, right = parse_time(str(actual)), parse_time(expected)
        except ValueError:
            return False
    elif isinstance(actual, (int, float)) and not isinstance(actual, bool):
        try:
            left, right = actual, float(expected)
        except ValueError:
            left, right = str(actual), expected
    else:
        left, right = str(actual), expected
    return {
        "=": left == right,
        "!=": left != right,
        "<": left < right,
        "<=": left <= right,
        ">": left > right,
        ">=": left >= right,
    }[op]


def _flatten(value: Any) -> str:
    if isinstance(value, Mapping):
        return " ".join(_flatten(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return " ".join(_flatten(v) for v in value)
    return str(value)


class _Parser:
    """Recursive descent over Cloud Logging's query language subset.

    Precedence as documented by Google: NOT binds tightest, then OR, then AND
    (so ``a OR b AND c`` means ``(a OR b) AND c``); juxtaposition is AND.
    """

    def __init__(self, tokens: list[tuple[str, str]]) -> None:
        self.tokens = tokens
        self.i = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self) -> tuple[str, str]:
        tok = self.peek()
        if tok is None:
            raise FilterError("unexpected end of filter")
        self.i += 1
        return tok

    def parse(self) -> Predicate:
        if not self.tokens:
            return lambda _e: True
        pred = self.and_expr()
        if self.peek() is not None:
            raise FilterError(f"unexpected {self.peek()[1]!r}")  # type: ignore[index]
        return pred

    def and_expr(self) -> Predicate:
        parts = [self.or_expr()]
        while (tok := self.peek()) is not None and tok[0] != "rpar":
            if tok == ("word", "AND"):
                self.take()
            parts.append(self.or_expr())
        if len(parts) == 1:
            return parts[0]
        return lambda e: all(p(e) for p in parts)

    def or_expr(self) -> Predicate:
        parts = [self.unary()]
        while self.peek() == ("word", "OR"):
            self.take()
            parts.append(self.unary())
        if len(parts) == 1:
            return parts[0]
        return lambda e: any(p(e) for p in parts)

    def unary(self) -> Predicate:
        tok = self.peek()
        if tok == ("word", "NOT"):
            self.take()
            inner = self.unary()
            return lambda e: not inner(e)
        if tok is not None and tok[0] == "word" and tok[1].startswith("-") and len(tok[1]) > 1:
            self.tokens[self.i] = ("word", tok[1][1:])
            inner = self.unary()
            return lambda e: not inner(e)
        return self.primary()

    def primary(self) -> Predicate:
        kind, value = self.take()
        if kind == "lpar":
            inner = self.and_expr()
            if self.peek() is None or self.take()[0] != "rpar":
                raise FilterError("missing ')'")
            return inner
        if kind in ("rpar", "op"):
            raise FilterError(f"unexpected {value!r}")
        if value in ("AND", "OR") and kind == "word":
            raise FilterError(f"{value} needs an expression on both sides")
        nxt = self.peek()
        if kind == "word" and nxt is not None and nxt[0] == "op":
            op = self.take()[1]
            vkind, expected = self.take()
            if vkind not in ("word", "str"):
                raise FilterError(f"expected a value after {value}{op}")
            name = value
            return lambda e: _compare(name, _lookup(e, name), op, expected)
        # A bare value is a global restriction: a substring of any field.
        needle = value.lower()
        return lambda e: needle in _flatten(e).lower()


def compile_filter(text: str) -> Predicate:
    """Compile a Cloud Logging filter into a predicate over LogEntry JSON dicts.

    Supports comparisons (``= != < <= > >= : =~ !~``) on dotted field paths,
    severity and timestamp ordering, bare global terms, ``AND`` / ``OR`` / ``NOT``
    / ``-``, implicit AND and parentheses.

    Raises:
        FilterError: the filter is malformed.
    """
    return _Parser(_tokenize(text or "")).parse()


class LogStore:
    """Every log entry the sandbox produced, as Cloud Logging LogEntry JSON."""

    def __init__(self, limit: int = 50_000) -> None:
        self._entries: list[dict[str, Any]] = []
        self._limit = limit
        self._seq = 0

    def append(self, entry: dict[str, Any]) -> None:
        """Store one entry (an ``insertId`` is assigned when missing)."""
        self._seq += 1
        entry.setdefault("insertId", f"{self._seq:012d}")
        self._entries.append(entry)
        if len(self._entries) > self._limit:
            # Bounded memory: a long sandbox session drops its oldest entries first.
            del self._entries[: len(self._entries) - self._limit]

    def __len__(self) -> int:
        return len(self._entries)

    def query(
        self,
        *,
        resource_names: Iterable[str] = (),
        filter_text: str = "",
        order_by: str = "",
        page_size: int = 50,
        page_token: str = "",
    ) -> dict[str, Any]:
        """Answer an ``entries:list`` request body (see the Cloud Logging REST reference).

        Raises:
            FilterError: malformed filter, order or page token.
        """
        pred = compile_filter(filter_text)
        projects = {n.split("/", 1)[1] for n in resource_names if n.startswith("projects/")}
        rows = [
            e
            for e in self._entries
            if (not projects or e["logName"].split("/")[1] in projects) and pred(e)
        ]
        order = order_by.strip().lower()
        if order not in ("", "timestamp", "timestamp asc", "timestamp desc"):
            raise FilterError(f"invalid orderBy {order_by!r}: use 'timestamp asc|desc'")
        rows.sort(
            key=lambda e: (parse_time(e["timestamp"]), e["insertId"]),
            reverse=order.endswith("desc"),
        )
        try:
            start = int(base64.urlsafe_b64decode(page_token.encode()).decode()) if page_token else 0
        except ValueError as exc:
            raise FilterError(f"invalid pageToken {page_token!r}") from exc
        size = max(1, min(int(page_size or 50), 1000))
        page = rows[start : start + size]
        out: dict[str, Any] = {"entries": page}
        if start + size < len(rows):
            out["nextPageToken"] = base64.urlsafe_b64encode(str(start + size).encode()).decode()
        return out


# ------------------------------------------------------------------ Cloud Run state


class RevisionStartError(Exception):
    """A revision's container exited or never listened; the message says why."""


@dataclass
class RevisionState:
    """One revision: its template, its process and its readiness (mutable emulator state)."""

    name: str
    service: ServiceState
    image: str
    profile: str
    template: dict[str, Any]
    generation: int
    create_time: datetime
    ready: bool | None = None
    reason_field: str = "revisionReason"
    reason: str = "PENDING"
    message: str = ""
    transition_time: datetime | None = None
    port: int = 0
    pid: int = 0
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def full_name(self) -> str:
        return f"{self.service.full_name}/revisions/{self.name}"


@dataclass
class ServiceState:
    """One Cloud Run service (mutable emulator state)."""

    project: str
    region: str
    name: str
    template: dict[str, Any]
    uri: str = ""
    traffic: list[dict[str, Any]] = field(
        default_factory=lambda: [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]
    )
    revisions: dict[str, RevisionState] = field(default_factory=dict)
    generation: int = 0
    observed_generation: int = 0
    latest_created: str = ""
    latest_ready: str = ""
    ingress: str = "INGRESS_TRAFFIC_ALL"
    create_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    update_time: datetime = field(default_factory=lambda: datetime.now(UTC))
    failure: str = ""
    reconciling: bool = False
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))

    @property
    def full_name(self) -> str:
        return f"projects/{self.project}/locations/{self.region}/services/{self.name}"

    def resolved_traffic(self) -> list[tuple[str, int, str]]:
        """(revision, percent, tag) per target, with LATEST resolved to the latest ready one."""
        out = []
        for t in self.traffic:
            if t.get("type") == "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST":
                rev = self.latest_ready
            else:
                rev = t.get("revision", "")
            out.append((rev, int(t.get("percent", 0)), t.get("tag", "")))
        return out


@dataclass
class OperationState:
    """A long-running operation (``done`` flips when the rollout ends)."""

    name: str
    service: ServiceState
    done: bool = False
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None
    task: asyncio.Task[None] | None = None


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
    """

    def __init__(self, runtime: RevisionRuntime, *, project: str, region: str) -> None:
        self.runtime = runtime
        self.project = project
        self.region = region
        self.services: dict[str, ServiceState] = {}
        self.operations: dict[str, OperationState] = {}
        self.logs = LogStore()
        self._tasks: set[asyncio.Task[None]] = set()
        self._rng = random.Random()

    # ---------------------------------------------------------------- logs

    def system_log(self, rev: RevisionState, severity: str, text: str) -> None:
        """Record an entry written by the platform itself (not by the container)."""
        self._append(
            rev, "run.googleapis.com%2Fvarlog%2Fsystem", severity, text, None, datetime.now(UTC)
        )

    def log_line(self, rev: RevisionState, line: str, stream: str = "stdout") -> None:
        """Record one line the revision's process printed (JSON entries or plain text)."""
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
        if isinstance(data, dict):
            try:
                ts = parse_time(str(data["timestamp"])) if data.get("timestamp") else now
            except ValueError:
                ts = now
            severity = str(data.get("severity") or "DEFAULT").upper()
            text = data.get("textPayload") or data.get("message") or ""
            http = data.get("httpRequest") if isinstance(data.get("httpRequest"), dict) else None
            log_id = "run.googleapis.com%2Frequests" if http else f"run.googleapis.com%2F{stream}"
            self._append(
                rev, log_id, severity if severity in SEVERITIES else "DEFAULT", str(text), http, ts
            )
            return
        # Plain text (uvicorn's own logging, tracebacks): Cloud Run stores it as
        # textPayload; we read the level prefix so INFO chatter is not an ERROR.
        head = line.lstrip().split(":", 1)[0].upper()
        severity = head if head in SEVERITIES else "DEFAULT"
        if head.startswith("TRACEBACK") or "Error" in line.split(":", 1)[0]:
            severity = "ERROR"
        self._append(rev, f"run.googleapis.com%2F{stream}", severity, line, None, now)

    def _append(
        self,
        rev: RevisionState,
        log_id: str,
        severity: str,
        text: str,
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
        if text:
            entry["textPayload"] = text
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
    ) -> OperationState:
        """Apply an UpdateService request; returns the (possibly still running) operation.

        ``force`` creates a new revision even for an unchanged template (what
        ``gcloud run deploy`` of the same image does).

        Raises:
            ValueError: invalid request (bad image, traffic not summing to 100, unknown revision).
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
            if force or _template_key(template) != _template_key(svc.template):
                new_template = template
        new_traffic = None
        if wanted("traffic"):
            new_traffic = self._validate_traffic(
                svc, body.get("traffic") or [], creating=new_template is not None
            )
        if wanted("ingress") and body.get("ingress"):
            raw = body["ingress"]
            # The REST transport sends enums as numbers (enum-encoding=int).
            svc.ingress = _INGRESS.get(int(raw), str(raw)) if str(raw).isdigit() else str(raw)

        svc.generation += 1
        svc.update_time = datetime.now(UTC)
        op = OperationState(
            name=f"projects/{svc.project}/locations/{svc.region}/operations/{uuid.uuid4()}",
            service=svc,
        )
        self.operations[op.name] = op
        if new_traffic is not None:
            svc.traffic = new_traffic
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
        self, svc: ServiceState, targets: list[Mapping[str, Any]], creating: bool
    ) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        total = 0
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
                if rev not in svc.revisions:
                    raise ValueError(f"Revision {rev!r} does not exist in service {svc.name!r}")
                if svc.revisions[rev].ready is False:
                    raise ValueError(f"Revision {rev!r} is not ready and cannot serve traffic")
                entry["revision"] = rev
            elif kind != "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST":
                raise ValueError(f"unknown traffic target type {kind!r}")
            if t.get("tag"):
                entry["tag"] = str(t["tag"])
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
        """Cancel pending rollouts (the daemon is stopping)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

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

    def _condition(
        self,
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

    def service_json(self, svc: ServiceState) -> dict[str, Any]:
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
        terminal = self._condition(
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
                self._condition(
                    "RoutesReady", None if svc.reconciling else not broken, svc.update_time
                ),
                self._condition(
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

    def revision_json(self, rev: RevisionState) -> dict[str, Any]:
        """The Revision resource as the Admin API v2 returns it."""
        tmpl = rev.template
        ready_cond = self._condition(
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
                self._condition(
                    "ContainerHealthy", rev.ready, rev.transition_time or rev.create_time
                ),
            ],
            "observedGeneration": "1",
            "logUri": f"http://sandbox.local/logs?revision={rev.name}",
            "reconciling": rev.ready is None,
            "etag": f'"{rev.uid[:8]}"',
        }
        if tmpl.get("sessionAffinity"):
            out["sessionAffinity"] = True
        return out

    def operation_json(self, op: OperationState) -> dict[str, Any]:
        """The google.longrunning.Operation (metadata and response are Services)."""
        out: dict[str, Any] = {
            "name": op.name,
            "metadata": {"@type": SERVICE_TYPE, **self.service_json(op.service)},
            "done": op.done,
        }
        if op.error is not None:
            out["error"] = op.error
        elif op.response is not None:
            out["response"] = {"@type": SERVICE_TYPE, **op.response}
        return out


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


# ------------------------------------------------------------------ HTTP app


def _error(code: int, status: str, message: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message, "status": status}}, status_code=code
    )


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

    def find(full: str) -> ServiceState | JSONResponse:
        svc = emulator.service(full)
        if svc is None:
            return _error(404, "NOT_FOUND", f"Resource '{full}' was not found")
        return svc

    @app.get("/v2/{path:path}", response_model=None)
    async def get_any(path: str, request: Request) -> Any:
        if re.fullmatch(svc_re, path):
            svc = find(path)
            return svc if isinstance(svc, JSONResponse) else emulator.service_json(svc)
        if m := re.fullmatch(rf"({svc_re})/revisions", path):
            svc = find(m.group(1))
            if isinstance(svc, JSONResponse):
                return svc
            revs = sorted(svc.revisions.values(), key=lambda r: r.create_time, reverse=True)
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
            svc = find(m.group(1))
            if isinstance(svc, JSONResponse):
                return svc
            rev = svc.revisions.get(m.group(2))
            if rev is None:
                return _error(404, "NOT_FOUND", f"Resource '{path}' was not found")
            return emulator.revision_json(rev)
        if re.fullmatch(r"projects/[^/]+/locations/[^/]+/operations/[^/]+", path):
            op = emulator.operations.get(path)
            if op is None:
                return _error(404, "NOT_FOUND", f"Operation '{path}' was not found")
            return emulator.operation_json(op)
        return _error(404, "NOT_FOUND", f"Requested entity was not found: /v2/{path}")

    @app.patch("/v2/{path:path}", response_model=None)
    async def patch_service(path: str, request: Request) -> Any:
        if not re.fullmatch(svc_re, path):
            return _error(404, "NOT_FOUND", f"Requested entity was not found: /v2/{path}")
        svc = find(path)
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
        if request.query_params.get("validateOnly") in ("true", "True", "1"):
            return emulator.service_json(svc)
        try:
            op = emulator.update_service(svc, body, mask)
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
                }
            )
        return {"services": services, **(extra_state() if extra_state else {})}

    return app
