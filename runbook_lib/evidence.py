"""The run folder: the archived, tamper-evident record of one runbook run.

Layout (SPEC section 6)::

    outputs/<UTC timestamp>-<env name>/
        NN_<phase>.ipynb / .html   executed notebooks (redacted) and their HTML export
        phases/NN.json             what each notebook persisted, step by step
        figures/*.png              the figures the steps drew
        results.json junit.xml summary.md index.html
        manifest.json              SHA-256 of every file + chain to the previous run
        UNSAFE_TO_SHARE            only when the final secret scan found something

Judging a run (verdict, phase 1 superseded by a deploy, recommendation) is pure
and lives here too, so the runner only executes notebooks and this module turns
what they persisted into the record.
"""

from __future__ import annotations

import contextlib
import hashlib
import html
import json
import logging
import os
import platform
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from .context import PHASES, phase_file
from .redaction import JWT_PATTERN, count_secrets, redact, redact_obj, registered_secrets
from .results import CheckResult, Recommendation, Status

__all__ = [
    "CHAIN_FILE",
    "MANIFEST",
    "UNSAFE_MARKER",
    "CheckDelta",
    "Comparison",
    "Leak",
    "PhaseOutcome",
    "RunEvidence",
    "VerifyReport",
    "build_results",
    "compare_runs",
    "create_run_dir",
    "deploy_applied",
    "deploy_failed",
    "export_html",
    "finalize_run",
    "load_phase_records",
    "phase_checks",
    "recommend",
    "redact_notebook",
    "scan_secrets",
    "verdict_of",
    "verify_run",
    "worst",
    "write_manifest",
]

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
UNSAFE_MARKER = "UNSAFE_TO_SHARE"
# Append-only list of manifests written in one outputs folder: the chain's head.
CHAIN_FILE = ".manifest-chain"
_CHAIN_LOCK = ".manifest-chain.lock"
# Check id recorded for the final secret scan (phase 0 = the run itself).
SECRET_SCAN_ID = "evidence.secret_scan"
_BAD = (Status.FAIL, Status.ERROR)


