"""Causes and wording shared by every check family, and the one result builder.

:func:`explain_status` and :func:`explain_close` map handshake statuses and close
codes to likely causes (SPEC section 3); the ``*_words`` helpers phrase an
observation's failure the same way in every check. :class:`Verdict` builds a
check's :class:`~runbook_lib.results.CheckResult` with the phase taken from the
catalog, so a judge only says what it saw.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..flows import FlowObservation
from ..observations import (
    ConnectOutcome,
    HandshakeObservation,
    HttpObservation,
)
from ..protocol import Frame
from ..results import CheckResult, Status
from .catalog import phase_of

__all__ = [
    "AT_ONCE_S",
    "CARRIED_CAUSES",
    "CLOSE_CAUSES",
    "HTTP_CAUSES",
    "INCIDENT_SIGNATURE",
    "NO_WS_IMPLEMENTATION",
    "NO_WS_LOG_MARKERS",
    "STATUS_CAUSES",
    "UNREADABLE",
    "RunCause",
    "Verdict",
    "WsEvidence",
    "carry_cause",
    "connect_failure_words",
    "diagnose_drop",
    "diagnose_refusal",
    "ended_words",
    "explain_close",
    "explain_http_status",
    "explain_status",
    "flow_drop",
    "http_failure",
    "kind_words",
    "run_cause",
    "upgrade_words",
]

# Frame kinds that carry no readable type, user or run id.
UNREADABLE = ("binary", "non_json", "oversized")

_UNSET: Any = object()


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result builder of one check: ``Verdict(id, threshold=...).fail(detail, observed=...)``.

    Attributes:
        check_id: a catalog id (or a dynamic ``predeploy.``/``tests.`` id).
        threshold: what the check compares with (each call may override it).
        phase: the phase; 0 means the catalog's.
    """

    check_id: str
    threshold: Any = None
    phase: int = 0

    def result(
        self,
        status: Status,
        detail: str = "",
        *,
        observed: Any = None,
        threshold: Any = _UNSET,
        data: Mapping[str, Any] | None = None,
        duration_s: float = 0.0,
    ) -> CheckResult:
        """The result with ``status``; ``threshold`` defaults to the verdict's."""
        return CheckResult(
            id=self.check_id,
            phase=self.phase or phase_of(self.check_id),
            status=status,
            observed=observed,
            threshold=self.threshold if threshold is _UNSET else threshold,
            detail=detail,
            duration_s=duration_s,
            data=dict(data or {}),
        )

    def ok(self, detail: str = "", **kw: Any) -> CheckResult:
        """A ``pass`` result."""
        return self.result(Status.PASS, detail, **kw)

    def fail(self, detail: str = "", **kw: Any) -> CheckResult:
        """A ``fail`` result."""
        return self.result(Status.FAIL, detail, **kw)

    def warn(self, detail: str = "", **kw: Any) -> CheckResult:
        """A ``warn`` result."""
        return self.result(Status.WARN, detail, **kw)

    def error(self, detail: str = "", **kw: Any) -> CheckResult:
        """An ``error`` result: the check itself could not run."""
        return self.result(Status.ERROR, detail, **kw)

    def skip(self, detail: str = "", **kw: Any) -> CheckResult:
        """A ``skip`` result: absent configuration, declared not applicable, or a dry run."""
        return self.result(Status.SKIP, detail, **kw)


INCIDENT_SIGNATURE = "WebSocket routes answer 404 while /health is 200"

