"""Table tests of the Cloud Run service checks (``runbook_lib.checks.service``): traffic statuses
decide, preflight warns on WS-hostile settings, deploy and rollback outcomes are judged."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from runbook_lib.checks import (
    judge_deploy,
    judge_latest_serving,
    judge_rollback_target,
    judge_service_status,
    judge_traffic_moved,
    judge_ws_preflight,
)
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
    ("target", "revisions", "status", "words"),
    [
        ("svc-1", [Rev("svc-2"), Rev("svc-1")], Status.PASS, "from svc-2 to svc-1"),
        ("", [Rev("svc-2")], Status.FAIL, "nothing to roll back"),
        ("svc-9", [Rev("svc-2"), Rev("svc-1")], Status.FAIL, "not a ready revision"),
        ("svc-1", [Rev("svc-2"), Rev("svc-1", ready=False)], Status.FAIL, "not a ready revision"),
    ],
)
def test_rollback_target(target, revisions, status, words):
    r = judge_rollback_target(target, "parameter rollback_to", "svc-2", revisions)
    assert (r.id, r.phase, r.status) == ("rollback.target_identified", 6, status)
    assert words in r.detail


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
