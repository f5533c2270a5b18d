"""Compare two run folders: status changes first, then numeric deltas with units.

``runbook compare RUN_A RUN_B`` (SPEC section 5). Phase 1 findings that a deploy
superseded (the incident as seen *before* remediation) are listed apart and never
counted as changes or regressions. Interrupted and partial runs compare too: a check
that one run did not reach is ``-`` on that side.
"""

from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .exceptions import ConfigError
from .manifest import RESULTS

__all__ = ["CheckDelta", "Comparison", "compare_runs", "unit_of"]

_BAD = ("fail", "error")


@dataclass(frozen=True, slots=True)
class CheckDelta:
    """One check in two runs: statuses, numeric observations and their difference.

    Attributes:
        id: the check id.
        status_a, status_b: its status in each run (None when absent).
        observed_a, observed_b: what each run observed.
        delta: ``observed_b - observed_a`` when both are numbers.
        unit: the unit of the observation (``s``, ``ms``, ``%``...), '' when unknown.
        superseded: the check belongs to a phase a deploy superseded in either run.
    """

    id: str
    status_a: str | None
    status_b: str | None
    observed_a: Any = None
    observed_b: Any = None
    delta: float | None = None
    unit: str = ""
    superseded: bool = False

    @property
    def scale(self) -> float:
        """Display factor: rates observed as fractions (0..1) are shown in %."""
        values = [
            abs(v) for v in (_number(self.observed_a), _number(self.observed_b)) if v is not None
        ]
        return 100.0 if self.unit == "%" and values and max(values) <= 1.0 else 1.0

    @property
    def relative(self) -> float | None:
        """``delta / |observed_a|`` (None when A is 0 or not a number): the sort key."""
        a = _number(self.observed_a)
        return None if self.delta is None or not a else self.delta / abs(a)

    @property
    def regression(self) -> bool:
        """``pass`` in A became ``fail`` or ``error`` in B (superseded findings excluded)."""
        return not self.superseded and self.status_a == "pass" and self.status_b in _BAD

    def to_record(self) -> dict[str, Any]:
        """JSON-able form (``runbook compare --json``)."""
        return {
            "id": self.id,
            "status_a": self.status_a,
            "status_b": self.status_b,
            "observed_a": self.observed_a,
            "observed_b": self.observed_b,
            "delta": self.delta,
            "unit": self.unit,
            "superseded": self.superseded,
            "regression": self.regression,
        }


@dataclass(frozen=True, slots=True)
class Comparison:
    """What :func:`compare_runs` found between run A and run B.

    Attributes:
        status_changes: checks whose status changed (not superseded), regressions first.
        numeric: numeric observations in both runs, largest relative change first.
        superseded_changes: status changes of superseded "before" findings (not counted).
        phase_durations: (phase, seconds in A, seconds in B).
    """

    run_a: str
    run_b: str
    verdict_a: str
    verdict_b: str
    status_changes: tuple[CheckDelta, ...] = ()
    numeric: tuple[CheckDelta, ...] = ()
    phase_durations: tuple[tuple[int, float | None, float | None], ...] = field(default=())
    superseded_changes: tuple[CheckDelta, ...] = ()

    @property
    def regressions(self) -> tuple[CheckDelta, ...]:
        """The ``pass`` -> ``fail``/``error`` changes."""
        return tuple(d for d in self.status_changes if d.regression)

    def to_record(self) -> dict[str, Any]:
        """JSON-able form (``runbook compare --json``)."""
        return {
            "run_a": self.run_a,
            "run_b": self.run_b,
            "verdict_a": self.verdict_a,
            "verdict_b": self.verdict_b,
            "regressions": [d.id for d in self.regressions],
            "status_changes": [d.to_record() for d in self.status_changes],
            "numeric": [d.to_record() for d in self.numeric],
            "superseded_changes": [d.to_record() for d in self.superseded_changes],
            "phase_durations": [
                {"phase": p, "a_s": a, "b_s": b} for p, a, b in self.phase_durations
            ],
        }


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


_UNIT = re.compile(r"(?<![A-Za-z])(ms|s|%|frames?|events?|sessions?)(?![A-Za-z])")

