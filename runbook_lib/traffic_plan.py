"""The ``verify-then-shift`` deploy strategy as a pure plan (SPEC 9).

``[cloudrun] deploy_strategy = "verify-then-shift"`` deploys with no traffic,
verifies the new revision on its tag URL, then moves traffic in steps (for
example 10, 50, 100 %) with a gate after each; a failed gate returns the service
to the split it had before. ``"direct"`` (the seed's way: the deploy takes all
traffic at once) stays the default.

Pure: :func:`plan_shift` computes the splits, :func:`next_action` decides what
to do next from the verification and the gates seen so far. The Cloud Run calls
are :meth:`runbook_lib.cloudrun.GoogleCloudRun.set_traffic_split` and friends.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "DEFAULT_SHIFT_STEPS",
    "STRATEGIES",
    "Gate",
    "ShiftAction",
    "ShiftPlan",
    "ShiftStep",
    "deploy_strategy",
    "next_action",
    "plan_shift",
    "share_rows",
    "shift_steps",
]

STRATEGIES = ("direct", "verify-then-shift")
DEFAULT_SHIFT_STEPS = (10, 50, 100)


def deploy_strategy(settings: Any) -> str:
    """``[cloudrun] deploy_strategy`` (``"direct"`` when the setting does not exist).

    Raises:
        ValueError: an unknown strategy.
    """
    value = str(getattr(getattr(settings, "cloudrun", None), "deploy_strategy", "") or "direct")
    if value not in STRATEGIES:
        raise ValueError(f"[cloudrun] deploy_strategy must be one of {STRATEGIES}, got {value!r}")
    return value


def shift_steps(settings: Any) -> tuple[int, ...]:
    """``[cloudrun] shift_steps`` (default 10, 50, 100), validated.

    Raises:
        ValueError: steps that are not increasing percentages ending at 100.
    """
    raw = getattr(getattr(settings, "cloudrun", None), "shift_steps", None)
    return _check_steps(DEFAULT_SHIFT_STEPS if raw in (None, (), []) else tuple(raw))


def _check_steps(steps: Sequence[int]) -> tuple[int, ...]:
    out = tuple(steps)
    if (
        not out
        or any(not isinstance(p, int) or isinstance(p, bool) or not 0 < p <= 100 for p in out)
        or any(b <= a for a, b in itertools.pairwise(out))
        or out[-1] != 100
    ):
        raise ValueError(
            f"traffic steps must be increasing percentages in 1..100 ending at 100, got {out}"
        )
    return out


@dataclass(frozen=True, slots=True)
class ShiftStep:
    """One traffic step: the new revision's share and the whole split."""

    index: int
    percent: int
    split: Mapping[str, int]


@dataclass(frozen=True, slots=True)
class ShiftPlan:
    """Steps from ``previous`` to the new revision at 100 %, and the way back."""

    new_revision: str
    previous: Mapping[str, int]
    steps: tuple[ShiftStep, ...]

    @property
    def restore(self) -> Mapping[str, int]:
        """The split a failed gate returns to (the one before the deploy)."""
        return self.previous


def _spread(total: int, weights: Mapping[str, int]) -> dict[str, int]:
    """``total`` percent over ``weights`` proportionally, in integers (largest remainder)."""
    whole = sum(weights.values())
    if total == 0 or whole == 0:
        return {}
    exact = {r: total * w / whole for r, w in weights.items()}
    out = {r: int(v) for r, v in exact.items()}
    left = total - sum(out.values())
    for r in sorted(exact, key=lambda r: (-(exact[r] - out[r]), r))[:left]:
        out[r] += 1
    return {r: p for r, p in out.items() if p}