STATUS_CAUSES: dict[int, str] = {
    400: "the server saw a request without the WebSocket handshake headers (Upgrade, "
    "Connection, Sec-WebSocket-Key/Version): a client or proxy dropped them",
    401: "the server requires credentials for this route: send a valid token",
    403: "IAM or ingress settings refuse the caller, or no WebSocket route matched and the "
    "framework answered 403: check `--ingress`/`--allow-unauthenticated` and the route table",
    404: "the WebSocket route is not registered in the serving revision (router not included, "
    "wrong path prefix) or a load-balancer path rule does not forward it: list the app's "
    "routes and deploy the revision that has them",
    405: "the path exists for another method only: the WebSocket route is not registered there",
    426: "a hop between client and service stripped the `Upgrade` header (proxy or load "
    "balancer without WebSocket support): enable WebSocket/HTTP-1.1 upgrade on that hop",
    429: "the service hit its max instances or concurrency: raise `--max-instances` or "
    "`--concurrency`, or reduce load",
    500: "no ready instance, a readiness guard answering before startup finished, or an "
    "exception in the handler: read the revision's logs",
    502: "HTTP/2 end-to-end is on (`--use-http2`) but the container speaks HTTP/1.1 "
    "WebSockets, or the container crashed mid-request: turn HTTP/2 end-to-end off",
    503: "no ready instance (cold start, crash loop, failed readiness) or a readiness guard "
    "refusing traffic: check the revision's readiness and min instances",
    504: "the request hit Cloud Run's request timeout before the container answered",
}

CLOSE_CAUSES: dict[int, str] = {
    1000: "normal close",
    1001: "the server is going away (instance shutdown or redeploy): reconnect",
    1002: "protocol error: one side sent a malformed frame",
    1003: "the server refused the subprotocol or data type it was sent: check the "
    "`Sec-WebSocket-Protocol` offer (e.g. `jwt.<token>`)",
    1006: "abrupt close without a close frame: Cloud Run's request timeout cut the socket, "
    "the instance was stopped, or a proxy idle timeout fired: raise `--timeout` above the "
    "session length and reconnect on close",
    1008: "policy violation, almost always authentication: the token is missing, expired, "
    "wrongly signed or for another audience",
    1009: "a frame exceeded the size limit",
    1011: "server error while handling the session: read the revision's logs",
    1012: "the service is restarting",
    1013: "try again later: the server is overloaded",
}


def explain_status(code: int | None) -> str:
    """Likely cause of a WebSocket upgrade answered with HTTP ``code``, in words."""
    if code is None:
        return "no HTTP answer at all: the host refused, timed out or spoke something else"
    if code == 101:
        return "101 Switching Protocols: the upgrade succeeded"
    if code in STATUS_CAUSES:
        return STATUS_CAUSES[code]
    if 300 <= code < 400:
        return "a redirect: WebSocket clients do not follow it; use the final URL (https/wss)"
    if 500 <= code < 600:
        return STATUS_CAUSES[500]
    if 200 <= code < 300:
        return (
            f"HTTP {code} instead of 101: a hop answered the upgrade as a plain GET "
            "(Upgrade stripped) or the path is an HTTP route, not a WebSocket route"
        )
    return f"HTTP {code}: unexpected answer to a WebSocket upgrade"


# A plain HTTP request (health, test route, auth config) is not a WebSocket upgrade: its
# causes never speak of WebSocket routes.
HTTP_CAUSES: dict[int, str] = {
    400: "the server rejected the request as malformed",
    401: "the endpoint requires credentials",
    403: "IAM, ingress or the application refuses the caller: check `--ingress`, "
    "`--allow-unauthenticated` and the endpoint's access rules",
    404: "path not found: the service has no route at this path (check the configured path, "
    "or declare the endpoint absent with `= false` if the service has none)",
    405: "the path exists for another method only (GET is not allowed there)",
    408: "the server timed out waiting for the request",
    429: "the service hit its max instances or concurrency: raise `--max-instances` or "
    "`--concurrency`, or reduce load",
    500: "the handler raised an exception: read the revision's logs",
    502: "a proxy got no valid answer from the container (crash mid-request, or HTTP/2 "
    "end-to-end on a container that speaks HTTP/1.1)",
    503: "no ready instance (cold start, crash loop, failed readiness) or a readiness guard "
    "refusing traffic: check the revision's readiness and min instances",
    504: "the request hit Cloud Run's request timeout before the container answered",
}

NO_WS_IMPLEMENTATION = (
    "the server has no WebSocket implementation (uvicorn installed without `websockets`/"
    "`wsproto`, or started with `--ws none`) or a hop in front of it answers for it: install "
    "websockets in the image (`uvicorn[standard]` or `websockets`) and check that every hop "
    "forwards the upgrade; redeploying the same code will not help"
)

