"""Fault matrix: every sandbox profile fails exactly its documented set of checks.

One sandbox (serving ``healthy``) for the module; each case deploys one profile image
through the real Cloud Run client (phase 2 on the in-process engine), then judges what
it deployed: phase 1's probe, then phases 3-5 and 7. Validation needs a deploy whose
operation succeeded (the runner's gate is stricter: any failed deploy check skips it,
which would hide what the later phases find). The pre-deploy commands test the fixed
source, whatever the profile: the matrix leaves them out. ``healthy`` is run several
times: zero flakes allowed.
"""

from __future__ import annotations

import pytest
from timing import SHORT_WINDOWS, T

from runbook_lib.checks.catalog import steps_of
from runbook_lib.sandbox.profiles import EXPECTED_FAILURES, PROFILES

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

# Short knobs so every fault shows within the short windows below (a 1.1 s delay is
# always over the 1 s http_latency_s and well under every other bound; idle-close drops a
# socket 2 s after accept: inside the 2.5 s hold, yet after a conversation on a loaded machine).
KNOBS = {"SANDBOX_WARMUP_S": "2", "SANDBOX_IDLE_CLOSE_S": "2", "SANDBOX_DELAY_S": "1.1"}
OVERRIDES = {
    **SHORT_WINDOWS,
    "thresholds.event_timeout_s": 5,
    # A revision without the routes answers /ws/health 404 forever: do not wait 60 s for it.
    # Bounds on a revision process starting are scaled (a loaded machine starts it slower).
    "thresholds.health_ready_s": T(10),
    "thresholds.ws_health_ready_s": T(5),
}
# Deploy first, then probe what was deployed (phase 1's probe included).
ORDER = (2, 1, 3, 4, 5, 7)
STEPS = {p: tuple(s.name for s in steps_of(p) if s.name != "predeploy") for p in ORDER}
STEPS[1] = ("health_and_routes",)


@pytest.fixture(scope="module")
def sandbox(sandbox_factory):
    return sandbox_factory("healthy", KNOBS)


CASES = [*sorted(PROFILES), "healthy", "healthy"]


@pytest.mark.parametrize("profile", CASES, ids=[f"{p}-{i}" for i, p in enumerate(CASES)])
def test_profile_fails_exactly_its_documented_checks(sandbox, run_phase, tmp_path, profile):
    overrides = {**OVERRIDES, "cloudrun.deploy_image": f"sandbox/backend:{profile}"}
    failing: dict[str, str] = {}
    for phase in ORDER:
        record = run_phase(
            phase, sandbox.env_file, tmp_path, overrides=overrides, only=STEPS[phase]
        )
        bad = [c for c in record["checks"] if c["status"] in ("fail", "error")]
        failing.update({c["id"]: c["detail"] for c in bad})
        if "deploy.operation_succeeded" in failing:
            break  # nothing new serves: there is nothing to validate
    expected = EXPECTED_FAILURES[profile]
    assert set(failing) == expected, {
        "unexpected": {k: v for k, v in failing.items() if k not in expected},
        "missing": sorted(expected - set(failing)),
    }
