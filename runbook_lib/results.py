"""Check results: plain, frozen data that every other module produces or reads."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

__all__ = [
    "RESULT_COLUMNS",
    "RESULT_COLUMNS_PUBLIC",
    "CheckResult",
    "Recommendation",
    "Status",
    "results_frame",
]


class Status(StrEnum):
    """Outcome of one check.

    ``skip`` is only for absent configuration and dry runs; evidence that could
    not be gathered at run time is ``fail`` or ``error``.
    """

    PASS = "pass"
    WARN = "warn"
    SKIP = "skip"
    FAIL = "fail"
    ERROR = "error"


# Severity order of the statuses (for sorting displays). The one fold of a phase's
# statuses into pass/fail/error is ``runbook_lib.verdict.worst``.
_SEVERITY = {Status.PASS: 0, Status.SKIP: 1, Status.WARN: 2, Status.FAIL: 3, Status.ERROR: 4}


@dataclass(frozen=True, slots=True)
class CheckResult:
    """One check's verdict with the evidence behind it.

    Attributes:
        id: public check id from the catalog, e.g. ``ws.upgrade``.
        phase: phase number 1-7.
        status: pass, fail, warn, skip or error.
        observed: what was measured (number, string or small JSON-able value).
        threshold: what it was compared with, in words or a number.
        detail: one or two sentences a person can act on.
        duration_s: wall time the check took.
        data: extra JSON-able evidence (per-path statuses, samples summary...).
    """

    id: str
    phase: int
    status: Status
    observed: Any = None
    threshold: Any = None
    detail: str = ""
    duration_s: float = 0.0
    data: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "status", Status(self.status))

    @property
    def ok(self) -> bool:
        """True unless the status is fail or error."""
        return self.status not in (Status.FAIL, Status.ERROR)

    def with_duration(self, duration_s: float) -> CheckResult:
        """Copy with ``duration_s`` set."""
        return replace(self, duration_s=round(duration_s, 4))

    def to_record(self) -> dict[str, Any]:
        """JSON-able dict with the public ``results.json`` keys (plus ``data``)."""
        return {
            "id": self.id,
            "phase": self.phase,
            "status": str(self.status),
            "observed": _jsonable(self.observed),
            "threshold": _jsonable(self.threshold),
            "detail": self.detail,
            "duration_s": round(self.duration_s, 4),
            "data": _jsonable(self.data),
        }

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> CheckResult:
        """Inverse of :meth:`to_record`."""
        return cls(
            id=rec["id"],
            phase=int(rec["phase"]),
            status=Status(rec["status"]),
            observed=rec.get("observed"),
            threshold=rec.get("threshold"),
            detail=rec.get("detail", ""),
            duration_s=float(rec.get("duration_s") or 0.0),
            data=rec.get("data") or {},
        )


@dataclass(frozen=True, slots=True)
class Recommendation:
    """What the run recommends: ``none``, ``hold`` or ``rollback``."""

    action: str
    reason: str
    target_revision: str | None = None
    failed_checks: tuple[str, ...] = ()

    def to_record(self) -> dict[str, Any]:
        return {
            "action": self.action,
            "reason": self.reason,
            "target_revision": self.target_revision,
            "failed_checks": list(self.failed_checks),
        }


RESULT_COLUMNS = ["phase", "id", "status", "observed", "threshold", "detail", "duration_s"]
# The same columns in the order SPEC section 6 gives a results.json check entry.
RESULT_COLUMNS_PUBLIC = ["id", "phase", "status", "observed", "threshold", "detail", "duration_s"]


def results_frame(results: Iterable[CheckResult]) -> Any:
    """A pandas DataFrame of results: the one place the column names live."""
    import pandas as pd

    rows = [{k: r.to_record()[k] for k in RESULT_COLUMNS} for r in results]
    # object columns keep None as None: a float column would turn a missing threshold
    # into NaN, shown as "nan" beside the numbers of other rows.
    frame = pd.DataFrame(rows, columns=RESULT_COLUMNS, dtype=object)
    for col in ("observed", "threshold"):
        frame[col] = frame[col].map(_short)
    return frame


def _short(value: Any, limit: int = 120) -> str:
    if value is None or (isinstance(value, float) and value != value):  # None or NaN
        return ""
    text = value if isinstance(value, str) else repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [_jsonable(v) for v in value]
    if isinstance(value, StrEnum):
        return str(value)
    return str(value)