@dataclass(frozen=True, slots=True)
class PhaseOutcome:
    """How one phase's notebook ended, as seen by the runner.

    Attributes:
        phase: 1-7.
        notebook: notebook file name.
        status: ``pass``, ``fail``, ``error`` (notebook raised, timed out, kernel died)
            or ``skipped`` (not executed; ``reason`` says why).
        duration_s: wall time including kernel start.
        reason: why it errored or was skipped.
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
class Leak:
    """A secret found by the final scan (the value itself is never kept)."""

    file: str
    kind: str
    count: int


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


def load_phase_records(run_dir: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """The ``phases/NN.json`` documents persisted by the notebooks, by phase number."""
    out: dict[int, dict[str, Any]] = {}
    for phase in PHASES:
        path = phase_file(run_dir, phase)
        if not path.is_file():
            continue
        try:
            out[phase] = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("unreadable %s: %s", path, exc)
            out[phase] = {
                "phase": phase,
                "checks": [],
                "artifacts": {},
                "figures": [],
                "unreadable": str(exc),
            }
    return out


def phase_checks(record: Mapping[str, Any] | None) -> list[CheckResult]:
    """The check results of one ``phases/NN.json`` document."""
    if not record:
        return []
    return [CheckResult.from_record(c) for c in record.get("checks", [])]


# ------------------------------------------------------------------ judging


def deploy_applied(records: Mapping[int, Mapping[str, Any]]) -> bool:
    """True when phase 2 really deployed (approved, not a dry run): phase 1 is then superseded."""
    rec = records.get(2)
    if not rec or rec.get("artifacts", {}).get("dry_run", True) is not False:
        return False
    return any(c.id == "deploy.executed" and c.status == Status.PASS for c in phase_checks(rec))


def deploy_failed(record: Mapping[str, Any] | None, outcome: PhaseOutcome | None = None) -> bool:
    """True when a ``deploy.*`` check failed or errored, or the deploy notebook errored."""
    if outcome is not None and outcome.status == "error":
        return True
    return any(c.id.startswith("deploy.") and c.status in _BAD for c in phase_checks(record))


def verdict_of(
    counted: Iterable[CheckResult], outcomes: Iterable[PhaseOutcome], *, safe_to_share: bool = True
) -> str:
    """``error`` if a check or notebook errored (or a secret leaked), ``fail`` if one failed."""
    counted = list(counted)
    if (
        not safe_to_share
        or any(o.status == "error" for o in outcomes)
        or any(c.status == Status.ERROR for c in counted)
    ):
        return "error"
    if any(c.status == Status.FAIL for c in counted):
        return "fail"
    return "pass"


def recommend(
    counted: Sequence[CheckResult],
    records: Mapping[int, Mapping[str, Any]],
    outcomes: Sequence[PhaseOutcome],
) -> Recommendation:
    """``none`` when all gates pass; ``rollback`` after a deploy that left failures; else ``hold``.

    The rollback target is the ``previous_revision`` artifact of phase 2 (the
    revision that served before the deploy).
    """
    failed = [c.id for c in counted if c.status in _BAD and c.phase != 6]
    errored = [
        f"phase {o.phase} ({o.reason or 'notebook error'})"
        for o in outcomes
        if o.status == "error" and o.phase != 6
    ]
    if not failed and not errored:
        return Recommendation("none", "all gates passed")
    what = ", ".join(failed + errored)
    rec2 = records.get(2) or {}
    artifacts = rec2.get("artifacts", {})
    attempted = artifacts.get("dry_run", True) is False and any(
        c.id == "deploy.executed" and c.status != Status.SKIP for c in phase_checks(rec2)
    )
    target = artifacts.get("previous_revision") or None
    rollback_note = ""
    rec6 = records.get(6)
    if rec6:
        checks6 = phase_checks(rec6)
        moved = [c for c in checks6 if c.id == "rollback.traffic_moved"]
        if moved:
            rollback_note = f"; rollback step {moved[0].status}: {moved[0].detail}"
        bad6 = [c.id for c in checks6 if c.status in _BAD]
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
            "to: investigate before sending more traffic",
            None,
            tuple(failed),
        )
    return Recommendation(
        "hold",
        f"failed: {what}; no deploy ran in this run, so there is nothing to roll back: "
        "fix the cause before deploying",
        None,
        tuple(failed),
    )


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
) -> dict[str, Any]:
    """Assemble ``results.json`` (SPEC section 6 keys) from the persisted phase records.

    Extra top-level keys: ``superseded_phases`` (phase 1 when a deploy ran), ``failed_checks``,
    ``safe_to_share``.
    """
    records = load_phase_records(run_dir)
    superseded = {1} if deploy_applied(records) else set()
    all_checks: list[CheckResult] = []
    for phase in sorted(records):
        all_checks += phase_checks(records[phase])
    # A notebook that errored is a failed gate in itself: record it so CI shows it.
    for o in outcomes:
        if o.status == "error":
            where = f" at cell {o.cell_index}" if o.cell_index is not None else ""
            all_checks.append(
                CheckResult(
                    f"runner.phase_{o.phase:02d}",
                    o.phase,
                    Status.ERROR,
                    observed=o.reason,
                    detail=f"{o.notebook} did not complete{where}: {o.reason}",
                    duration_s=o.duration_s,
                )
            )
    all_checks += list(extra_checks)
    counted = [c for c in all_checks if c.phase not in superseded]
    verdict = verdict_of(counted, outcomes, safe_to_share=safe_to_share)
    rec = recommend(counted, records, outcomes)
    phases = []
    for o in outcomes:
        if o.status in ("pass", "fail") and o.phase in records:
            status = {"error": "error", "fail": "fail"}.get(
                str(worst(phase_checks(records[o.phase]))), "pass"
            )
            o = PhaseOutcome(o.phase, o.notebook, status, o.duration_s, o.reason, o.cell_index)
        phases.append(o.to_record())
    doc = {
        "run_id": run_id,
        "environment": environment,
        "started_at": started_at,
        "finished_at": finished_at,
        "verdict": verdict,
        "phases": phases,
        "checks": [{k: c.to_record()[k] for k in RESULT_COLUMNS_PUBLIC} for c in all_checks],
        "recommendation": {
            "action": rec.action,
            "reason": rec.reason,
            "target_revision": rec.target_revision,
        },
        "superseded_phases": sorted(superseded),
        "failed_checks": [c.id for c in counted if c.status in _BAD],
        "safe_to_share": safe_to_share,
        "artifacts": {str(p): r.get("artifacts", {}) for p, r in sorted(records.items())},
        "figures": [f for p in sorted(records) for f in records[p].get("figures", [])],
    }
    return redact_obj(doc)


# results.json check keys, in the order SPEC section 6 lists them.
RESULT_COLUMNS_PUBLIC = ["id", "phase", "status", "observed", "threshold", "detail", "duration_s"]


def worst(checks: Iterable[CheckResult]) -> Status:
    """Most severe status among ``checks`` with ``warn``/``skip`` folded into pass."""
    statuses = {c.status for c in checks}
    if Status.ERROR in statuses:
        return Status.ERROR
    if Status.FAIL in statuses:
        return Status.FAIL
    return Status.PASS


# ------------------------------------------------------------------ reports


def write_junit(results: Mapping[str, Any], path: Path) -> None:
    """One ``testcase`` per check; fail/error/skip as the matching JUnit element."""
    superseded = set(results.get("superseded_phases", []))
    suites = ET.Element("testsuites", name=f"runbook {results['run_id']}")
    by_phase: dict[int, list[Mapping[str, Any]]] = {}
    for c in results["checks"]:
        by_phase.setdefault(int(c["phase"]), []).append(c)
    for phase, checks in sorted(by_phase.items()):
        name = PHASES[phase][0] if phase in PHASES else "run"
        counts = {"failures": 0, "errors": 0, "skipped": 0}
        suite = ET.SubElement(
            suites, "testsuite", name=f"phase {phase:02d} {name}", tests=str(len(checks))
        )
        for c in checks:
            case = ET.SubElement(
                suite,
                "testcase",
                classname=f"runbook.phase{phase:02d}",
                name=str(c["id"]),
                time=f"{float(c['duration_s'] or 0):.3f}",
            )
            msg = str(c.get("detail") or "")
            body = f"observed: {c.get('observed')!r}\nthreshold: {c.get('threshold')!r}"
            status = c["status"]
            if phase in superseded and status != "pass":
                ET.SubElement(
                    case,
                    "skipped",
                    message=f"superseded by the deploy; before remediation it was {status}: {msg}",
                )
                counts["skipped"] += 1
            elif status == "fail":
                ET.SubElement(case, "failure", message=msg, type="fail").text = body
                counts["failures"] += 1
            elif status == "error":
                ET.SubElement(case, "error", message=msg, type="error").text = body
                counts["errors"] += 1
            elif status == "skip":
                ET.SubElement(case, "skipped", message=msg)
                counts["skipped"] += 1
            elif status == "warn":
                ET.SubElement(case, "system-out").text = f"warn: {msg}"
        for k, v in counts.items():
            suite.set(k, str(v))
    ET.indent(suites)
    path.write_text(
        redact(ET.tostring(suites, encoding="unicode", xml_declaration=True)), encoding="utf-8"
    )


def _md(value: Any, limit: int = 160) -> str:
    text = "" if value is None else (value if isinstance(value, str) else json.dumps(value))
    text = text.replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _duration(results: Mapping[str, Any]) -> str:
    try:
        a = datetime.fromisoformat(results["started_at"])
        b = datetime.fromisoformat(results["finished_at"])
        return f"{(b - a).total_seconds():.1f} s"
    except (KeyError, ValueError):
        return "?"


def write_summary(results: Mapping[str, Any], path: Path) -> None:
    """``summary.md``: verdict, recommendation, failed checks first, then every check."""
    superseded = set(results.get("superseded_phases", []))
    rec = results["recommendation"]
    lines = [
        f"# Runbook run {results['run_id']}: verdict **{results['verdict'].upper()}**",
        "",
        f"- Environment: `{results['environment']}`",
        f"- Started: {results['started_at']}; finished: {results['finished_at']} "
        f"({_duration(results)})",
        "",
        f"## Recommendation: {rec['action'].upper()}"
        + (f" to revision `{rec['target_revision']}`" if rec.get("target_revision") else ""),
        "",
        rec["reason"],
        "",
    ]
    if not results.get("safe_to_share", True):
        lines += [
            "## NOT SAFE TO SHARE",
            "",
            f"The final secret scan found secret material in this folder; see `{UNSAFE_MARKER}`.",
            "",
        ]
    lines += [
        "## Phases",
        "",
        "| phase | notebook | status | duration (s) | note |",
        "|---|---|---|---|---|",
    ]
    for p in results["phases"]:
        note = p.get("reason", "")
        if p["phase"] in superseded:
            note = (note + " " if note else "") + "superseded by the deploy (before state)"
        lines.append(
            f"| {p['phase']} | {p['notebook']} | {p['status']} | {p['duration_s']} | {_md(note)} |"
        )
    failed = [
        c
        for c in results["checks"]
        if c["status"] in ("fail", "error") and c["phase"] not in superseded
    ]
    lines += ["", f"## Failed checks ({len(failed)})", ""]
    if not failed:
        lines.append("None.")
    for c in failed:
        lines += [
            f"### `{c['id']}` (phase {c['phase']}): {c['status']}",
            "",
            str(c["detail"] or "(no detail)"),
            "",
            f"- observed: `{_md(c['observed'], 300)}`",
            f"- threshold: `{_md(c['threshold'], 300)}`",
            "",
        ]
    before = [c for c in results["checks"] if c["phase"] in superseded]
    if before:
        lines += [
            "",
            "## Before remediation (phase 1, superseded by the deploy)",
            "",
            "These findings describe the service before the deploy; they are not counted "
            "in the verdict.",
            "",
            "| check | before | detail |",
            "|---|---|---|",
        ]
        lines += [f"| `{c['id']}` | {c['status']} | {_md(c['detail'])} |" for c in before]
    lines += [
        "",
        "## All checks",
        "",
        "| phase | check | status | observed | threshold | detail | duration (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    order = {"error": 0, "fail": 1, "warn": 2, "skip": 3, "pass": 4}
    for c in sorted(
        results["checks"], key=lambda c: (c["phase"] in superseded, order.get(c["status"], 5))
    ):
        status = f"{c['status']} (before)" if c["phase"] in superseded else c["status"]
        lines.append(
            f"| {c['phase']} | `{c['id']}` | {status} | {_md(c['observed'], 60)} | "
            f"{_md(c['threshold'], 40)} | {_md(c['detail'])} | {c['duration_s']} |"
        )
    path.write_text(redact("\n".join(lines) + "\n"), encoding="utf-8")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1100px;color:#222}
.verdict{padding:.6em 1em;border-radius:6px;font-size:1.4em;color:#fff}
.pass{background:#2e7d32}.fail{background:#c62828}.error{background:#6a1b9a}
table{border-collapse:collapse;width:100%;font-size:.9em;margin:.5em 0 1.5em}
td,th{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
tr.s-fail{background:#f8d7da}tr.s-error{background:#f5c6cb}tr.s-warn{background:#fff3cd}
tr.s-skip{background:#eee}tr.s-before{color:#777}
img{max-width:100%;border:1px solid #eee;margin:.5em 0}
.unsafe{background:#000;color:#ff5252;padding:1em;font-weight:bold}
"""


