"""The pure judging of a run: gates (next_action), verdict, recommendation. No I/O."""

from __future__ import annotations

import sys

import pytest

from runbook_lib import verdict
from runbook_lib.results import CheckResult, Status
from runbook_lib.verdict import (
    Action,
    PhaseOutcome,
    PhaseRecord,
    RunPlan,
    deploy_applied,
    deploy_failed,
    judge,
    next_action,
    rollback_command,
    settle,
    verdict_of,
    worst,
)

NB = {2: "02_deploy.ipynb", 3: "03_endpoint_validation.ipynb", 6: "06_rollback.ipynb"}


def _rec(phase: int, *checks: tuple[str, str], **artifacts) -> PhaseRecord:
    return PhaseRecord(
        phase, tuple(CheckResult(cid, phase, st) for cid, st in checks), dict(artifacts)
    )


DEPLOYED_OK = _rec(2, ("deploy.executed", "pass"), dry_run=False, previous_revision="rev-1")
DEPLOYED_BAD = _rec(
    2,
    ("deploy.executed", "pass"),
    ("deploy.operation_succeeded", "fail"),
    dry_run=False,
    previous_revision="rev-1",
)
DRY = _rec(2, ("deploy.executed", "skip"))


def _out(phase: int, status: str = "pass") -> PhaseOutcome:
    return PhaseOutcome(phase, NB.get(phase, f"{phase:02d}.ipynb"), status, 1.0)


@pytest.mark.slow  # starts a process
def test_importing_verdict_pulls_no_io_library() -> None:
    import subprocess

    code = (
        "import sys, runbook_lib.verdict; "
        "print(sorted(m for m in ('httpx', 'websockets', 'papermill', 'nbformat', 'pandas') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize(
    ("statuses", "expected"),
    [
        ((), "pass"),
        (("pass", "warn", "skip"), "pass"),
        (("pass", "fail"), "fail"),
        (("fail", "error", "warn"), "error"),
    ],
)
def test_worst_folds_warn_and_skip_into_pass(statuses, expected) -> None:
    assert worst(CheckResult("x", 3, s) for s in statuses) == Status(expected)


def test_settle_judges_a_completed_notebook_by_its_checks() -> None:
    assert settle(_out(3), _rec(3, ("ws.upgrade", "error"))).status == "fail"
    assert settle(_out(3), _rec(3, ("ws.upgrade", "warn"))).status == "pass"
    assert settle(_out(3, "error"), _rec(3, ("ws.upgrade", "pass"))).status == "error"
    assert settle(_out(3), None).status == "pass"


def test_deploy_applied_and_failed_accept_typed_and_plain_records() -> None:
    assert deploy_applied({2: DEPLOYED_OK}) and not deploy_applied({2: DRY})
    assert deploy_applied(
        {
            2: {
                "artifacts": {"dry_run": False},
                "checks": [{"id": "deploy.executed", "phase": 2, "status": "pass"}],
            }
        }
    )
    assert deploy_failed(DEPLOYED_BAD) and not deploy_failed(DEPLOYED_OK)
    assert deploy_failed(None, _out(2, "error"))


@pytest.mark.parametrize(
    ("plan", "phase", "records", "outcomes", "deadline", "expected"),
    [
        # Validation runs after a good deploy, is skipped after a bad one.
        (RunPlan((1, 2, 3)), 3, {2: DEPLOYED_OK}, [_out(2)], "", Action("run")),
        (
            RunPlan((1, 2, 3)),
            3,
            {2: DEPLOYED_BAD},
            [_out(2, "fail")],
            "",
            Action("skip", "deploy failed: validation skipped, rollback recommended"),
        ),
        (RunPlan((1, 2, 3)), 1, {}, [], "", Action("run")),
        # The conditional rollback: absent without a recommendation...
        (
            RunPlan((1, 2, 3)),
            6,
            {2: DEPLOYED_OK},
            [_out(2)],
            "",
            Action("omit", "no rollback recommended"),
        ),
        # ...added and run when recommended and approved...
        (
            RunPlan((1, 2, 3), approved=True),
            6,
            {2: DEPLOYED_BAD},
            [_out(2, "fail")],
            "",
            Action("run", added=True),
        ),
        # ...added and skipped when not approved.
        (
            RunPlan((1, 2, 3)),
            6,
            {2: DEPLOYED_BAD},
            [_out(2, "fail")],
            "",
            Action(
                "skip",
                "rollback recommended but not approved: re-run with --approve --phases 6",
                added=True,
            ),
        ),
        # An explicit --phases 6 always runs.
        (RunPlan((6,), explicit=True), 6, {}, [], "", Action("run")),
        # The deadline cuts phases off as errors (missing evidence is not a pass).
        (
            RunPlan((3, 4)),
            4,
            {},
            [_out(3, "error")],
            "deadline",
            Action("skip", "deadline", status="error"),
        ),
    ],
)
def test_next_action_table(plan, phase, records, outcomes, deadline, expected) -> None:
    assert next_action(plan, phase, records, outcomes, deadline_reason=deadline) == expected


