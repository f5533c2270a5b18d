"""The evidence the rollback-target rule reads.

The rule itself, ``choose_rollback_target``, lives with the other Cloud Run judges
in :mod:`runbook_lib.checks.service`. This module turns run records into its inputs:

- :func:`evidence_from_records`: what one run's phase records (``phases/NN.json``)
  say: the split before its deploy, the revision it deployed, the revision each
  phase judged and the revisions it saw failing (with the checks that failed);
- :func:`chain_evidence`: the same for the earlier runs of the manifest chain
  (``.manifest-chain`` in the outputs folder) of the same environment, plus the
  revisions the runs that passed left serving;
- :func:`gather_evidence`: both, for the run folder a phase-6 notebook writes into.

Reading is bounded (the newest :data:`CHAIN_DEPTH` runs) and tolerant: an unreadable
or half-written record is skipped, never a crash; it is simply no evidence.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .manifest import CHAIN_FILE
from .phases import ROLLBACK_PHASE

__all__ = [
    "CHAIN_DEPTH",
    "RollbackEvidence",
    "RunEvidence",
    "chain_evidence",
    "evidence_from_records",
    "gather_evidence",
    "read_records",
]

# How many earlier runs of the chain are read (newest first).
CHAIN_DEPTH = 50
_BAD = ("fail", "error")
# Phase-1 checks that judge the revision serving (not the checkout or the split).
_REVISION_CHECKS_P1 = ("status.url_reachable", "health.backend", "ws.routes_probe")


@dataclass(frozen=True, slots=True)
class RunEvidence:
    """What one run's records say about revisions.

    Attributes:
        previous_split: the split before the run's deploy (empty when no deploy ran).
        deployed: the revision the deploy created ('' when none).
        failed: revision -> the failed checks that condemn it (``"phase 3: ws.upgrade"``).
        judged: the revision the run's last validation judged ('' when unknown).
    """

    previous_split: dict[str, int] = field(default_factory=dict)
    deployed: str = ""
    failed: dict[str, str] = field(default_factory=dict)
    judged: str = ""


@dataclass(frozen=True, slots=True)
class RollbackEvidence:
    """The rule's inputs: this run's record and the chain's."""

    previous_split: dict[str, int] = field(default_factory=dict)
    deployed: str = ""
    failed_seen: dict[str, str] = field(default_factory=dict)
    passed_in_chain: dict[str, str] = field(default_factory=dict)
    chain_runs_read: int = 0


