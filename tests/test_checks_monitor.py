"""Table tests of the monitoring, load and log checks (``runbook_lib.checks.monitor``)."""

from __future__ import annotations

import pytest
from observation_builders import (
    OK,
    entry,
    load_report,
    mon,
    tick,
)

from runbook_lib.checks import (
    judge_load,
    judge_log_entries,
    judge_monitor_avg_response,
    judge_monitor_hold,
    judge_monitor_uptime,
    judge_monitor_ws_404,
    judge_monitor_ws_failure_rate,
)
from runbook_lib.observations import (
    ConnectOutcome,
    HoldObservation,
    MonitorTick,
)
from runbook_lib.results import Status


def test_monitor_judges() -> None:
    good = mon([tick()] * 100)
    assert judge_monitor_uptime(good, min_uptime=0.999).status is Status.PASS
    assert judge_monitor_ws_failure_rate(good, max_rate=0.01).status is Status.PASS
    assert judge_monitor_avg_response(good, limit_s=2).status is Status.PASS
    assert judge_monitor_ws_404(good).status is Status.PASS
    bad = mon([tick()] * 98 + [tick(h=503, w=404, up=False)] * 2)
    assert judge_monitor_uptime(bad, min_uptime=0.999).status is Status.FAIL
    r = judge_monitor_ws_failure_rate(bad, max_rate=0.01)
    assert r.status is Status.FAIL and r.observed == 0.02
    r = judge_monitor_ws_404(bad)
    assert r.status is Status.FAIL and r.observed == 2 and "not registered" in r.detail
    assert judge_monitor_avg_response(mon([tick(lat=3)] * 5), limit_s=2).status is Status.FAIL
    assert (
        judge_monitor_ws_failure_rate(mon([tick(ping=False)] * 5), max_rate=0.01).status
        is Status.FAIL
    )
    empty = mon([])
    assert {
        judge_monitor_uptime(empty, min_uptime=0.9).status,
        judge_monitor_ws_404(empty).status,
    } == {Status.ERROR}


@pytest.mark.parametrize(
    ("outcome", "clean", "code", "status", "words"),
    [
        ("held", True, 1000, Status.PASS, "held"),
        ("held", False, 1006, Status.FAIL, "did not complete"),
        ("abrupt", False, 1006, Status.FAIL, "request timeout"),
        ("server_closed", False, 1011, Status.FAIL, "server error"),
        ("connect_failed", False, None, Status.FAIL, "could not connect"),
    ],
)
def test_monitor_hold(outcome, clean, code, status, words) -> None:
    c = OK if outcome != "connect_failed" else ConnectOutcome(False, error="refused")
    obs = HoldObservation(
        url="ws://x",
        connect=c,
        hold_s=30,
        outcome=outcome,
        ended_at_s=12,
        close_code=code,
        clean_close=clean,
    )
    r = judge_monitor_hold(obs)
    assert r.status is status and words in r.detail


def test_judge_load() -> None:
    ok = judge_load(load_report(), success_rate=0.8, p95_s=3)
    assert [(r.id, r.status) for r in ok] == [
        ("load.success_rate", Status.PASS),
        ("load.latency_p95", Status.PASS),
        ("load.no_server_errors", Status.PASS),
    ]
    bad = judge_load(
        load_report(
            succeeded=5, failed=5, errors_by_kind={"handshake_404": 3, "closed_1011": 2}, p95_s=4.0
        ),
        success_rate=0.8,
        p95_s=3,
    )
    by = {r.id: r for r in bad}
    assert by["load.success_rate"].status is Status.FAIL
    assert "not registered" in by["load.success_rate"].detail
    assert by["load.latency_p95"].status is Status.FAIL
    assert by["load.no_server_errors"].status is Status.FAIL
    assert by["load.no_server_errors"].observed == 2
    sat = judge_load(
        load_report(p95_s=4.0, saturated=True, saturation_reason="cpu 100%"),
        success_rate=0.8,
        p95_s=3,
    )
    assert sat[1].status is Status.WARN
    none = judge_load(load_report(planned=0, succeeded=0, p95_s=None), success_rate=0.8, p95_s=3)
    assert none[0].status is Status.ERROR and none[1].status is Status.FAIL


def test_no_server_errors_needs_an_upgraded_session() -> None:
    """Every upgrade answered 404: 'no 5xx' is not evidence of a healthy server."""
    refused = load_report(
        succeeded=0,
        failed=10,
        errors_by_kind={"handshake_404": 10},
        handshake_statuses={404: 10},
        p95_s=None,
    )
    by = {r.id: r for r in judge_load(refused, success_rate=0.8, p95_s=3)}
    assert by["load.no_server_errors"].status is Status.ERROR
    assert "no session was upgraded" in by["load.no_server_errors"].detail
    # Merged Cloud Run Job results carry the status as a string key.
    merged = load_report(handshake_statuses={"101": 10})
    by = {r.id: r for r in judge_load(merged, success_rate=0.8, p95_s=3)}
    assert by["load.no_server_errors"].status is Status.PASS


