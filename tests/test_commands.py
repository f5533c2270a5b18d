"""Configured commands: exit codes, timeouts that kill the whole group, JUnit, judges."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import psutil
import pytest

from runbook_lib.checks.commands import judge_predeploy, judge_tests
from runbook_lib.commands import parse_junit, run_command
from runbook_lib.observations import CommandObservation, JUnitSummary
from runbook_lib.redaction import register_secret
from runbook_lib.results import Status
from runbook_lib.settings import CommandSpec

PY = sys.executable

JUNIT = """<?xml version="1.0"?>
<testsuites>
  <testsuite name="a" tests="3" failures="1" errors="0" skipped="1" time="1.5">
    <testcase classname="t.A" name="ok"/>
    <testcase classname="t.A" name="bad"><failure message="boom"/></testcase>
    <testcase classname="t.A" name="skip"><skipped/></testcase>
  </testsuite>
  <testsuite name="b" tests="1" failures="0" errors="0" time="0.5">
    <testcase classname="t.B" name="ok"/>
  </testsuite>
</testsuites>
"""


@pytest.mark.slow  # starts a process
async def test_success_captures_output_and_duration(tmp_path: Path) -> None:
    obs = await run_command(
        CommandSpec("hello", "echo one; echo two >&2", timeout_s=20), cwd=tmp_path
    )
    assert obs.exit_code == 0 and obs.ok and not obs.timed_out
    assert "one" in obs.output_tail and "two" in obs.output_tail and obs.duration_s < 20
    r = judge_predeploy(obs)
    assert (r.id, r.phase, r.status) == ("predeploy.hello", 2, Status.PASS)


@pytest.mark.slow  # starts a process
async def test_failure_is_a_result_with_last_line(tmp_path: Path) -> None:
    obs = await run_command(CommandSpec("lint", "echo 'E501 too long'; exit 3"), cwd=tmp_path)
    r = judge_predeploy(obs)
    assert obs.exit_code == 3 and r.status is Status.FAIL and "E501" in r.detail


@pytest.mark.slow  # starts a process
async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "child.pid"
    # The shell's background child is a grandchild of run_command: it must die too.
    cmd = f"sleep 60 & echo $! > {pidfile}; wait"
    start = time.perf_counter()
    obs = await run_command(CommandSpec("hang", cmd, timeout_s=1.5), cwd=tmp_path)
    assert obs.timed_out and time.perf_counter() - start < 15
    child = int(pidfile.read_text())
    for _ in range(50):
        if not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie":
            break
        await asyncio.sleep(0.1)
    assert not psutil.pid_exists(child) or psutil.Process(child).status() == "zombie"
    r = judge_predeploy(obs)
    assert r.status is Status.FAIL and "did not finish" in r.detail


@pytest.mark.slow  # starts a process
async def test_output_tail_is_bounded_and_redacted(tmp_path: Path) -> None:
    secret = register_secret("super-secret-value-42")
    cmd = f"{PY} -c \"[print(i) for i in range(5000)]; print('{secret}')\""
    obs = await run_command(CommandSpec("noisy", cmd), cwd=tmp_path, tail_lines=10)
    assert "super-secret-value-42" not in obs.output_tail and "[REDACTED]" in obs.output_tail
    assert len(obs.output_tail.splitlines()) == 10 and "4999" in obs.output_tail


@pytest.mark.slow  # starts a process
async def test_missing_cwd_is_an_error_result(tmp_path: Path) -> None:
    obs = await run_command(CommandSpec("x", "true", cwd=str(tmp_path / "nope")))
    assert obs.error and judge_tests(obs).status is Status.ERROR


def test_parse_junit(tmp_path: Path) -> None:
    p = tmp_path / "r.xml"
    p.write_text(JUNIT)
    j = parse_junit(p)
    assert (j.tests, j.failures, j.errors, j.skipped, j.passed) == (4, 1, 0, 1, 2)
    assert j.failed_cases == ("t.A.bad",) and j.time_s == 2.0
    single = tmp_path / "s.xml"
    single.write_text(
        '<testsuite tests="2" failures="0" errors="0"><testcase name="a"/>'
        '<testcase name="b"/></testsuite>'
    )
    assert parse_junit(single).tests == 2


@pytest.mark.slow  # starts a process
async def test_junit_failures_fail_even_with_exit_0(tmp_path: Path) -> None:
    (tmp_path / "r.xml").write_text(JUNIT)
    obs = await run_command(CommandSpec("suite", "true", junit="r.xml"), cwd=tmp_path)
    assert obs.junit is not None and obs.junit.failures == 1
    r = judge_tests(obs)
    assert r.id == "tests.suite" and r.status is Status.FAIL and "t.A.bad" in r.detail


@pytest.mark.slow  # starts a process
async def test_unreadable_junit_warns(tmp_path: Path) -> None:
    obs = await run_command(CommandSpec("suite", "true", junit="missing.xml"), cwd=tmp_path)
    r = judge_tests(obs)
    assert r.status is Status.WARN and "unreadable" in r.detail


def test_judge_zero_tests_warns() -> None:
    obs = CommandObservation("s", "pytest", 0, 1.0, junit=JUnitSummary(0, 0, 0, 0))
    assert judge_tests(obs).status is Status.WARN


@pytest.mark.slow  # starts a process
async def test_env_is_passed(tmp_path: Path) -> None:
    obs = await run_command(
        CommandSpec("env", "echo $RB_TEST_VAR"),
        cwd=tmp_path,
        env={**os.environ, "RB_TEST_VAR": "hello-env"},
    )
    assert "hello-env" in obs.output_tail