def test_a_late_failure_brings_the_rollback_in_at_the_end_once() -> None:
    """Phase 7 fails after a good deploy: the late slot runs phase 6 (approved)."""
    records = {2: DEPLOYED_OK, 3: _rec(3, ("ws.upgrade", "pass"))}
    outcomes = [_out(2), _out(3)]
    plan = RunPlan((1, 2, 3, 7), approved=True)
    assert next_action(plan, 6, records, outcomes).kind == "omit"  # its slot: nothing yet
    records[7] = _rec(7, ("monitor.hold", "fail"))
    outcomes.append(_out(7, "fail"))
    assert next_action(plan, 6, records, outcomes) == Action("run", added=True)
    outcomes.append(_out(6))
    assert next_action(plan, 6, records, outcomes).kind == "omit"  # never twice


def test_plan_order_puts_the_conditional_rollback_in_its_slot() -> None:
    assert RunPlan((1, 2, 3, 4, 5, 7)).order == (1, 2, 3, 4, 5, 6, 7, 6)
    assert RunPlan((1, 2), explicit=True).order == (1, 2)


def test_verdict_order_unsafe_then_interrupted_then_error_then_fail() -> None:
    fail = [CheckResult("a", 3, "fail")]
    err = [CheckResult("a", 3, "error")]
    assert verdict_of(fail, [_out(3, "interrupted")], safe_to_share=False) == "error"
    assert verdict_of(fail, [_out(3, "interrupted")]) == "interrupted"
    assert verdict_of(err, [_out(3)]) == "error"
    assert verdict_of(fail, [_out(3)]) == "fail"
    assert verdict_of([], [_out(3)]) == "pass"


def test_judge_supersedes_phase1_after_a_deploy_and_reports_a_pending_rollback() -> None:
    records = {
        1: _rec(1, ("ws.routes_probe", "fail")),
        2: DEPLOYED_OK,
        3: _rec(3, ("ws.upgrade", "fail")),
    }
    j = judge(records, [_out(1, "fail"), _out(2), _out(3, "fail")])
    assert j.superseded == {1}
    assert [c.id for c in j.counted if not c.ok] == ["ws.upgrade"]
    assert j.verdict == "fail"
    assert j.recommendation.action == "rollback"
    assert j.recommendation.target_revision == "rev-1"
    assert j.rollback_pending
    moved = {**records, 6: _rec(6, ("rollback.traffic_moved", "pass"))}
    assert not judge(moved, [_out(2), _out(3, "fail"), _out(6)]).rollback_pending


def test_interrupted_run_holds_and_names_its_mutations() -> None:
    deploy = _rec(
        2,
        dry_run=False,
        mutations=[{"key": "deploy", "state": "started", "started_at": "t"}],
    )
    j = judge({2: deploy}, [PhaseOutcome(2, NB[2], "interrupted", 3.0, "signal 2", 4)])
    assert j.verdict == "interrupted"
    assert j.recommendation.action == "hold"
    assert "deploy (started)" in j.recommendation.reason
    assert j.mutations == ({"key": "deploy", "state": "started", "started_at": "t", "phase": 2},)
    assert any(c.id == "runner.phase_02" and c.status == "error" for c in j.checks)


def test_rollback_command_is_exact_and_quoted() -> None:
    assert rollback_command("/envs/my env.toml", "rev-1") == (
        "runbook run --env '/envs/my env.toml' --approve --phases 6 --param rollback_to=rev-1"
    )
    assert rollback_command("", None) == "runbook run --approve --phases 6"


def test_a_started_claim_is_completed_from_the_phase_evidence() -> None:
    rec = PhaseRecord(
        2,
        (
            CheckResult("deploy.executed", 2, "pass", observed="operations/op-9"),
            CheckResult("deploy.operation_succeeded", 2, "fail", observed="boom"),
        ),
        {
            "dry_run": False,
            "deployed_revision": "backend-00003",
            "mutations": [{"key": "deploy", "state": "started", "started_at": "t"}],
        },
    )
    (m,) = rec.mutations()
    assert m == {
        "key": "deploy",
        "state": "failed",
        "started_at": "t",
        "phase": 2,
        "operation": "operations/op-9",
        "revision": "backend-00003",
    }


