"""End to end against the real sandbox, through the runner as `runbook run` does.

The default scenario runs the real phase notebooks in kernels (papermill), and once more
on the in-process engine: both must judge it alike. The other scenarios run on the
in-process engine. Each run starts its own sandbox (own state dir, own env file), uses
the short windows, and is read the way a postmortem author would.
"""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest
from timing import SHORT_WINDOWS

from runbook_lib.engines import InProcessEngine, KernelEngine, PhaseEngine
from runbook_lib.manifest import verify_run
from runbook_lib.runner import RunOptions, run
from runbook_lib.sandbox import manager

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


def _results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


def _checks(results: dict) -> dict[str, dict]:
    return {c["id"]: c for c in results["checks"]}


def _run(tmp_path: Path, engine: PhaseEngine, **kw) -> tuple:
    state = tmp_path / "sandbox"
    outcome = run(
        RunOptions(
            out_dir=tmp_path / "outputs", sandbox_state_dir=state, overrides=SHORT_WINDOWS, **kw
        ),
        engine=engine,
    )
    # The runner started the sandbox, so it must have stopped it, leaving nothing behind.
    assert not manager.is_running(state)
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if str(state) in " ".join(p.info["cmdline"] or [])
    ]
    assert leftovers == []
    return outcome, _results(outcome.run_dir)


@pytest.fixture(scope="module")
def default_scenario(tmp_path_factory: pytest.TempPathFactory) -> tuple:
    """The default scenario (the incident, an approved deploy of the fix) in kernels."""
    return _run(tmp_path_factory.mktemp("default"), KernelEngine(), approve=True)


def test_default_scenario_reproduces_the_incident_deploys_the_fix_and_passes(default_scenario):
    """Serving ws-routes-missing, deploying healthy: incident seen in phase 1, all green after."""
    outcome, results = default_scenario
    checks = _checks(results)
    assert outcome.exit_code == 0, [
        c for c in results["checks"] if c["status"] in ("fail", "error")
    ]
    assert results["verdict"] == "pass"
    assert results["recommendation"]["action"] == "none"
    # Phase 1 names the incident signature (and is superseded by the deploy).
    assert checks["ws.routes_probe"]["status"] == "fail"
    assert "404 while /health is 200" in checks["ws.routes_probe"]["detail"]
    assert checks["health.backend"]["status"] == "pass"
    # The fix was deployed and every validation check passed.
    for cid in (
        "deploy.operation_succeeded",
        "deploy.latest_serving",
        "ws.upgrade",
        "events.critical_delivered",
        "isolation.no_cross_user",
        "monitor.hold",
        "load.success_rate",
        "auth.rejects_invalid",
    ):
        assert checks[cid]["status"] == "pass", checks[cid]
    assert [p["phase"] for p in results["phases"]] == [1, 2, 3, 4, 5, 7]
    # The run folder is complete and untampered.
    rd = outcome.run_dir
    for name in ("results.json", "junit.xml", "summary.md", "index.html", "manifest.json"):
        assert (rd / name).is_file(), name
    for nb in (
        "01_deployment_status",
        "02_deploy",
        "03_endpoint_validation",
        "04_mission_critical",
        "05_business_value",
        "07_monitoring",
    ):
        assert (rd / f"{nb}.ipynb").is_file() and (rd / f"{nb}.html").is_file(), nb
    figures = {p.name for p in (rd / "figures").glob("*.png")}
    assert any("load" in f for f in figures)
    assert any("isolation" in f or "event" in f for f in figures)
    assert any("warm-up" in f for f in figures)
    assert any("monitoring" in f for f in figures)
    assert verify_run(rd).ok
    assert "PASS" in (rd / "summary.md").read_text()


def test_default_scenario_gives_the_same_checks_on_both_engines(default_scenario, tmp_path):
    """The in-process engine judges the default scenario as the kernels do: same ids,
    statuses, phase outcomes, verdict and recommendation."""
    _, kernel = default_scenario
    _, in_process = _run(tmp_path, InProcessEngine(), approve=True)

    def shape(results: dict) -> tuple:
        checks = sorted((c["id"], c["status"]) for c in results["checks"])
        phases = [(p["phase"], p["status"]) for p in results["phases"]]
        return checks, phases, results["verdict"], results["recommendation"]["action"]

    assert shape(in_process) == shape(kernel)


def test_leaking_deploy_fails_isolation_and_rolls_back_to_the_previous_revision(tmp_path):
    """Serving healthy, deploying cross-user-leak: exit 1, rollback to the previous revision."""
    outcome, results = _run(
        tmp_path,
        InProcessEngine(),
        approve=True,
        serving="healthy",
        deploy_image="sandbox/backend:cross-user-leak",
    )
    checks = _checks(results)
    assert outcome.exit_code == 1
    assert checks["isolation.no_cross_user"]["status"] == "fail"
    rec = results["recommendation"]
    assert rec["action"] == "rollback"
    previous = next(p for p in results["phases"] if p["phase"] == 2)
    assert rec["target_revision"]
    assert rec["target_revision"].startswith("backend-00002")
    assert "isolation.no_cross_user" in rec["reason"]
    # Approved, so the rollback notebook ran: traffic moved back and the old revision works.
    assert previous["status"] == "pass"
    for cid in (
        "rollback.target_identified",
        "rollback.traffic_moved",
        "rollback.health",
        "rollback.smoke",
    ):
        assert checks[cid]["status"] == "pass", checks[cid]
    assert checks["rollback.target_identified"]["observed"] == rec["target_revision"]
    assert verify_run(outcome.run_dir).ok


def test_failed_deploy_skips_validation_and_recommends_rollback(tmp_path):
    """Deploying an image whose container never starts: the operation fails, gates hold."""
    outcome, results = _run(
        tmp_path,
        InProcessEngine(),
        approve=True,
        serving="healthy",
        deploy_image="sandbox/backend:deploy-fails",
        phases=(1, 2, 3, 4, 5, 7),
    )
    checks = _checks(results)
    assert outcome.exit_code == 1
    assert checks["deploy.operation_succeeded"]["status"] == "fail"
    assert "DATABASE_URL" in checks["deploy.operation_succeeded"]["detail"]
    status = {p["phase"]: p["status"] for p in results["phases"]}
    assert status[3] == status[4] == status[5] == status[7] == "skipped"
    assert results["recommendation"]["action"] == "rollback"
    assert verify_run(outcome.run_dir).ok
