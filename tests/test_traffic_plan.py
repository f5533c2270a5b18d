"""The verify-then-shift plan: splits per step, gates, the way back (pure)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from runbook_lib.traffic_plan import (
    DEFAULT_SHIFT_STEPS,
    Gate,
    deploy_strategy,
    next_action,
    plan_shift,
    share_rows,
    shift_steps,
)


@pytest.mark.parametrize(
    ("previous", "steps", "splits"),
    [
        (
            {"old": 100},
            (10, 50, 100),
            [{"new": 10, "old": 90}, {"new": 50, "old": 50}, {"new": 100}],
        ),
        # the previous split keeps its proportions (largest remainder, integers summing to 100)
        (
            {"a": 50, "b": 50},
            (5, 100),
            [{"new": 5, "a": 48, "b": 47}, {"new": 100}],
        ),
        ({"a": 67, "b": 33}, (10, 100), [{"new": 10, "a": 60, "b": 30}, {"new": 100}]),
        ({"old": 100, "tagged-only": 0}, (100,), [{"new": 100}]),
    ],
)
def test_plan_shift_splits(
    previous: dict[str, int], steps: tuple[int, ...], splits: list[dict[str, int]]
) -> None:
    plan = plan_shift("new", previous, steps)
    assert [dict(s.split) for s in plan.steps] == splits
    assert all(sum(s.split.values()) == 100 for s in plan.steps)
    assert [s.percent for s in plan.steps] == list(steps)
    assert dict(plan.restore) == {r: p for r, p in previous.items() if p}


@pytest.mark.parametrize(
    ("previous", "steps", "pattern"),
    [
        ({"old": 100}, (50, 10, 100), "increasing"),
        ({"old": 100}, (10, 50), "ending at 100"),
        ({"old": 100}, (), "increasing"),
        ({"old": 100}, (0, 100), "1..100"),
        ({"old": 100}, (10.5, 100), "percentages"),
        ({"old": 90}, (100,), "sum to 100"),
        ({"old": 90, "new": 10}, (100,), "already serves 10 %"),
    ],
)
def test_plan_shift_refuses_bad_input(previous: dict[str, int], steps: Any, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        plan_shift("new", previous, steps)


def test_next_action_walks_verify_steps_and_done() -> None:
    plan = plan_shift("new", {"old": 100})
    assert next_action(plan, None).kind == "verify"
    first = next_action(plan, True)
    assert (first.kind, first.step, dict(first.split or {})) == ("shift", 0, {"new": 10, "old": 90})
    gates = [Gate(0, True)]
    second = next_action(plan, True, gates)
    assert (second.kind, second.step) == ("shift", 1) and "gate at 10 % passed" in second.reason
    gates += [Gate(1, True), Gate(2, True)]
    done = next_action(plan, True, gates)
    assert done.kind == "done" and dict(done.split or {}) == {"new": 100}


def test_a_failed_verification_moves_nothing_and_a_failed_gate_restores() -> None:
    plan = plan_shift("new", {"old": 100})
    refused = next_action(plan, False)
    assert refused.kind == "refuse" and refused.split is None and "0 %" in refused.reason
    # cross-user-leak found at the first step: never more than 10 %, then back
    back = next_action(plan, True, [Gate(0, False, ("isolation.no_cross_user",))])
    assert back.kind == "restore" and dict(back.split or {}) == {"old": 100}
    assert "isolation.no_cross_user failed with new at 10 %" in back.reason
    later = next_action(plan, True, [Gate(0, True), Gate(1, False)])
    assert later.kind == "restore" and "at 50 %" in later.reason


@pytest.mark.parametrize(
    ("verified", "gates"),
    [(None, [Gate(0, True)]), (False, [Gate(0, True)]), (True, [Gate(1, True)]),
     (True, [Gate(i, True) for i in range(4)])],
)  # fmt: skip
def test_next_action_refuses_inconsistent_history(verified: bool | None, gates: list[Gate]) -> None:
    with pytest.raises(ValueError):
        next_action(plan_shift("new", {"old": 100}), verified, gates)


def test_settings_are_read_with_defaults() -> None:
    """The settings keys may not exist yet (added at merge): defaults then."""
    assert deploy_strategy(SimpleNamespace()) == "direct"
    assert deploy_strategy(SimpleNamespace(cloudrun=SimpleNamespace())) == "direct"
    cr = SimpleNamespace(deploy_strategy="verify-then-shift", shift_steps=[25, 100])
    assert deploy_strategy(SimpleNamespace(cloudrun=cr)) == "verify-then-shift"
    assert shift_steps(SimpleNamespace(cloudrun=cr)) == (25, 100)
    assert shift_steps(SimpleNamespace()) == DEFAULT_SHIFT_STEPS
    with pytest.raises(ValueError, match="deploy_strategy must be one of"):
        deploy_strategy(SimpleNamespace(cloudrun=SimpleNamespace(deploy_strategy="yolo")))


def test_share_rows_drop_to_zero_when_traffic_leaves() -> None:
    rows = share_rows(
        [
            (0.0, {"old": 100}, "deploy (0 %)"),
            (5.0, {"new": 10, "old": 90}, "step 10 %"),
            (9.0, {"old": 100}, "restore"),
        ]
    )
    assert [(r["t_s"], r["revision"], r["percent"]) for r in rows] == [
        (0.0, "old", 100),
        (5.0, "old", 90),
        (5.0, "new", 10),
        (9.0, "old", 100),
        (9.0, "new", 0),
    ]
    assert max(r["percent"] for r in rows if r["revision"] == "new") == 10