def test_phase1_no_websocket_implementation_is_not_a_redeploy() -> None:
    """Issue 9: a 404 on every upgrade while the source has the routes holds with the
    install-websockets remedy, not "deploy the fixed source"."""
    probe = CheckResult("ws.routes_probe", 1, "fail", data={"cause": "no_ws_implementation"})
    records = {1: PhaseRecord(1, (probe, CheckResult("source.ws_routes_present", 1, "pass")), {})}
    j = judge(records, [_out(1, "fail")])
    assert j.recommendation.action == "hold"
    assert "install websockets" in j.recommendation.reason
    assert "fixed source" not in j.recommendation.reason
    plain = {1: _rec(1, ("ws.routes_probe", "fail"))}
    assert "fix the cause" in judge(plain, [_out(1, "fail")]).recommendation.reason


def test_the_recommended_target_is_never_a_revision_the_run_saw_failing() -> None:
    """SPEC 9: phase 1 saw rev-1 (serving before the deploy) fail: no rollback to it; and
    phase 6's own choice (or refusal) is what the recommendation names."""
    p1 = PhaseRecord(
        1,
        (
            CheckResult("status.revision_identified", 1, "pass", {"rev-1": 100}),
            CheckResult("ws.routes_probe", 1, "fail"),
        ),
    )
    p2 = _rec(2, ("deploy.executed", "pass"), dry_run=False, previous_revision="rev-1",
              deployed_revision="rev-2")  # fmt: skip
    p5 = _rec(5, ("isolation.no_cross_user", "fail"))
    outs = [_out(1, "fail"), _out(2), _out(5, "fail")]
    j = judge({1: p1, 2: p2, 5: p5}, outs)
    assert j.recommendation.action == "hold" and j.recommendation.target_revision is None
    assert "rev-1 served before the deploy but this run saw it failing" in j.recommendation.reason
    refused = _rec(6, ("rollback.target_identified", "fail"), rollback_rule="refused")
    j6 = judge({2: p2, 5: p5, 6: refused}, [*outs[1:], _out(6, "fail")])
    assert j6.recommendation.target_revision is None
    chosen = _rec(6, ("rollback.traffic_moved", "pass"), rollback_rule="passed-in-chain",
                  rollback_target="rev-0")  # fmt: skip
    j7 = judge({2: p2, 5: p5, 6: chosen}, [*outs[1:], _out(6)])
    assert (j7.recommendation.action, j7.recommendation.target_revision) == ("rollback", "rev-0")
    broken = _rec(6, ("rollback.target_verified", "fail"), rollback_rule="explicit",
                  rollback_target="rev-0")  # fmt: skip
    j8 = judge({2: p2, 5: p5, 6: broken}, [*outs[1:], _out(6, "fail")])
    assert j8.recommendation.target_revision is None and not j8.rollback_pending


def test_deploy_failed_gate() -> None:
    rec = {"checks": [CheckResult("deploy.operation_succeeded", 2, "fail").to_record()]}
    assert verdict.deploy_failed(rec)
    assert not verdict.deploy_failed({"checks": []})
    assert verdict.deploy_failed(None, verdict.PhaseOutcome(2, "02_deploy.ipynb", "error"))


def test_a_phase_whose_checks_were_all_skipped_is_skip_not_pass() -> None:
    """Coverage is part of the verdict: a phase that judged nothing did not pass."""
    from runbook_lib.verdict import phase_status

    skipped = _rec(5, ("auth.config", "skip"), ("chat.flow", "skip"))
    assert phase_status(skipped.checks) == "skip"
    assert settle(_out(5), skipped).status == "skip"
    j = judge({5: skipped, 3: _rec(3, ("ws.upgrade", "pass"))}, [_out(3), _out(5)])
    assert {o.phase: o.status for o in j.phases} == {3: "pass", 5: "skip"}
    assert j.verdict == "pass"
    # one judged check is enough to be judged
    assert phase_status(_rec(5, ("auth.config", "skip"), ("chat.flow", "warn")).checks) == "pass"


def test_coverage_counts_judged_and_skipped_checks() -> None:
    from runbook_lib.verdict import coverage

    checks = [CheckResult(f"c{i}", 3, s) for i, s in enumerate(["pass"] * 19 + ["skip"] * 20)]
    assert coverage(checks).words == "19 judged, 20 skipped"
    declared = {f"c{i}" for i in range(19, 39)}
    assert coverage(checks, declared).words == "19 judged, 20 not applicable"
    assert coverage(checks, set(list(declared)[:12])).words == (
        "19 judged, 20 skipped (12 declared not applicable)"
    )


def test_hold_without_deploy_names_the_diagnosed_cause() -> None:
    """The recommendation says the cause the upgrade checks diagnosed, not a generic text."""
    from runbook_lib.verdict import recommend

    probe = CheckResult(
        "ws.routes_probe",
        1,
        Status.FAIL,
        data={"cause": "no_ws_implementation", "cause_words": "install websockets in the image"},
    )
    rec = recommend([probe], {1: PhaseRecord(1, (probe,))}, [_out(1, "fail")])
    assert rec.action == "hold" and rec.reason.endswith("install websockets in the image")