# Lines a server without a WebSocket implementation logs for every upgrade (uvicorn).
NO_WS_LOG_MARKERS = ("No supported WebSocket library", "Unsupported upgrade request")


def explain_http_status(code: int | None) -> str:
    """Likely cause of a plain HTTP request answered with ``code`` (no WebSocket wording)."""
    if code is None:
        return "no HTTP answer at all: the host refused, timed out or spoke something else"
    if code in HTTP_CAUSES:
        return HTTP_CAUSES[code]
    if 300 <= code < 400:
        return "a redirect: configure the final URL"
    if 500 <= code < 600:
        return HTTP_CAUSES[500]
    return f"HTTP {code}"


@dataclass(frozen=True, slots=True)
class WsEvidence:
    """What else the run knows when an upgrade is refused (SPEC 8, diagnosis from all the evidence).

    Attributes:
        source_routes: the WebSocket routes the app's source registers (None: not listed,
            e.g. ``[source] app`` not configured or the import failed).
        ws_library_missing: the app's interpreter has uvicorn but no WebSocket library.
        log_lines: log texts of the service that may name a missing WebSocket library.
        health_server: the ``Server`` header of the health answer ('' unknown).
        deploy_changes_code: a configured deploy would serve other code than the serving
            revision (deploy image differs, or a deploy command builds from source); False
            when no deploy is configured or it would redeploy the serving image.
        credentials: the upgrade carried credentials (``[auth]`` mode is not none); None
            when unknown. Without any, a 403 is not a refused token.
    """

    source_routes: tuple[str, ...] | None = None
    ws_library_missing: bool = False
    log_lines: tuple[str, ...] = ()
    health_server: str = ""
    deploy_changes_code: bool = False
    credentials: bool | None = None

    @property
    def logs_say_no_ws(self) -> bool:
        """A log line says the server has no WebSocket library."""
        return any(m in line for line in self.log_lines for m in NO_WS_LOG_MARKERS)