def write_index(results: Mapping[str, Any], run_dir: Path, path: Path) -> None:
    """``index.html``: a self-contained front page (figures embedded as base64)."""
    import base64

    e = html.escape
    superseded = set(results.get("superseded_phases", []))
    rec = results["recommendation"]
    verdict = results["verdict"]
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>Runbook "
        f"{e(results['run_id'])}</title><style>{_CSS}</style></head><body>",
        f"<h1>Runbook run {e(results['run_id'])}</h1>",
        f"<p>Environment <code>{e(results['environment'])}</code>, started "
        f"{e(results['started_at'])}, finished {e(results['finished_at'])} "
        f"({e(_duration(results))}).</p>",
        f"<div class='verdict {e(verdict)}'>Verdict: {e(verdict.upper())}</div>",
    ]
    if not results.get("safe_to_share", True):
        parts.append(
            f"<p class='unsafe'>NOT SAFE TO SHARE: the final secret scan found secret "
            f"material in this folder (see {UNSAFE_MARKER}).</p>"
        )
    target = rec.get("target_revision")
    parts.append(
        f"<h2>Recommendation: {e(rec['action'].upper())}"
        + (f" to revision <code>{e(target)}</code>" if target else "")
        + f"</h2><p>{e(rec['reason'])}</p>"
    )
    failed = [
        c
        for c in results["checks"]
        if c["status"] in ("fail", "error") and c["phase"] not in superseded
    ]
    parts.append(f"<h2>Failed checks ({len(failed)})</h2>")
    if failed:
        parts.append(
            "<table><tr><th>check</th><th>phase</th><th>status</th><th>detail</th>"
            "<th>observed</th><th>threshold</th></tr>"
        )
        for c in failed:
            parts.append(
                f"<tr class='s-{e(c['status'])}'><td><code>{e(c['id'])}</code></td>"
                f"<td>{c['phase']}</td><td>{e(c['status'])}</td><td>{e(str(c['detail']))}"
                f"</td><td>{e(_md(c['observed'], 300))}</td>"
                f"<td>{e(_md(c['threshold'], 200))}</td></tr>"
            )
        parts.append("</table>")
    else:
        parts.append("<p>None.</p>")
    before_bad = [
        c
        for c in results["checks"]
        if c["phase"] in superseded and c["status"] in ("fail", "error")
    ]
    if before_bad:
        # What the deploy fixed: the incident as phase 1 saw it, not counted in the verdict.
        parts.append(
            f"<h2>Before remediation ({len(before_bad)} finding(s), superseded by the deploy)"
            "</h2><table><tr><th>check</th><th>status before</th><th>detail</th></tr>"
        )
        for c in before_bad:
            parts.append(
                f"<tr class='s-before'><td><code>{e(c['id'])}</code></td><td>{e(c['status'])}"
                f"</td><td>{e(str(c['detail']))}</td></tr>"
            )
        parts.append("</table>")
    parts.append(
        "<h2>Phases</h2><table><tr><th>phase</th><th>notebook</th><th>status</th>"
        "<th>duration (s)</th><th>note</th></tr>"
    )
    for p in results["phases"]:
        nb = p["notebook"]
        html_name = Path(nb).with_suffix(".html").name
        link = f"<a href='{e(html_name)}'>{e(nb)}</a>" if (run_dir / html_name).is_file() else e(nb)
        note = p.get("reason", "") + (
            " superseded by the deploy (before state)" if p["phase"] in superseded else ""
        )
        parts.append(
            f"<tr class='s-{e(p['status'])}'><td>{p['phase']}</td><td>{link}</td>"
            f"<td>{e(p['status'])}</td><td>{p['duration_s']}</td><td>{e(note)}</td></tr>"
        )
    parts.append("</table><h2>Figures</h2>")
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    if not figures:
        parts.append("<p>No figure was drawn in this run.</p>")
    for fig in figures:
        data = base64.b64encode(fig.read_bytes()).decode()
        parts.append(
            f"<h3>{e(fig.stem)}</h3><img alt='{e(fig.name)}' src='data:image/png;base64,{data}'/>"
        )
    parts.append(
        "<h2>All checks</h2><table><tr><th>phase</th><th>check</th><th>status</th>"
        "<th>observed</th><th>threshold</th><th>detail</th><th>duration (s)</th></tr>"
    )
    for c in results["checks"]:
        before = c["phase"] in superseded
        cls = "before" if before else c["status"]
        status = f"{c['status']} (before)" if before else c["status"]
        parts.append(
            f"<tr class='s-{e(cls)}'><td>{c['phase']}</td><td><code>{e(c['id'])}"
            f"</code></td><td>{e(status)}</td><td>{e(_md(c['observed'], 120))}</td>"
            f"<td>{e(_md(c['threshold'], 80))}</td><td>{e(str(c['detail']))}</td>"
            f"<td>{c['duration_s']}</td></tr>"
        )
    parts.append("</table></body></html>")
    path.write_text(redact("\n".join(parts)), encoding="utf-8")


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


