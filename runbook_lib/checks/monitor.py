"""Monitoring, load and log checks: ``monitor.*``, ``load.*``, ``deploy.logs_clean``,
``logs.no_routing_errors``."""

from __future__ import annotations

import re
import statistics
from collections.abc import Sequence

from ..observations import (
    HoldObservation,
    LoadReportView,
    LogEntryView,
    MonitorObservation,
    MonitorTick,
)
from ..results import CheckResult
from .causes import (
    NO_WS_IMPLEMENTATION,
    NO_WS_LOG_MARKERS,
    STATUS_CAUSES,
    Verdict,
    connect_failure_words,
    diagnose_drop,
    explain_close,
    explain_status,
    kind_words,
)

# Log severities that count against a log check; closes that the server caused.
_BAD_SEVERITIES = ("ERROR", "CRITICAL", "ALERT", "EMERGENCY")
_SERVER_CLOSES = ("closed_1011", "closed_1012", "closed_1013", "closed_1014")

__all__ = [
    "judge_load",
    "judge_log_entries",
    "judge_monitor_avg_response",
    "judge_monitor_hold",
    "judge_monitor_uptime",
    "judge_monitor_ws_404",
    "judge_monitor_ws_failure_rate",
]


def _too_few(v: Verdict, mon: MonitorObservation, min_samples: int) -> CheckResult | None:
    """``error`` when the window holds fewer than ``min_samples`` samples (no evidence, no pass)."""
    n = len(mon.ticks)
    if n >= min_samples:
        return None
    if not n:
        return v.error("no monitoring sample was taken")
    return v.error(
        f"only {n} sample(s) in the window ({mon.window_s:g}s every {mon.interval_s:g}s); "
        f"at least {min_samples} are needed to judge: lengthen thresholds.monitor_window_s, "
        "shorten thresholds.monitor_interval_s, or lower thresholds.monitor_min_samples",
        observed=n,
    )


def _unanswered(mon: MonitorObservation) -> list[MonitorTick]:
    """Ticks whose handshake got no HTTP answer at all (refused, timeout, TLS, DNS...)."""
    return [t for t in mon.ticks if t.ws_status is None]


def _unreachable_words(mon: MonitorObservation, lost: Sequence[MonitorTick]) -> str:
    errors = sorted({str(t.ws_error) for t in lost})
    return (
        f"{len(lost)}/{len(mon.ticks)} handshake(s) got no answer ({', '.join(errors)}): "
        f"the service was unreachable at {mon.ws_url}"
    )


def judge_monitor_uptime(
    mon: MonitorObservation,
    *,
    min_uptime: float,
    min_samples: int = 5,
    check_id: str = "monitor.uptime",
) -> CheckResult:
    """``monitor.uptime``: share of ticks whose health GET answered 2xx (at least
    ``min_samples`` ticks, else ``error``)."""
    v = Verdict(check_id, threshold=min_uptime)
    if (few := _too_few(v, mon, min_samples)) is not None:
        return few
    up = sum(1 for t in mon.ticks if t.health_status is not None and 200 <= t.health_status < 300)
    rate = up / len(mon.ticks)
    if rate >= min_uptime:
        return v.ok(
            f"{up}/{len(mon.ticks)} health samples OK",
            observed=round(rate, 4),
        )
    bad = sorted(
        {
            str(t.health_status or t.health_error)
            for t in mon.ticks
            if not (t.health_status and 200 <= t.health_status < 300)
        }
    )
    return v.fail(
        f"{len(mon.ticks) - up}/{len(mon.ticks)} health samples "
        f"failed ({', '.join(bad)}); uptime {rate:.2%} < {min_uptime:.2%}",
        observed=round(rate, 4),
    )


def judge_monitor_ws_failure_rate(
    mon: MonitorObservation,
    *,
    max_rate: float,
    min_samples: int = 5,
    check_id: str = "monitor.ws_failure_rate",
) -> CheckResult:
    """``monitor.ws_failure_rate``: share of ticks whose handshake (or ping) failed; a window
    in which no handshake got an answer fails as unreachable, whatever ``max_rate``."""
    v = Verdict(check_id, threshold=max_rate)
    if (few := _too_few(v, mon, min_samples)) is not None:
        return few
    lost = _unanswered(mon)
    if len(lost) == len(mon.ticks):
        return v.fail(_unreachable_words(mon, lost), observed=1.0)
    failed = [t for t in mon.ticks if not t.ws_upgraded or t.ping_ok is False]
    rate = len(failed) / len(mon.ticks)
    if not failed or rate < max_rate:
        return v.ok(
            f"{len(failed)}/{len(mon.ticks)} WebSocket samples failed",
            observed=round(rate, 4),
        )
    kinds = sorted({str(t.ws_status or t.ws_error) for t in failed})
    first = failed[0]
    cause = (
        explain_status(first.ws_status)
        if first.ws_status and first.ws_status != 101
        else (first.ws_error or first.ping_error or "ping unanswered")
    )
    return v.fail(
        f"{len(failed)}/{len(mon.ticks)} WebSocket samples failed ({', '.join(kinds)}): {cause}",
        observed=round(rate, 4),
    )


