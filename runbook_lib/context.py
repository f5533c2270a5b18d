"""The phase context a notebook opens, and the report each step returns.

A notebook's first code cell after the imports calls :func:`open_phase`; every
step function takes the returned :class:`PhaseContext`, records its check
results in it and returns a :class:`StepReport` that Jupyter displays as a
table (and figure). When ``run_dir`` is set, results are persisted after every
step to ``<run_dir>/phases/<NN>.json`` so a notebook that dies half-way still
leaves the evidence gathered so far.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .checks.catalog import applicability
from .checks.causes import RunCause, carry_cause, run_cause
from .exceptions import ApprovalRequired, ConfigError
from .identity import bind_run
from .phases import PHASES, phase_file
from .redaction import redact, redact_obj
from .results import CheckResult, Status, results_frame
from .settings import Settings
from .settings_load import load_settings

__all__ = ["Mutation", "PhaseContext", "StepReport", "open_phase"]

log = logging.getLogger(__name__)


@dataclass
class StepReport:
    """What one step shows: its check results, a table, and optionally a figure."""

    title: str
    results: list[CheckResult]
    table: Any = None
    figure: Any = None
    note: str = ""
    # The figure's title as a person reads it ("Load latency: histogram and CDF").
    caption: str = ""

    def frame(self) -> Any:
        """The results as a DataFrame (see :func:`results_frame`)."""
        return results_frame(self.results)

    def _repr_html_(self) -> str:
        parts = [f"<h4>{_esc(self.title)}</h4>"]
        if self.note:
            parts.append(f"<p>{_esc(redact(self.note))}</p>")
        if self.results:
            parts.append(_style_results(self.frame()))
        if self.table is not None and hasattr(self.table, "to_html"):
            parts.append(_table_html(self.table))
        if self.figure is not None:
            parts.append(_figure_html(self.figure, self.caption or self.title))
        return "\n".join(parts)

    def __repr__(self) -> str:
        lines = [self.title]
        lines += [f"  {r.status:5} {r.id}: {r.detail}" for r in self.results]
        return redact("\n".join(lines))


@dataclass
class PhaseContext:
    """State of one phase notebook: settings, approval, results so far."""

    phase: int
    settings: Settings
    run_dir: Path | None
    approve: bool
    started_at: str = field(default_factory=lambda: datetime.now(UTC).isoformat())
    results: list[CheckResult] = field(default_factory=list)
    artifacts: dict[str, Any] = field(default_factory=dict)
    figures: list[str] = field(default_factory=list)
    _mutations_done: set[str] = field(default_factory=set)
    _t0: float = field(default_factory=time.monotonic)

    @property
    def approved(self) -> bool:
        """True when mutating steps may run (``approve`` or the sandbox's ``auto_approve``)."""
        return self.approve or self.settings.auto_approve

    def claim_mutation(self, key: str, what: str = "") -> Mutation:
        """Mark mutating step ``key`` as run and persist the intent; a second claim refuses.

        Call it immediately before the API call; call :meth:`Mutation.done` on the
        returned handle right after, with the operation and revision names. ``what``
        says in words which change this is when a step makes several (each traffic step
        of a staged shift, the restore, a tag removed); each is its own claim.

        Raises:
            ApprovalRequired: the step already ran in this context (re-executed cell).
        """
        claim = f"{key}: {what}" if what else key
        if claim in self._mutations_done:
            raise ApprovalRequired(
                f"{claim} already ran in this phase; re-run the notebook from the top "
                "(open_phase) to approve it again"
            )
        self._mutations_done.add(claim)
        # Persisted before the API call, so a kernel killed mid-mutation still leaves
        # the record that the mutation was started (the run folder names it).
        entry: dict[str, Any] = {
            "key": key,
            **({"what": what} if what else {}),
            "state": "started",
            "started_at": datetime.now(UTC).isoformat(),
        }
        self.artifacts.setdefault("mutations", []).append(entry)
        self.persist()
        return Mutation(self, entry)

    def record(self, report: StepReport) -> StepReport:
        """Add a step's results (replacing earlier ones with the same id) and persist.

        A check the environment declares not applicable is recorded ``skip`` with the
        user's reason, whatever the step produced (SPEC section 8).
        """
        cause = self.run_cause()
        report.results = [carry_cause(_applicable(r, self.settings), cause) for r in report.results]
        for r in report.results:
            found = run_cause(r)
            if found is not None:
                self.artifacts["ws_cause"] = found.to_record()
        ids = {r.id for r in report.results}
        self.results = [r for r in self.results if r.id not in ids] + list(report.results)
        if report.figure is not None:
            self.save_figure(
                report.figure, _slug(report.title), caption=report.caption or report.title
            )
        self.persist()
        return report

    def run_cause(self) -> RunCause | None:
        """The cause of refused upgrades this run diagnosed: this phase's, else phase 3's,
        else phase 1's unless a deploy since then changed what serves."""
        own = RunCause.from_record(self.artifacts.get("ws_cause"))
        if own is not None or self.run_dir is None:
            return own
        for phase in (3, 1):
            if phase >= self.phase:
                continue
            if (
                phase == 1
                and self.phase > 2
                and _artifacts(self.run_dir, 2).get("dry_run") is False
            ):
                return None
            found = RunCause.from_record(_artifacts(self.run_dir, phase).get("ws_cause"))
            if found is not None:
                return found
        return None

    def save_figure(self, fig: Any, name: str, caption: str = "") -> str | None:
        """Save a matplotlib figure as ``figures/pNN-<name>.png`` in the run folder; its
        ``caption`` travels in the PNG's ``Title`` text (``index.html`` shows it)."""
        if self.run_dir is None:
            return None
        rel = f"figures/p{self.phase:02d}-{name}.png"
        path = self.run_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        meta = {"Title": caption} if caption else {}
        fig.savefig(path, dpi=110, bbox_inches="tight", metadata=meta)
        if rel not in self.figures:
            self.figures.append(rel)
        return rel

    def persist(self) -> None:
        """Write ``phases/<NN>.json`` (no-op without a run folder)."""
        if self.run_dir is None:
            return
        path = phase_file(self.run_dir, self.phase)
        path.parent.mkdir(parents=True, exist_ok=True)
        doc = {
            "phase": self.phase,
            "notebook": PHASES[self.phase][0],
            "started_at": self.started_at,
            "updated_at": datetime.now(UTC).isoformat(),
            "elapsed_s": round(time.monotonic() - self._t0, 3),
            "checks": [r.to_record() for r in self.results],
            "artifacts": self.artifacts,
            "figures": self.figures,
        }
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(redact_obj(doc), indent=2, default=str), encoding="utf-8")
        tmp.replace(path)