def plan_shift(
    new_revision: str,
    previous: Mapping[str, int],
    steps: Sequence[int] = DEFAULT_SHIFT_STEPS,
) -> ShiftPlan:
    """The splits that move traffic to ``new_revision`` in ``steps``.

    At each step the new revision has its percentage and the rest keeps the
    previous split's proportions. ``previous`` is revision -> percent (summing to
    100) as it served before the no-traffic deploy.

    Raises:
        ValueError: bad steps, a previous split that does not sum to 100, or one
            in which the new revision already serves.
    """
    checked = _check_steps(steps)
    before = {r: int(p) for r, p in previous.items() if p}
    if sum(before.values()) != 100 or any(p < 0 for p in before.values()):
        raise ValueError(f"the previous split must sum to 100, got {dict(previous)}")
    if not new_revision:
        raise ValueError("a traffic shift needs the new revision's name")
    if new_revision in before:
        raise ValueError(f"{new_revision} already serves {before[new_revision]} % of traffic")
    out = []
    for i, pct in enumerate(checked):
        split = {new_revision: pct, **_spread(100 - pct, before)}
        out.append(ShiftStep(i, pct, split))
    return ShiftPlan(new_revision, before, tuple(out))


@dataclass(frozen=True, slots=True)
class Gate:
    """The checks run after step ``step`` took effect: passed, or which failed."""

    step: int
    passed: bool
    failed_checks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class ShiftAction:
    """What to do next.

    ``kind``: ``verify`` (probe the new revision on its tag URL), ``refuse`` (it
    failed there: move nothing), ``shift`` (apply ``split``, step ``step``),
    ``restore`` (apply ``split``, the previous one) or ``done``.
    """

    kind: Literal["verify", "refuse", "shift", "restore", "done"]
    split: Mapping[str, int] | None
    step: int | None
    reason: str


def next_action(plan: ShiftPlan, verified: bool | None, gates: Sequence[Gate] = ()) -> ShiftAction:
    """Decide the next move of a verify-then-shift rollout (pure).

    Args:
        plan: from :func:`plan_shift`.
        verified: the tag-URL verification (``None`` = not run yet).
        gates: one per step applied so far, in order.

    Raises:
        ValueError: gates out of order, or gates without a passed verification.
    """
    new = plan.new_revision
    if verified is None:
        if gates:
            raise ValueError("gates were recorded before the new revision was verified")
        return ShiftAction("verify", None, None, f"probe {new} on its tag URL before any traffic")
    if not verified:
        if gates:
            raise ValueError("gates were recorded although the verification failed")
        return ShiftAction(
            "refuse",
            None,
            None,
            f"{new} failed on its tag URL: no traffic moved; it keeps 0 %",
        )
    for i, gate in enumerate(gates):
        if gate.step != i or i >= len(plan.steps):
            raise ValueError(
                f"gate {i} is for step {gate.step}; steps are 0..{len(plan.steps) - 1}"
            )
        if not gate.passed:
            failed = ", ".join(gate.failed_checks) or "a gate check"
            return ShiftAction(
                "restore",
                plan.restore,
                None,
                f"{failed} failed with {new} at {plan.steps[i].percent} %: "
                "traffic returns to the previous split",
            )
    if len(gates) == len(plan.steps):
        return ShiftAction(
            "done", plan.steps[-1].split, None, f"{new} serves 100 %; every gate passed"
        )
    step = plan.steps[len(gates)]
    why = (
        "verified on its tag URL"
        if not gates
        else f"the gate at {plan.steps[len(gates) - 1].percent} % passed"
    )
    return ShiftAction("shift", step.split, step.index, f"{why}: {new} to {step.percent} %")


def share_rows(samples: Sequence[tuple[float, Mapping[str, int], str]]) -> list[dict[str, Any]]:
    """Long-format rows of traffic share over time, for a table or a step plot.

    Args:
        samples: ``(t_s, split, label)`` in time order: seconds since the rollout
            began, the split then in force (e.g. ``OperationOutcome.split``), and
            what made it (``"deploy (0 %)"``, ``"step 10 %"``, ``"restore"``).

    Returns:
        One row per (sample, revision) with ``t_s``, ``revision``, ``percent`` and
        ``label``; a revision absent from a sample that appeared earlier gets 0, so
        every line of a plot drops to zero when its traffic is gone.
    """
    seen: list[str] = []
    rows: list[dict[str, Any]] = []
    for t_s, split, label in samples:
        for rev in split:
            if rev not in seen:
                seen.append(rev)
        for rev in seen:
            rows.append(
                {
                    "t_s": float(t_s),
                    "revision": rev,
                    "percent": int(split.get(rev, 0)),
                    "label": label,
                }
            )
    return rows
