"""The run folder: judging, reports, secret scan, manifest chain, verify and compare."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest

from runbook_lib import evidence
from runbook_lib.context import PhaseContext, StepReport
from runbook_lib.evidence import PhaseOutcome
from runbook_lib.redaction import register_secret
from runbook_lib.results import CheckResult, Status
from runbook_lib.settings import settings_from_dict

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def _phase(
    run_dir: Path,
    phase: int,
    checks: list[tuple[str, str]],
    artifacts: dict | None = None,
    figure: bool = False,
) -> None:
    """Persist a phase record the way a notebook does (through PhaseContext)."""
    settings = settings_from_dict({"name": "test"})
    ctx = PhaseContext(phase=phase, settings=settings, run_dir=run_dir, approve=False)
    ctx.artifacts.update(artifacts or {})
    fig = None
    if figure:
        from runbook_lib.plots import plot_monitor

        fig = plot_monitor(
            [
                {
                    "t_s": 0.0,
                    "http_status": 200,
                    "http_latency_s": 0.1,
                    "ws_ok": True,
                    "ws_status": 101,
                    "ws_latency_s": 0.1,
                }
            ]
        )
    results = [
        CheckResult(cid, phase, Status(st), observed=0.25, threshold=1.0, detail=f"{cid} is {st}")
        for cid, st in checks
    ]
    ctx.record(StepReport(f"phase {phase}", results, figure=fig))


def _outcomes(*phases: int) -> list[PhaseOutcome]:
    from runbook_lib.context import PHASES

    return [PhaseOutcome(p, PHASES[p][0], "pass", 1.0) for p in phases]


DEPLOYED = {"dry_run": False, "previous_revision": "backend-00001", "deployed_revision": "b-2"}


def _deploy_ok(run_dir: Path) -> None:
    _phase(
        run_dir, 2, [("deploy.executed", "pass"), ("deploy.operation_succeeded", "pass")], DEPLOYED
    )


def _finalize(run_dir: Path, outcomes: list[PhaseOutcome], **kw) -> evidence.RunEvidence:
    return evidence.finalize_run(
        run_dir,
        run_id=run_dir.name,
        environment="test",
        started_at=datetime.now(UTC).isoformat(),
        outcomes=outcomes,
        parameters={"approve": True},
        **kw,
    )


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
    _phase(run, 1, [("ws.routes_probe", "fail"), ("health.backend", "pass")])
    _deploy_ok(run)
    _phase(run, 3, [("ws.upgrade", "pass")], figure=True)
    ev = _finalize(run, _outcomes(1, 2, 3))
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
    _phase(run, 1, [("ws.routes_probe", "fail")])
    _phase(run, 2, [("deploy.executed", "skip")], {"dry_run": True})
    ev = _finalize(run, _outcomes(1, 2))
    assert ev.verdict == "fail"
    assert ev.recommendation.action == "hold"
    assert "ws.routes_probe" in ev.recommendation.reason
    assert ev.results["superseded_phases"] == []


def test_failure_after_deploy_recommends_rollback_to_previous_revision(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    _deploy_ok(run)
    _phase(run, 5, [("isolation.no_cross_user", "fail"), ("events.order", "pass")])
    ev = _finalize(run, _outcomes(2, 5))
    assert ev.verdict == "fail"
    assert ev.recommendation.action == "rollback"
    assert ev.recommendation.target_revision == "backend-00001"
    assert ev.recommendation.failed_checks == ("isolation.no_cross_user",)
    rec = ev.results["recommendation"]
    assert set(rec) == {"action", "reason", "target_revision"}
    assert "isolation.no_cross_user" in rec["reason"]


def test_deploy_failed_gate() -> None:
    rec = {"checks": [CheckResult("deploy.operation_succeeded", 2, "fail").to_record()]}
    assert evidence.deploy_failed(rec)
    assert not evidence.deploy_failed({"checks": []})
    assert evidence.deploy_failed(None, PhaseOutcome(2, "02_deploy.ipynb", "error"))


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
    ev = _finalize(run, [outcome])
    assert ev.verdict == "error"
    check = next(c for c in ev.results["checks"] if c["id"] == "runner.phase_03")
    assert check["status"] == "error" and "cell 5" in check["detail"]
    assert ev.results["phases"][0]["cell_index"] == 5


def test_results_json_has_the_public_keys(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    _phase(run, 3, [("ws.upgrade", "pass"), ("http.latency", "warn")])
    _finalize(run, _outcomes(3))
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


def test_junit_has_one_testcase_per_check_with_matching_elements(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    _phase(
        run,
        4,
        [
            ("load.success_rate", "fail"),
            ("load.latency_p95", "error"),
            ("tests.unit", "skip"),
            ("e2e.agent_response", "pass"),
        ],
    )
    _finalize(run, _outcomes(4))
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
    _deploy_ok(run)
    _phase(run, 5, [("events.order", "pass"), ("events.critical_delivered", "fail")])
    _finalize(run, _outcomes(2, 5))
    text = (run / "summary.md").read_text()
    assert text.index("## Failed checks (1)") < text.index("## All checks")
    assert "events.critical_delivered is fail" in text
    assert "ROLLBACK to revision `backend-00001`" in text


def test_index_html_is_self_contained(tmp_path: Path) -> None:
    """Front page: verdict, recommendation, failed checks, figures inline, links to notebooks."""
    run = evidence.create_run_dir(tmp_path, "test")
    _deploy_ok(run)
    _phase(run, 7, [("monitor.ws_404", "fail")], figure=True)
    (run / "07_monitoring.html").write_text("<html></html>")
    _finalize(run, _outcomes(2, 7))
    page = (run / "index.html").read_text()
    assert "Verdict: FAIL" in page and "Recommendation: ROLLBACK" in page
    assert "monitor.ws_404 is fail" in page
    assert "data:image/png;base64," in page
    assert "href='07_monitoring.html'" in page
    assert "src='http" not in page and 'src="http' not in page


# ------------------------------------------------------------------ secret scan


def test_secret_scan_catches_planted_secret_and_jwt(tmp_path: Path) -> None:
    """A secret that slipped into any file marks the folder unsafe and the verdict error."""
    run = evidence.create_run_dir(tmp_path, "test")
    _phase(run, 3, [("ws.upgrade", "pass")])
    register_secret("sup3r-s3cret-value")
    (run / "leak.txt").write_text("token=sup3r-s3cret-value")
    (run / "figures").mkdir(exist_ok=True)
    (run / "figures" / "note.txt").write_text(f"Authorization: Bearer {JWT}")
    ev = _finalize(run, _outcomes(3))
    assert not ev.safe_to_share and ev.verdict == "error"
    assert {lk.file for lk in ev.leaks} == {"leak.txt", "figures/note.txt"}
    marker = (run / evidence.UNSAFE_MARKER).read_text()
    assert "leak.txt" in marker and "sup3r-s3cret-value" not in marker and JWT not in marker
    for name in ("results.json", "summary.md", "index.html", "junit.xml", "manifest.json"):
        text = (run / name).read_text()
        assert "sup3r-s3cret-value" not in text and JWT not in text
    assert "NOT SAFE TO SHARE" in (run / "summary.md").read_text()
    assert json.loads((run / "manifest.json").read_text())["safe_to_share"] is False


def test_secret_scan_uses_values_passed_by_the_runner(tmp_path: Path) -> None:
    """Secrets read only inside the kernels are found when the runner names their values."""
    run = evidence.create_run_dir(tmp_path, "test")
    (run / "out.txt").write_text("x kernel-only-secret x")
    assert evidence.scan_secrets(run) == []
    leaks = evidence.scan_secrets(run, ["kernel-only-secret"])
    assert leaks == [evidence.Leak("out.txt", "registered secret value", 1)]


def test_clean_folder_passes_scan(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    _phase(run, 3, [("ws.upgrade", "pass")], figure=True)
    ev = _finalize(run, _outcomes(3))
    assert ev.safe_to_share and not (run / evidence.UNSAFE_MARKER).exists()
    scan = next(c for c in ev.results["checks"] if c["id"] == "evidence.secret_scan")
    assert scan["status"] == "pass"


# ------------------------------------------------------------------ manifest / verify


def test_verify_detects_edited_removed_and_added_files(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    _phase(run, 3, [("ws.upgrade", "pass")], figure=True)
    _finalize(run, _outcomes(3))
    assert evidence.verify_run(run).ok
    manifest = json.loads((run / "manifest.json").read_text())
    assert "results.json" in manifest["files"] and "manifest.json" not in manifest["files"]
    assert manifest["tool_versions"]["python"]
    (run / "summary.md").write_text("edited")
    (run / "junit.xml").unlink()
    (run / "extra.txt").write_text("new")
    report = evidence.verify_run(run)
    assert not report.ok
    assert report.changed == ("summary.md",)
    assert report.missing == ("junit.xml",)
    assert report.added == ("extra.txt",)


def test_manifest_chain_links_runs_and_detects_tampering(tmp_path: Path) -> None:
    first = evidence.create_run_dir(tmp_path, "a")
    _finalize(first, [])
    second = evidence.create_run_dir(tmp_path, "b")
    _finalize(second, [])
    m2 = json.loads((second / "manifest.json").read_text())
    assert m2["previous_manifest"]["run_id"] == first.name
    assert evidence.verify_run(first).chain == "genesis"
    assert evidence.verify_run(second).chain == "ok"
    (first / "manifest.json").write_text("{}")
    assert evidence.verify_run(second).chain == "broken"
    assert not evidence.verify_run(second).ok


_CONCURRENT = textwrap.dedent("""
    import sys, time
    from datetime import UTC, datetime
    from pathlib import Path
    from runbook_lib import evidence
    out = Path(sys.argv[1])
    while time.time() < float(sys.argv[2]):
        time.sleep(0.005)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    run = evidence.create_run_dir(out, "same", now=now)
    evidence.finalize_run(run, run_id=run.name, environment="same",
                          started_at=now.isoformat(), outcomes=[], parameters={})
    print(run.name)
