"""Table tests of the Cloud Run service checks (``runbook_lib.checks.service``): traffic statuses
decide, preflight warns on WS-hostile settings, deploy and rollback outcomes are judged."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runbook_lib.checks import (
    ShiftRecord,
    Verdict,
    choose_rollback_target,
    gate_outcome,
    judge_deploy,
    judge_latest_serving,
    judge_rollback_target,
    judge_service_status,
    judge_target_verified,
    judge_traffic_moved,
    judge_ws_preflight,
)
from runbook_lib.checks.service import Choice
from runbook_lib.observations import CommandObservation
from runbook_lib.results import Status
from runbook_lib.settings import Thresholds


@dataclass
class T:
    type: str
    revision: str = ""
    percent: int = 0


@dataclass
class Svc:
    serving_revisions: dict = field(default_factory=dict)
    latest_ready_revision: str = "svc-2"
    latest_created_revision: str = "svc-2"
    traffic: tuple = (T("LATEST", "", 100),)
    timeout_s: float | None = 3600
    use_http2: bool = False
    session_affinity: bool = True
    min_instances: int | None = 1
    max_instances: int | None = 10
    concurrency: int | None = 80
    ingress: str = "INGRESS_TRAFFIC_ALL"


@dataclass
class Rev:
    name: str
    ready: bool = True
    ready_message: str = ""


@dataclass
class Rev2:
    name: str
    create_time: datetime | None
    ready: bool = True


T0 = datetime(2026, 1, 1, tzinfo=UTC)


def ids(results):
    return {r.id: r.status for r in results}


def test_latest_at_100_passes():
    out = judge_service_status(Svc({"svc-2": 100}), [Rev("svc-2"), Rev("svc-1")])
    assert ids(out) == {
        "status.revision_identified": Status.PASS,
        "status.traffic_on_latest": Status.PASS,
        "status.revisions_listed": Status.PASS,
    }


def test_pinned_split_fails_traffic_on_latest_and_says_how_to_fix():
    svc = Svc({"svc-1": 100}, traffic=(T("REVISION", "svc-1", 100),))
    out = {r.id: r for r in judge_service_status(svc, [Rev("svc-2"), Rev("svc-1")])}
    assert out["status.traffic_on_latest"].status is Status.FAIL
    assert "pinned" in out["status.traffic_on_latest"].detail
    assert "--to-latest" in out["status.traffic_on_latest"].detail


def test_nothing_serving_fails():
    out = ids(judge_service_status(Svc({}), []))
    assert out["status.revision_identified"] is Status.FAIL
    assert out["status.revisions_listed"] is Status.FAIL


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"timeout_s": 10}, "shorter than the hold time"),
        ({"use_http2": True}, "HTTP/2 end-to-end"),
        ({"session_affinity": False}, "session affinity"),
        ({"min_instances": 0}, "min instances"),
        ({"concurrency": 1}, "max concurrency 1"),
    ],
)
def test_preflight_warns_on_each_ws_hostile_setting(change, needle):
    svc = Svc({"svc-2": 100}, **change)
    res = judge_ws_preflight(svc, Thresholds())
    assert res.status is Status.WARN
    assert needle in res.detail


def test_preflight_passes_on_friendly_settings():
    assert judge_ws_preflight(Svc({"svc-2": 100}), Thresholds()).status is Status.PASS


def test_latest_serving_cases():
    ok = judge_latest_serving(Svc({"svc-3": 100}, latest_ready_revision="svc-3"), "svc-3", "svc-2")
    assert ok.status is Status.PASS
    pinned = judge_latest_serving(
        Svc({"svc-2": 100}, latest_ready_revision="svc-3"), "svc-3", "svc-2"
    )
    assert pinned.status is Status.FAIL and "pinned" in pinned.detail
    failed = judge_latest_serving(
        Svc({"svc-2": 100}, latest_ready_revision="svc-2"), "svc-3", "svc-2"
    )
    assert failed.status is Status.FAIL and "not ready" in failed.detail


@dataclass
class Op:
    name: str = "operations/1"
    succeeded: bool = True
    error: str = ""
    revision: str = "svc-3"
    duration_s: float = 4.2


@pytest.mark.parametrize(
    ("op", "executed", "succeeded", "words"),
    [
        (Op(), Status.PASS, Status.PASS, "revision svc-3 is ready"),
        (Op(succeeded=False, error="container exited 1"), Status.PASS, Status.FAIL, "exited 1"),
        (Op(succeeded=False), Status.PASS, Status.FAIL, "no detail"),
    ],
)
def test_deploy_of_an_image(op, executed, succeeded, words):
    ex, done = judge_deploy(op, Svc({"svc-3": 100}), "svc-2")
    assert (ex.id, ex.phase, ex.status) == ("deploy.executed", 2, executed)
    assert (done.id, done.status) == ("deploy.operation_succeeded", succeeded)
    assert words in done.detail
    if succeeded is Status.FAIL:
        assert "still serves svc-2" in done.detail


@pytest.mark.parametrize(
    ("exit_code", "timed_out", "created", "ready", "statuses"),
    [
        (0, False, "svc-3", "svc-3", (Status.PASS, Status.PASS)),
        (0, False, "svc-3", "svc-2", (Status.PASS, Status.FAIL)),  # not ready
        (0, False, "svc-2", "svc-2", (Status.PASS, Status.FAIL)),  # no new revision
        (1, False, "svc-3", "svc-3", (Status.FAIL, Status.FAIL)),
        (None, True, "svc-3", "svc-3", (Status.FAIL, Status.FAIL)),
    ],
)
def test_deploy_by_command(exit_code, timed_out, created, ready, statuses):
    run = CommandObservation("deploy", "gcloud run deploy", exit_code, 1.0, timed_out=timed_out)
    after = Svc({ready: 100}, latest_ready_revision=ready, latest_created_revision=created)
    out = judge_deploy(run, after, "svc-2")
    assert [r.id for r in out] == ["deploy.executed", "deploy.operation_succeeded"]
    assert tuple(r.status for r in out) == statuses
    assert ("timed out" in out[0].detail) is timed_out


@pytest.mark.parametrize(
    ("choice", "status", "words"),
    [
        (
            Choice("svc-1", "served-before-deploy", ("svc-1",), "svc-1 served before"),
            Status.PASS,
            "from svc-2 to svc-1 (rule served-before-deploy: svc-1 served before)",
        ),
        (
            Choice(
                None,
                "refused",
                ("svc-0",),
                "no evidence; candidates: svc-0",
                (("svc-1", "it was seen failing"),),
            ),
            Status.FAIL,
            "refused: no evidence; candidates: svc-0. Traffic stays on svc-2. Ruled out: svc-1: it was seen failing",
        ),
        (
            Choice("svc-1", "already-serving", ("svc-1",), "nothing to move"),
            Status.PASS,
            "rule already-serving: nothing to move",
        ),
    ],
)
def test_rollback_target(choice, status, words):
    r = judge_rollback_target(choice, "svc-2")
    assert (r.id, r.phase, r.status) == ("rollback.target_identified", 6, status)
    assert words in r.detail
    assert r.data["rule"] == choice.rule


def test_a_dry_run_never_proposes_the_serving_revision():
    """The walkthrough's "roll back from X to X": the serving revision is never a target."""
    revs = [Rev2("svc-2", T0 + timedelta(minutes=2)), Rev2("svc-1", T0)]
    choice = choose_rollback_target({"svc-2": 100}, revs, explicit="svc-2")
    assert choice.refused and "serving now" in choice.reason
    r = judge_rollback_target(choice, "svc-2")
    assert r.status is Status.FAIL and "from svc-2 to svc-2" not in r.detail


