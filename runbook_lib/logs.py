"""Read the service's Cloud Run logs through the real Cloud Logging client.

:func:`read_logs` builds the filter the seed's ``gcloud logging read`` commands
start from (``resource.type="cloud_run_revision" AND
resource.labels.service_name="..."``, optionally a revision, a minimum severity,
text terms, and one of the checks' clauses: ``errors``, ``routing`` or ``own``),
asks ``google.cloud.logging.Client`` over HTTP (the sandbox emulator when
``api_endpoint`` is set) and returns flat :class:`LogEntry` rows.
:func:`logging_filter` and :func:`gcloud_logging_command` give a notebook the same
filter as a command.

The filters are built for logs shaped as Cloud Run writes them: a request's status
lives only in the request log's ``httpRequest`` (no text payload), the service's own
output is ``textPayload`` (plain lines, no severity) or ``jsonPayload`` (JSON lines,
``message`` and ``severity``). :func:`gather_evidence` is a log check's I/O: it
waits (bounded by ``[logging] ingestion_wait_s``) until this run's own requests are
listed before the check may pass (:func:`send_fence` marks the moment to wait for).

Evidence is scoped (:class:`LogScope`, built by :func:`log_scope`): a log check
reads the revision under test since the deploy (or, interactively, since the phase
opened), never 15 minutes of every revision, so phase 1's own 404 probes of the
old revision are never counted against the new one. Entries outside the scope are
dropped client-side too, whatever the server returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shlex
import time
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

from .exceptions import CloudRunError
from .redaction import redact_excerpt
from .settings import Settings

# The evidence helpers (gather_evidence, send_fence, LogEvidence, REQUEST_LOG) are imported
# from this module by the steps; the package's front door does not list them.
__all__ = [
    "LogEntry",
    "LogScope",
    "gcloud_logging_command",
    "log_scope",
    "logging_client",
    "logging_endpoint",
    "logging_filter",
    "read_logs",
    "scope_for",
]

log = logging.getLogger(__name__)

SEVERITIES = (
    "DEFAULT",
    "DEBUG",
    "INFO",
    "NOTICE",
    "WARNING",
    "ERROR",
    "CRITICAL",
    "ALERT",
    "EMERGENCY",
)


@dataclass(frozen=True, slots=True)
class LogEntry:
    """One log line of a revision (request fields are empty for plain text lines)."""

    timestamp: datetime
    severity: str
    revision: str
    text: str
    status: int | None
    method: str
    path: str
    latency_s: float | None
    user_agent: str = ""
    log: str = ""  # the log's id, e.g. ``run.googleapis.com%2Frequests``


@dataclass(frozen=True, slots=True)
class LogScope:
    """The log entries that are evidence for a check: one revision, from one instant on.

    ``basis`` says in words why this instant (shown next to the check).
    """

    revision: str
    since: datetime
    basis: str

    def admits(self, entry: LogEntry) -> bool:
        """True when ``entry`` is of the revision under test and not older than ``since``."""
        return entry.revision == self.revision and entry.timestamp >= self.since

    def describe(self) -> str:
        """``revision R since T (basis)``."""
        return (
            f"revision {self.revision} since {self.since.isoformat(timespec='seconds')} "
            f"({self.basis})"
        )


def _instant(value: datetime | str | None, what: str) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
        except ValueError as exc:
            raise CloudRunError(f"{what} is not an ISO 8601 time: {value!r}") from exc
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def log_scope(
    *,
    revision: str | None = None,
    deployed_revision: str | None = None,
    deploy_started_at: datetime | str | None = None,
    phase_opened_at: datetime | str | None = None,
    serving: Mapping[str, int] | None = None,
) -> LogScope:
    """Decide which log entries are evidence for a check (pure).

    The revision under test is ``revision`` when given, else the revision this run
    deployed, else the one revision serving all traffic (``serving``, revision ->
    percent). The start is the deploy's start when the revision under test is the
    one deployed, else the moment the phase opened. Earlier entries (phase 1's
    probes, an older revision's errors) are never evidence.

    Raises:
        CloudRunError: no revision under test can be named (several serve and none
            was given), or no start time is known.
    """
    rev = revision or deployed_revision or ""
    if not rev and serving:
        shares = {r: p for r, p in serving.items() if p > 0}
        if len(shares) == 1:
            rev = next(iter(shares))
        elif shares:
            split = ", ".join(f"{r} {p} %" for r, p in sorted(shares.items()))
            raise CloudRunError(
                f"traffic is split ({split}): name the revision under test "
                "(run phase 2 in the same run, or pass the revision)"
            )
    if not rev:
        raise CloudRunError(
            "no revision under test: no deploy was recorded and no revision serves traffic"
        )
    deployed_at = _instant(deploy_started_at, "deploy_started_at")
    opened_at = _instant(phase_opened_at, "phase_opened_at")
    if deployed_at is not None and (not deployed_revision or deployed_revision == rev):
        return LogScope(rev, deployed_at, f"since the deploy of {rev} started")
    if opened_at is not None:
        return LogScope(rev, opened_at, "since this phase opened")
    raise CloudRunError(
        f"no start time for the logs of {rev}: no deploy was recorded and the phase's "
        "opening time is unknown"
    )


async def scope_for(
    settings: Settings,
    *,
    revision: str | None = None,
    deployed_revision: str | None = None,
    deploy_started_at: datetime | str | None = None,
    phase_opened_at: datetime | str | None = None,
) -> LogScope:
    """:func:`log_scope`, reading the serving split from Cloud Run only when it is needed.

    A step calls it with what the run recorded (phase 2's ``deployed_revision`` and
    ``deploy_started_at``) and ``ctx.started_at``; interactively, with no record, the
    revision serving all traffic is the one under test.

    Raises:
        CloudRunError: as :func:`log_scope`, or the service could not be read.
    """
    serving = None
    if not (revision or deployed_revision):
        from .cloudrun import cloudrun_client

        serving = (await cloudrun_client(settings).get_service()).serving_revisions
    return log_scope(
        revision=revision,
        deployed_revision=deployed_revision,
        deploy_started_at=deploy_started_at,
        phase_opened_at=phase_opened_at,
        serving=serving,
    )


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _rfc3339(ts: datetime) -> str:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return ts.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


# Cloud Run's request log: where a request's status is, and the only place it is.
REQUEST_LOG = "run.googleapis.com%2Frequests"
# Words of the service's own lines that a routing-error search reads (the seed's query).
ROUTING_WORDS = ("404", "websocket", "routing")
# Plain text lines have no severity on Cloud Run: these words find the error lines
# (Python logging's and uvicorn's level prefixes, tracebacks) for the judge to read.
ERROR_WORDS = ("ERROR", "CRITICAL", "FATAL", "Traceback")
KINDS = ("", "errors", "routing", "own")


def _text_terms(words: Sequence[str]) -> list[str]:
    """A word in the service's own output: a text line or a JSON line's ``message``."""
    return [
        term
        for w in words
        if w
        for term in (f"textPayload:{_quote(w)}", f"jsonPayload.message:{_quote(w)}")
    ]


def _ws_404(ws_paths: Sequence[str]) -> str:
    urls = " OR ".join(f"httpRequest.requestUrl:{_quote(p)}" for p in ws_paths if p)
    return f"(httpRequest.status=404 AND ({urls}))" if urls else ""


def _kind_clause(kind: str, ws_paths: Sequence[str], run: str, project: str) -> str:
    from .checks.causes import NO_WS_LOG_MARKERS

    if kind == "own":
        from .identity import run_id

        return (
            f"logName={_quote(f'projects/{project}/logs/{REQUEST_LOG}')} AND "
            f"httpRequest.userAgent:{_quote(f'(run {run or run_id()})')}"
        )
    terms = ["httpRequest.status>=500", _ws_404(ws_paths)]
    if kind == "errors":
        terms = ["severity>=ERROR", *terms, *_text_terms(ERROR_WORDS)]
    else:  # routing
        terms += _text_terms(ROUTING_WORDS)
    terms += _text_terms(NO_WS_LOG_MARKERS)
    return "(" + " OR ".join(t for t in terms if t) + ")"


def logging_filter(
    settings: Settings,
    *,
    since: datetime | None = None,
    revision: str | None = None,
    min_severity: str | None = None,
    contains: Sequence[str] = (),
    scope: LogScope | None = None,
    kind: str = "",
    ws_paths: Sequence[str] = (),
    run: str = "",
) -> str:
    """The Cloud Logging filter for the configured service.

    ``kind`` adds one log check's clause: ``errors`` (``deploy.logs_clean``,
    ``monitor.log_errors``: severity ERROR+, request-log 5xx and 404s on ``ws_paths``,
    error lines of the service's text and JSON output), ``routing``
    (``logs.no_routing_errors``: request-log 5xx and 404s on ``ws_paths``, lines that
    mention 404, websocket or routing) or ``own`` (this run's requests in the request
    log, by User-Agent; ``run`` defaults to the bound run). ``contains`` terms are
    OR-ed over ``textPayload`` and ``jsonPayload.message``. A ``scope`` sets the
    revision and the start.

    Raises:
        CloudRunError: unknown severity name or kind, or a scope contradicted by
            since/revision.
    """
    if kind not in KINDS:
        raise CloudRunError(f"unknown log filter kind {kind!r}; use one of {KINDS}")
    since, revision = _scoped(scope, since, revision)
    parts = [
        'resource.type="cloud_run_revision"',
        f"resource.labels.service_name={_quote(settings.cloudrun.service)}",
    ]
    if revision:
        parts.append(f"resource.labels.revision_name={_quote(revision)}")
    if min_severity:
        sev = min_severity.upper()
        if sev not in SEVERITIES:
            raise CloudRunError(f"unknown log severity {min_severity!r}; use one of {SEVERITIES}")
        parts.append(f"severity>={sev}")
    if since is not None:
        parts.append(f"timestamp>={_quote(_rfc3339(since))}")
    if kind:
        parts.append(_kind_clause(kind, ws_paths, run, settings.cloudrun.project))
    terms = _text_terms(contains)
    if terms:
        parts.append("(" + " OR ".join(terms) + ")")
    return " AND ".join(parts)


def gcloud_logging_command(settings: Settings, filter: str, limit: int = 50) -> str:
    """The equivalent ``gcloud logging read`` command (as in the seed plan).

    The format shows request-log fields too: a request log entry has no text payload.
    """
    return (
        f"gcloud logging read {shlex.quote(filter)} "
        f"--project={shlex.quote(settings.cloudrun.project)} --limit={int(limit)} "
        '--format="value(timestamp,severity,httpRequest.status,httpRequest.requestUrl,'
        'textPayload,jsonPayload.message)"'
    )


def _scoped(
    scope: LogScope | None, since: datetime | None, revision: str | None
) -> tuple[datetime | None, str | None]:
    if scope is None:
        return since, revision
    if revision and revision != scope.revision:
        raise CloudRunError(f"revision {revision!r} contradicts the log scope ({scope.describe()})")
    if since is not None and _instant(since, "since") != scope.since:
        raise CloudRunError(f"since={since} contradicts the log scope ({scope.describe()})")
    return scope.since, scope.revision


def _latency(value: Any) -> float | None:
    if value is None or value == "":
        return None
    if hasattr(value, "total_seconds"):
        return float(value.total_seconds())
    text = str(value).strip()
    try:
        return float(text[:-1]) if text.endswith("s") else float(text)
    except ValueError:
        return None


def _entry(raw: Any) -> LogEntry:
    labels = dict(getattr(raw.resource, "labels", None) or {}) if raw.resource else {}
    http = raw.http_request or {}
    url = str(http.get("requestUrl") or "")
    path = urlsplit(url).path  # absolute on Google, a path in the sandbox; never the query
    payload = raw.payload
    if isinstance(payload, Mapping):
        message = payload.get("message")
        text = str(message) if message not in (None, "") else json.dumps(dict(payload))[:2000]
    else:
        text = "" if payload is None else str(payload)
    status = http.get("status")
    ts = raw.timestamp or datetime.fromtimestamp(0, UTC)
    return LogEntry(
        timestamp=ts if ts.tzinfo else ts.replace(tzinfo=UTC),
        severity=str(raw.severity or "DEFAULT"),
        revision=str(labels.get("revision_name", "")),
        text=text,
        status=int(status) if status not in (None, "") else None,
        method=str(http.get("requestMethod") or ""),
        path=path,
        latency_s=_latency(http.get("latency")),
        user_agent=str(http.get("userAgent") or ""),
        log=str(raw.log_name or "").rsplit("/logs/", 1)[-1],
    )


def _explain(endpoint: str, exc: BaseException) -> CloudRunError:
    from google.api_core import exceptions as gexc

    where = endpoint or "https://logging.googleapis.com"
    if isinstance(exc, gexc.GoogleAPICallError):
        hint = {400: " (the filter was refused)", 403: " (the caller needs roles/logging.viewer)"}
        return CloudRunError(
            f"Cloud Logging read failed at {where}: HTTP {exc.code} {exc.message}"
            f"{hint.get(int(exc.code or 0), '')}"
        )
    name, text = type(exc).__name__, str(exc)
    if isinstance(exc, TimeoutError) or "Timeout" in name:
        return CloudRunError(f"Cloud Logging read: {where} did not answer in time")
    if "ConnectionError" in name or "Connection refused" in text:
        return CloudRunError(
            f"Cloud Logging read: cannot connect to {where}; is the sandbox running "
            "(`runbook sandbox up`) or the api_endpoint right?"
        )
    if isinstance(exc, (ValueError, KeyError)):
        return CloudRunError(
            f"Cloud Logging read: {where} answered something that is not a "
            f"valid entries:list response: {redact_excerpt(text, 200)}"
        )
    return CloudRunError(
        f"Cloud Logging read failed at {where}: {name}: {redact_excerpt(text, 300)}"
    )


async def read_logs(
    settings: Settings,
    *,
    since: datetime | None = None,
    revision: str | None = None,
    min_severity: str | None = None,
    contains: Sequence[str] = (),
    limit: int = 500,
    scope: LogScope | None = None,
    kind: str = "",
    ws_paths: Sequence[str] = (),
    run: str = "",
) -> list[LogEntry]:
    """Log entries of the configured service since ``since``, oldest first.

    Args:
        settings: ``[cloudrun]`` names the service; ``[logging] api_endpoint`` (else
            ``[cloudrun] api_endpoint``) points at the sandbox, empty means Google.
        since: earliest timestamp (aware, or naive UTC); or give ``scope``.
        revision: only this revision.
        min_severity: e.g. ``"ERROR"``.
        contains: substrings of textPayload or jsonPayload.message (any of them).
        limit: most recent ``limit`` entries at most.
        scope: the evidence scope (:func:`log_scope`): its revision and start are
            queried, and entries outside it are dropped even if the server sent them.
        kind, ws_paths, run: a log check's clause (see :func:`logging_filter`).

    Raises:
        CloudRunError: the read failed (refused, unreachable, timed out, bad answer),
            or neither ``since`` nor ``scope`` was given.
    """
    endpoint = logging_endpoint(settings)
    since, revision = _scoped(scope, since, revision)
    if since is None:
        raise CloudRunError("read_logs needs since= or scope=: an unbounded read is no evidence")
    flt = logging_filter(
        settings,
        since=since,
        revision=revision,
        min_severity=min_severity,
        contains=contains,
        kind=kind,
        ws_paths=ws_paths,
        run=run,
    )
    timeout = settings.timeouts.cloudrun_s

    def fetch() -> list[LogEntry]:
        from google.cloud import logging as glogging

        with logging_client(settings, timeout) as client:
            # Newest first so ``limit`` keeps the most recent entries; re-sorted below.
            it = client.list_entries(
                resource_names=[f"projects/{settings.cloudrun.project}"],
                filter_=flt,
                order_by=glogging.DESCENDING,
                page_size=min(max(limit, 1), 1000),
                max_results=limit,
            )
            rows = [_entry(e) for e in it]
        if scope is not None:
            rows = [e for e in rows if scope.admits(e)]
        rows.sort(key=lambda e: e.timestamp)
        return rows

    try:
        return await asyncio.wait_for(asyncio.to_thread(fetch), timeout + 5.0)
    except CloudRunError:
        raise
    except Exception as exc:
        raise _explain(endpoint, exc) from exc


def logging_endpoint(settings: Settings) -> str:
    """The Cloud Logging endpoint the settings name ('' = Google's)."""
    return (settings.logging.api_endpoint or settings.cloudrun.api_endpoint).rstrip("/")


@contextlib.contextmanager
def logging_client(settings: Settings, timeout_s: float) -> Iterator[Any]:
    """A ``google.cloud.logging.Client`` for the settings' project and endpoint, every
    request bounded by ``timeout_s``; its HTTP session is closed on exit."""
    from google.cloud import logging as glogging

    endpoint = logging_endpoint(settings)
    credentials = _credentials(endpoint)
    session = _bounded_session(credentials, timeout_s)
    kwargs: dict[str, Any] = {
        "project": settings.cloudrun.project,
        "credentials": credentials,
        "_http": session,
        "_use_grpc": False,
    }
    if endpoint:
        kwargs["client_options"] = {"api_endpoint": endpoint}
    try:
        yield glogging.Client(**kwargs)
    finally:
        session.close()


def _credentials(endpoint: str) -> Any:
    if endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        return AnonymousCredentials()
    import google.auth

    creds, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/logging.read"])
    return creds


def _bounded_session(credentials: Any, timeout: float) -> Any:
    """An authorized HTTP session whose every request is bounded by ``timeout``.

    The logging client asks for 60 s per request and has no knob for it.
    """
    from google.auth.transport.requests import AuthorizedSession

    class _Bounded(AuthorizedSession):  # type: ignore[misc]
        def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> Any:  # type: ignore[override]
            asked = kwargs.get("timeout")
            kwargs["timeout"] = (
                timeout if not isinstance(asked, (int, float)) else min(float(asked), timeout)
            )
            return super().request(method, url, *args, **kwargs)

    return _Bounded(credentials)


@dataclass(frozen=True, slots=True)
class LogEvidence:
    """What a log check read, and whether it saw this run's own requests first.

    ``entries`` matched the check's filter; ``own`` are this run's requests listed in
    the request log of the revision under test; ``fenced`` says whether the request
    sent when the check began (or, with no fence, any of this run's requests) was
    listed; ``waited_s`` how long the check polled.
    """

    entries: tuple[LogEntry, ...]
    own: tuple[LogEntry, ...]
    fenced: bool
    waited_s: float
    filter: str
    own_filter: str


async def send_fence(settings: Settings, revision: str) -> datetime | None:
    """Send one request the log check then waits to see listed; return when it was sent.

    The request (``GET`` of the health path, else ``/``, with this run's User-Agent)
    only marks the moment: what it answers does not matter. It is sent only when the
    revision under test serves all traffic, so the request reaches it; otherwise (or
    when it cannot be sent) ``None``: the check then waits for any of this run's
    requests.
    """
    import httpx

    from .cloudrun import cloudrun_client
    from .identity import user_agent

    try:
        serving = (await cloudrun_client(settings).get_service()).serving_revisions
    except Exception as exc:  # the check still runs, without a fence
        log.info("no log fence: the service could not be read: %s", exc)
        return None
    if serving.get(revision, 0) < 100 or not settings.target.base_url:
        return None
    t = settings.target
    url = t.http(t.health_path) if t.health_path else t.base_url.rstrip("/") + "/"
    sent = datetime.now(UTC)
    try:
        async with httpx.AsyncClient(
            timeout=settings.timeouts.connect_s + settings.timeouts.read_s,
            trust_env=False,
            headers={"User-Agent": user_agent()},
        ) as client:
            await client.get(url)
    except httpx.HTTPError as exc:
        log.info("no log fence: %s did not answer: %s", url, exc)
        return None
    return sent


async def gather_evidence(
    settings: Settings,
    *,
    kind: str,
    scope: LogScope | None = None,
    since: datetime | None = None,
    revision: str | None = None,
    ws_paths: Sequence[str] = (),
    fence: datetime | None = None,
    fails: Callable[[LogEntry], bool] | None = None,
    wait_s: float | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> LogEvidence:
    """Poll the logs until this run's own requests are listed, then return what was read.

    Each round reads the check's entries (``kind``, see :func:`logging_filter`) and this
    run's requests in the request log of the revision under test. It stops when a
    request at or after ``fence`` (any of this run's requests when ``fence`` is None)
    is listed, when an entry already fails the check (``fails``: a failure needs no
    proof that the logs are complete), or after ``wait_s`` (default ``[logging]
    ingestion_wait_s``), pausing 1 s, then longer (up to 10 s), between rounds.

    Raises:
        CloudRunError: a read failed.
    """
    wait = settings.logging.ingestion_wait_s if wait_s is None else wait_s
    where: dict[str, Any] = (
        {"scope": scope} if scope is not None else {"since": since, "revision": revision}
    )
    flt = logging_filter(settings, kind=kind, ws_paths=ws_paths, **where)
    own_flt = logging_filter(settings, kind="own", **where)
    start = time.monotonic()
    pause = 1.0
    while True:
        entries = await read_logs(settings, kind=kind, ws_paths=ws_paths, **where)
        own = await read_logs(settings, kind="own", limit=1000, **where)
        fenced = any(fence is None or e.timestamp >= fence for e in own)
        waited = time.monotonic() - start
        failing = fails is not None and any(fails(e) for e in entries)
        if fenced or failing or waited >= wait:
            return LogEvidence(tuple(entries), tuple(own), fenced, waited, flt, own_flt)
        await sleep(min(pause, wait - waited))
        pause = min(pause * 1.6, 10.0)
