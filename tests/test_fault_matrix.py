"""Fault matrix: every sandbox profile fails exactly its documented set of checks.

One sandbox (serving ``healthy``) for the module; each case deploys one profile image
through the real Cloud Run client, then runs the step functions of phases 1-5 and 7
against it, as the notebooks do. ``healthy`` is run several times: zero flakes allowed.
"""

from __future__ import annotations

import pytest

from runbook_lib import steps
from runbook_lib.context import open_phase
from runbook_lib.sandbox import manager
from runbook_lib.sandbox.profiles import EXPECTED_FAILURES, PROFILES

pytestmark = pytest.mark.e2e

# Phase -> the steps that run in it (phase 6 is a mutation on purpose, tested end to end).
PLAN: dict[int, tuple[str, ...]] = {
    2: ("deploy", "warmup", "deploy_logs"),
    1: ("health_and_routes",),
    3: ("ws_upgrade", "http_endpoints", "ws_roundtrip", "routing_logs"),
    4: ("test_suites", "agent_response", "load_test"),
    5: ("auth_checks", "chat_flow", "isolation", "event_delivery"),
    7: ("monitor", "hold", "log_errors"),
}
# Short knobs so every fault shows within the short windows below.
KNOBS = {"SANDBOX_WARMUP_S": "2", "SANDBOX_IDLE_CLOSE_S": "1", "SANDBOX_DELAY_S": "1.3"}
OVERRIDES = {
    "thresholds.monitor_window_s": 3,
    "thresholds.monitor_interval_s": 0.5,
    "thresholds.hold_s": 2.5,
    "thresholds.event_timeout_s": 5,
    # A revision without the routes answers /ws/health 404 forever: do not wait 60 s for it.
    "thresholds.health_ready_s": 5,
    "thresholds.ws_health_ready_s": 5,
}


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    state = tmp_path_factory.mktemp("matrix-sandbox")
    info = manager.up(serving="healthy", state_dir=state, env_file=state / "local.toml", env=KNOBS)
    try:
        yield info
    finally:
        manager.down(state)


async def _failing_checks(sandbox, tmp_path, profile: str) -> tuple[set[str], dict]:
    overrides = {**OVERRIDES, "cloudrun.deploy_image": f"sandbox/backend:{profile}"}
    failing: set[str] = set()
    details: dict[str, str] = {}
    deployed_ok = True
    for phase, names in PLAN.items():
        if phase != 2 and not deployed_ok:
            break  # the runner skips validation after a failed deploy; so does the matrix
        ctx = open_phase(
            phase,
            environment=str(sandbox.env_file),
            run_dir=str(tmp_path),
            approve=True,
            overrides=overrides,
        )
        for name in names:
            result = getattr(steps, name)(ctx)
            report = await result if hasattr(result, "__await__") else result
            for r in report.results:
                if r.status in ("fail", "error"):
                    failing.add(r.id)
                    details[r.id] = r.detail
        if phase == 2:
            deployed_ok = "deploy.operation_succeeded" not in failing
    return failing, details


CASES = [*sorted(PROFILES), "healthy", "healthy"]


@pytest.mark.parametrize("profile", CASES, ids=[f"{p}-{i}" for i, p in enumerate(CASES)])
async def test_profile_fails_exactly_its_documented_checks(sandbox, tmp_path, profile):
    failing, details = await _failing_checks(sandbox, tmp_path, profile)
    expected = EXPECTED_FAILURES[profile]
    assert failing == expected, {
        "unexpected": {k: details[k] for k in failing - expected},
        "missing": sorted(expected - failing),
    }
