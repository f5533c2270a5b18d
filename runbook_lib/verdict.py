"""Judging a run: pure functions from typed phase records to gates, verdict and recommendation.

The runner executes notebooks; after each one it asks :func:`next_action` what to do with
the next phase, and at the end :func:`judge` turns the phase records and notebook
outcomes into the verdict and the recommendation. Nothing here reads or writes files:
``evidence.py`` loads ``phases/NN.json`` into :class:`PhaseRecord` and writes the record.

Gates (SPEC section 5):

- the deploy phase failed (a ``deploy.*`` check failed or its notebook errored): the
  validation phases 3, 4, 5 and 7 are skipped and the recommendation is rollback;
- the rollback phase (6) runs when asked for with ``--phases``, or when the run
  recommends a rollback and mutations are approved: in its slot after phase 5, or
  at the end when only a later phase (monitoring, 7) found the failure; otherwise
  the rollback is reported as pending with the exact command;
- a run cut short by a signal is ``interrupted``: the recommendation is to hold, and
  every mutation already made is listed.
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .checks.causes import NO_WS_IMPLEMENTATION
from .phases import DEPLOY_PHASE, ROLLBACK_PHASE, VALIDATION_PHASES
from .redaction import redact
from .results import CheckResult, Recommendation, Status

__all__ = [
    "Action",
    "Coverage",
    "Judgement",
    "PhaseOutcome",
    "PhaseRecord",
    "RunPlan",
    "coverage",
    "deploy_applied",
    "deploy_failed",
    "judge",
    "next_action",
    "phase_checks",
    "phase_status",
    "recommend",
    "rollback_command",
    "settle",
    "verdict_of",
    "worst",
]

_BAD = (Status.FAIL, Status.ERROR)
INTERRUPTED = "interrupted"


@dataclass(frozen=True, slots=True)
class PhaseOutcome:
    """How one phase's notebook ended, as seen by the runner.

    Attributes:
        phase: 1-7.
        notebook: notebook file name.
        status: ``pass``, ``fail``, ``error`` (notebook raised, timed out, kernel died),
            ``skipped`` (not executed; ``reason`` says why) or ``interrupted`` (a signal
            stopped the run while this phase ran).
        duration_s: wall time including kernel start.
        reason: why it errored, was skipped or interrupted.
        cell_index: failing cell (index in the executed notebook), when known.
    """

    phase: int
    notebook: str
    status: str
    duration_s: float = 0.0
    reason: str = ""
    cell_index: int | None = None

    def to_record(self) -> dict[str, Any]:
        """The ``results.json`` phase entry (public keys first)."""
        rec: dict[str, Any] = {
            "phase": self.phase,
            "notebook": self.notebook,
            "status": self.status,
            "duration_s": round(self.duration_s, 3),
        }
        if self.reason:
            rec["reason"] = redact(self.reason)
        if self.cell_index is not None:
            rec["cell_index"] = self.cell_index
        return rec


@dataclass(frozen=True, slots=True)
class PhaseRecord:
    """What one phase notebook persisted (``phases/NN.json``), typed.

    Attributes:
        phase: 1-7.
        checks: the check results, in the order the steps recorded them.
        artifacts: step artifacts (``dry_run``, ``previous_revision``, ``mutations``...).
        figures: relative paths of the figures drawn.
        unreadable: why the file could not be read ('' when it could).
    """

    phase: int
    checks: tuple[CheckResult, ...] = ()
    artifacts: Mapping[str, Any] = field(default_factory=dict)
    figures: tuple[str, ...] = ()
    unreadable: str = ""

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any], phase: int | None = None) -> PhaseRecord:
        """Build from a ``phases/NN.json`` document (or a dict of the same shape)."""
        artifacts = doc.get("artifacts") or {}
        return cls(
            phase=int(doc.get("phase", phase or 0)),
            checks=tuple(CheckResult.from_record(c) for c in doc.get("checks") or []),
            artifacts=dict(artifacts) if isinstance(artifacts, Mapping) else {},
            figures=tuple(str(f) for f in doc.get("figures") or []),
            unreadable=str(doc.get("unreadable") or ""),
        )

    @property
    def deployed(self) -> bool:
        """True when the phase ran a real (approved) mutation, not a dry run."""
        return self.artifacts.get("dry_run", True) is False

    def mutations(self) -> list[dict[str, Any]]:
        """Mutations claimed by the phase (``context.PhaseContext.claim_mutation``).

        A claim still ``started`` is completed from the phase's own evidence when the
        step got that far (the operation its check observed, the revision artifact),
        so a step that does not report back on the claim still leaves a full record.
        """
        raw = self.artifacts.get("mutations") or []
        out = []
        for m in raw:
            if not isinstance(m, Mapping):
                continue
            entry = dict(m, phase=self.phase)
            rule = _MUTATION_EVIDENCE.get(str(entry.get("key")))
            if rule is not None and entry.get("state") == "started":
                op_check, ok_check, revision_key = rule
                by_id = {c.id: c for c in self.checks}
                op = by_id.get(op_check)
                if op is not None and isinstance(op.observed, str) and op.observed:
                    entry.setdefault("operation", op.observed)
                revision = self.artifacts.get(revision_key)
                if revision:
                    entry.setdefault("revision", str(revision))
                ok = by_id.get(ok_check)
                if ok is not None and ok.status != Status.SKIP:
                    entry["state"] = "done" if ok.status == Status.PASS else "failed"
            out.append(entry)
        return out


# mutation key -> (check observing the operation, check judging success, revision artifact)
_MUTATION_EVIDENCE: dict[str, tuple[str, str, str]] = {
    "deploy": ("deploy.executed", "deploy.operation_succeeded", "deployed_revision"),
    "rollback": ("", "rollback.traffic_moved", "rollback_target"),
}


AnyRecord = PhaseRecord | Mapping[str, Any]


def _record(rec: AnyRecord | None) -> PhaseRecord | None:
    if rec is None or isinstance(rec, PhaseRecord):
        return rec
    return PhaseRecord.from_doc(rec) if rec else None


def _records(records: Mapping[int, AnyRecord]) -> dict[int, PhaseRecord]:
    out: dict[int, PhaseRecord] = {}
    for phase, rec in records.items():
        typed = _record(rec)
        if typed is not None:
            out[phase] = typed
    return out


def phase_checks(record: AnyRecord | None) -> list[CheckResult]:
    """The check results of one phase record (typed or a ``phases/NN.json`` dict)."""
    typed = _record(record)
    return list(typed.checks) if typed is not None else []


def worst(checks: Iterable[CheckResult]) -> Status:
    """Most severe status among ``checks``, with ``warn`` and ``skip`` folded into pass.

    This is the one severity fold of the package: a phase passes unless a check in it
    failed (``fail``) or could not run (``error``).
    """
    statuses = {c.status for c in checks}
    if Status.ERROR in statuses:
        return Status.ERROR
    if Status.FAIL in statuses:
        return Status.FAIL
    return Status.PASS


def phase_status(checks: Sequence[CheckResult]) -> str:
    """A completed phase's status from its checks: ``error``, ``fail``, ``skip`` or ``pass``.

    A phase whose checks were all skipped (declared not applicable, absent configuration,
    dry run) proved nothing: it is ``skip``, not ``pass``.
    """
    status = worst(checks)
    if status is not Status.PASS:
        return str(status)
    if checks and all(c.status == Status.SKIP for c in checks):
        return "skip"
    return "pass"


def settle(outcome: PhaseOutcome, record: AnyRecord | None) -> PhaseOutcome:
    """A completed notebook's outcome judged by its checks: ``pass``, ``fail`` or ``skip``.

    A check that errored (target unreachable, API 500) is a failed gate, not a notebook
    error: the outcome's ``error`` means the notebook did not complete (exit 3). A phase
    whose every check was skipped is ``skip``.
    """
    typed = _record(record)
    if outcome.status != "pass" or typed is None:
        return outcome
    status = phase_status(typed.checks)
    status = "fail" if status == "error" else status
    return PhaseOutcome(outcome.phase, outcome.notebook, status, outcome.duration_s)


@dataclass(frozen=True, slots=True)
class Coverage:
    """How much of the catalog a verdict rests on.

    Attributes:
        judged: counted checks that ran on evidence (pass, warn, fail, error).
        skipped: counted checks that were skipped.
        not_applicable: of the skipped, those the environment declares not applicable.
    """

    judged: int
    skipped: int
    not_applicable: int = 0

    @property
    def words(self) -> str:
        """``19 judged, 20 skipped (12 declared not applicable)``."""
        text = f"{self.judged} judged, {self.skipped} skipped"
        if self.not_applicable and self.not_applicable == self.skipped:
            text = f"{self.judged} judged, {self.skipped} not applicable"
        elif self.not_applicable:
            text += f" ({self.not_applicable} declared not applicable)"
        return text

    def to_record(self) -> dict[str, int]:
        """The ``results.json`` ``coverage`` entry."""
        return {
            "judged": self.judged,
            "skipped": self.skipped,
            "not_applicable": self.not_applicable,
        }


def coverage(counted: Iterable[CheckResult], not_applicable: Iterable[str] = ()) -> Coverage:
    """How many of the ``counted`` checks were judged and how many skipped."""
    declared = set(not_applicable)
    checks = list(counted)
    skipped = [c for c in checks if c.status == Status.SKIP]
    return Coverage(
        judged=len(checks) - len(skipped),
        skipped=len(skipped),
        not_applicable=sum(1 for c in skipped if c.id in declared),
    )


def deploy_applied(records: Mapping[int, AnyRecord]) -> bool:
    """True when phase 2 really deployed (approved, not a dry run): phase 1 is then superseded."""
    rec = _record(records.get(DEPLOY_PHASE))
    if rec is None or not rec.deployed:
        return False
    return any(c.id == "deploy.executed" and c.status == Status.PASS for c in rec.checks)


def deploy_failed(record: AnyRecord | None, outcome: PhaseOutcome | None = None) -> bool:
    """True when a ``deploy.*`` check failed or errored, or the deploy notebook errored."""
    if outcome is not None and outcome.status == "error":
        return True
    return any(c.id.startswith("deploy.") and c.status in _BAD for c in phase_checks(record))


def verdict_of(
    counted: Iterable[CheckResult],
    outcomes: Iterable[PhaseOutcome],
    *,
    safe_to_share: bool = True,
    interrupted: str = "",
) -> str:
    """``error`` if a secret leaked, ``interrupted`` if a signal stopped the run, ``error``
    if a check or notebook errored, ``fail`` if a check failed, else ``pass``.

    Args:
        interrupted: where a signal stopped the run ('' = it was not), e.g. while sealing.
    """
    counted = list(counted)
    outcomes = list(outcomes)
    if not safe_to_share:
        return "error"
    if interrupted or any(o.status == INTERRUPTED for o in outcomes):
        return INTERRUPTED
    if any(o.status == "error" for o in outcomes) or any(c.status == Status.ERROR for c in counted):
        return "error"
    if any(c.status == Status.FAIL for c in counted):
        return "fail"
    return "pass"


def rollback_command(environment: str, target: str | None) -> str:
    """The exact command that performs a pending rollback."""
    env = f" --env {shlex.quote(environment)}" if environment else ""
    to = f" --param rollback_to={shlex.quote(target)}" if target else ""
    return f"runbook run{env} --approve --phases 6{to}"


def _mutation_words(records: Mapping[int, PhaseRecord]) -> str:
    done = []
    for phase in sorted(records):
        for m in records[phase].mutations():
            what = str(m.get("key", "mutation"))
            if m.get("what"):
                what += f" {m['what']}"
            extra = [f"{k} {m[k]}" for k in ("operation", "revision") if m.get(k)]
            state = str(m.get("state", "started"))
            done.append(f"{what} ({state}{', ' + ', '.join(extra) if extra else ''})")
    return ", ".join(done)


def recommend(
    counted: Sequence[CheckResult],
    records: Mapping[int, AnyRecord],
    outcomes: Sequence[PhaseOutcome],
    *,
    interrupted: str = "",
) -> Recommendation:
    """``none`` when all gates pass; ``rollback`` after a deploy that left failures; else ``hold``.

    The rollback target is the ``previous_revision`` artifact of phase 2 (the
    revision that served before the deploy). An interrupted run always holds: its
    evidence is incomplete, and the mutations it already made are named.
    """
    typed = _records(records)
    stopped = [o for o in outcomes if o.status == INTERRUPTED]
    if stopped or interrupted:
        where = (
            f"phase {stopped[0].phase} ({stopped[0].reason or 'signal'})"
            if stopped
            else interrupted
        )
        made = _mutation_words(typed)
        return Recommendation(
            "hold",
            f"the run was interrupted during {where}: the evidence is incomplete; "
            + (
                f"mutations already made: {made}; check the service before re-running"
                if made
                else "no mutation was made"
            ),
            None,
            tuple(c.id for c in counted if c.status in _BAD),
        )
    failed = [c.id for c in counted if c.status in _BAD and c.phase != ROLLBACK_PHASE]
    errored = [
        f"phase {o.phase} ({o.reason or 'notebook error'})"
        for o in outcomes
        if o.status == "error" and o.phase != ROLLBACK_PHASE
    ]
    if not failed and not errored:
        return Recommendation("none", "all gates passed")
    what = ", ".join(failed + errored)
    rec2 = typed.get(DEPLOY_PHASE)
    attempted = (
        rec2 is not None
        and rec2.deployed
        and any(c.id == "deploy.executed" and c.status != Status.SKIP for c in rec2.checks)
    )
    target = (rec2.artifacts.get("previous_revision") if rec2 else None) or None
    rollback_note = ""
    rec6 = typed.get(ROLLBACK_PHASE)
    previous, target = target, _safe_target(typed, target)
    if previous and not target and not (rec6 and rec6.artifacts.get("rollback_rule")):
        rollback_note += f"; {previous} served before the deploy but this run saw it failing"
    if rec6 is not None:
        moved = [c for c in rec6.checks if c.id == "rollback.traffic_moved"]
        if moved:
            rollback_note = f"; rollback step {moved[0].status}: {moved[0].detail}"
        bad6 = [c.id for c in rec6.checks if c.status in _BAD]
        if bad6:
            rollback_note += f"; the rollback itself failed ({', '.join(bad6)}): escalate"
    if attempted and target:
        return Recommendation(
            "rollback", f"failed after deploy: {what}{rollback_note}", str(target), tuple(failed)
        )
    if attempted:
        return Recommendation(
            "hold",
            f"failed after deploy: {what}; no previous revision is known to roll back "
            f"to: investigate before sending more traffic{rollback_note}",
            None,
            tuple(failed),
        )
    # A diagnosis that redeploying cannot fix is named (phase 1's refused upgrades).
    causes = {c.data.get("cause") for c in counted if c.status in _BAD}
    # One cause per run: the one the upgrade checks diagnosed, in their words.
    diagnosed = next(
        (
            str(c.data["cause_words"])
            for c in counted
            if c.status in _BAD and isinstance(c.data.get("cause_words"), str)
        ),
        "",
    )
    fix = (
        diagnosed
        or (NO_WS_IMPLEMENTATION if "no_ws_implementation" in causes else "")
        or "fix the cause before deploying"
    )
    return Recommendation(
        "hold",
        f"failed: {what}; no deploy ran in this run, so there is nothing to roll back: {fix}",
        None,
        tuple(failed),
    )


def _safe_target(records: Mapping[int, PhaseRecord], previous: str | None) -> str | None:
    """The rollback target by SPEC 9's evidence: phase 6's choice when it chose (None when
    it refused, or its target failed on its tag URL), else ``previous`` unless this run
    saw that revision failing."""
    from .rollback_rule import evidence_from_records

    rec6 = records.get(ROLLBACK_PHASE)
    if rec6 is not None and rec6.artifacts.get("rollback_rule"):
        refused = any(c.id == "rollback.target_verified" and c.status in _BAD for c in rec6.checks)
        return None if refused else str(rec6.artifacts.get("rollback_target") or "") or None
    docs = {
        p: {"checks": [c.to_record() for c in r.checks], "artifacts": dict(r.artifacts)}
        for p, r in records.items()
    }
    seen = evidence_from_records(docs).failed
    return None if previous and previous in seen else previous


def rollback_performed(records: Mapping[int, AnyRecord]) -> bool:
    """True when phase 6 moved traffic (``rollback.traffic_moved`` passed)."""
    return any(
        c.id == "rollback.traffic_moved" and c.status == Status.PASS
        for c in phase_checks(records.get(ROLLBACK_PHASE))
    )


@dataclass(frozen=True, slots=True)
class Judgement:
    """Everything :func:`judge` decides about a run.

    Attributes:
        checks: every check, in phase order, plus ``runner.phase_NN`` for notebooks that
            did not complete and the extra (run-level) checks.
        counted: the checks that count toward the verdict (not superseded).
        superseded: phases whose findings a deploy superseded (``{1}`` or empty).
        verdict: ``pass``, ``fail``, ``error`` or ``interrupted``.
        recommendation: the recommendation.
        phases: the outcomes with completed phases re-judged from their checks.
        rollback_pending: a rollback is recommended but traffic was not moved.
        mutations: every mutation the phases recorded (claims, operations, revisions).
    """

    checks: tuple[CheckResult, ...]
    counted: tuple[CheckResult, ...]
    superseded: frozenset[int]
    verdict: str
    recommendation: Recommendation
    phases: tuple[PhaseOutcome, ...]
    rollback_pending: bool = False
    mutations: tuple[dict[str, Any], ...] = ()


def judge(
    records: Mapping[int, AnyRecord],
    outcomes: Sequence[PhaseOutcome],
    *,
    extra_checks: Sequence[CheckResult] = (),
    safe_to_share: bool = True,
    interrupted: str = "",
) -> Judgement:
    """The verdict and recommendation of a run from its phase records and outcomes.

    Args:
        interrupted: where a signal stopped the run ('' = it was not).
    """
    typed = _records(records)
    superseded = frozenset({1} if deploy_applied(typed) else ())
    checks: list[CheckResult] = []
    for phase in sorted(typed):
        checks += typed[phase].checks
    # A notebook that did not complete is a failed gate in itself: record it so CI shows it.
    for o in outcomes:
        if o.status in ("error", INTERRUPTED):
            where = f" at cell {o.cell_index}" if o.cell_index is not None else ""
            checks.append(
                CheckResult(
                    f"runner.phase_{o.phase:02d}",
                    o.phase,
                    Status.ERROR,
                    observed=o.reason,
                    detail=f"{o.notebook} did not complete{where}: {o.reason}",
                    duration_s=o.duration_s,
                )
            )
    checks += list(extra_checks)
    counted = [c for c in checks if c.phase not in superseded]
    verdict = verdict_of(counted, outcomes, safe_to_share=safe_to_share, interrupted=interrupted)
    rec = recommend(counted, typed, outcomes, interrupted=interrupted)
    phases = []
    for o in outcomes:
        if o.status in ("pass", "fail", "skip") and o.phase in typed:
            status = phase_status(typed[o.phase].checks)
            o = PhaseOutcome(o.phase, o.notebook, status, o.duration_s, o.reason, o.cell_index)
        phases.append(o)
    mutations = tuple(m for p in sorted(typed) for m in typed[p].mutations())
    return Judgement(
        checks=tuple(checks),
        counted=tuple(counted),
        superseded=superseded,
        verdict=verdict,
        recommendation=rec,
        phases=tuple(phases),
        rollback_pending=rec.action == "rollback" and not rollback_performed(typed),
        mutations=mutations,
    )


@dataclass(frozen=True, slots=True)
class RunPlan:
    """What the run was asked to execute.

    Attributes:
        requested: the phases asked for (sorted).
        explicit: true when ``--phases`` named them (then exactly those run).
        approved: mutations allowed (``--approve`` or the environment's ``auto_approve``).
    """

    requested: tuple[int, ...]
    explicit: bool = False
    approved: bool = False

    @property
    def conditional_rollback(self) -> bool:
        """Phase 6 joins the run only when a rollback is recommended (and approved)."""
        return ROLLBACK_PHASE not in self.requested and not self.explicit

    @property
    def order(self) -> tuple[int, ...]:
        """The phases in execution order.

        The conditional rollback has two slots: its own (after phase 5) and a late one
        at the end, for a failure that only the phases after it (monitoring) found.
        It runs at most once: :func:`next_action` omits a phase already decided.
        """
        if not self.conditional_rollback:
            return tuple(sorted(self.requested))
        return (*sorted({*self.requested, ROLLBACK_PHASE}), ROLLBACK_PHASE)


@dataclass(frozen=True, slots=True)
class Action:
    """What to do with the next phase.

    Attributes:
        kind: ``run``; ``skip`` (recorded as ``status`` with ``reason``); or ``omit``
            (a conditional phase that is not part of this run at all).
        reason: why it is skipped or omitted.
        status: the phase status to record for a skip (``skipped``; ``error`` when
            the deadline cut it off, since missing evidence is not a passed gate).
        added: true when the phase was not in the requested plan (the conditional
            rollback): the progress counter grows by one.
    """

    kind: str
    reason: str = ""
    status: str = "skipped"
    added: bool = False


def next_action(
    plan: RunPlan,
    phase: int,
    records: Mapping[int, AnyRecord],
    outcomes: Sequence[PhaseOutcome],
    *,
    deadline_reason: str = "",
) -> Action:
    """Decide whether ``phase`` runs, given what the earlier phases produced.

    Args:
        plan: the run's plan.
        phase: the phase about to start.
        records: the phase records persisted so far.
        outcomes: the outcomes so far.
        deadline_reason: non-empty when the run deadline is reached (the runner's clock).
    """
    typed = _records(records)
    added = False
    if any(o.phase == phase for o in outcomes):
        return Action("omit", f"phase {phase} already ran or was skipped in this run")
    if phase == ROLLBACK_PHASE and plan.conditional_rollback:
        judged = judge(typed, outcomes)
        if judged.recommendation.action != "rollback":
            return Action("omit", "no rollback recommended")
        added = True
        if not plan.approved:
            return Action(
                "skip",
                "rollback recommended but not approved: re-run with --approve --phases 6",
                added=True,
            )
    if deadline_reason:
        return Action("skip", deadline_reason, status="error", added=added)
    if phase in VALIDATION_PHASES:
        deploy_outcome = next((o for o in outcomes if o.phase == DEPLOY_PHASE), None)
        if deploy_outcome is not None and deploy_failed(typed.get(DEPLOY_PHASE), deploy_outcome):
            return Action("skip", "deploy failed: validation skipped, rollback recommended")
    return Action("run", added=added)
