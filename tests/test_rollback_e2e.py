"""Rollback and deploy safety end to end (SPEC 9), against the real sandbox through ``runbook run``
(on the in-process engine).

- a leaking deploy (``cross-user-leak``) is rolled back to the revision that served before
  it, after that revision proved itself on its own tag URL;
- a rollback whose only candidate is broken (the incident's ``ws-routes-missing``) is
  refused on the tag URL and traffic stays where it is;
- a ``verify-then-shift`` deploy of ``cross-user-leak`` never receives any traffic: its users
  are isolated on the tag URL at 0 % first, and the leak is refused there.

(``idle-close`` found in phase 7, rolled back late or reported pending: test_rollback_gate.py.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from runbook_lib.engines import InProcessEngine
from runbook_lib.redaction import clear_secrets
from runbook_lib.runner import RunOptions, run
from runbook_lib.sandbox import manager

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(autouse=True)
def _scrubbed(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delenv("RUNBOOK_ENV_DIR", raising=False)
    clear_secrets()
    yield
    clear_secrets()


def _run(tmp_path: Path, **kw: Any) -> tuple[Any, dict[str, Any], dict[str, dict[str, Any]]]:
    state = tmp_path / "sandbox"
    outcome = run(
        RunOptions(out_dir=tmp_path / "outputs", sandbox_state_dir=state, approve=True, **kw),
        engine=InProcessEngine(),
    )
    assert not manager.is_running(state)
    results = json.loads((outcome.run_dir / "results.json").read_text())
    return outcome, results, {c["id"]: c for c in results["checks"]}


def _phase(outcome: Any, phase: int) -> dict[str, Any]:
    return json.loads((outcome.run_dir / "phases" / f"{phase:02d}.json").read_text())


def test_a_leaking_deploy_is_rolled_back_to_the_verified_previous_revision(tmp_path: Path) -> None:
    outcome, results, checks = _run(
        tmp_path,
        serving="healthy",
        deploy_image="sandbox/backend:cross-user-leak",
        phases=(1, 2, 5, 6),
    )
    previous = _phase(outcome, 2)["artifacts"]["previous_revision"]
    assert checks["isolation.no_cross_user"]["status"] == "fail"
    target = checks["rollback.target_identified"]
    assert target["status"] == "pass" and "rule served-before-deploy" in target["detail"], target
    verified = checks["rollback.target_verified"]
    assert verified["status"] == "pass", verified
    assert f"{previous} answers on its tag URL http://127.0.0.1:" in verified["detail"]
    moved = checks["rollback.traffic_moved"]
    assert moved["status"] == "pass" and f"{previous} now receives 100 %" in moved["detail"]
    assert checks["rollback.smoke"]["status"] == "pass"
    arts6 = _phase(outcome, 6)["artifacts"]
    assert arts6["rollback_target"] == previous and arts6["tags_after"] == {}  # tag removed
    assert results["recommendation"]["target_revision"] == previous
    assert results["rollback_pending"] is None
    assert outcome.exit_code == 1  # the deploy failed its gates, whatever the rollback did


def test_a_rollback_whose_only_candidate_is_broken_is_refused(tmp_path: Path) -> None:
    """Default scenario (``ws-routes-missing`` serves), no phase 1: the revision that served
    before the leaking deploy is the rule's only candidate, and it fails on its tag URL."""
    outcome, results, checks = _run(
        tmp_path, deploy_image="sandbox/backend:cross-user-leak", phases=(2, 5, 6)
    )
    arts2 = _phase(outcome, 2)["artifacts"]
    broken, leaking = arts2["previous_revision"], arts2["deployed_revision"]
    assert checks["rollback.target_identified"]["observed"] == broken
    verified = checks["rollback.target_verified"]
    assert verified["status"] == "fail", verified
    assert "HTTP 404" in verified["detail"] and f"traffic stays on {leaking}" in verified["detail"]
    assert "--param rollback_to=REV" in verified["detail"]  # what to do next
    moved = checks["rollback.traffic_moved"]
    assert moved["status"] == "fail" and f"serving now {{'{leaking}': 100}}" in moved["detail"]
    assert {checks[i]["status"] for i in ("rollback.health", "rollback.smoke")} == {"skip"}
    assert _phase(outcome, 6)["artifacts"]["tags_after"] == {}
    # No rollback to a revision that just failed: hold, with the refusal in the reason.
    rec = results["recommendation"]
    assert rec["action"] == "hold" and rec["target_revision"] is None, rec
    assert "the rollback itself failed" in rec["reason"] and results["rollback_pending"] is None