def diagnose_refusal(
    status: int | None,
    path: str,
    evidence: WsEvidence | None = None,
    *,
    server: str = "",
) -> tuple[str, str]:
    """The likely cause of an upgrade on ``path`` refused with ``status``, from all the evidence.

    Args:
        status: the refusing HTTP status.
        path: the WebSocket path.
        evidence: what the source, the logs and the deploy configuration say.
        server: the ``Server`` header of the refusal.

    Returns:
        ``(cause, words)``: a short key (``no_ws_implementation``, ``hop_answers``,
        ``route_not_in_source``, ``route_not_deployed``, ``route_not_served``,
        ``caller_refused``, ``route_unknown``, ``status``) and the cause in words.
    """
    ev = evidence or WsEvidence()
    # Whatever the stack answers for an upgrade it cannot perform (uvicorn: 404; behind
    # Socket.IO or a framework's fallback: 500, 403...), a missing library is the cause.
    if status is not None and status >= 400 and (ev.ws_library_missing or ev.logs_say_no_ws):
        why = (
            "the app's interpreter has uvicorn but neither websockets nor wsproto"
            if ev.ws_library_missing
            else "the service's logs say 'No supported WebSocket library' / "
            "'Unsupported upgrade request'"
        )
        return "no_ws_implementation", f"{why}: {NO_WS_IMPLEMENTATION}"
    if status not in (403, 404):
        return "status", explain_status(status)
    in_source = None if ev.source_routes is None else path in ev.source_routes
    if status == 404:
        if server and ev.health_server and server.lower() != ev.health_server.lower():
            return "hop_answers", (
                f"the 404 comes from `{server}` while the health endpoint comes from "
                f"`{ev.health_server}`: a hop in front of the service (load-balancer path "
                "rule, proxy without WebSocket support) answers the upgrade; route the path "
                "to the service and enable WebSocket forwarding on that hop"
            )
        if in_source is False:
            return "route_not_in_source", (
                f"the app's source does not register {path} as a WebSocket route "
                f"(it registers: {', '.join(ev.source_routes or ()) or 'none'}): include the "
                "router that defines it (or fix target.ws_paths), then deploy"
            )
        if in_source and ev.deploy_changes_code:
            return "route_not_deployed", (
                f"the source registers {path} but the serving revision answers 404: it was "
                "built from code without the route; deploy the revision built from this "
                f"source (phase 2). If the 404 persists after that deploy, {NO_WS_IMPLEMENTATION}"
            )
        if in_source:
            return "no_ws_implementation", (
                f"the source registers {path} and nothing configured would deploy other "
                f"code: {NO_WS_IMPLEMENTATION}"
            )
        return "route_unknown", (
            f"{STATUS_CAUSES[404]}; or {NO_WS_IMPLEMENTATION}. Configure [source] app to "
            "tell them apart"
        )
    # 403: Starlette/FastAPI refuse an upgrade on a path without a WebSocket route with 403.
    if in_source is False:
        return "route_not_in_source", (
            f"the app's source does not register {path} as a WebSocket route; Starlette and "
            "FastAPI answer 403 to an upgrade on an unknown path: include the route (or fix "
            "target.ws_paths), then deploy"
        )
    if in_source and ev.credentials is False:
        return "route_not_served", (
            f"the source registers {path} and the upgrade needs no credentials, yet it was "
            "refused with 403, as Starlette and FastAPI refuse an upgrade on a path without a "
            "WebSocket route: the serving app does not have this route (built from other code, "
            "or the route moved); if the route is served, an Origin check or a required "
            "subprotocol ([protocol] subprotocols) refuses the caller"
        )
    if in_source:
        return "caller_refused", (
            f"the source registers {path}, so the 403 is a refusal of the caller: IAM or "
            "ingress (`--ingress`, `--allow-unauthenticated`), missing or rejected "
            "credentials, an Origin check or a required subprotocol not offered; or the "
            "serving revision lacks the route (Starlette answers 403 to an unknown path)"
        )
    return "status", STATUS_CAUSES[403]


# A drop this soon after the accept (or after the runbook's own frame) is the handler or
# the service's decoder reacting, not a timeout: no platform timeout is that short.
AT_ONCE_S = 1.0
# Close codes whose timing tells more than the code: no close frame, or a server error.
_TIMED_CLOSES = (None, 1005, 1006, 1011)


