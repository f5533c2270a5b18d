"""The report writers: junit.xml, summary.md and index.html of a sealed run.

The front page is also laid out by headless Chromium from the distribution's packages when
present (skipped otherwise): a script appended to a copy of ``index.html`` measures the
layout and the test reads the result from the dumped DOM (ids and statuses readable at
1,400 and 900 px).
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from run_records import deploy_ok, finalize, pass_outcomes, persist_phase

from runbook_lib import evidence
from runbook_lib.reports import write_index


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


CHROMIUM = next(
    (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).is_file()), None
)

_MEASURE = """
<script>
const bad = [];
for (const td of document.querySelectorAll('td.k')) {
  const range = document.createRange(); range.selectNodeContents(td);
  const lines = new Set([...range.getClientRects()].map(r => Math.round(r.top)));
  if (lines.size > 1) bad.push(td.textContent);
}
const over = document.documentElement.scrollWidth > window.innerWidth;
document.body.setAttribute('data-layout', JSON.stringify({wrapped: bad, overflow: over}));
</script>
"""


def _results() -> dict:
    long_detail = "Cause: " + " ".join(["the source registers /websocket"] * 30)
    checks = [
        {
            "id": cid,
            "phase": phase,
            "status": status,
            "observed": {"probes": ["x" * 80], "ids": list(range(40))},
            "threshold": "open 30s, clean close",
            "detail": long_detail + " https://example.invalid/" + "a" * 200,
            "duration_s": 12.3456,
        }
        for cid, phase, status in [
            ("predeploy.local_agent_events_suite", 2, "pass"),
            ("monitor.ws_failure_rate", 7, "fail"),
            ("health.no_5xx_during_warmup", 2, "error"),
            ("ws.routes_probe", 1, "fail"),
        ]
    ]
    return {
        "run_id": "20261207T000000Z-local",
        "environment": "local",
        "started_at": "2026-12-07T00:00:00+00:00",
        "finished_at": "2026-12-07T00:01:00+00:00",
        "verdict": "fail",
        "phases": [
            {
                "phase": 1,
                "notebook": "01_deployment_status.ipynb",
                "status": "fail",
                "duration_s": 1.0,
            }
        ],
        "checks": checks,
        "recommendation": {"action": "hold", "reason": "x", "target_revision": None},
        "superseded_phases": [1],
    }


@pytest.mark.slow
@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium from the distribution's packages")
@pytest.mark.parametrize("width", [1400, 900])
def test_index_ids_and_statuses_never_wrap_and_nothing_overflows(
    tmp_path: Path, width: int
) -> None:
    page = tmp_path / "index.html"
    write_index(_results(), tmp_path, page)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _MEASURE + "</body>"))
    profile = tmp_path / "profile"
    out = subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={profile}",
            f"--window-size={width},900",
            "--dump-dom",
            probe.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    shutil.rmtree(profile, ignore_errors=True)
    marker = 'data-layout="'
    assert marker in out.stdout, out.stderr[-2000:]
    raw = out.stdout.split(marker, 1)[1].split('"', 1)[0].replace("&quot;", '"')
    layout = json.loads(raw)
    assert layout == {"wrapped": [], "overflow": False}, layout


def test_headline_says_rolled_back_once_traffic_moved(tmp_path: Path) -> None:
    from runbook_lib.reports import write_summary

    doc = _results() | {
        "recommendation": {"action": "rollback", "reason": "r", "target_revision": "rev-1"},
        "superseded_phases": [],
    }
    write_summary(doc, tmp_path / "pending.md")
    assert (
        "## Recommendation: ROLLBACK to revision `rev-1`" in (tmp_path / "pending.md").read_text()
    )
    done = doc | {"mutations": [{"phase": 6, "key": "rollback", "state": "done"}]}
    write_summary(done, tmp_path / "done.md")
    write_index(done, tmp_path, tmp_path / "index.html")
    assert "## ROLLED BACK to revision `rev-1`" in (tmp_path / "done.md").read_text()
    page = (tmp_path / "index.html").read_text()
    assert "<h2>ROLLED BACK to revision <code>rev-1</code></h2>" in page
    assert "Recommendation: ROLLBACK" not in page


def test_summary_cuts_long_details_between_words(tmp_path: Path) -> None:
    from runbook_lib.reports import write_summary

    write_summary(_results(), tmp_path / "summary.md")
    for line in (tmp_path / "summary.md").read_text().splitlines():
        if "…" in line and "the source" in line:
            before = line.split("…")[0]
            assert before.endswith(" "), before[-40:]


def test_headline_when_the_deploy_already_restored_the_split() -> None:
    from runbook_lib.reports import _headline

    doc = {
        "recommendation": {"action": "rollback", "target_revision": "rev-1"},
        "artifacts": {"6": {"rollback_rule": "already-serving"}},
    }
    assert (
        _headline(doc | {"artifacts": {**doc["artifacts"], "2": {"max_share": 0}}})
        == "NO TRAFFIC MOVED: what served before the deploy still serves (revision `rev-1`)"
    )
    assert (
        _headline(doc) == "TRAFFIC ALREADY BACK on what served before the deploy (revision `rev-1`)"
    )


def test_figures_are_captioned_with_titles_a_person_reads(tmp_path: Path) -> None:
    """The caption a step gives travels in the PNG; index.html titles the figure with it
    (and the phase), the file name only as a footnote; the notebook output shows it too."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    from runbook_lib.context import PhaseContext, StepReport
    from runbook_lib.settings_load import load_settings

    env = tmp_path / "t.toml"
    env.write_text('name = "t"\n[target]\nbase_url = "http://127.0.0.1:9"\n')
    ctx = PhaseContext(phase=4, settings=load_settings(env), run_dir=tmp_path, approve=False)
    fig = Figure()
    fig.add_subplot().plot([1, 2], [3, 4])
    rep = StepReport("Load test", [], figure=fig, caption="Load latency: histogram and CDF")
    ctx.record(rep)
    assert "<b>Figure: Load latency: histogram and CDF</b>" in rep._repr_html_()
    write_index(_results(), tmp_path, tmp_path / "index.html")
    page = (tmp_path / "index.html").read_text()
    assert "<h3>Phase 4: Load latency: histogram and CDF</h3>" in page
    assert "<h3>p04-load-test</h3>" not in page
    assert "<p class='file'>p04-load-test.png</p>" in page