def test_judge_log_entries_passes_only_once_this_runs_requests_were_seen() -> None:
    clean = [entry(), entry(status=200, path="/health"), entry(status=404, path="/favicon.ico")]
    kw = {
        "check_id": "logs.no_routing_errors",
        "what": "routing errors",
        "ws_paths": ["/websocket"],
    }
    r = judge_log_entries(clean, own_requests=4, fenced=True, **kw)
    assert r.status is Status.PASS and r.phase == 3
    assert "7 entries read" in r.detail and "4 of this run's requests seen" in r.detail
    bad = [
        *clean,
        entry("WARNING", 404, "/websocket", ""),
        entry("ERROR", text="Traceback"),
    ]
    r = judge_log_entries(bad, own_requests=4, check_id="monitor.log_errors", what="errors",
                          ws_paths=["/websocket"])  # fmt: skip
    assert r.status is Status.FAIL and r.observed == 2 and "not registered" in r.detail
    assert "GET /websocket 404" in r.detail


def test_an_empty_or_unproven_log_is_an_error_never_a_pass() -> None:
    """No check passes on zero entries: unseen own requests make a clean log an error."""
    kw = {"check_id": "monitor.log_errors", "what": "errors", "ws_paths": ["/websocket"]}
    nothing = judge_log_entries([], own_requests=0, waited_s=120, **kw)
    assert nothing.status is Status.ERROR
    assert "this run's requests are not in the logs after 120 s" in nothing.detail
    assert "roles/logging.viewer" in nothing.detail and "0 entries read" in nothing.detail
    stale = judge_log_entries([entry()], own_requests=3, fenced=False, waited_s=5, **kw)
    assert stale.status is Status.ERROR and "latest request is not in the logs" in stale.detail
    # A failure needs no proof that the logs are complete.
    ws404 = judge_log_entries([entry("INFO", 404, "/websocket", "")], own_requests=0, **kw)
    assert ws404.status is Status.FAIL


def test_a_ws_404_fails_from_the_request_status_alone() -> None:
    """A request-log entry (no text, INFO/WARNING severity) with 404 on a WS path fails."""
    rows = [entry("WARNING", 404, "/websocket", "")]
    r = judge_log_entries(rows, check_id="logs.no_routing_errors", what="x",
                          ws_paths=["/websocket"], own_requests=1)  # fmt: skip
    assert r.status is Status.FAIL and r.observed == 1


def test_plain_text_error_lines_count_though_cloud_run_gives_them_no_severity() -> None:
    from runbook_lib.checks import monitor

    log_entry_fails = monitor.log_entry_fails

    assert log_entry_fails(entry("DEFAULT", text="ERROR:    Exception in ASGI application"))
    assert log_entry_fails(entry("DEFAULT", text="Traceback (most recent call last):"))
    assert log_entry_fails(entry("DEFAULT", text="WARNING:  Unsupported upgrade request."))
    assert not log_entry_fails(entry("DEFAULT", text="INFO:     websocket closed (no error)"))
    assert log_entry_fails(entry("INFO", 503, "/health", ""))
    assert not log_entry_fails(entry("INFO", 404, "/favicon.ico", ""), ["/websocket"])


def test_log_entries_naming_a_missing_websocket_library_give_that_cause() -> None:
    """uvicorn's 'No supported WebSocket library' warning next to WS 404s names the cause."""
    from observation_builders import entry

    from runbook_lib.checks import judge_log_entries

    rows = [
        entry("WARNING", text="No supported WebSocket library detected."),
        entry("INFO", 404, "/ws", "GET /ws 404"),
    ]
    r = judge_log_entries(
        rows, check_id="logs.no_routing_errors", what="x", ws_paths=["/ws"], own_requests=1
    )
    assert r.status is Status.FAIL and "install websockets" in r.detail
    assert "not registered" not in r.detail


def test_monitor_uptime_on_two_samples_is_an_error() -> None:
    """Issue 9: uptime judged 99.9 % on 2 samples; a window needs monitor_min_samples."""
    two = mon([tick(), tick()])
    judges = (
        judge_monitor_uptime(two, min_uptime=0.999),
        judge_monitor_ws_failure_rate(two, max_rate=0.01),
        judge_monitor_avg_response(two, limit_s=2),
        judge_monitor_ws_404(two),
    )
    for r in judges:
        assert r.status is Status.ERROR, r
        assert "monitor_min_samples" in r.detail and "monitor_window_s" in r.detail
    assert judge_monitor_uptime(two, min_uptime=0.999, min_samples=2).status is Status.PASS


def test_a_window_of_refused_connections_fails_as_unreachable() -> None:
    """Issue 9: monitor.ws_404 passed when every handshake was refused."""
    refused = MonitorTick(
        t=0, health_status=None, health_latency_s=0.0, health_error="refused",
        ws_status=None, ws_latency_s=0.0, ws_error="refused", ws_upgraded=False,
    )  # fmt: skip
    down = mon([refused] * 10)
    r = judge_monitor_ws_404(down)
    assert r.status is Status.FAIL and "unreachable" in r.detail
    r = judge_monitor_ws_failure_rate(down, max_rate=1.0)
    assert r.status is Status.FAIL and "unreachable" in r.detail
    # Mostly refused: too few answered handshakes to show there is no 404.
    r = judge_monitor_ws_404(mon([refused] * 8 + [tick()] * 2))
    assert r.status is Status.FAIL and "proves nothing" in r.detail
    assert judge_monitor_ws_404(mon([refused] + [tick()] * 5)).status is Status.PASS
