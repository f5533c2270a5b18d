"""The report writers: junit.xml, summary.md and index.html of a sealed run."""

from __future__ import annotations

from pathlib import Path
from xml.etree import ElementTree as ET

from run_records import deploy_ok, finalize, pass_outcomes, persist_phase

from runbook_lib import evidence


def test_junit_has_one_testcase_per_check_with_matching_elements(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    persist_phase(
        run,
        4,
        [
            ("load.success_rate", "fail"),
            ("load.latency_p95", "error"),
            ("tests.unit", "skip"),
            ("e2e.agent_response", "pass"),
        ],
    )
    finalize(run, pass_outcomes(4))
    root = ET.parse(run / "junit.xml").getroot()
    cases = {c.get("name"): c for c in root.iter("testcase")}
    assert cases["load.success_rate"].find("failure") is not None
    assert cases["load.latency_p95"].find("error") is not None
    assert cases["tests.unit"].find("skipped") is not None
    assert len(cases["e2e.agent_response"]) == 0
    suite = next(s for s in root.iter("testsuite") if s.get("name", "").startswith("phase 04"))
    assert (suite.get("failures"), suite.get("errors"), suite.get("skipped")) == ("1", "1", "1")


def test_summary_lists_failed_checks_first_with_details(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    deploy_ok(run)
    persist_phase(run, 5, [("events.order", "pass"), ("events.critical_delivered", "fail")])
    finalize(run, pass_outcomes(2, 5))
    text = (run / "summary.md").read_text()
    assert text.index("## Failed checks (1)") < text.index("## All checks")
    assert "events.critical_delivered is fail" in text
    assert "ROLLBACK to revision `backend-00001`" in text


def test_index_html_is_self_contained(tmp_path: Path) -> None:
    """Front page: verdict, recommendation, failed checks, figures inline, links to notebooks."""
    run = evidence.create_run_dir(tmp_path, "test")
    deploy_ok(run)
    persist_phase(run, 7, [("monitor.ws_404", "fail")], figure=True)
    (run / "07_monitoring.html").write_text("<html></html>")
    finalize(run, pass_outcomes(2, 7))
    page = (run / "index.html").read_text()
    assert "Verdict: FAIL" in page and "Recommendation: ROLLBACK" in page
    assert "monitor.ws_404 is fail" in page
    assert "data:image/png;base64," in page
    assert "href='07_monitoring.html'" in page
    assert "src='http" not in page and 'src="http' not in page


def test_reports_show_configuration_notes_and_pending_rollback(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    deploy_ok(run)
    persist_phase(run, 3, [("ws.upgrade", "fail"), ("ws.test_endpoint", "skip")])
    ctx = evidence.RunContext(
        environment_ref="/envs/staging.toml",
        warnings=("unknown key target.bogus (ignored)",),
        not_applicable={"ws.test_endpoint": "the service has no test endpoint"},
        notes=("sandbox already running: using it",),
    )
    ev = finalize(run, pass_outcomes(2, 3), context=ctx)
    results = ev.results
    assert set(results["recommendation"]) == {"action", "reason", "target_revision"}
    command = "runbook run --env /envs/staging.toml --approve --phases 6 --param rollback_to=backend-00001"
    assert results["rollback_pending"] == {"target_revision": "backend-00001", "command": command}
    assert results["configuration"]["skipped_not_applicable"] == ["ws.test_endpoint"]
    assert results["notes"] == ["sandbox already running: using it"]
    summary = (run / "summary.md").read_text()
    index = (run / "index.html").read_text()
    for text in (summary, index):
        assert "ROLLBACK PENDING" in text.upper() and command in text
        assert "Configuration" in text
        assert "unknown key target.bogus (ignored)" in text
        assert "ws.test_endpoint: the service has no test endpoint (reported as skip)" in text
        assert "sandbox already running: using it" in text


def test_performed_rollback_is_not_pending(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    deploy_ok(run)
    persist_phase(run, 3, [("ws.upgrade", "fail")])
    persist_phase(run, 6, [("rollback.traffic_moved", "pass")])
    ev = finalize(run, pass_outcomes(2, 3, 6))
    assert ev.recommendation.action == "rollback"
    assert ev.results["rollback_pending"] is None
    assert "PENDING" not in (run / "summary.md").read_text().upper()