# ------------------------------------------------------------------ secret scan

_JWT_BYTES = re.compile(JWT_PATTERN.pattern.encode())


def scan_secrets(run_dir: str | os.PathLike[str], secrets: Iterable[str] = ()) -> list[Leak]:
    """Every file in the folder searched for each secret value and for JWT-shaped strings.

    Args:
        run_dir: the run folder.
        secrets: values to look for besides :func:`registered_secrets` (e.g. the values of
            the environment variables the settings name: the kernels read them, not us).
    """
    values = {s for s in (*registered_secrets(), *secrets) if s and len(s) >= 6}
    leaks: list[Leak] = []
    root = Path(run_dir)
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == UNSAFE_MARKER:
            continue
        data = path.read_bytes()
        count = count_secrets(data, values)  # every encoded form too (redaction.secret_forms)
        if count:
            leaks.append(Leak(rel, "registered secret value", count))
        jwts = len(_JWT_BYTES.findall(data))
        if jwts:
            leaks.append(Leak(rel, "JWT-shaped string", jwts))
    return leaks


# ------------------------------------------------------------------ manifest


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 16), b""):
            h.update(block)
    return h.hexdigest()


def _hash_files(run_dir: Path) -> dict[str, str]:
    out: dict[str, str] = {}
    for p in sorted(run_dir.rglob("*")):
        rel = p.relative_to(run_dir).as_posix()
        if p.is_file() and rel != MANIFEST:
            out[rel] = _sha256(p)
    return out


