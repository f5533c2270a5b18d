"""The run folder: the archived, tamper-evident record of one runbook run.

Layout (SPEC section 6)::

    outputs/<UTC timestamp>-<env name>/
        NN_<phase>.ipynb / .html   executed notebooks (redacted) and their HTML export
        phases/NN.json             what each notebook persisted, step by step
        figures/*.png              the figures the steps drew
        results.json junit.xml summary.md index.html
        manifest.json              SHA-256 of every file + chain to the previous run
        UNSAFE_TO_SHARE            only when the final secret scan found something

This module does the folder's I/O: it creates the folder, reads the phase records,
exports notebooks, assembles ``results.json`` and seals the folder. The judging is
pure and lives in :mod:`runbook_lib.verdict`; the report writers in
:mod:`runbook_lib.reports`; the manifest chain and secret scan in
:mod:`runbook_lib.manifest`; run comparison in :mod:`runbook_lib.compare`.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .manifest import (
    RESULTS,
    SECRET_SCAN_ID,
    UNSAFE_MARKER,
    Leak,
    scan_secrets,
    write_manifest,
)
from .phases import PHASES, phase_file
from .redaction import redact, redact_obj
from .reports import write_reports
from .results import RESULT_COLUMNS_PUBLIC, CheckResult, Recommendation, Status
from .verdict import (
    PhaseOutcome,
    PhaseRecord,
    coverage,
    judge,
    rollback_command,
)

__all__ = [
    "RunContext",
    "RunEvidence",
    "build_results",
    "create_run_dir",
    "export_html",
    "finalize_run",
    "load_phase_records",
    "read_phase_record",
    "read_phase_records",
    "redact_notebook",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RunEvidence:
    """What :func:`finalize_run` produced."""

    run_dir: Path
    results: dict[str, Any]
    verdict: str
    recommendation: Recommendation
    safe_to_share: bool
    leaks: tuple[Leak, ...] = ()
    manifest_sha256: str = ""


@dataclass(frozen=True, slots=True)
class RunContext:
    """Run-level facts the record carries besides the phases.

    Attributes:
        environment_ref: how to name the environment in a command (the resolved path).
        warnings: configuration warnings (``Settings.warnings``).
        not_applicable: checks the environment declares not applicable (id -> reason).
        notes: what the runner told the operator (sandbox reuse, configuration).
        interrupted: ``{"signal": N, "during": "phase 3"}`` when a signal stopped the run.
    """

    environment_ref: str = ""
    warnings: tuple[str, ...] = ()
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    notes: tuple[str, ...] = ()
    interrupted: Mapping[str, Any] | None = None


# ------------------------------------------------------------------ folder


def create_run_dir(
    out_dir: str | os.PathLike[str], env_name: str, *, now: datetime | None = None
) -> Path:
    """Create ``<out_dir>/<UTC timestamp>-<env name>/`` atomically, never reusing one.

    Two runs starting in the same second get ``...-2``, ``...-3``: ``mkdir`` either
    creates the folder or fails, so no two processes can both own it.
    """
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    safe_env = re.sub(r"[^A-Za-z0-9_.-]", "_", env_name) or "env"
    base = f"{stamp}-{safe_env}"
    for n in range(1, 10_000):
        path = root / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"no free run folder name under {root} for {base}")


def _read_doc(run_dir: str | os.PathLike[str], phase: int) -> dict[str, Any] | None:
    path = phase_file(run_dir, phase)
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        return doc
    except (OSError, ValueError) as exc:
        log.warning("unreadable %s: %s", path, exc)
        return {
            "phase": phase,
            "checks": [],
            "artifacts": {},
            "figures": [],
            "unreadable": str(exc),
        }


def read_phase_record(run_dir: str | os.PathLike[str], phase: int) -> PhaseRecord | None:
    """The typed record ``phases/NN.json`` holds (None when the phase persisted nothing)."""
    doc = _read_doc(run_dir, phase)
    if doc is None:
        return None
    try:
        return PhaseRecord.from_doc(doc, phase)
    except (KeyError, TypeError, ValueError) as exc:
        log.warning("malformed phase record %s: %s", phase_file(run_dir, phase), exc)
        return PhaseRecord(phase, unreadable=f"malformed: {exc}")


def load_phase_records(run_dir: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """The ``phases/NN.json`` documents persisted by the notebooks, by phase number."""
    out: dict[int, dict[str, Any]] = {}
    for phase in PHASES:
        doc = _read_doc(run_dir, phase)
        if doc is not None:
            out[phase] = doc
    return out


def read_phase_records(run_dir: str | os.PathLike[str]) -> dict[int, PhaseRecord]:
    """Every typed phase record in the folder, by phase number."""
    out: dict[int, PhaseRecord] = {}
    for phase in PHASES:
        rec = read_phase_record(run_dir, phase)
        if rec is not None:
            out[phase] = rec
    return out


# ------------------------------------------------------------------ results.json


def build_results(
    run_dir: str | os.PathLike[str],
    *,
    run_id: str,
    environment: str,
    started_at: str,
    finished_at: str,
    outcomes: Sequence[PhaseOutcome],
    extra_checks: Sequence[CheckResult] = (),
    safe_to_share: bool = True,
    records: Mapping[int, PhaseRecord] | None = None,
    context: RunContext | None = None,
) -> dict[str, Any]:
    """Assemble ``results.json`` (SPEC section 6 keys) from the phase records.

    Args:
        records: the typed phase records (default: read from ``run_dir``).
        context: run-level facts (configuration, notes, interruption).

    Extra top-level keys: ``superseded_phases`` (phase 1 when a deploy ran), ``failed_checks``,
    ``safe_to_share``, ``artifacts``, ``figures``, ``mutations``, ``configuration``,
    ``notes``, ``coverage`` (``{"judged", "skipped", "not_applicable"}`` over the counted
    checks), ``rollback_pending`` (``{"target_revision", "command"}`` when a rollback is
    recommended but traffic was not moved, else null) and, for a run stopped by a
    signal, ``interrupted``.
    """
    ctx = context or RunContext()
    typed = dict(records) if records is not None else read_phase_records(run_dir)
    stopped = str((ctx.interrupted or {}).get("during") or "signal") if ctx.interrupted else ""
    j = judge(
        typed,
        outcomes,
        extra_checks=extra_checks,
        safe_to_share=safe_to_share,
        interrupted=stopped,
    )
    rec = j.recommendation
    pending = (
        {
            "target_revision": rec.target_revision,
            "command": rollback_command(ctx.environment_ref or environment, rec.target_revision),
        }
        if j.rollback_pending
        else None
    )
    skipped_na = sorted(
        {c.id for c in j.checks if c.status == Status.SKIP and c.id in ctx.not_applicable}
    )
    doc: dict[str, Any] = {
        "run_id": run_id,
        "environment": environment,
        "started_at": started_at,
        "finished_at": finished_at,
        "verdict": j.verdict,
        "coverage": coverage(j.counted, ctx.not_applicable).to_record(),
        "phases": [o.to_record() for o in j.phases],
        "checks": [{k: c.to_record()[k] for k in RESULT_COLUMNS_PUBLIC} for c in j.checks],
        "recommendation": {
            "action": rec.action,
            "reason": rec.reason,
            "target_revision": rec.target_revision,
        },
        "rollback_pending": pending,
        "superseded_phases": sorted(j.superseded),
        "failed_checks": [c.id for c in j.counted if not c.ok],
        "safe_to_share": safe_to_share,
        "artifacts": {str(p): dict(r.artifacts) for p, r in sorted(typed.items())},
        "figures": [f for p in sorted(typed) for f in typed[p].figures],
        "mutations": list(j.mutations),
        "configuration": {
            "warnings": list(ctx.warnings),
            "not_applicable": dict(ctx.not_applicable),
            "skipped_not_applicable": skipped_na,
        },
        "notes": list(ctx.notes),
    }
    if ctx.interrupted:
        doc["interrupted"] = dict(ctx.interrupted)
    clean: dict[str, Any] = redact_obj(doc)
    return clean


# ------------------------------------------------------------------ notebooks


def redact_notebook(path: Path) -> None:
    """Rewrite an executed notebook with every string (outputs, tracebacks, metadata) redacted."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    clean = nbformat.from_dict(redact_obj(dict(nb)))
    nbformat.write(clean, path)