def _checks(doc: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    checks = doc.get("checks")
    return [c for c in checks if isinstance(c, Mapping)] if isinstance(checks, list) else []


def _artifacts(doc: Mapping[str, Any] | None) -> Mapping[str, Any]:
    arts = (doc or {}).get("artifacts")
    return arts if isinstance(arts, Mapping) else {}


def _split(value: Any) -> dict[str, int]:
    if not isinstance(value, Mapping):
        return {}
    out: dict[str, int] = {}
    for rev, pct in value.items():
        if isinstance(rev, str) and rev and isinstance(pct, int | float) and pct > 0:
            out[rev] = int(pct)
    return out


def _only(split: Mapping[str, int]) -> str:
    """The revision serving everything ('' when traffic is split or nothing serves)."""
    return next(iter(split)) if len(split) == 1 else ""


def _bad_ids(doc: Mapping[str, Any], keep: Any = None) -> list[str]:
    return [
        str(c.get("id"))
        for c in _checks(doc)
        if c.get("status") in _BAD and (keep is None or keep(str(c.get("id", ""))))
    ]


def _note(failed: dict[str, str], rev: str, phase: int, ids: list[str]) -> None:
    if rev and ids:
        words = f"phase {phase}: {', '.join(sorted(ids)[:4])}"
        failed[rev] = f"{failed[rev]}; {words}" if rev in failed else words


def evidence_from_records(records: Mapping[int, Mapping[str, Any]]) -> RunEvidence:
    """What one run's phase records (phase -> ``phases/NN.json`` document) say (pure).

    Phase 1 judges the revision it found serving (``status.revision_identified``
    observed); phases 2-5 judge the revision the deploy created (the one serving when
    no deploy ran); phase 6's ``rollback.target_verified`` judges its target; phase 7
    judges the rollback target when phase 6 moved traffic before phase 7 opened, else
    the same as phases 2-5. Pre-deploy commands judge the checkout, not a revision.
    """
    p1 = records.get(1) or {}
    p1_split: dict[str, int] = {}
    for c in _checks(p1):
        if c.get("id") == "status.revision_identified":
            p1_split = _split(c.get("observed"))
    before_deploy = _only(p1_split)
    failed: dict[str, str] = {}
    _note(failed, before_deploy, 1, _bad_ids(p1, lambda i: i in _REVISION_CHECKS_P1))

    arts2 = _artifacts(records.get(2))
    deployed = ""
    previous_split: dict[str, int] = {}
    under_test = before_deploy  # no deploy ran: later phases judged what phase 1 found
    if arts2 and arts2.get("dry_run") is False:
        recorded = str(arts2.get("deployed_revision") or "")
        previous_split = _split(arts2.get("previous_split")) or _split(
            {str(arts2.get("previous_revision") or ""): 100}
        )
        # The image already served: the deploy made nothing new, the same revision was judged.
        deployed = "" if recorded in previous_split else recorded
        under_test = recorded  # '' when the deploy named no revision: nothing to condemn
    for phase in (2, 3, 4, 5):
        ids = _bad_ids(records.get(phase) or {}, lambda i: not i.startswith("predeploy."))
        _note(failed, under_test, phase, ids)

    judged = under_test
    p6, p7 = records.get(ROLLBACK_PHASE) or {}, records.get(7) or {}
    moved = any(
        c.get("id") == "rollback.traffic_moved" and c.get("status") == "pass" for c in _checks(p6)
    )
    target = str(_artifacts(p6).get("rollback_target") or "")
    # A target that failed its own verification (tag URL) is a revision seen failing.
    _note(failed, target, 6, _bad_ids(p6, lambda i: i == "rollback.target_verified"))
    if p7 and moved and target:
        started7 = str(p7.get("started_at") or "")
        moved_at = str(_artifacts(p6).get("rolled_back_at") or p6.get("updated_at") or "")
        if moved_at and started7 and moved_at <= started7:
            judged = target
    if p7:
        _note(failed, judged, 7, _bad_ids(p7))
    return RunEvidence(previous_split, deployed, failed, judged)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def read_records(run_dir: Path) -> dict[int, dict[str, Any]]:
    """The phase records of a run folder (phase -> document), unreadable ones left out."""
    out: dict[int, dict[str, Any]] = {}
    for phase in range(1, 8):
        doc = _read_json(run_dir / "phases" / f"{phase:02d}.json")
        if doc is not None:
            out[phase] = doc
    return out


def chain_evidence(
    out_dir: Path, environment: str, *, exclude: str = "", depth: int = CHAIN_DEPTH
) -> tuple[dict[str, str], dict[str, str], int]:
    """Revisions earlier chained runs of ``environment`` judged ``pass`` and saw failing.

    Returns:
        (revision -> the run that passed with it, revision -> why it failed, runs read).
    """
    chain = out_dir / CHAIN_FILE
    try:
        lines = chain.read_text(encoding="utf-8").splitlines()
    except OSError:
        return {}, {}, 0
    run_ids: list[str] = []
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        rid = entry.get("run_id") if isinstance(entry, dict) else None
        if (
            isinstance(rid, str)
            and rid
            and rid != exclude
            and "/" not in rid
            and rid not in run_ids
        ):
            run_ids.append(rid)
        if len(run_ids) >= depth:
            break
    passed: dict[str, str] = {}
    failed: dict[str, str] = {}
    read = 0
    for rid in run_ids:
        results = _read_json(out_dir / rid / "results.json")
        if results is None or results.get("environment") != environment:
            continue
        read += 1
        ev = evidence_from_records(read_records(out_dir / rid))
        for rev, why in ev.failed.items():
            failed.setdefault(rev, f"run {rid}: {why}")
        if results.get("verdict") == "pass" and ev.judged and ev.judged not in ev.failed:
            passed.setdefault(ev.judged, rid)
    return passed, failed, read


def gather_evidence(run_dir: Path | None, environment: str) -> RollbackEvidence:
    """This run's records and its chain's, for the phase-6 notebook writing into ``run_dir``.

    Without a run folder (a notebook walked interactively) there is no evidence: the
    rule then needs an explicit ``rollback_to``.
    """
    if run_dir is None:
        return RollbackEvidence()
    ev = evidence_from_records(read_records(run_dir))
    passed, chain_failed, read = chain_evidence(run_dir.parent, environment, exclude=run_dir.name)
    failed = dict(chain_failed)
    for rev, why in ev.failed.items():
        failed[rev] = f"this run: {why}"
    return RollbackEvidence(
        previous_split=ev.previous_split,
        deployed=ev.deployed,
        failed_seen=failed,
        passed_in_chain={r: rid for r, rid in passed.items() if r not in failed},
        chain_runs_read=read,
    )
