"""The test suite's own hygiene: global state reset between tests, one timeout factor."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from runbook_lib.redaction import register_secret, registered_secrets

TESTS = Path(__file__).resolve().parent
LEFT_BEHIND = "secret-left-behind-by-a-test-0123456789"


def test_a_secret_registered_here_is_forgotten_after_the_test() -> None:
    assert register_secret(LEFT_BEHIND) == LEFT_BEHIND
    assert LEFT_BEHIND in registered_secrets()


def test_the_next_test_starts_without_it() -> None:
    """Runs after the one above (file order): the autouse fixture cleared the registry."""
    assert registered_secrets() == frozenset()
    assert "RUNBOOK_ENV_DIR" not in os.environ and "RUNBOOK_SANDBOX_DIR" not in os.environ


def _timing(factor: str | None, expr: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "RUNBOOK_TESTS_TIMEOUT_FACTOR"}
    if factor is not None:
        env["RUNBOOK_TESTS_TIMEOUT_FACTOR"] = factor
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); from timing import T; print({expr})"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.slow  # starts a process
def test_timeout_factor_scales_bounds_and_rejects_nonsense() -> None:
    assert _timing(None, "T(2.5)").stdout.strip() == "2.5"
    assert _timing("3", "T(2.5)").stdout.strip() == "7.5"
    bad = _timing("fast", "T(1)")
    assert bad.returncode != 0 and "RUNBOOK_TESTS_TIMEOUT_FACTOR='fast'" in bad.stderr
    assert _timing("0.5", "T(1)").returncode != 0
