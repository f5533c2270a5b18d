"""The rollback gate end to end: a failure only monitoring finds (``idle-close``).

Serving ``healthy``, the run deploys ``sandbox/backend:idle-close``; validation passes and
phase 7's ``monitor.hold`` fails, after phase 6's slot. Approved, phase 6 runs at the end
and traffic returns to the healthy revision. When phase 6 does not run, the record says
the rollback is pending and gives the exact command (issue 12); the sandbox environment
auto-approves, so that case is the restricted run (``--phases`` without 6).
Both run on the in-process engine with the short windows (the revision drops idle
sockets after 1 s, well inside the 2.5 s hold).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from timing import SHORT_WINDOWS

from runbook_lib.engines import InProcessEngine
from runbook_lib.runner import Progress, RunOptions, run
from runbook_lib.sandbox import manager

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(autouse=True)
def _short_idle_close(monkeypatch: pytest.MonkeyPatch) -> None:
    """The idle-close revision drops a socket after 1 s (inherited by the sandbox's processes)."""
    monkeypatch.setenv("SANDBOX_IDLE_CLOSE_S", "1")


def _run(tmp_path: Path, approve: bool, events: list[Progress]) -> tuple:
    state = tmp_path / "sandbox"
    outcome = run(
        RunOptions(
            out_dir=tmp_path / "outputs",
            sandbox_state_dir=state,
            approve=approve,
            serving="healthy",
            deploy_image="sandbox/backend:idle-close",
            phases=None,
            overrides=SHORT_WINDOWS,
        ),
        progress=events.append,
        engine=InProcessEngine(),
    )
    assert not manager.is_running(state)
    return outcome, json.loads((outcome.run_dir / "results.json").read_text())


def test_late_failure_is_rolled_back_when_approved(tmp_path: Path) -> None:
    events: list[Progress] = []
    outcome, results = _run(tmp_path, True, events)
    checks = {c["id"]: c for c in results["checks"]}
    assert checks["monitor.hold"]["status"] == "fail"
    assert [p["phase"] for p in results["phases"]] == [1, 2, 3, 4, 5, 7, 6]
    assert checks["rollback.traffic_moved"]["status"] == "pass", checks["rollback.traffic_moved"]
    assert results["recommendation"]["action"] == "rollback"
    assert results["rollback_pending"] is None
    assert outcome.exit_code == 1  # the deploy still failed a gate
    notes = [e.message for e in events if e.event == "note"]
    assert any("phase 6" in n and "7 phases" in n for n in notes)
    kinds = {m["key"]: m for m in results["mutations"]}
    assert kinds["deploy"]["state"] == "done" and kinds["deploy"]["revision"]
    assert "rollback" in kinds


def test_restricted_run_reports_the_rollback_pending(tmp_path: Path) -> None:
    """``--phases 1,2,3,7`` runs exactly those: the recommended rollback is pending."""
    events: list[Progress] = []
    state = tmp_path / "sandbox"
    outcome = run(
        RunOptions(
            out_dir=tmp_path / "outputs",
            sandbox_state_dir=state,
            approve=True,
            serving="healthy",
            deploy_image="sandbox/backend:idle-close",
            phases=(1, 2, 3, 7),
            overrides=SHORT_WINDOWS,
        ),
        progress=events.append,
        engine=InProcessEngine(),
    )
    assert not manager.is_running(state)
    results = json.loads((outcome.run_dir / "results.json").read_text())
    assert [p["phase"] for p in results["phases"]] == [1, 2, 3, 7]
    assert results["recommendation"]["action"] == "rollback"
    pending = results["rollback_pending"]
    assert pending and pending["command"].endswith(
        f"--approve --phases 6 --param rollback_to={pending['target_revision']}"
    )
    summary = (outcome.run_dir / "summary.md").read_text()
    assert "ROLLBACK PENDING" in summary and pending["command"] in summary