@dataclass
class Mutation:
    """A claimed mutation; :meth:`done` records its operation and revision at once."""

    ctx: PhaseContext
    entry: dict[str, Any]

    def done(
        self,
        *,
        operation: str = "",
        revision: str = "",
        succeeded: bool = True,
        error: str = "",
        split: Mapping[str, int] | None = None,
    ) -> None:
        """Persist the mutation's outcome (operation name, revision, the traffic split it
        left) to ``phases/NN.json``."""
        self.entry.update(
            state="done" if succeeded else "failed",
            finished_at=datetime.now(UTC).isoformat(),
        )
        if operation:
            self.entry["operation"] = operation
        if revision:
            self.entry["revision"] = revision
        if error:
            self.entry["error"] = error
        if split:
            self.entry["split"] = ", ".join(f"{r} {p} %" for r, p in split.items())
        self.ctx.persist()


def open_phase(
    phase: int,
    *,
    environment: str,
    run_dir: str = "",
    approve: bool = False,
    overrides: dict[str, Any] | None = None,
    overrides_json: str = "",
) -> PhaseContext:
    """Load the environment and start phase ``phase``.

    Args:
        phase: 1-7.
        environment: environment name or TOML path.
        run_dir: run folder to persist into ('' = keep results in memory only).
        approve: allow mutating steps.
        overrides: dotted settings overrides, e.g. ``{"thresholds.hold_s": 5}``.
        overrides_json: the same as a JSON object string (what papermill passes).

    Raises:
        ConfigError: bad environment file or overrides.
    """
    if phase not in PHASES:
        raise ConfigError(f"unknown phase {phase}; phases are 1-7")
    merged = dict(overrides or {})
    if overrides_json and overrides_json.strip() not in ("", "{}"):
        try:
            parsed = json.loads(overrides_json)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"overrides_json is not valid JSON: {exc}") from exc
        if not isinstance(parsed, dict):
            raise ConfigError("overrides_json must be a JSON object of dotted keys")
        merged.update(parsed)
    settings = load_settings(environment, overrides=merged)
    rd = Path(run_dir) if run_dir else None
    if rd is not None:
        rd.mkdir(parents=True, exist_ok=True)
    bind_run(rd.name if rd is not None else None)
    ctx = PhaseContext(phase=phase, settings=settings, run_dir=rd, approve=approve)
    ctx.persist()
    return ctx