def diagnose_drop(
    *,
    lifetime_s: float,
    close_code: int | None,
    sent_at_s: float | None = None,
    sent: str = "",
    request_timeout_s: float | None = None,
    sent_before: bool = False,
) -> tuple[str, str]:
    """Why an accepted socket was dropped, from its timing and the runbook's own frames.

    Args:
        lifetime_s: seconds from the accept to the drop.
        close_code: the close code (None or 1006: no close frame).
        sent_at_s: when the runbook's last frame before the drop was sent (seconds since
            the accept; None when it sent nothing).
        sent: that frame (a template or an excerpt), named in the words.
        request_timeout_s: the service's configured request timeout, when known.
        sent_before: the same frame had already gone through earlier on this socket (a
            repeated ping): then it is not what the service cannot read.

    Returns:
        ``(cause, words)``: ``handler_failed``, ``protocol_mismatch``, ``request_timeout``,
        ``abrupt`` (a later drop, not at the request timeout) or ``close`` (the close
        code's own meaning), and the cause in words.
    """
    if close_code not in _TIMED_CLOSES:
        return "close", explain_close(close_code)
    how = (
        f"closed {close_code}"
        if close_code not in (None, 1006)
        else "dropped without a close frame"
    )
    if request_timeout_s and lifetime_s >= 0.9 * request_timeout_s:
        return "request_timeout", (
            f"the socket was {how} after {lifetime_s:.1f}s, at the service's request timeout "
            f"({request_timeout_s:g}s): Cloud Run's request timeout cut it; raise `--timeout` "
            "above the session length and reconnect on close"
        )
    since_send = None if sent_at_s is None else max(lifetime_s - sent_at_s, 0.0)
    frame = f" {sent[:80]!r}" if sent else ""
    if since_send is not None and since_send <= AT_ONCE_S and not sent_before:
        if sent_at_s is not None and sent_at_s >= AT_ONCE_S:
            return "protocol_mismatch", (
                f"the socket was {how} {since_send:.2f}s after the runbook sent its frame"
                f"{frame}, having been open {sent_at_s:.1f}s before: the service does not "
                "accept that message (protocol mismatch); configure the messages it speaks "
                "([protocol] ping / [flows]), or declare the check not applicable"
            )
        return "handler_failed", (
            f"the socket was {how} {lifetime_s:.2f}s after the accept, {since_send:.2f}s after "
            f"the runbook's frame{frame}: the handler fails right after accepting, or cannot "
            "read that frame (protocol mismatch); not a timeout: read the service's logs for "
            "the exception"
        )
    if lifetime_s <= AT_ONCE_S:
        return "handler_failed", (
            f"the socket was {how} {lifetime_s:.2f}s after the accept, before the runbook sent "
            "anything: the handler fails right after accepting (not a timeout); read the "
            "service's logs for the exception"
        )
    if close_code == 1011:
        return "close", explain_close(1011)
    limit = (
        f", well before the request timeout ({request_timeout_s:g}s)" if request_timeout_s else ""
    )
    return "abrupt", (
        f"the socket was {how} after {lifetime_s:.1f}s{limit}: "
        + (
            "the instance was stopped, a proxy idle timeout fired, or the handler dropped it: "
            "read the service's logs"
            if request_timeout_s
            else explain_close(1006)
        )
    )


def flow_drop(
    obs: FlowObservation, request_timeout_s: float | None = None
) -> tuple[str, str] | None:
    """:func:`diagnose_drop` for a flow whose socket the server dropped (None when the flow
    did not end by the server closing it)."""
    if (
        not obs.connected
        or obs.closed_s is None
        or obs.stop_reason not in ("closed", "send_failed")
    ):
        return None
    last = obs.last_send_before(obs.closed_s)
    return diagnose_drop(
        lifetime_s=obs.closed_s,
        close_code=obs.close_code,
        sent_at_s=None if last is None else last.started_s,
        sent=("" if last is None else last.description.removeprefix("send ")),
        request_timeout_s=request_timeout_s,
    )


@dataclass(frozen=True, slots=True)
class RunCause:
    """The cause one check diagnosed for refused upgrades, carried to every check that
    fails for it (one cause per run).

    Attributes:
        key: the :func:`diagnose_refusal` key.
        status: the refusing HTTP status.
        words: the cause in words.
    """

    key: str
    status: int
    words: str

    def to_record(self) -> dict[str, Any]:
        return {"key": self.key, "status": self.status, "words": self.words}

    @classmethod
    def from_record(cls, doc: Any) -> RunCause | None:
        """From an artifact (None when absent or malformed)."""
        if not isinstance(doc, Mapping):
            return None
        try:
            return cls(str(doc["key"]), int(doc["status"]), str(doc["words"]))
        except (KeyError, TypeError, ValueError):
            return None


# Causes the generic status text would contradict: these are carried to every check.
CARRIED_CAUSES = frozenset(
    {
        "no_ws_implementation",
        "hop_answers",
        "route_not_in_source",
        "route_not_deployed",
        "route_not_served",
        "caller_refused",
    }
)


def run_cause(result: CheckResult) -> RunCause | None:
    """The cause a failed upgrade check (``ws.routes_probe``, ``ws.upgrade``) diagnosed for
    every refused path, when it is one cause worth carrying (None otherwise)."""
    if result.ok or result.data.get("cause") not in CARRIED_CAUSES:
        return None
    statuses = {
        int(p["status"])
        for p in result.data.get("probes") or []
        if isinstance(p, Mapping) and isinstance(p.get("status"), int) and p["status"] != 101
    }
    words = result.data.get("cause_words")
    if len(statuses) != 1 or not isinstance(words, str):
        return None
    return RunCause(str(result.data["cause"]), next(iter(statuses)), words)


