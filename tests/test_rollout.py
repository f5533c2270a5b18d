"""Cloud Run rollout judges: traffic statuses decide, preflight warns on WS-hostile settings."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from runbook_lib.results import Status
from runbook_lib.rollout import judge_latest_serving, judge_service_status, judge_ws_preflight
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