def _artifacts(run_dir: Path, phase: int) -> dict[str, Any]:
    """The artifacts another phase of the run persisted ({} when absent or unreadable)."""
    try:
        doc = json.loads(phase_file(run_dir, phase).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    artifacts = doc.get("artifacts") if isinstance(doc, dict) else None
    return artifacts if isinstance(artifacts, dict) else {}


def _applicable(result: CheckResult, settings: Settings) -> CheckResult:
    why = applicability(result.id, settings)
    if why is None or (result.status is Status.SKIP and result.detail == why):
        return result
    return replace(result, status=Status.SKIP, observed=None, threshold=None, detail=why, data={})


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in text.lower()).strip("-")[:40] or "figure"


def _esc(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


_COLORS = {
    "pass": "#d4edda",
    "fail": "#f8d7da",
    "error": "#f5c6cb",
    "warn": "#fff3cd",
    "skip": "#e2e3e5",
}


# JupyterLab right-aligns every table cell; text reads from the left.
_LEFT = ' style="text-align: left"'


def _cell(value: Any) -> str:
    """A table cell as a person reads it: no ``nan``/``None``, ``404`` not ``404.0``."""
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN: a missing value
            return ""
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
    if type(value).__name__ in ("NAType", "NaTType"):
        return ""
    return str(value)


def _table_html(frame: Any) -> str:
    """A step's table as HTML: blank missing cells, whole numbers as integers, and line
    breaks kept (a JSON body, an output tail) instead of run together or shown as ``\\n``."""
    head = "".join(f"<th{_LEFT}>{_esc(str(c))}</th>" for c in frame.columns)
    td = '<td style="white-space: pre-wrap; vertical-align: top; text-align: left">'
    rows = []
    for rec in frame.itertuples(index=False, name=None):
        cells = "".join(f"{td}{_esc(redact(_cell(v)))}</td>" for v in rec)
        rows.append(f"<tr>{cells}</tr>")
    return f'<table class="runbook-table"><tr>{head}</tr>{"".join(rows)}</table>'


def _style_results(frame: Any) -> str:
    rows = []
    for rec in frame.to_dict("records"):
        color = _COLORS.get(rec["status"], "#fff")
        cells = "".join(
            f'<td style="vertical-align: top; text-align: left">{_esc(redact(_cell(rec[c])))}</td>'
            for c in frame.columns
        )
        rows.append(f'<tr style="background:{color}">{cells}</tr>')
    head = "".join(f"<th{_LEFT}>{c}</th>" for c in frame.columns)
    return f'<table class="runbook-results"><tr>{head}</tr>{"".join(rows)}</table>'


def _figure_html(fig: Any, title: str = "figure") -> str:
    import base64
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    data = base64.b64encode(buf.getvalue()).decode()
    return (
        f'<p style="text-align: left"><b>Figure: {_esc(title)}</b></p>'
        f'<img alt="{_esc(title)}" src="data:image/png;base64,{data}"/>'
    )