def carry_cause(result: CheckResult, cause: RunCause | None) -> CheckResult:
    """``result`` saying the run's ``cause`` where it gave the generic text for the same
    refusal status (a downstream check failing for the root cause names it)."""
    if cause is None or result.status not in (Status.FAIL, Status.ERROR):
        return result
    generic = explain_status(cause.status)
    if generic not in result.detail or cause.words in result.detail:
        return result
    detail = result.detail.replace(generic, cause.words)
    return dataclasses.replace(result, detail=detail, data={**result.data, "cause": cause.key})


def explain_close(code: int | None) -> str:
    """Likely cause of a WebSocket closed with ``code``, in words."""
    if code is None:
        return "the socket was not closed by a close frame"
    if code in CLOSE_CAUSES:
        return CLOSE_CAUSES[code]
    if 4000 <= code < 5000:
        return f"application-defined close {code}: see the service's protocol documentation"
    return f"close code {code}"


def http_failure(obs: HttpObservation) -> str:
    """Why an HTTP request did not answer as hoped: no answer, or the status and its cause."""
    if obs.status is None:
        return f"no HTTP answer from {obs.url}: {obs.error} ({obs.error_detail})"
    return f"{obs.url} answered HTTP {obs.status}: {explain_http_status(obs.status)}"


def upgrade_words(p: HandshakeObservation, evidence: WsEvidence | None = None) -> str:
    """Why one upgrade failed, prefixed with its path (the cause from all the evidence)."""
    if p.status is None:
        return f"{p.path}: no answer ({p.error}: {p.error_detail})"
    if p.status == 101:
        return f"{p.path}: 101 but Sec-WebSocket-Accept is wrong (a proxy rewrote the handshake)"
    _, words = diagnose_refusal(p.status, p.path, evidence, server=p.headers.get("server", ""))
    return f"{p.path}: HTTP {p.status} - {words}"


def connect_failure_words(c: ConnectOutcome) -> str:
    """Why a WebSocket connect failed: the refusing status and its cause, or the error."""
    if c.status is not None and c.status != 101:
        return f"upgrade refused with HTTP {c.status}: {explain_status(c.status)}"
    return f"could not connect ({c.error}: {c.error_detail})"


def ended_words(ended: str, code: int | None, frames: Sequence[Frame] = ()) -> str:
    """How a session ended, in words (``ended`` as the observers record it)."""
    if ended == "timeout":
        # The server did answer, with frames the client cannot read: say so, not "ignored".
        bad = [f for f in frames if str(f.kind) in UNREADABLE]
        if bad:
            kinds = sorted({str(f.kind).replace("_", "-") for f in bad})
            return (
                f"only {len(bad)} frame(s) the client cannot read arrived before the timeout "
                f"({', '.join(kinds)}; first: {bad[0].excerpt[:60]!r}): the server must answer "
                "with JSON text frames"
            )
        return "nothing matching arrived before the timeout (the server ignores the message type?)"
    if ended in ("server_closed", "abrupt", "protocol_error"):
        return f"the socket closed with {code}: {explain_close(code)}"
    if ended == "too_big":
        return "the server sent a frame larger than the client accepts (closed 1009)"
    if ended == "send_failed":
        return "the socket closed before the message could be sent"
    if ended == "error_frame":
        return "the server answered with an error frame"
    return ended


def kind_words(kind: str) -> str:
    """Words for a load error kind such as ``handshake_404`` or ``closed_1006``."""
    head, _, code = kind.rpartition("_")
    if code.isdigit() and head == "handshake":
        return f"{kind}: {explain_status(int(code))}"
    if code.isdigit() and head == "closed":
        return f"{kind}: {explain_close(int(code))}"
    return f"{kind}: {_LOAD_KINDS[kind]}" if kind in _LOAD_KINDS else kind


_LOAD_KINDS = {
    "timeout_reply": "a step of the load flow got no matching frame within its timeout_s",
    "error_frame": "the service answered a step of the load flow with an error frame",
}