def judge_monitor_avg_response(
    mon: MonitorObservation,
    *,
    limit_s: float,
    min_samples: int = 5,
    check_id: str = "monitor.avg_response",
) -> CheckResult:
    """``monitor.avg_response``: mean health latency of the answered samples."""
    v = Verdict(check_id, threshold=limit_s)
    if (few := _too_few(v, mon, min_samples)) is not None:
        return few
    lat = [t.health_latency_s for t in mon.ticks if t.health_status is not None]
    if not lat:
        return v.fail("no health sample got an answer: response time unknown")
    avg = statistics.fmean(lat)
    if avg < limit_s:
        return v.ok(
            f"mean {avg:.3f}s, max {max(lat):.3f}s over {len(lat)} sample(s)",
            observed=round(avg, 4),
        )
    return v.fail(
        f"mean response {avg:.3f}s >= {limit_s:g}s: the service "
        "is saturated or cold-starting; check instances and CPU",
        observed=round(avg, 4),
    )


def judge_monitor_ws_404(
    mon: MonitorObservation, *, min_samples: int = 5, check_id: str = "monitor.ws_404"
) -> CheckResult:
    """``monitor.ws_404``: no WebSocket handshake answered 404 during the window.

    Only answered handshakes are evidence: fewer than ``min_samples`` of them (refused
    or failed connections) fails as unreachable, never passes.
    """
    v = Verdict(check_id, threshold=0)
    if (few := _too_few(v, mon, min_samples)) is not None:
        return few
    n = sum(1 for t in mon.ticks if t.ws_status == 404)
    if n:
        return v.fail(
            f"{n}/{len(mon.ticks)} handshakes answered 404: "
            f"{STATUS_CAUSES[404]}. The incident is back (or traffic is split with a revision "
            "without the routes).",
            observed=n,
        )
    lost = _unanswered(mon)
    answered = len(mon.ticks) - len(lost)
    if answered < min_samples:
        return v.fail(
            f"{_unreachable_words(mon, lost)}; only {answered} handshake(s) answered, so the "
            "absence of 404s proves nothing",
            observed=None,
        )
    return v.ok(
        f"no 404 in {answered} answered handshake(s)"
        + (f" ({len(lost)} got no answer)" if lost else ""),
        observed=0,
    )


def judge_monitor_hold(
    hold: HoldObservation,
    *,
    request_timeout_s: float | None = None,
    check_id: str = "monitor.hold",
) -> CheckResult:
    """``monitor.hold``: a socket held for ``hold_s`` stays open and closes cleanly.

    A socket that ends early is diagnosed by its timing (:func:`diagnose_drop`): at once
    after the accept, right after the runbook's ping, or at the service's request
    timeout (``request_timeout_s``, when known).
    """
    v = Verdict(check_id)
    threshold = f"open {hold.hold_s:g}s, clean close"
    if hold.outcome == "connect_failed":
        return v.fail(
            connect_failure_words(hold.connect),
            observed="connect failed",
            threshold=threshold,
        )
    if hold.outcome == "held" and hold.clean_close:
        return v.ok(
            f"held {hold.ended_at_s:.1f}s and closed with {hold.close_code}",
            observed=round(hold.ended_at_s, 2),
            threshold=threshold,
        )
    if hold.outcome == "held":
        return v.fail(
            f"held {hold.ended_at_s:.1f}s but the close handshake "
            f"did not complete (code {hold.close_code}): "
            f"{explain_close(hold.close_code)}",
            observed=round(hold.ended_at_s, 2),
            threshold=threshold,
        )
    cause, words = diagnose_drop(
        lifetime_s=hold.ended_at_s,
        close_code=hold.close_code,
        sent_at_s=hold.last_send_s,
        sent=hold.last_sent,
        request_timeout_s=request_timeout_s,
        sent_before=hold.pings_sent > 1,
    )
    return v.fail(
        f"the socket ended after {hold.ended_at_s:.1f}s of "
        f"{hold.hold_s:g}s ({hold.outcome}, code {hold.close_code}): {words}",
        observed=round(hold.ended_at_s, 2),
        threshold=threshold,
        data={"close_code": hold.close_code, "reason": hold.close_reason, "cause": cause},
    )