def test_every_traffic_change_is_listed_among_the_mutations(tmp_path: Path) -> None:
    from runbook_lib.reports import write_summary

    made = [
        {
            "phase": 2,
            "key": "deploy",
            "what": "new revision at 0 % with tag 'runbook-verify'",
            "state": "done",
            "revision": "rev-2",
        },
        {
            "phase": 2,
            "key": "traffic",
            "what": "shift rev-2 to 10 %",
            "state": "done",
            "split": "rev-2 10 %, rev-1 90 %",
            "operation": "op-1",
        },
        {
            "phase": 2,
            "key": "traffic",
            "what": "restore the previous split (rev-1 100 %)",
            "state": "done",
            "split": "rev-1 100 %",
        },
        {"phase": 2, "key": "tag", "what": "remove the tag 'runbook-verify'", "state": "done"},
    ]
    doc = _results() | {"mutations": made}
    write_summary(doc, tmp_path / "summary.md")
    write_index(doc, tmp_path, tmp_path / "index.html")
    text = (tmp_path / "summary.md").read_text()
    page = (tmp_path / "index.html").read_text()
    for line in (
        "phase 2: traffic (shift rev-2 to 10 %) done, split rev-2 10 %, rev-1 90 %, operation op-1",
        "phase 2: traffic (restore the previous split (rev-1 100 %)) done, split rev-1 100 %",
        "phase 2: tag (remove the tag 'runbook-verify') done",
    ):
        assert f"- {line}" in text
        assert line.replace("'", "&#x27;") in page or line in page, line