def tool_versions() -> dict[str, str]:
    """Versions of Python and the packages that shaped the run folder."""
    out = {"python": platform.python_version()}
    for dist in (
        "websocket-runbook",
        "papermill",
        "nbclient",
        "nbconvert",
        "nbformat",
        "ipykernel",
        "matplotlib",
        "pandas",
        "httpx",
        "websockets",
        "google-cloud-run",
        "google-cloud-logging",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


@contextlib.contextmanager
def _chain_lock(out_dir: Path) -> Iterator[None]:
    """Serialise chain updates between concurrent runs sharing one outputs folder."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX: best effort without a lock
        yield
        return
    with (out_dir / _CHAIN_LOCK).open("a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _chain_head(out_dir: Path) -> dict[str, str] | None:
    chain = out_dir / CHAIN_FILE
    if not chain.is_file():
        return None
    for line in reversed(chain.read_text(encoding="utf-8").splitlines()):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(entry, dict) and {"run_id", "sha256"} <= entry.keys():
            return {"run_id": str(entry["run_id"]), "sha256": str(entry["sha256"])}
    return None


def write_manifest(
    run_dir: Path, *, parameters: Mapping[str, Any], safe_to_share: bool = True
) -> str:
    """Write ``manifest.json`` and link it to the previous run's; return its SHA-256.

    The previous manifest is the last one written in the same outputs folder
    (``.manifest-chain``); reading the head, writing this manifest and appending
    it happen under one file lock, so concurrent runs form one linear chain.
    """
    out_dir = run_dir.parent
    with _chain_lock(out_dir):
        previous = _chain_head(out_dir)
        doc = {
            "run_id": run_dir.name,
            "created_at": datetime.now(UTC).isoformat(),
            "algorithm": "sha256",
            "files": _hash_files(run_dir),
            "parameters": redact_obj(dict(parameters)),
            "tool_versions": tool_versions(),
            "previous_manifest": previous,
            "safe_to_share": safe_to_share,
        }
        path = run_dir / MANIFEST
        path.write_text(
            redact(json.dumps(doc, indent=2, sort_keys=True, default=str)), encoding="utf-8"
        )
        digest = _sha256(path)
        with (out_dir / CHAIN_FILE).open("a", encoding="utf-8") as chain:
            chain.write(json.dumps({"run_id": run_dir.name, "sha256": digest}) + "\n")
    return digest


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """Result of :func:`verify_run`.

    Attributes:
        changed, missing, added: relative paths that differ from the manifest.
        chain: ``ok``, ``genesis`` (first run), ``unchecked`` (previous folder absent),
            ``broken`` (the previous run's manifest no longer has the recorded hash)
            or ``no-manifest``.
        safe_to_share: the manifest's flag (false when the secret scan found something).
    """

    run_dir: Path
    changed: tuple[str, ...] = ()
    missing: tuple[str, ...] = ()
    added: tuple[str, ...] = ()
    chain: str = "ok"
    safe_to_share: bool = True

    @property
    def ok(self) -> bool:
        """True when every file matches and the chain is not broken."""
        return not (self.changed or self.missing or self.added) and self.chain not in (
            "broken",
            "no-manifest",
        )


def verify_run(run_dir: str | os.PathLike[str]) -> VerifyReport:
    """Recompute every file's SHA-256 and compare with ``manifest.json``."""
    root = Path(run_dir).resolve()
    path = root / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
        recorded: dict[str, str] = dict(manifest["files"])
    except (OSError, json.JSONDecodeError, KeyError, TypeError):
        return VerifyReport(root, chain="no-manifest", safe_to_share=False)
    actual = _hash_files(root)
    changed = tuple(sorted(k for k in recorded if k in actual and actual[k] != recorded[k]))
    missing = tuple(sorted(k for k in recorded if k not in actual))
    added = tuple(sorted(k for k in actual if k not in recorded))
    prev = manifest.get("previous_manifest")
    if not prev:
        chain = "genesis"
    else:
        prev_path = root.parent / str(prev.get("run_id")) / MANIFEST
        if not prev_path.is_file():
            chain = "unchecked"
        else:
            chain = "ok" if _sha256(prev_path) == prev.get("sha256") else "broken"
    return VerifyReport(
        root, changed, missing, added, chain, bool(manifest.get("safe_to_share", True))
    )


# ------------------------------------------------------------------ compare


@dataclass(frozen=True, slots=True)
class CheckDelta:
    """One check in two runs: statuses, numeric observations and their difference."""

    id: str
    status_a: str | None
    status_b: str | None
    observed_a: Any = None
    observed_b: Any = None
    delta: float | None = None


@dataclass(frozen=True, slots=True)
class Comparison:
    """What :func:`compare_runs` found between run A and run B."""

    run_a: str
    run_b: str
    verdict_a: str
    verdict_b: str
    status_changes: tuple[CheckDelta, ...] = ()
    numeric: tuple[CheckDelta, ...] = ()
    phase_durations: tuple[tuple[int, float | None, float | None], ...] = field(default=())


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def compare_runs(run_a: str | os.PathLike[str], run_b: str | os.PathLike[str]) -> Comparison:
    """Check status changes and numeric (latency, duration) deltas from A to B.

    Raises:
        FileNotFoundError / ValueError: a folder has no readable ``results.json``.
    """
    docs = []
    for run in (run_a, run_b):
        path = Path(run) / "results.json"
        docs.append(json.loads(path.read_text(encoding="utf-8")))
    a, b = docs
    checks_a = {c["id"]: c for c in a["checks"]}
    checks_b = {c["id"]: c for c in b["checks"]}
    changes, numeric = [], []
    for cid in list(dict.fromkeys([*checks_a, *checks_b])):
        ca, cb = checks_a.get(cid), checks_b.get(cid)
        sa, sb = (ca or {}).get("status"), (cb or {}).get("status")
        oa, ob = (ca or {}).get("observed"), (cb or {}).get("observed")
        na, nb = _number(oa), _number(ob)
        delta = nb - na if na is not None and nb is not None else None
        d = CheckDelta(cid, sa, sb, oa, ob, delta)
        if sa != sb:
            changes.append(d)
        if delta is not None:
            numeric.append(d)
    dur_a = {p["phase"]: p.get("duration_s") for p in a.get("phases", [])}
    dur_b = {p["phase"]: p.get("duration_s") for p in b.get("phases", [])}
    durations = tuple((p, dur_a.get(p), dur_b.get(p)) for p in sorted({*dur_a, *dur_b}))
    return Comparison(
        str(a.get("run_id")),
        str(b.get("run_id")),
        a.get("verdict", "?"),
        b.get("verdict", "?"),
        tuple(changes),
        tuple(numeric),
        durations,
    )


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
) -> RunEvidence:
    """Write results.json, junit.xml, summary.md, index.html; scan; write the manifest.

    When the secret scan finds anything, ``UNSAFE_TO_SHARE`` lists the files (never
    the values), the verdict becomes ``error`` with check ``evidence.secret_scan``, and
    the reports are rewritten to say so before the manifest is sealed.
    """
    secrets = tuple(secrets)

    def write_reports(extra: Sequence[CheckResult], safe: bool) -> dict[str, Any]:
        finished = datetime.now(UTC).isoformat()
        results = build_results(
            run_dir,
            run_id=run_id,
            environment=environment,
            started_at=started_at,
            finished_at=finished,
            outcomes=outcomes,
            extra_checks=extra,
            safe_to_share=safe,
        )
        (run_dir / "results.json").write_text(
            json.dumps(results, indent=2, default=str), encoding="utf-8"
        )
        write_junit(results, run_dir / "junit.xml")
        write_summary(results, run_dir / "summary.md")
        write_index(results, run_dir, run_dir / "index.html")
        return results

    write_reports([], True)
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
    results = write_reports([scan], not leaks)
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