@pytest.mark.parametrize(
    ("serving", "previous", "failed", "revision", "rule", "words"),
    [
        # A verify-then-shift gate returned the split: nothing to move.
        ({"svc-1": 100}, {"svc-1": 100}, (), "svc-1", "already-serving", "nothing to move"),
        # ... but the old revision was itself seen failing: say so.
        ({"svc-1": 100}, {"svc-1": 100}, ("svc-1",), "svc-1", "already-serving", "fix forward"),
        # The deploy still serves: the ordinary rule picks what served before.
        ({"svc-2": 100}, {"svc-1": 100}, (), "svc-1", "served-before-deploy", "served before"),
    ],
)
def test_already_serving_rule(serving, previous, failed, revision, rule, words):
    revs = [Rev2("svc-2", T0 + timedelta(minutes=2)), Rev2("svc-1", T0)]
    choice = choose_rollback_target(
        serving, revs, previous_serving=previous, failed_seen=failed, deployed="svc-2"
    )
    assert (choice.revision, choice.rule) == (revision, rule)
    assert words in choice.reason


def _part(cid: str, ok: bool, detail: str) -> Any:
    v = Verdict(cid)
    return v.ok(detail) if ok else v.fail(detail)


@pytest.mark.parametrize(
    ("check_id", "parts", "status", "words"),
    [
        (
            "rollback.target_verified",
            {"health": True, "upgrade": True, "round trip": True},
            Status.PASS,
            "health, upgrade, round trip all passed",
        ),
        (
            "rollback.target_verified",
            {"health": True, "upgrade": False, "round trip": False},
            Status.FAIL,
            "failed on its tag URL http://tag: upgrade: bad upgrade; round trip: no socket (the "
            "upgrade was refused). Refused: traffic stays",
        ),
        ("deploy.tag_verified", {}, Status.FAIL, "nothing was probed"),
        ("deploy.tag_verified", {"health": False}, Status.FAIL, "health: bad health"),
        (
            "rollback.target_verified",
            {"health": True, "upgrade": True, "round trip": False},
            Status.FAIL,
            "round trip: bad round trip",
        ),
    ],
)
def test_target_verified(check_id, parts, status, words):
    judged = {k: _part(check_id, ok, f"{'good' if ok else 'bad'} {k}") for k, ok in parts.items()}
    r = judge_target_verified(
        judged,
        check_id=check_id,
        revision="svc-1",
        url="http://tag",
        refusal="Refused: traffic stays",
    )
    assert (r.id, r.status) == (check_id, status)
    assert words in r.detail
    if status is Status.PASS:
        assert "Refused" not in r.detail


