"""The run folder: judging, reports, secret scan, manifest chain, verify and compare."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from run_records import deploy_ok, finalize, pass_outcomes, persist_phase

from runbook_lib import evidence
from runbook_lib.context import PhaseContext
from runbook_lib.settings_load import settings_from_dict
from runbook_lib.verdict import PhaseOutcome

# ------------------------------------------------------------------ folder


def test_run_dir_names_never_collide(tmp_path: Path) -> None:
    """Runs started in the same second get distinct folders (suffixes), never a shared one."""
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    dirs = [evidence.create_run_dir(tmp_path, "staging", now=now) for _ in range(3)]
    assert [d.name for d in dirs] == [
        "20260102T030405Z-staging",
        "20260102T030405Z-staging-2",
        "20260102T030405Z-staging-3",
    ]


# ------------------------------------------------------------------ judging


def test_deploy_supersedes_phase1_failures(tmp_path: Path) -> None:
    """The incident seen by phase 1 is 'before': after a real deploy, later phases decide."""
    run = evidence.create_run_dir(tmp_path, "test")
    persist_phase(run, 1, [("ws.routes_probe", "fail"), ("health.backend", "pass")])
    deploy_ok(run)
    persist_phase(run, 3, [("ws.upgrade", "pass")], figure=True)
    ev = finalize(run, pass_outcomes(1, 2, 3))
    assert ev.verdict == "pass"
    assert ev.recommendation.action == "none"
    assert ev.results["superseded_phases"] == [1]
    summary = (run / "summary.md").read_text()
    assert "Before remediation" in summary and "fail (before)" in summary
    suite = ET.parse(run / "junit.xml").getroot()
    probe = next(c for c in suite.iter("testcase") if c.get("name") == "ws.routes_probe")
    assert probe.find("skipped") is not None and probe.find("failure") is None


def test_without_deploy_phase1_failures_count_and_recommend_hold(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    persist_phase(run, 1, [("ws.routes_probe", "fail")])
    persist_phase(run, 2, [("deploy.executed", "skip")], {"dry_run": True})
    ev = finalize(run, pass_outcomes(1, 2))
    assert ev.verdict == "fail"
    assert ev.recommendation.action == "hold"
    assert "ws.routes_probe" in ev.recommendation.reason
    assert ev.results["superseded_phases"] == []


def test_failure_after_deploy_recommends_rollback_to_previous_revision(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    deploy_ok(run)
    persist_phase(run, 5, [("isolation.no_cross_user", "fail"), ("events.order", "pass")])
    ev = finalize(run, pass_outcomes(2, 5))
    assert ev.verdict == "fail"
    assert ev.recommendation.action == "rollback"
    assert ev.recommendation.target_revision == "backend-00001"
    assert ev.recommendation.failed_checks == ("isolation.no_cross_user",)
    rec = ev.results["recommendation"]
    assert set(rec) == {"action", "reason", "target_revision"}
    assert "isolation.no_cross_user" in rec["reason"]


def test_errored_notebook_makes_verdict_error_and_names_the_cell(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    outcome = PhaseOutcome(
        3,
        "03_endpoint_validation.ipynb",
        "error",
        2.0,
        "cell 5 (In [3]) raised RuntimeError: boom",
        5,
    )
    ev = finalize(run, [outcome])
    assert ev.verdict == "error"
    check = next(c for c in ev.results["checks"] if c["id"] == "runner.phase_03")
    assert check["status"] == "error" and "cell 5" in check["detail"]
    assert ev.results["phases"][0]["cell_index"] == 5


def test_results_json_has_the_public_keys(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    persist_phase(run, 3, [("ws.upgrade", "pass"), ("http.latency", "warn")])
    finalize(run, pass_outcomes(3))
    doc = json.loads((run / "results.json").read_text())
    for key in (
        "run_id",
        "environment",
        "started_at",
        "finished_at",
        "verdict",
        "phases",
        "checks",
        "recommendation",
    ):
        assert key in doc
    assert set(doc["phases"][0]) == {"phase", "notebook", "status", "duration_s"}
    assert set(doc["checks"][0]) == {
        "id",
        "phase",
        "status",
        "observed",
        "threshold",
        "detail",
        "duration_s",
    }
    assert doc["verdict"] == "pass"  # warn does not fail a run


# ------------------------------------------------------------------ secret scan


# ------------------------------------------------------------------ manifest / verify


# ------------------------------------------------------------------ compare


def test_claimed_mutation_is_persisted_before_and_after_the_call(tmp_path: Path) -> None:
    from runbook_lib.exceptions import ApprovalRequired

    settings = settings_from_dict({"name": "test"})
    ctx = PhaseContext(phase=2, settings=settings, run_dir=tmp_path, approve=True)
    handle = ctx.claim_mutation("deploy")
    on_disk = json.loads((tmp_path / "phases" / "02.json").read_text())
    (entry,) = on_disk["artifacts"]["mutations"]
    assert entry["key"] == "deploy" and entry["state"] == "started"
    handle.done(operation="operations/op-1", revision="backend-00002")
    on_disk = json.loads((tmp_path / "phases" / "02.json").read_text())
    (entry,) = on_disk["artifacts"]["mutations"]
    assert entry["state"] == "done" and entry["operation"] == "operations/op-1"
    assert entry["revision"] == "backend-00002" and entry["finished_at"]
    with pytest.raises(ApprovalRequired):
        ctx.claim_mutation("deploy")


def test_coverage_is_in_the_record_summary_and_front_page(tmp_path: Path) -> None:
    """A PASS says how many checks it judged and how many were skipped; a phase that
    skipped every check is skip in results.json."""
    run = evidence.create_run_dir(tmp_path, "test")
    persist_phase(run, 3, [("ws.upgrade", "pass"), ("ws.health", "skip")])
    persist_phase(run, 5, [("auth.config", "skip"), ("chat.flow", "skip")])
    finalize(run, pass_outcomes(3, 5))
    doc = json.loads((run / "results.json").read_text())
    assert doc["coverage"] == {"judged": 2, "skipped": 3, "not_applicable": 0}
    assert {p["phase"]: p["status"] for p in doc["phases"]} == {3: "pass", 5: "skip"}
    assert "PASS: 2 judged, 3 skipped" in (run / "summary.md").read_text()
    assert "Verdict: PASS: 2 judged, 3 skipped" in (run / "index.html").read_text()
