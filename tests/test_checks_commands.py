"""Table tests of the command checks (``runbook_lib.checks.commands``)."""

from __future__ import annotations

import pytest

from runbook_lib.checks import (
    judge_command,
    judge_predeploy,
    judge_tests,
    judge_tests_duration,
)
from runbook_lib.observations import CommandObservation, JUnitSummary
from runbook_lib.results import Status


def test_tests_duration() -> None:
    assert judge_tests_duration({"a": 10, "b": 20}, limit_s=300).status is Status.PASS
    r = judge_tests_duration({"a": 100, "b": 250}, limit_s=300)
    assert r.status is Status.FAIL and "slowest b" in r.detail
    assert judge_tests_duration({}, limit_s=300).status is Status.SKIP


def _cmd(**kw) -> CommandObservation:
    base = dict(name="unit", command="pytest", exit_code=0, duration_s=1.5, output_tail="ok\n")
    base.update(kw)
    return CommandObservation(**base)


@pytest.mark.parametrize(
    ("obs", "status", "words"),
    [
        (_cmd(), Status.PASS, "exited 0 in 1.5s"),
        (_cmd(exit_code=3, output_tail="E501 too long\n"), Status.FAIL, "Last output: E501"),
        (_cmd(exit_code=None, timed_out=True, timeout_s=5), Status.FAIL, "within 5s"),
        (_cmd(exit_code=None, error="no such file"), Status.ERROR, "no such file"),
        (_cmd(junit=JUnitSummary(3, 1, 0, 0, failed_cases=("t.A.bad",))), Status.FAIL, "t.A.bad"),
        (_cmd(junit=JUnitSummary(0, 0, 0, 0)), Status.WARN, "ran no tests"),
        (_cmd(junit_error="report missing"), Status.WARN, "report missing"),
    ],
)
def test_judge_command(obs, status, words) -> None:
    r = judge_command(obs, check_id="tests.unit")
    assert (r.id, r.phase, r.status) == ("tests.unit", 4, status)
    assert words in r.detail and r.duration_s == obs.duration_s


def test_predeploy_and_tests_ids_come_from_the_command_name() -> None:
    assert (judge_predeploy(_cmd()).id, judge_predeploy(_cmd()).phase) == ("predeploy.unit", 2)
    assert (judge_tests(_cmd()).id, judge_tests(_cmd()).phase) == ("tests.unit", 4)
