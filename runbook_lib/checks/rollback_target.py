"""The rollback-target rule: which revision phase 6 moves traffic back to, or a refusal.

The rollback-target rule, in order:

1. ``served-before-deploy``: the revision that served before this run's deploy
   (phase 2 records the split it found);
2. ``passed-in-chain``: else the newest revision that an earlier run in the
   manifest chain judged ``pass``;
3. ``explicit``: else the revision the operator named (``--param rollback_to=REV``).

Whatever the rule, a target is never a revision this run or a chained run saw
failing, never the revision serving now, and always an existing, ready revision.
When a rule finds several equally good revisions the choice is refused with the
candidates listed: guessing is how a rollback re-creates the incident. When the
deploy's revision no longer serves and the split from before the deploy is back
(a verify-then-shift gate returned it), the rule says so (``already-serving``):
there is nothing to move.

The rule is pure (its inputs are values: the split, the revisions, what the chain of
runs saw); ``runbook_lib.rollback_rule`` reads those inputs from the run records and
``judge_rollback_target`` (:mod:`runbook_lib.checks.service`) judges its choice.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

__all__ = [
    "RULE_ALREADY_SERVING",
    "RULE_CHAIN_PASS",
    "RULE_EXPLICIT",
    "RULE_REFUSED",
    "RULE_SERVED_BEFORE",
    "Choice",
    "RevisionFacts",
    "choose_rollback_target",
]


RULE_SERVED_BEFORE = "served-before-deploy"
RULE_CHAIN_PASS = "passed-in-chain"
RULE_EXPLICIT = "explicit"
RULE_REFUSED = "refused"
RULE_ALREADY_SERVING = "already-serving"


class RevisionFacts(Protocol):
    """What the rule needs of a revision (``cloudrun.RevisionInfo`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def create_time(self) -> datetime | None: ...

    @property
    def ready(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Choice:
    """The rollback target, or a refusal.

    Attributes:
        revision: the target, or ``None`` when refused.
        rule: which rule chose it (``RULE_*``), ``"refused"`` otherwise.
        candidates: with a refusal, the revisions a person could pick from; with a
            choice, the revisions the rule considered (the chosen one first).
        reason: one sentence a person can act on.
        excluded: (revision, why) for every revision ruled out on the way.
    """

    revision: str | None
    rule: str
    candidates: tuple[str, ...]
    reason: str
    excluded: tuple[tuple[str, str], ...] = ()

    @property
    def refused(self) -> bool:
        """True when no target was chosen."""
        return self.revision is None


def _serving_now(serving: Mapping[str, int] | str | None) -> set[str]:
    if not serving:
        return set()
    if isinstance(serving, str):
        return {serving}
    return {rev for rev, pct in serving.items() if pct > 0}


def _main(serving: Mapping[str, int] | str | None) -> str | None:
    if not serving:
        return None
    if isinstance(serving, str):
        return serving
    return max(sorted(serving), key=lambda r: serving[r])


def choose_rollback_target(
    serving: Mapping[str, int] | str | None,
    revisions: Sequence[RevisionFacts],
    previous_serving: Mapping[str, int] | str | None = None,
    passed_in_chain: Collection[str] = (),
    failed_seen: Collection[str] = (),
    explicit: str | None = None,
    deployed: str | None = None,
) -> Choice:
    """Choose the revision to roll back to, by the rules in the module docstring.

    Args:
        serving: the split now (revision -> percent), or the one serving revision.
        revisions: every revision of the service (name, create_time, ready).
        previous_serving: the split (or revision) before this run's deploy, if one ran.
        passed_in_chain: revisions that chained earlier runs judged ``pass``.
        failed_seen: revisions this run or a chained run saw failing.
        explicit: the operator's ``rollback_to``, if given.
        deployed: the revision this run's deploy created, if one ran: when it serves
            nothing and the split from before the deploy serves again, the choice is
            that split's main revision with rule ``already-serving`` (nothing to move).

    Returns:
        The :class:`Choice`; ``revision is None`` when refused.
    """
    by_name = {r.name: r for r in revisions}
    now = _serving_now(serving)
    failed = set(failed_seen)
    excluded: dict[str, str] = {}

    def why_not(rev: str) -> str:
        """Empty when ``rev`` may receive traffic, else the reason it may not."""
        if rev in now:
            return "it is the revision serving now"
        if rev in failed:
            return "it was seen failing"
        info = by_name.get(rev)
        if info is None:
            return "no such revision"
        if not info.ready:
            return "it is not ready"
        return ""

    def usable(revs: Sequence[str]) -> list[str]:
        out = []
        for rev in revs:
            if why := why_not(rev):
                excluded.setdefault(rev, why)
            else:
                out.append(rev)
        return out

    def done(revision: str | None, rule: str, candidates: Sequence[str], reason: str) -> Choice:
        return Choice(revision, rule, tuple(candidates), reason, tuple(excluded.items()))

    notes: list[str] = []

    # 0. The deploy's revision no longer serves and the split from before it is back.
    before = sorted(_serving_now(previous_serving))
    if deployed and before and deployed not in now and now and now <= set(before):
        main = _main(serving) or before[0]
        sick = sorted(now & failed)
        warning = (
            f"; but {', '.join(sick)} was itself seen failing: the state before the deploy "
            "is back, not a healthy one; fix forward"
            if sick
            else ""
        )
        return done(
            main,
            RULE_ALREADY_SERVING,
            sorted(now),
            f"{deployed} (this run's deploy) serves 0 % and {', '.join(sorted(now))}, which "
            f"served before the deploy, serve(s) again: nothing to move{warning}",
        )

    # 1. The revision that served before this run's deploy.
    if before:
        ok = usable(before)
        if len(ok) == 1:
            extra = (
                f"; rollback_to={explicit} not used: this rule comes first"
                if explicit and explicit != ok[0]
                else ""
            )
            return done(
                ok[0],
                RULE_SERVED_BEFORE,
                ok,
                f"{ok[0]} served before this run's deploy{extra}",
            )
        if len(ok) > 1:
            return done(
                None,
                RULE_REFUSED,
                ok,
                f"several revisions served before this run's deploy ({', '.join(ok)}): "
                "name one with --param rollback_to=REV",
            )
        notes.append(
            "the revision(s) that served before the deploy cannot take traffic ("
            + "; ".join(f"{r}: {excluded[r]}" for r in before)
            + ")"
        )

    # 2. The newest revision a chained earlier run judged pass.
    passed = usable(sorted(set(passed_in_chain)))
    if passed:
        times = {r: t for r in passed if (t := by_name[r].create_time) is not None}
        if len(passed) == 1:
            return done(
                passed[0],
                RULE_CHAIN_PASS,
                passed,
                f"{passed[0]} is the newest revision an earlier run in the chain judged pass",
            )
        if len(times) == len(passed):
            ordered = sorted(passed, key=lambda r: times[r], reverse=True)
            if times[ordered[0]] != times[ordered[1]]:
                return done(
                    ordered[0],
                    RULE_CHAIN_PASS,
                    ordered,
                    f"{ordered[0]} is the newest revision an earlier run in the chain judged pass",
                )
        return done(
            None,
            RULE_REFUSED,
            passed,
            "earlier runs judged several revisions pass and their order is unknown "
            f"({', '.join(passed)}): name one with --param rollback_to=REV",
        )
    if passed_in_chain:
        notes.append("no revision an earlier run judged pass can take traffic")

    # 3. The operator's explicit choice.
    if explicit:
        if why := why_not(explicit):
            excluded.setdefault(explicit, why)
            return done(
                None,
                RULE_REFUSED,
                _fallback(revisions, why_not),
                f"rollback_to={explicit} refused: {why}",
            )
        return done(explicit, RULE_EXPLICIT, [explicit], f"{explicit} was named by rollback_to")

    candidates = _fallback(revisions, why_not)
    context = f" ({'; '.join(notes)})" if notes else ""
    if candidates:
        hint = f"candidates: {', '.join(candidates)}; name one with --param rollback_to=REV"
    else:
        hint = "no other revision is ready and unblemished: fix forward instead"
    return done(
        None,
        RULE_REFUSED,
        candidates,
        "no evidence names a rollback target: no revision served before a deploy in "
        f"this run and no earlier run judged one pass{context}; {hint}",
    )


def _fallback(revisions: Sequence[RevisionFacts], why_not: Callable[[str], str]) -> list[str]:
    """Ready revisions that may take traffic, newest first (for a person to pick from)."""
    ordered = sorted(
        revisions,
        key=lambda r: r.create_time.timestamp() if r.create_time else 0.0,
        reverse=True,
    )
    return [r.name for r in ordered if not why_not(r.name)]