def test_verify_then_shift_refuses_a_leaking_revision_before_any_traffic_reaches_it(
    tmp_path: Path,
) -> None:
    """Isolation runs on the tag URL at 0 % before the first shift: the leak is caught there,
    the new revision never serves a single user, and the record lists every mutation."""
    outcome, results, checks = _run(
        tmp_path,
        serving="healthy",
        deploy_image="sandbox/backend:cross-user-leak",
        overrides={"cloudrun.deploy_strategy": "verify-then-shift"},
        phases=None,
    )
    arts2 = _phase(outcome, 2)["artifacts"]
    new, before = arts2["deployed_revision"], arts2["previous_split"]
    verified = checks["deploy.tag_verified"]
    assert verified["status"] == "fail", verified
    assert "isolation:" in verified["detail"] and "Refused: no traffic moved" in verified["detail"]
    shares = [s["split"].get(new, 0) for s in arts2["traffic_timeline"]]
    assert max(shares) == 0 == arts2["max_share"], arts2["traffic_timeline"]
    assert {r: p for r, p in arts2["traffic_timeline"][-1]["split"].items() if p} == before
    assert checks["deploy.latest_serving"]["status"] == "fail"
    # The record: the deploy at 0 % with its tag, then the tag removed; no traffic change.
    made = [(m["key"], m.get("what", ""), m["state"]) for m in results["mutations"]]
    assert made[:2] == [
        ("deploy", "new revision at 0 % with tag 'runbook-verify'", "done"),
        ("tag", "remove the tag 'runbook-verify'", "done"),
    ], made
    assert not [m for m in made if m[0] == "traffic"], made
    summary = (outcome.run_dir / "summary.md").read_text()
    assert "phase 2: tag (remove the tag 'runbook-verify') done" in summary
    assert "## NO TRAFFIC MOVED: what served before the deploy still serves" in summary
    assert checks["rollback.target_identified"]["status"] == "pass"
    assert "already-serving" in checks["rollback.target_identified"]["detail"]
    assert results["rollback_pending"] is None
    assert outcome.exit_code == 1


# ------------------------------------------------------------------ step by step, one sandbox


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory):
    state = tmp_path_factory.mktemp("rollback-steps")
    info = manager.up(state_dir=state, env_file=state / "local.toml")  # the incident serves
    try:
        yield info
    finally:
        manager.down(state)
        clear_secrets()


async def _serving(env: str) -> tuple[dict[str, int], dict[str, str]]:
    from runbook_lib.cloudrun import cloudrun_client
    from runbook_lib.settings_load import load_settings

    svc = await cloudrun_client(load_settings(env)).get_service()
    return dict(svc.serving_revisions), dict(svc.tag_urls)


async def test_dry_runs_mutate_nothing_and_show_each_request_once(sandbox, tmp_path) -> None:
    from runbook_lib import steps
    from runbook_lib.context import open_phase

    env = str(sandbox.env_file)
    before = await _serving(env)
    dry = {"auto_approve": False}
    ctx2 = open_phase(2, environment=env, run_dir=str(tmp_path), overrides=dry)
    deploy = await steps.deploy(ctx2)
    rows = deploy.table.to_dict("records")
    assert len(rows) == 1 and rows[0]["body (JSON)"].startswith("{\n")  # JSON, not a repr
    assert (
        rows[0]["curl"].startswith("curl -sS -X PATCH") and "gcloud run deploy" in rows[0]["gcloud"]
    )
    assert all("'method'" not in r.detail for r in deploy.results)  # no Python repr in details
    warm = await steps.warmup(ctx2)  # nothing was deployed: no polling of the old revision
    assert {r.status for r in warm.results} == {"skip"}
    assert all(r.detail.startswith("dry-run: nothing was deployed") for r in warm.results)

    ctx6 = open_phase(6, environment=env, run_dir=str(tmp_path / "six"), overrides=dry)
    # The sandbox's first revision (healthy, 0 %) is the one other ready revision.
    await steps.rollback_target(ctx6, "")
    (healthy,) = ctx6.artifacts["rollback_alternatives"]
    target = await steps.rollback_target(ctx6, healthy)
    assert target.results[0].status == "pass" and "rule explicit" in target.results[0].detail
    move = await steps.rollback_traffic(ctx6)
    assert {r.id: r.status for r in move.results} == {
        "rollback.target_verified": "skip",
        "rollback.traffic_moved": "skip",
    }
    plans = move.table.to_dict("records")
    assert [p["gcloud"].split()[5].split("=")[0] for p in plans] == [
        "--update-tags",
        "--to-revisions",
        "--remove-tags",
    ]
    assert await _serving(env) == before  # nothing moved, no tag left


