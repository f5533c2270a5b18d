"""Configured-command checks: ``predeploy.<name>``, ``tests.<name>`` and ``tests.duration``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ..observations import CommandObservation
from ..results import CheckResult, Status
from .causes import Verdict

__all__ = ["judge_command", "judge_predeploy", "judge_tests", "judge_tests_duration"]


def judge_command(obs: CommandObservation, *, check_id: str) -> CheckResult:
    """Pass when the command exited 0 in time and its JUnit report (if any) has no failures."""
    v = Verdict(check_id, threshold="exit 0")
    data: dict[str, Any] = {"output_tail": obs.output_tail[-2000:], "command": obs.command}
    if obs.junit is not None:
        data["junit"] = {
            "tests": obs.junit.tests,
            "failures": obs.junit.failures,
            "errors": obs.junit.errors,
            "skipped": obs.junit.skipped,
            "failed_cases": list(obs.junit.failed_cases),
        }
    last = obs.output_tail.strip().splitlines()[-1:] if obs.output_tail.strip() else []
    hint = f" Last output: {last[0][:200]}" if last else ""
    if obs.error:
        return v.error(
            observed=None,
            detail=f"{obs.name}: {obs.error}",
            duration_s=obs.duration_s,
            data=data,
        )
    if obs.timed_out:
        return v.fail(
            observed="timeout",
            detail=f"{obs.name} did not finish within {obs.timeout_s:g}s and was "
            f"killed: look for a hung connection or raise timeout_s.{hint}",
            duration_s=obs.duration_s,
            data=data,
        )
    j = obs.junit
    counts = (
        (f" ({j.passed} passed, {j.failures} failed, {j.errors} errors, {j.skipped} skipped)")
        if j
        else ""
    )
    if obs.exit_code != 0:
        failed = f" Failed: {', '.join(j.failed_cases[:5])}." if j and j.failed_cases else ""
        return v.fail(
            observed=obs.exit_code,
            detail=f"{obs.name} exited {obs.exit_code}{counts}.{failed}{hint}",
            duration_s=obs.duration_s,
            data=data,
        )
    if j and (j.failures or j.errors):
        return v.fail(
            observed=obs.exit_code,
            detail=f"{obs.name} exited 0 but its report "
            f"lists failures{counts}: {', '.join(j.failed_cases[:5])}",
            duration_s=obs.duration_s,
            data=data,
        )
    if j and j.tests == 0:
        return v.warn(
            observed=0,
            detail=f"{obs.name} exited 0 but ran no tests: check the test path",
            duration_s=obs.duration_s,
            data=data,
        )
    status = Status.WARN if obs.junit_error else Status.PASS
    note = f"; {obs.junit_error}" if obs.junit_error else ""
    return v.result(
        status,
        observed=0,
        detail=f"{obs.name} exited 0 in {obs.duration_s:.1f}s{counts}{note}",
        duration_s=obs.duration_s,
        data=data,
    )


def judge_predeploy(
    obs: CommandObservation,
) -> CheckResult:
    """``predeploy.<name>``."""
    return judge_command(obs, check_id=f"predeploy.{obs.name}")


def judge_tests(
    obs: CommandObservation,
) -> CheckResult:
    """``tests.<name>``."""
    return judge_command(obs, check_id=f"tests.{obs.name}")


def judge_tests_duration(
    durations: Mapping[str, float],
    *,
    limit_s: float,
    check_id: str = "tests.duration",
) -> CheckResult:
    """``tests.duration``: the configured suites took less than ``limit_s`` in total."""
    v = Verdict(check_id, threshold=limit_s)
    if not durations:
        return v.skip(
            "no mission-critical test suite is configured",
        )
    total = sum(durations.values())
    if total < limit_s:
        return v.ok(
            f"suites took {total:.1f}s",
            observed=round(total, 2),
            data=dict(durations),
        )
    slowest = max(durations, key=lambda k: durations[k])
    return v.fail(
        f"suites took {total:.1f}s (limit {limit_s:g}s); slowest "
        f"{slowest} {durations[slowest]:.1f}s: look for connection timeouts",
        observed=round(total, 2),
        data=dict(durations),
    )