""")


@pytest.mark.slow  # starts a process
def test_concurrent_runs_get_distinct_folders_and_one_linear_chain(tmp_path: Path) -> None:
    """Two processes finishing at the same moment: own folders, chain A <- B (or B <- A)."""
    import time

    start_at = time.time() + 3.0  # both interpreters are up before either starts
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _CONCURRENT, str(tmp_path), str(start_at)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    names = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert len(set(names)) == 2
    links = {
        n: json.loads((tmp_path / n / "manifest.json").read_text())["previous_manifest"]
        for n in names
    }
    assert sorted(v is None for v in links.values()) == [False, True]
    later = next(n for n, v in links.items() if v is not None)
    earlier = next(n for n, v in links.items() if v is None)
    assert links[later]["run_id"] == earlier
    assert evidence.verify_run(tmp_path / later).chain == "ok"
    chain = (tmp_path / evidence.CHAIN_FILE).read_text().splitlines()
    assert [json.loads(line)["run_id"] for line in chain] == [earlier, later]


# ------------------------------------------------------------------ compare


def test_compare_reports_status_changes_and_numeric_deltas(tmp_path: Path) -> None:
    a = evidence.create_run_dir(tmp_path, "x")
    _phase(a, 3, [("ws.upgrade", "fail"), ("http.latency", "pass")])
    _finalize(a, _outcomes(3))
    b = evidence.create_run_dir(tmp_path, "x")
    _phase(b, 3, [("ws.upgrade", "pass"), ("http.latency", "pass")])
    _finalize(b, _outcomes(3))
    cmp = evidence.compare_runs(a, b)
    assert (cmp.verdict_a, cmp.verdict_b) == ("fail", "pass")
    changed = {d.id: (d.status_a, d.status_b) for d in cmp.status_changes}
    assert changed == {"ws.upgrade": ("fail", "pass")}
    latency = next(d for d in cmp.numeric if d.id == "http.latency")
    assert latency.delta == pytest.approx(0.0)
    assert cmp.phase_durations == ((3, 1.0, 1.0),)


def _observed(run_dir: Path, phase: int, checks: list[tuple[str, str, float, str]]) -> None:
    settings = settings_from_dict({"name": "test"})
    ctx = PhaseContext(phase=phase, settings=settings, run_dir=run_dir, approve=False)
    ctx.record(
        StepReport(
            "s",
            [
                CheckResult(cid, phase, st, observed=obs, threshold=thr)
                for cid, st, obs, thr in checks
            ],
        )
    )


def test_compare_puts_regressions_first_sorts_deltas_and_ignores_superseded(
    tmp_path: Path,
) -> None:
    a = evidence.create_run_dir(tmp_path, "x")
    _phase(a, 1, [("ws.routes_probe", "fail")])
    _deploy_ok(a)
    _observed(
        a,
        3,
        [
            ("ws.upgrade", "fail", 1.0, ""),
            ("http.latency", "pass", 0.1, "< 1.0 s"),
            ("ws.roundtrip", "pass", 1.0, "< 2 s"),
            ("load.success_rate", "pass", 99.0, ">= 95 %"),
        ],
    )
    _finalize(a, _outcomes(1, 2, 3))
    b = evidence.create_run_dir(tmp_path, "x")
    _phase(b, 1, [("ws.routes_probe", "pass")])
    _deploy_ok(b)
    _observed(
        b,
        3,
        [
            ("ws.upgrade", "pass", 1.0, ""),
            ("http.latency", "fail", 0.9, "< 1.0 s"),
            ("ws.roundtrip", "pass", 1.1, "< 2 s"),
            ("load.success_rate", "pass", 98.0, ">= 95 %"),
        ],
    )
    _finalize(b, _outcomes(1, 2, 3))
    cmp = evidence.compare_runs(a, b)
    assert [d.id for d in cmp.status_changes] == ["http.latency", "ws.upgrade"]
    assert [d.id for d in cmp.regressions] == ["http.latency"]
    # The phase-1 "before" finding changed too, but a deploy superseded it in both runs.
    assert [d.id for d in cmp.superseded_changes] == ["ws.routes_probe"]
    # Largest relative change first, with units.
    assert [d.id for d in cmp.numeric][:3] == ["http.latency", "ws.roundtrip", "load.success_rate"]
    units = {d.id: d.unit for d in cmp.numeric}
    assert units["http.latency"] == "s" and units["load.success_rate"] == "%"
    doc = cmp.to_record()
    assert doc["regressions"] == ["http.latency"] and json.dumps(doc)


def test_compare_of_a_partial_folder_is_a_clear_error(tmp_path: Path) -> None:
    from runbook_lib.exceptions import ConfigError

    a = evidence.create_run_dir(tmp_path, "x")
    _phase(a, 3, [("ws.upgrade", "pass")])  # killed before results.json was written
    b = evidence.create_run_dir(tmp_path, "x")
    _phase(b, 3, [("ws.upgrade", "pass")])
    _finalize(b, _outcomes(3))
    with pytest.raises(ConfigError, match=r"no results\.json"):
        evidence.compare_runs(a, b)
    (a / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        evidence.compare_runs(a, b)


def test_reports_show_configuration_notes_and_pending_rollback(tmp_path: Path) -> None:
    run = evidence.create_run_dir(tmp_path, "test")
    _deploy_ok(run)
    _phase(run, 3, [("ws.upgrade", "fail"), ("ws.test_endpoint", "skip")])
    ctx = evidence.RunContext(
        environment_ref="/envs/staging.toml",
        warnings=("unknown key target.bogus (ignored)",),
        not_applicable={"ws.test_endpoint": "the service has no test endpoint"},
        notes=("sandbox already running: using it",),
    )
    ev = _finalize(run, _outcomes(2, 3), context=ctx)
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
    _deploy_ok(run)
    _phase(run, 3, [("ws.upgrade", "fail")])
    _phase(run, 6, [("rollback.traffic_moved", "pass")])
    ev = _finalize(run, _outcomes(2, 3, 6))
    assert ev.recommendation.action == "rollback"
    assert ev.results["rollback_pending"] is None
    assert "PENDING" not in (run / "summary.md").read_text().upper()


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


def test_verify_names_the_previous_run_whose_manifest_changed(tmp_path: Path) -> None:
    first = evidence.create_run_dir(tmp_path, "a")
    _finalize(first, [])
    second = evidence.create_run_dir(tmp_path, "b")
    _finalize(second, [])
    report = evidence.verify_run(second)
    assert report.chain == "ok" and report.previous_run_id == first.name
    assert report.run_id == second.name and report.verdict == "pass"
    (first / "manifest.json").write_text("{}")
    report = evidence.verify_run(second)
    assert report.chain == "broken" and report.previous_run_id == first.name


def test_a_second_seal_of_one_run_does_not_link_to_itself(tmp_path: Path) -> None:
    first = evidence.create_run_dir(tmp_path, "a")
    _finalize(first, [])
    run = evidence.create_run_dir(tmp_path, "b")
    _finalize(run, [])
    _finalize(run, [])  # e.g. re-sealed after an interrupt hit the first seal
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["previous_manifest"]["run_id"] == first.name
    assert evidence.verify_run(run).ok
