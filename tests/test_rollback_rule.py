"""The rollback-target rule (SPEC 9): every rule, every exclusion, every refusal (pure)."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from runbook_lib.checks.service import (
    RULE_CHAIN_PASS,
    RULE_EXPLICIT,
    RULE_REFUSED,
    RULE_SERVED_BEFORE,
    Choice,
    choose_rollback_target,
)
from runbook_lib.rollback_rule import chain_evidence, evidence_from_records, gather_evidence

T = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Rev:
    name: str
    create_time: datetime | None
    ready: bool = True


# r1 (oldest, healthy) .. r4 (newest: this run's deploy); r3 served before it.
REVS = [Rev(f"r{i}", T + timedelta(minutes=i)) for i in range(1, 5)]
NOW = {"r4": 100}
BEFORE = {"r3": 100}


@pytest.mark.parametrize(
    ("kwargs", "revision", "rule", "in_reason"),
    [
        # rule 1: the revision that served before this run's deploy
        ({"previous_serving": BEFORE}, "r3", RULE_SERVED_BEFORE, "served before"),
        ({"previous_serving": "r3"}, "r3", RULE_SERVED_BEFORE, "served before"),
        # ... even when a later rule would say otherwise (and the reason says so)
        (
            {"previous_serving": BEFORE, "passed_in_chain": ["r1"], "explicit": "r2"},
            "r3",
            RULE_SERVED_BEFORE,
            "rollback_to=r2 not used",
        ),
        # a split before the deploy whose other share is the serving revision
        ({"previous_serving": {"r3": 90, "r4": 10}}, "r3", RULE_SERVED_BEFORE, "served before"),
        # rule 2: no deploy in this run -> the newest revision a chained run judged pass
        ({"passed_in_chain": ["r1", "r2"]}, "r2", RULE_CHAIN_PASS, "newest"),
        ({"passed_in_chain": {"r1"}}, "r1", RULE_CHAIN_PASS, "earlier run"),
        # rule 1's revision was seen failing -> rule 2
        (
            {"previous_serving": BEFORE, "failed_seen": {"r3"}, "passed_in_chain": ["r1"]},
            "r1",
            RULE_CHAIN_PASS,
            "",
        ),
        # the passed revision that is serving now does not count
        ({"passed_in_chain": ["r4", "r2"]}, "r2", RULE_CHAIN_PASS, ""),
        # rule 3: only the operator's word
        ({"explicit": "r2"}, "r2", RULE_EXPLICIT, "rollback_to"),
        # a passed revision that is not ready -> explicit
        (
            {
                "passed_in_chain": ["r1"],
                "explicit": "r2",
                "revisions": [*REVS[1:], Rev("r1", T, False)],
            },
            "r2",
            RULE_EXPLICIT,
            "",
        ),
    ],
)
def test_rules_in_order(kwargs: dict[str, Any], revision: str, rule: str, in_reason: str) -> None:
    args = {"serving": NOW, "revisions": REVS, **kwargs}
    choice = choose_rollback_target(**args)
    assert isinstance(choice, Choice) and not choice.refused
    assert (choice.revision, choice.rule) == (revision, rule)
    assert choice.candidates[0] == revision
    assert in_reason in choice.reason


@pytest.mark.parametrize(
    ("kwargs", "candidates", "in_reason"),
    [
        # the walk-through's trap: no evidence at all -> refuse, never "newest other revision"
        ({}, ("r3", "r2", "r1"), "no evidence names a rollback target"),
        # several revisions served before the deploy
        ({"previous_serving": {"r2": 50, "r3": 50}}, ("r2", "r3"), "several revisions served"),
        # chained passes of unknown order
        (
            {
                "passed_in_chain": ["r1", "r2"],
                "revisions": [Rev("r1", None), Rev("r2", None), REVS[3]],
            },
            ("r1", "r2"),
            "order is unknown",
        ),
        # equal creation times are no order either
        (
            {"passed_in_chain": ["r1", "r2"], "revisions": [Rev("r1", T), Rev("r2", T), REVS[3]]},
            ("r1", "r2"),
            "order is unknown",
        ),
        # explicit choices are checked like any other
        (
            {"explicit": "r4"},
            ("r3", "r2", "r1"),
            "rollback_to=r4 refused: it is the revision serving now",
        ),
        ({"explicit": "r2", "failed_seen": ["r2"]}, ("r3", "r1"), "it was seen failing"),
        ({"explicit": "r9"}, ("r3", "r2", "r1"), "no such revision"),
        (
            {"explicit": "r2", "revisions": [Rev("r2", T, False), REVS[3]]},
            (),
            "it is not ready",
        ),
        # the only earlier revision is broken: refused, and the reason says what to do
        (
            {"previous_serving": BEFORE, "failed_seen": ["r3"], "revisions": [REVS[2], REVS[3]]},
            (),
            "fix forward",
        ),
        # the serving revision itself served before (no-traffic deploy, pinned split)
        ({"previous_serving": NOW, "revisions": [REVS[3]]}, (), "it is the revision serving now"),
    ],
)
def test_refusals_list_the_candidates(
    kwargs: dict[str, Any], candidates: tuple[str, ...], in_reason: str
) -> None:
    args = {"serving": NOW, "revisions": REVS, **kwargs}
    choice = choose_rollback_target(**args)
    assert choice.refused and choice.revision is None and choice.rule == RULE_REFUSED
    assert choice.candidates == candidates
    assert in_reason in choice.reason


def test_never_the_serving_revision_nor_a_failed_one() -> None:
    """Whatever the inputs, the target is never serving and never seen failing."""
    import itertools

    names = [r.name for r in REVS]
    for before, passed, explicit in itertools.product(
        [None, *names], [(), *((n,) for n in names)], [None, *names]
    ):
        for failed in ((), ("r3",), ("r1", "r2")):
            choice = choose_rollback_target(
                NOW, REVS, before, passed_in_chain=passed, failed_seen=failed, explicit=explicit
            )
            assert choice.revision not in ("r4", *failed)
            if choice.revision is not None:
                assert choice.rule != RULE_REFUSED


def test_exclusions_are_explained() -> None:
    choice = choose_rollback_target(
        NOW, REVS, BEFORE, passed_in_chain=["r4", "r1"], failed_seen=["r3"]
    )
    assert choice.revision == "r1"
    assert dict(choice.excluded) == {
        "r3": "it was seen failing",
        "r4": "it is the revision serving now",
    }
    refused = choose_rollback_target(NOW, REVS, BEFORE, failed_seen=["r3"])
    assert "r3: it was seen failing" in refused.reason


def test_module_is_pure() -> None:
    """Importing the rule pulls in no network, cloud or numeric library."""
    code = (
        "import sys, runbook_lib.rollback_rule; "
        "bad = [m for m in ('httpx', 'websockets', 'google', 'numpy', 'pandas', 'asyncio') "
        "if m in sys.modules]; print(bad)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ------------------------------------------------------------------ the evidence it reads


def _rec(checks: dict[str, str], artifacts: dict | None = None, **extra: Any) -> dict:
    observed = extra.pop("observed", None)
    return {
        "checks": [
            {
                "id": cid,
                "status": st,
                "observed": observed if cid == "status.revision_identified" else None,
            }
            for cid, st in checks.items()
        ],
        "artifacts": artifacts or {},
        **extra,
    }


DEPLOYED = {"dry_run": False, "deployed_revision": "r3", "previous_split": {"r2": 100}}


def test_a_runs_records_name_the_revisions_it_saw_failing() -> None:
    """Phase 1 condemns what it found serving; later phases condemn the deployed revision."""
    ev = evidence_from_records(
        {
            1: _rec(
                {
                    "status.revision_identified": "pass",
                    "ws.routes_probe": "fail",
                    "source.git_clean": "fail",
                },
                observed={"r2": 100},
            ),
            2: _rec({"predeploy.unit": "fail", "deploy.executed": "pass"}, DEPLOYED),
            5: _rec({"isolation.no_cross_user": "fail", "events.order": "pass"}),
        }
    )
    assert ev.previous_split == {"r2": 100} and ev.deployed == "r3" and ev.judged == "r3"
    assert ev.failed == {"r2": "phase 1: ws.routes_probe", "r3": "phase 5: isolation.no_cross_user"}


def test_a_dry_run_deploys_nothing_and_phase_7_after_a_rollback_judges_the_target() -> None:
    dry = evidence_from_records({2: _rec({}, {"dry_run": True, "previous_revision": "r2"})})
    assert (dry.deployed, dry.previous_split) == ("", {})
    ev = evidence_from_records(
        {
            2: _rec({}, DEPLOYED),
            6: _rec(
                {"rollback.traffic_moved": "pass"},
                {"rollback_target": "r2", "rolled_back_at": "2026-01-01T00:01:00+00:00"},
            ),
            7: _rec({"monitor.hold": "fail"}, started_at="2026-01-01T00:02:00+00:00"),
        }
    )
    assert ev.judged == "r2" and ev.failed == {"r2": "phase 7: monitor.hold"}
    # Phase 7 before the (late) rollback judged the deployed revision.
    late = evidence_from_records(
        {
            2: _rec({}, DEPLOYED),
            7: _rec({"monitor.hold": "fail"}, started_at="2026-01-01T00:00:30+00:00"),
            6: _rec(
                {"rollback.traffic_moved": "pass"},
                {"rollback_target": "r2", "rolled_back_at": "2026-01-01T00:01:00+00:00"},
            ),
        }
    )
    assert late.failed == {"r3": "phase 7: monitor.hold"}
    refused = evidence_from_records(
        {
            2: _rec({}, DEPLOYED),
            6: _rec({"rollback.target_verified": "fail"}, {"rollback_target": "r2"}),
        }
    )
    assert refused.failed == {"r2": "phase 6: rollback.target_verified"}


def _run(out: Path, rid: str, verdict: str, records: dict[int, dict], env: str = "local") -> None:
    (out / rid / "phases").mkdir(parents=True)
    (out / rid / "results.json").write_text(json.dumps({"environment": env, "verdict": verdict}))
    for phase, doc in records.items():
        (out / rid / "phases" / f"{phase:02d}.json").write_text(json.dumps(doc))


def test_the_chain_gives_the_revisions_earlier_runs_passed_and_failed(tmp_path: Path) -> None:
    _run(tmp_path, "A", "pass", {2: _rec({}, {**DEPLOYED, "deployed_revision": "r1"})})
    _run(tmp_path, "B", "pass", {2: _rec({}, DEPLOYED)}, env="staging")  # another environment
    _run(
        tmp_path,
        "C",
        "fail",
        {2: _rec({}, {**DEPLOYED, "deployed_revision": "r4"}), 3: _rec({"ws.upgrade": "fail"})},
    )
    lines = [json.dumps({"run_id": r, "sha256": "x"}) for r in ("A", "B", "gone", "C")]
    (tmp_path / ".manifest-chain").write_text("\n".join([*lines, "not json"]) + "\n")
    passed, failed, read = chain_evidence(tmp_path, "local")
    assert passed == {"r1": "A"} and read == 2
    assert failed == {"r4": "run C: phase 3: ws.upgrade"}
    run_dir = tmp_path / "NOW"
    _run(
        tmp_path,
        "NOW",
        "",
        {2: _rec({}, {**DEPLOYED, "deployed_revision": "r5", "previous_split": {"r4": 100}})},
    )
    ev = gather_evidence(run_dir, "local")
    assert ev.previous_split == {"r4": 100} and ev.deployed == "r5"
    assert ev.passed_in_chain == {"r1": "A"} and "r4" in ev.failed_seen
    # Fed to the rule: r4 served before but failed in run C, so the chain's pass wins.
    revs = [Rev(n, T + timedelta(minutes=i)) for i, n in enumerate(("r1", "r4", "r5"))]
    choice = choose_rollback_target(
        {"r5": 100},
        revs,
        ev.previous_split,
        passed_in_chain=ev.passed_in_chain,
        failed_seen=ev.failed_seen,
        deployed=ev.deployed,
    )
    assert (choice.revision, choice.rule) == ("r1", RULE_CHAIN_PASS)
    assert gather_evidence(None, "local").passed_in_chain == {}  # interactive: no evidence