async def test_the_serving_revision_is_never_proposed_and_a_redeploy_of_its_image_rolls_out(
    sandbox, tmp_path
) -> None:
    """The walkthrough's "roll back from X to X"; and an approved deploy of the image already
    serving (a fix pushed under the same tag) makes a new revision, warmed up and read, never
    "skip: dry-run"."""
    from runbook_lib import steps
    from runbook_lib.context import open_phase

    env = str(sandbox.env_file)
    (serving, _), _ = (await _serving(env))[0].popitem(), None
    ctx6 = open_phase(
        6, environment=env, run_dir=str(tmp_path / "six"), overrides={"auto_approve": False}
    )
    rep = await steps.rollback_target(ctx6, serving)
    assert (
        rep.results[0].status == "fail"
        and "it is the revision serving now" in rep.results[0].detail
    )
    assert f"from {serving} to {serving}" not in rep.results[0].detail

    same = {"cloudrun.deploy_image": "sandbox/backend:ws-routes-missing"}
    ctx2 = open_phase(
        2, environment=env, run_dir=str(tmp_path / "two"), approve=True, overrides=same
    )
    await steps.deploy(ctx2)
    deployed = ctx2.artifacts["deployed_revision"]
    assert deployed != serving and not ctx2.artifacts["no_new_revision"]
    assert (await _serving(env))[0] == {deployed: 100}
    for name in ("warmup", "deploy_logs"):
        rep = await getattr(steps, name)(ctx2)
        assert rep.results and not any("dry-run" in r.detail for r in rep.results)


async def test_each_traffic_step_of_verify_then_shift_is_recorded_before_its_api_call(
    tmp_path, monkeypatch
) -> None:
    """Every shift and the tag removal is a mutation in phases/02.json, claimed (state
    ``started``) before Cloud Run is asked, then completed with its operation and split."""
    from runbook_lib import steps
    from runbook_lib.cloudrun import GoogleCloudRun
    from runbook_lib.context import open_phase
    from runbook_lib.phases import phase_file

    seen: list[list[tuple[str, str]]] = []

    def spy(name: str):
        real = getattr(GoogleCloudRun, name)

        async def call(self, *a, **kw):
            doc = json.loads(phase_file(tmp_path, 2).read_text())
            claims = doc["artifacts"]["mutations"]
            seen.append([(m["key"], m["state"]) for m in claims])
            return await real(self, *a, **kw)

        monkeypatch.setattr(GoogleCloudRun, name, call)

    spy("set_traffic_split")
    spy("untag")
    state = tmp_path / "sandbox"
    info = manager.up(serving="healthy", state_dir=state, env_file=state / "local.toml")
    try:
        ctx = open_phase(
            2,
            environment=str(info.env_file),
            run_dir=str(tmp_path),
            approve=True,
            overrides={
                "cloudrun.deploy_strategy": "verify-then-shift",
                "cloudrun.deploy_image": "sandbox/backend:healthy",
            },
        )
        rep = await steps.deploy(ctx)
    finally:
        manager.down(state)
    assert {r.id: r.status for r in rep.results}["deploy.latest_serving"] == "pass", rep.results
    # At each call, the newest claim is the one being made, still "started".
    assert [calls[-1] for calls in seen] == [("traffic", "started")] * 3 + [("tag", "started")]
    made = ctx.artifacts["mutations"]
    new = ctx.artifacts["deployed_revision"]
    assert [(m["key"], m.get("what"), m["state"]) for m in made] == [
        ("deploy", "new revision at 0 % with tag 'runbook-verify'", "done"),
        ("traffic", f"shift {new} to 10 %", "done"),
        ("traffic", f"shift {new} to 50 %", "done"),
        ("traffic", f"shift {new} to 100 %", "done"),
        ("tag", "remove the tag 'runbook-verify'", "done"),
    ]
    assert made[1]["split"].startswith(f"{new} 10 %") and made[3]["split"] == f"{new} 100 %"
    assert all(m.get("operation") for m in made)


async def test_verify_then_shift_rolls_the_fix_out_over_the_broken_revision(
    sandbox, tmp_path
) -> None:
    """The incident serves (WebSocket 404s through the service URL before any shift): the
    gates judge those probes on the fix's tag URL instead of failing it for the old
    revision's 404s, and the fix takes 100 %."""
    from runbook_lib import steps
    from runbook_lib.context import open_phase

    env = str(sandbox.env_file)
    ctx = open_phase(
        2,
        environment=env,
        run_dir=str(tmp_path),
        approve=True,
        overrides={
            "cloudrun.deploy_strategy": "verify-then-shift",
            "cloudrun.deploy_image": "sandbox/backend:healthy",
        },
    )
    rep = await steps.deploy(ctx)
    by_id = {r.id: r for r in rep.results}
    assert by_id["deploy.latest_serving"].status == "pass", by_id["deploy.latest_serving"]
    new = ctx.artifacts["deployed_revision"]
    assert (await _serving(env)) == ({new: 100}, {})
    assert "round trip through the service URL already failed" in rep.note, rep.note
    assert [m.get("what") for m in ctx.artifacts["mutations"]][1:4] == [
        f"shift {new} to {p} %" for p in (10, 50, 100)
    ]