@pytest.mark.parametrize(
    ("parts", "passed", "failed"),
    [
        ({"health": True, "isolation": True}, True, ()),
        ({"health": True, "isolation": False}, False, ("isolation",)),
        ({}, False, ("no probe",)),  # no evidence: the gate does not open
    ],
)
def test_gate(parts, passed, failed):
    judged = {k: _part("deploy.latest_serving", ok, f"{k} said so") for k, ok in parts.items()}
    ok, bad, words = gate_outcome(judged)
    assert (ok, bad) == (passed, failed)
    assert all(f"{b}: {b} said so" in words for b in bad if b != "no probe")


@pytest.mark.parametrize(
    ("record", "status", "words", "max_share"),
    [
        (
            ShiftRecord(
                "new",
                {"old": 100},
                True,
                ((10, True, ""), (50, True, ""), (100, True, "")),
                None,
                {"new": 100},
            ),
            Status.PASS,
            "every gate passed (10 %, 50 %, 100 %)",
            100,
        ),
        (
            ShiftRecord(
                "new", {"old": 100}, True, ((10, False, "isolation: leak"),), True, {"old": 100}
            ),
            Status.FAIL,
            "the gate at 10 % failed (isolation: leak): traffic returned to the split before the "
            "deploy (old 100 %); new served at most 10 %",
            10,
        ),
        (
            ShiftRecord(
                "new", {"old": 100}, True, ((10, False, "x"),), False, {"new": 10, "old": 90}
            ),
            Status.FAIL,
            "FAILED: serving now {'new': 10, 'old': 90}. Restore it by hand: gcloud run services "
            "update-traffic backend --to-revisions=old=100",
            10,
        ),
        (
            ShiftRecord("new", {"old": 100}, False, (), None, {"old": 100}),
            Status.FAIL,
            "refused on its tag URL (deploy.tag_verified): no traffic moved",
            0,
        ),
        (ShiftRecord("", {"old": 100}, False), Status.FAIL, "no new revision was created", 0),
    ],
)
def test_shift(record, status, words, max_share):
    svc = Svc(record.final)
    svc.name = "backend"  # type: ignore[attr-defined]
    r = judge_latest_serving(svc, record.new_revision, "old", shift=record)
    assert (r.id, r.phase, r.status) == ("deploy.latest_serving", 2, status)
    assert words in r.detail
    assert record.max_share == max_share


def test_pinned_hints_name_the_service():
    """No literal SERVICE placeholder when the service's name is known."""
    svc = Svc({"svc-2": 100}, latest_ready_revision="svc-3")
    svc.name = "backend"  # type: ignore[attr-defined]
    r = judge_latest_serving(svc, "svc-3", "svc-2")
    assert "update-traffic backend --to-latest" in r.detail and "SERVICE" not in r.detail


@pytest.mark.parametrize(
    ("target", "op", "serving", "status", "words"),
    [
        ("svc-1", Op(), {"svc-1": 100}, Status.PASS, "now receives 100 %"),
        ("svc-1", Op(), {"svc-1": 50, "svc-2": 50}, Status.FAIL, "Run: gcloud"),
        (
            "svc-1",
            Op(succeeded=False, error="denied"),
            {"svc-2": 100},
            Status.FAIL,
            "failed: denied",
        ),
        (None, None, {}, Status.FAIL, "no rollback target"),
    ],
)
def test_traffic_moved(target, op, serving, status, words):
    r = judge_traffic_moved(target, op, serving, "gcloud run services update-traffic")
    assert (r.id, r.phase, r.status) == ("rollback.traffic_moved", 6, status)
    assert words in r.detail


def test_traffic_not_moved_after_a_refusal_says_why():
    r = judge_traffic_moved("svc-1", None, {"svc-2": 100}, why_not="svc-1 failed its verification")
    assert r.status is Status.FAIL
    assert (
        "not moved to svc-1: svc-1 failed its verification; serving now {'svc-2': 100}" in r.detail
    )
