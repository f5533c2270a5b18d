"""Run folders for tests: phase records persisted the way a notebook does, then sealed."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from runbook_lib import evidence
from runbook_lib.context import PhaseContext, StepReport
from runbook_lib.results import CheckResult, Status
from runbook_lib.settings_load import settings_from_dict
from runbook_lib.verdict import PhaseOutcome

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyLTEifQ.c2lnbmF0dXJlLXNpZ25hdHVyZQ"


def persist_phase(
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


def pass_outcomes(*phases: int) -> list[PhaseOutcome]:
    from runbook_lib.phases import PHASES

    return [PhaseOutcome(p, PHASES[p][0], "pass", 1.0) for p in phases]


DEPLOYED = {"dry_run": False, "previous_revision": "backend-00001", "deployed_revision": "b-2"}


def deploy_ok(run_dir: Path) -> None:
    persist_phase(
        run_dir, 2, [("deploy.executed", "pass"), ("deploy.operation_succeeded", "pass")], DEPLOYED
    )


def finalize(run_dir: Path, outcomes: list[PhaseOutcome], **kw) -> evidence.RunEvidence:
    return evidence.finalize_run(
        run_dir,
        run_id=run_dir.name,
        environment="test",
        started_at=datetime.now(UTC).isoformat(),
        outcomes=outcomes,
        parameters={"approve": True},
        **kw,
    )