def export_html(notebook: Path) -> Path:
    """Export an executed notebook to HTML next to it (redacted); return the HTML path."""
    import nbformat
    from nbconvert import HTMLExporter

    nb = nbformat.read(notebook, as_version=4)
    body, _ = HTMLExporter().from_notebook_node(nb)
    out = notebook.with_suffix(".html")
    out.write_text(redact(body), encoding="utf-8")
    return out


# ------------------------------------------------------------------ finalize


def finalize_run(
    run_dir: Path,
    *,
    run_id: str,
    environment: str,
    started_at: str,
    outcomes: Sequence[PhaseOutcome],
    parameters: Mapping[str, Any],
    secrets: Iterable[str] = (),
    records: Mapping[int, PhaseRecord] | None = None,
    context: RunContext | None = None,
) -> RunEvidence:
    """Write results.json, junit.xml, summary.md, index.html; scan; write the manifest.

    When the secret scan finds anything, ``UNSAFE_TO_SHARE`` lists the files (never
    the values), the verdict becomes ``error`` with check ``evidence.secret_scan``, and
    the reports are rewritten to say so before the manifest is sealed.
    """
    secrets = tuple(secrets)
    typed = dict(records) if records is not None else read_phase_records(run_dir)

    def write_all(extra: Sequence[CheckResult], safe: bool) -> dict[str, Any]:
        results = build_results(
            run_dir,
            run_id=run_id,
            environment=environment,
            started_at=started_at,
            finished_at=datetime.now(UTC).isoformat(),
            outcomes=outcomes,
            extra_checks=extra,
            safe_to_share=safe,
            records=typed,
            context=context,
        )
        (run_dir / RESULTS).write_text(json.dumps(results, indent=2, default=str), encoding="utf-8")
        write_reports(results, run_dir)
        return results

    write_all([], True)
    leaks = scan_secrets(run_dir, secrets)
    if leaks:
        files = sorted({lk.file for lk in leaks})
        (run_dir / UNSAFE_MARKER).write_text(
            "This run folder is NOT safe to share: the final secret scan found secret "
            "material in these files (values not shown):\n"
            + "".join(f"- {lk.file}: {lk.kind} x{lk.count}\n" for lk in leaks),
            encoding="utf-8",
        )
        scan = CheckResult(
            SECRET_SCAN_ID,
            0,
            Status.ERROR,
            observed=files,
            threshold="no secret in the run folder",
            detail=f"secret material found in {len(files)} file(s): "
            f"{', '.join(files)}; do not share this folder",
        )
        log.error("secret scan: %s", scan.detail)
    else:
        scan = CheckResult(
            SECRET_SCAN_ID,
            0,
            Status.PASS,
            observed=0,
            threshold="no secret in the run folder",
            detail="no registered secret or JWT-shaped string in any file",
        )
    results = write_all([scan], not leaks)
    digest = write_manifest(run_dir, parameters=parameters, safe_to_share=not leaks)
    rec = results["recommendation"]
    return RunEvidence(
        run_dir=run_dir,
        results=results,
        verdict=results["verdict"],
        recommendation=Recommendation(
            rec["action"], rec["reason"], rec["target_revision"], tuple(results["failed_checks"])
        ),
        safe_to_share=not leaks,
        leaks=tuple(leaks),
        manifest_sha256=digest,
    )