def judge_load(report: LoadReportView, *, success_rate: float, p95_s: float) -> list[CheckResult]:
    """``load.success_rate``, ``load.latency_p95`` and ``load.no_server_errors``.

    Args:
        report: a :class:`runbook_lib.load.engine.LoadReport`.
        success_rate: minimum share of planned sessions that must succeed.
        p95_s: the p95 of the load flow's expect steps must stay below this.
    """
    out: list[CheckResult] = []
    records = getattr(report, "step_records", None)
    steps = records() if callable(records) else []
    per_step = (
        "; per step: "
        + ", ".join(
            f"step {r['step']} p95 {r['p95_s']:.3f}s" for r in steps if r["p95_s"] is not None
        )
        if len(steps) > 1
        else ""
    )
    errors = dict(report.errors_by_kind or {})
    top = sorted(errors.items(), key=lambda kv: -kv[1])[:3]
    top_words = "; ".join(f"{n}x {kind_words(k)}" for k, n in top)
    if not report.planned:
        out.append(
            Verdict("load.success_rate").error(
                "no session was planned",
                threshold=success_rate,
            )
        )
    else:
        rate = report.success_rate()
        detail = f"{report.succeeded}/{report.planned} sessions succeeded"
        if rate >= success_rate:
            out.append(
                Verdict("load.success_rate").ok(
                    detail,
                    observed=round(rate, 4),
                    threshold=success_rate,
                )
            )
        else:
            out.append(
                Verdict("load.success_rate").fail(
                    f"{detail} ({rate:.0%} < {success_rate:.0%}): {top_words}",
                    observed=round(rate, 4),
                    threshold=success_rate,
                    data={"errors_by_kind": errors},
                )
            )
    p95 = report.p95_s
    trusted = report.trusted
    why_untrusted = report.saturation_reason or report.schedule_reason
    if p95 is None:
        out.append(
            Verdict("load.latency_p95").fail(
                "no round trip was answered, so there is no latency to judge"
                + (f": {top_words}" if top_words else ""),
                threshold=p95_s,
            )
        )
    elif p95 < p95_s:
        note = "" if trusted else f" (generator not trusted: {why_untrusted})"
        out.append(
            Verdict("load.latency_p95").ok(
                f"p95 {p95:.3f}s, p50 {report.p50_s or 0:.3f}s{per_step}{note}",
                observed=round(p95, 4),
                threshold=p95_s,
            )
        )
    elif not trusted:
        out.append(
            Verdict("load.latency_p95").warn(
                f"p95 {p95:.3f}s >= {p95_s:g}s, but the load generator was the "
                f"bottleneck ({why_untrusted}): rerun with fewer sessions or more workers",
                observed=round(p95, 4),
                threshold=p95_s,
            )
        )
    else:
        out.append(
            Verdict("load.latency_p95").fail(
                f"p95 {p95:.3f}s >= {p95_s:g}s under {report.planned} sessions: the "
                "service is saturated (concurrency, CPU) or cold-starting instances" + per_step,
                observed=round(p95, 4),
                threshold=p95_s,
            )
        )
    n = report.server_error_count()
    upgraded = sum(v for k, v in report.handshake_statuses.items() if str(k) == "101")
    if n == 0 and not upgraded and report.planned:
        # Every upgrade refused (404, 403, refused): no session reached the server, so
        # "no server error" would be a pass without evidence.
        out.append(
            Verdict("load.no_server_errors").error(
                "no session was upgraded, so nothing shows how the server behaves under "
                "load" + (f": {top_words}" if top_words else "") + ". Fix ws.upgrade first.",
                observed=0,
                threshold=0,
                data={"errors_by_kind": errors},
            )
        )
    elif n == 0:
        out.append(
            Verdict("load.no_server_errors").ok(
                "no 5xx upgrade answer and no server-side close",
                observed=0,
                threshold=0,
            )
        )
    else:
        server = {
            k: v for k, v in errors.items() if k.startswith("handshake_5") or k in _SERVER_CLOSES
        }
        out.append(
            Verdict("load.no_server_errors").fail(
                f"{n} session(s) failed on the server side: "
                + "; ".join(f"{v}x {kind_words(k)}" for k, v in server.items()),
                observed=n,
                threshold=0,
                data={"errors_by_kind": errors},
            )
        )
    return out


