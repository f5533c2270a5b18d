"""The rollback-target rule (``runbook_lib.checks.rollback_target``): every rule, every
exclusion, every refusal (pure)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from runbook_lib.checks.rollback_target import (
    RULE_CHAIN_PASS,
    RULE_EXPLICIT,
    RULE_REFUSED,
    RULE_SERVED_BEFORE,
    Choice,
    choose_rollback_target,
)

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
