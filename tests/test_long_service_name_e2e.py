"""A service name of 33+ characters on Cloud Run's tag rule, end to end through ``runbook run``.

Cloud Run refuses a tag whose length plus the service name's exceeds 46 characters, so
``runbook-verify`` (14) cannot tag a revision of a 33-character service. The sandbox
(named through ``SANDBOX_SERVICE``) refuses it as Google does; the runbook falls back to
``rbv`` and still verifies-then-shifts and still rolls back through a verified tag.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runbook_lib.redaction import clear_secrets
from runbook_lib.runner import RunOptions, run
from runbook_lib.sandbox import manager

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

LONG_SERVICE = "payments-websocket-gateway-europe"  # 33 characters


@pytest.fixture(autouse=True)
def _long_name(monkeypatch: pytest.MonkeyPatch) -> Any:
    monkeypatch.delenv("RUNBOOK_ENV_DIR", raising=False)
    monkeypatch.setenv(manager.SERVICE_ENV, LONG_SERVICE)
    clear_secrets()
    yield
    clear_secrets()


def _run(tmp_path: Path, **kw: Any) -> tuple[Any, dict[str, dict[str, Any]], dict[str, Any]]:
    state = tmp_path / "sandbox"
    outcome = run(
        RunOptions(out_dir=tmp_path / "outputs", sandbox_state_dir=state, approve=True, **kw)
    )
    assert not manager.is_running(state)
    results = json.loads((outcome.run_dir / "results.json").read_text())
    checks = {c["id"]: c for c in results["checks"]}
    return outcome, checks, results


def _arts(outcome: Any, phase: int) -> dict[str, Any]:
    return json.loads((outcome.run_dir / "phases" / f"{phase:02d}.json").read_text())["artifacts"]


def test_a_33_character_service_still_verifies_then_shifts(tmp_path: Path) -> None:
    outcome, checks, _ = _run(
        tmp_path,
        serving="healthy",
        deploy_image="sandbox/backend:healthy",
        overrides={"cloudrun.deploy_strategy": "verify-then-shift"},
        phases=(2,),
    )
    assert checks["deploy.tag_verified"]["status"] == "pass", checks["deploy.tag_verified"]
    assert checks["deploy.latest_serving"]["status"] == "pass", checks["deploy.latest_serving"]
    arts = _arts(outcome, 2)
    assert arts["deployed_revision"].startswith(f"{LONG_SERVICE}-")
    assert arts["shift_completed"] is True and arts["max_share"] == 100


def test_a_33_character_service_still_rolls_back_through_a_verified_tag(tmp_path: Path) -> None:
    outcome, checks, _ = _run(
        tmp_path,
        serving="healthy",
        deploy_image="sandbox/backend:cross-user-leak",
        phases=(2, 5, 6),
    )
    previous = _arts(outcome, 2)["previous_revision"]
    verified = checks["rollback.target_verified"]
    assert verified["status"] == "pass", verified
    moved = checks["rollback.traffic_moved"]
    assert moved["status"] == "pass" and f"{previous} now receives 100 %" in moved["detail"]
    assert _arts(outcome, 6)["tags_after"] == {}  # the short tag was removed too