# Cloud Run gives plain text lines no severity: an error line says so in its own words
# (Python logging's and uvicorn's level prefixes, a traceback).
_TEXT_ERROR = re.compile(r"^\s*(?:(?:ERROR|CRITICAL|FATAL)\b|Traceback \(most recent call last\))")


def log_entry_fails(entry: LogEntryView, ws_paths: Sequence[str] = ()) -> bool:
    """Whether one log entry counts against a log check (pure).

    It does when its severity is ERROR or worse, its request status is 5xx or a 404 on
    one of ``ws_paths`` (the incident's routing error, from the request log), or its
    text is an error line (``ERROR: ...``, a traceback) or says the server cannot
    upgrade WebSockets.
    """
    status, text = entry.status, str(entry.text)
    return (
        str(entry.severity).upper() in _BAD_SEVERITIES
        or (status is not None and status >= 500)
        or (status == 404 and (entry.path or "") in ws_paths)
        or bool(_TEXT_ERROR.match(text))
        or any(m in text for m in NO_WS_LOG_MARKERS)
    )


def judge_log_entries(
    entries: Sequence[LogEntryView],
    *,
    check_id: str,
    what: str,
    ws_paths: Sequence[str] = (),
    own_requests: int,
    fenced: bool | None = None,
    waited_s: float = 0.0,
) -> CheckResult:
    """``deploy.logs_clean``, ``logs.no_routing_errors``, ``monitor.log_errors``.

    An entry counts against the check as :func:`log_entry_fails` says. Finding none
    passes only when the logs are proven visible: this run's own requests were seen in
    the request log of the revision under test (``own_requests``), including the one
    sent when the check began (``fenced``; ``None`` = the same as ``own_requests > 0``).
    Otherwise the check is ``error``: an empty log proves nothing.

    Args:
        entries: :class:`runbook_lib.logs.LogEntry` rows (already filtered by the reader).
        check_id: the check to report.
        what: what was searched, in words (shown in the detail).
        ws_paths: WebSocket paths whose 404s are routing errors.
        own_requests: how many of this run's requests the request log listed.
        fenced: whether the latest of them (the check's own fence request) was listed.
        waited_s: how long the check waited for them.
    """
    v = Verdict(check_id, threshold=0)
    seen = own_requests > 0 if fenced is None else fenced and own_requests > 0
    read = len(entries) + own_requests
    counts = (
        f"{read} entr{'y' if read == 1 else 'ies'} read ({len(entries)} matching the filter), "
        f"{own_requests} of this run's requests seen"
    )
    bad = [e for e in entries if log_entry_fails(e, ws_paths)]
    if not bad and not seen:
        late = (
            "this run's latest request is not in the logs"
            if own_requests
            else "this run's requests are not in the logs"
        )
        return v.error(
            f"{late} after {waited_s:.0f} s: ingestion delay, another project or log "
            f"bucket, an exclusion filter, or missing roles/logging.viewer ({counts})",
            observed=None,
        )
    if not bad:
        return v.ok(f"{counts}: no {what}", observed=0)
    ws404 = [e for e in bad if e.status == 404]
    examples = [
        {
            "timestamp": str(e.timestamp),
            "severity": e.severity,
            "revision": e.revision,
            "status": e.status,
            "path": e.path,
            "text": str(e.text)[:200],
        }
        for e in bad[:10]
    ]
    first = bad[0]
    shown = (
        f"{first.method or 'GET'} {first.path} {first.status}"
        if first.status is not None
        else str(first.text)[:120]
    )
    detail = (
        f"{len(bad)} entr{'y' if len(bad) == 1 else 'ies'} against the check, first "
        f"[{first.severity}] {shown}; {counts}; searched: {what}"
    )
    no_ws = [e for e in entries if any(m in str(e.text) for m in NO_WS_LOG_MARKERS)]
    if no_ws:
        detail += f". The logs say the server cannot upgrade ({str(no_ws[0].text)[:80]!r}): "
        detail += NO_WS_IMPLEMENTATION
    elif ws404:
        detail += f". {len(ws404)} WebSocket upgrade(s) answered 404: {STATUS_CAUSES[404]}"
    return v.fail(
        detail,
        observed=len(bad),
        data={"examples": examples},
    )
