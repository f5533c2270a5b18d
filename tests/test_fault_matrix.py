"""Fault matrix: every sandbox profile fails exactly its documented set of checks.

One sandbox (serving ``healthy``) for the module; each case is a run of phases 2-5 and 7
on the in-process engine that deploys one profile image through the real Cloud Run
client and validates it, with the runner's gates (a failed deploy skips validation).
Phase 1 observes the service before the deploy, and the pre-deploy commands test the
fixed source, so neither depends on the profile: the matrix leaves both out.
``healthy`` is run several times: zero flakes allowed.
"""

from __future__ import annotations

import json

import pytest
from timing import SHORT_WINDOWS, T

from runbook_lib.checks.catalog import phase_of, steps_of
from runbook_lib.engines import InProcessEngine
from runbook_lib.runner import RunOptions, run
from runbook_lib.sandbox.profiles import EXPECTED_FAILURES, PROFILES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Short knobs so every fault shows within the short windows below.
KNOBS = {"SANDBOX_WARMUP_S": "2", "SANDBOX_IDLE_CLOSE_S": "1", "SANDBOX_DELAY_S": "1.3"}
OVERRIDES = {
    **SHORT_WINDOWS,
    "thresholds.event_timeout_s": 5,
    # A revision without the routes answers /ws/health 404 forever: do not wait 60 s for it.
    # Bounds on a revision process starting are scaled (a loaded machine starts it slower).
    "thresholds.health_ready_s": T(10),
    "thresholds.ws_health_ready_s": T(5),
}


PHASES = (2, 3, 4, 5, 7)
STEPS = tuple(s.name for p in PHASES for s in steps_of(p) if s.name != "predeploy")


@pytest.fixture(scope="module")
def sandbox(sandbox_factory):
    return sandbox_factory("healthy", KNOBS)


CASES = [*sorted(PROFILES), "healthy", "healthy"]


@pytest.mark.parametrize("profile", CASES, ids=[f"{p}-{i}" for i, p in enumerate(CASES)])
def test_profile_fails_exactly_its_documented_checks(sandbox, tmp_path, profile):
    outcome = run(
        RunOptions(
            environment=str(sandbox.env_file),
            phases=PHASES,
            approve=True,
            out_dir=tmp_path,
            overrides={**OVERRIDES, "cloudrun.deploy_image": f"sandbox/backend:{profile}"},
        ),
        engine=InProcessEngine(only=STEPS),
    )
    checks = json.loads((outcome.run_dir / "results.json").read_text())["checks"]
    failing = {c["id"]: c["detail"] for c in checks if c["status"] in ("fail", "error")}
    expected = {i for i in EXPECTED_FAILURES[profile] if phase_of(i) != 1}
    assert set(failing) == expected, {
        "unexpected": {k: v for k, v in failing.items() if k not in expected},
        "missing": sorted(expected - set(failing)),
    }