# What the catalog's checks observe when they observe a number. Rates are fractions
# (shown as %); counts and exit codes have no unit (never seconds).
_SECONDS = frozenset(
    {
        "http.latency",
        "ws.roundtrip",
        "e2e.agent_response",
        "chat.flow",
        "events.latency",
        "load.latency_p95",
        "monitor.avg_response",
        "monitor.hold",
        "tests.duration",
        "health.ready_within",
        "ws.health_ready_within",
        "rollback.smoke",
    }
)
_RATES = frozenset(
    {"load.success_rate", "isolation.sessions", "monitor.uptime", "monitor.ws_failure_rate"}
)
_COUNTS = ("tests.", "predeploy.", "evidence.", "health.no_5xx", "load.no_server", "monitor.ws_404")


def unit_of(check: dict[str, Any] | None) -> str:
    """The unit of a check's numeric observation: the catalog's, else its threshold text."""
    if not check:
        return ""
    cid = str(check.get("id", ""))
    if cid in _SECONDS:
        return "s"
    if cid in _RATES:
        return "%"
    if cid.startswith(_COUNTS):
        return ""
    threshold = check.get("threshold")
    if isinstance(threshold, str):
        m = _UNIT.search(threshold)
        if m:
            return m.group(1)
    return ""


def _load(run: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(run) / RESULTS
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(
            f"{run}: no {RESULTS} (not a run folder, or a run killed before it was sealed)"
        ) from exc
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{run}: unreadable {RESULTS}: {exc}") from exc
    if not isinstance(doc, dict) or not isinstance(doc.get("checks", []), list):
        raise ConfigError(f"{run}: {RESULTS} does not have the run record's shape")
    return doc


def _magnitude(d: CheckDelta) -> float:
    a = _number(d.observed_a) or 0.0
    delta = abs(d.delta or 0.0)
    return delta / abs(a) if a else delta


def _durations(doc: dict[str, Any]) -> dict[int, float | None]:
    out: dict[int, float | None] = {}
    for p in doc.get("phases") or []:
        if isinstance(p, dict) and isinstance(p.get("phase"), int):
            out[p["phase"]] = _number(p.get("duration_s"))
    return out


def compare_runs(run_a: str | os.PathLike[str], run_b: str | os.PathLike[str]) -> Comparison:
    """Check status changes and numeric (latency, duration) deltas from A to B.

    Raises:
        ConfigError: a folder has no readable ``results.json``.
    """
    a, b = _load(run_a), _load(run_b)
    sup_a = set(a.get("superseded_phases") or [])
    sup_b = set(b.get("superseded_phases") or [])
    checks_a = {c["id"]: c for c in a.get("checks", []) if isinstance(c, dict) and "id" in c}
    checks_b = {c["id"]: c for c in b.get("checks", []) if isinstance(c, dict) and "id" in c}
    changes: list[CheckDelta] = []
    before: list[CheckDelta] = []
    numeric: list[CheckDelta] = []
    for cid in list(dict.fromkeys([*checks_a, *checks_b])):
        ca, cb = checks_a.get(cid), checks_b.get(cid)
        superseded = (ca is not None and ca.get("phase") in sup_a) or (
            cb is not None and cb.get("phase") in sup_b
        )
        oa, ob = (ca or {}).get("observed"), (cb or {}).get("observed")
        na, nb = _number(oa), _number(ob)
        delta = nb - na if na is not None and nb is not None else None
        d = CheckDelta(
            cid,
            (ca or {}).get("status"),
            (cb or {}).get("status"),
            oa,
            ob,
            delta,
            unit_of(cb or ca),
            superseded,
        )
        if d.status_a != d.status_b:
            (before if superseded else changes).append(d)
        if delta is not None and not superseded:
            numeric.append(d)
    changes.sort(key=lambda d: not d.regression)
    numeric.sort(key=_magnitude, reverse=True)
    dur_a, dur_b = _durations(a), _durations(b)
    durations = tuple((p, dur_a.get(p), dur_b.get(p)) for p in sorted({*dur_a, *dur_b}))
    return Comparison(
        str(a.get("run_id", Path(run_a).name)),
        str(b.get("run_id", Path(run_b).name)),
        str(a.get("verdict", "?")),
        str(b.get("verdict", "?")),
        tuple(changes),
        tuple(numeric),
        durations,
        tuple(before),
    )
