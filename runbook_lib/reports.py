"""The human and CI views of a run: ``junit.xml``, ``summary.md`` and ``index.html``.

Each writer renders the public ``results.json`` document (SPEC section 6), so a report
can be rebuilt from an archived record; every text written is redacted.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from .manifest import UNSAFE_MARKER
from .phases import PHASES
from .redaction import redact
from .verdict import Coverage

__all__ = [
    "coverage_of",
    "figure_caption",
    "verdict_line",
    "write_index",
    "write_junit",
    "write_reports",
    "write_summary",
]


def write_reports(results: Mapping[str, Any], run_dir: Path) -> None:
    """Write ``junit.xml``, ``summary.md`` and ``index.html`` into ``run_dir``."""
    write_junit(results, run_dir / "junit.xml")
    write_summary(results, run_dir / "summary.md")
    write_index(results, run_dir, run_dir / "index.html")


def write_junit(results: Mapping[str, Any], path: Path) -> None:
    """One ``testcase`` per check; fail/error/skip as the matching JUnit element."""
    superseded = set(results.get("superseded_phases", []))
    suites = ET.Element("testsuites", name=f"runbook {results['run_id']}")
    by_phase: dict[int, list[Mapping[str, Any]]] = {}
    for c in results["checks"]:
        by_phase.setdefault(int(c["phase"]), []).append(c)
    for phase, checks in sorted(by_phase.items()):
        name = PHASES[phase].notebook if phase in PHASES else "run"
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
    if len(text) <= limit:
        return text
    # Cut between words, never inside one (a cause cut mid-word reads as another word).
    head = text[: limit - 1]
    cut = head.rsplit(" ", 1)[0] if " " in head[limit // 2 :] else head
    return cut.rstrip(" ,;:") + " …"


def _headline(results: Mapping[str, Any]) -> str:
    """``Recommendation: ROLLBACK to revision X``, or ``ROLLED BACK to revision X`` once
    this run moved the traffic (the markdown form; the caller escapes for HTML)."""
    rec = results["recommendation"]
    target = rec.get("target_revision")
    to = f" to revision `{target}`" if target else ""
    done = rec["action"] == "rollback" and any(
        m.get("key") == "rollback" and m.get("state") == "done"
        for m in results.get("mutations") or []
    )
    if done:
        return f"ROLLED BACK{to}"
    phase6 = (results.get("artifacts") or {}).get("6") or {}
    phase2 = (results.get("artifacts") or {}).get("2") or {}
    if rec["action"] == "rollback" and phase6.get("rollback_rule") == "already-serving":
        back = f" (revision `{target}`)" if target else ""
        if phase2.get("max_share") == 0:
            # verify-then-shift refused the new revision before any user reached it.
            return f"NO TRAFFIC MOVED: what served before the deploy still serves{back}"
        # verify-then-shift already returned to the split from before the deploy.
        return f"TRAFFIC ALREADY BACK on what served before the deploy{back}"
    return f"Recommendation: {str(rec['action']).upper()}{to}"


def coverage_of(results: Mapping[str, Any]) -> Coverage:
    """The run's coverage: ``results.json``'s ``coverage``, else counted from its checks."""
    cov = results.get("coverage")
    if isinstance(cov, Mapping):
        return Coverage(
            int(cov.get("judged", 0)),
            int(cov.get("skipped", 0)),
            int(cov.get("not_applicable", 0)),
        )
    superseded = set(results.get("superseded_phases") or [])
    declared = set((results.get("configuration") or {}).get("not_applicable") or {})
    counted = [c for c in results.get("checks") or [] if c.get("phase") not in superseded]
    skipped = [c for c in counted if c.get("status") == "skip"]
    return Coverage(
        len(counted) - len(skipped), len(skipped), sum(1 for c in skipped if c["id"] in declared)
    )


def verdict_line(results: Mapping[str, Any]) -> str:
    """``PASS: 19 judged, 20 not applicable``: the verdict and what it rests on."""
    return f"{str(results['verdict']).upper()}: {coverage_of(results).words}"


def _duration(results: Mapping[str, Any]) -> str:
    try:
        a = datetime.fromisoformat(results["started_at"])
        b = datetime.fromisoformat(results["finished_at"])
        return f"{(b - a).total_seconds():.1f} s"
    except (KeyError, ValueError):
        return "?"


def _interrupted_text(results: Mapping[str, Any]) -> str:
    info = results.get("interrupted") or {}
    sig = info.get("signal")
    during = info.get("during", "")
    return (
        f"The run was stopped{f' by signal {sig}' if sig else ''}"
        f"{f' during {during}' if during else ''}. The record below holds what was gathered "
        "until then; phases not reached were not executed."
    )


def figure_caption(path: Path) -> str:
    """A figure's title as a person reads it: the caption saved in the PNG (phase and
    title), else the file name's slug."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            title = str(getattr(im, "text", {}).get("Title") or "")
    except (OSError, ValueError):
        title = ""
    phase = path.stem[1:3] if path.stem[:1] == "p" and path.stem[1:3].isdigit() else ""
    if not title:
        return path.stem
    return f"Phase {int(phase)}: {title}" if phase else title


def _mutation_text(m: Mapping[str, Any]) -> str:
    what = f" ({m['what']})" if m.get("what") else ""
    parts = [f"phase {m.get('phase', '?')}: {m.get('key', 'mutation')}{what} {m.get('state', '')}"]
    for key in ("split", "operation", "revision", "started_at", "finished_at", "error"):
        if m.get(key):
            parts.append(f"{key} {m[key]}")
    return ", ".join(parts)


def _configuration(results: Mapping[str, Any]) -> list[str]:
    """Configuration warnings, declared not-applicable checks and the runner's notes."""
    config = results.get("configuration") or {}
    items = [f"warning: {w}" for w in config.get("warnings") or []]
    skipped = set(config.get("skipped_not_applicable") or [])
    for cid, reason in sorted((config.get("not_applicable") or {}).items()):
        shown = " (reported as skip)" if cid in skipped else ""
        items.append(f"not applicable: {cid}: {reason}{shown}")
    items += [f"note: {n}" for n in results.get("notes") or []]
    return items


def write_summary(results: Mapping[str, Any], path: Path) -> None:
    """``summary.md``: verdict, recommendation, failed checks first, then every check."""
    superseded = set(results.get("superseded_phases", []))
    rec = results["recommendation"]
    lines = [
        f"# Runbook run {results['run_id']}: verdict **{results['verdict'].upper()}**",
        "",
        f"Verdict: **{verdict_line(results)}** (checks skipped for declared absence, "
        "missing configuration or a dry run prove nothing either way).",
        "",
        f"- Environment: `{results['environment']}`",
        f"- Started: {results['started_at']}; finished: {results['finished_at']} "
        f"({_duration(results)})",
        "",
        f"## {_headline(results)}",
        "",
        rec["reason"],
        "",
    ]
    pending = results.get("rollback_pending")
    if pending:
        lines += [
            "## ROLLBACK PENDING",
            "",
            "A rollback is recommended but traffic was not moved in this run. To perform it:",
            "",
            f"    {pending.get('command', '')}",
            "",
        ]
    if results.get("interrupted"):
        lines += ["## INTERRUPTED", "", _interrupted_text(results), ""]
    mutations = results.get("mutations") or []
    if mutations:
        lines += ["## Mutations made by this run", ""]
        lines += [f"- {_mutation_text(m)}" for m in mutations]
        lines.append("")
    if not results.get("safe_to_share", True):
        lines += [
            "## NOT SAFE TO SHARE",
            "",
            f"The final secret scan found secret material in this folder; see `{UNSAFE_MARKER}`.",
            "",
        ]
    config = _configuration(results)
    if config:
        lines += ["## Configuration", ""]
        lines += [f"- {_md(item, 400)}" for item in config]
        lines.append("")
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
        lines += [f"| `{c['id']}` | {c['status']} | {_md(c['detail'], 600)} |" for c in before]
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
body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;max-width:1100px;color:#222}
.verdict{padding:.6em 1em;border-radius:6px;font-size:1.4em;color:#fff}
.pass{background:#2e7d32}.fail{background:#c62828}.error{background:#6a1b9a}
table{border-collapse:collapse;width:100%;font-size:.9em;margin:.5em 0 1.5em}
td,th{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
td.t{overflow-wrap:anywhere}td.k,th{white-space:nowrap}td.k{width:1%}
tr.s-fail{background:#f8d7da}tr.s-error{background:#f5c6cb}tr.s-warn{background:#fff3cd}
tr.s-skip{background:#eee}tr.s-before{color:#777}
img{max-width:100%;box-sizing:border-box;border:1px solid #eee;margin:.5em 0}
.unsafe{background:#000;color:#ff5252;padding:1em;font-weight:bold}
.pending{border:3px solid #e65100;padding:.2em 1em;margin:1em 0}
.interrupted{background:#e65100}
p.file{color:#777;font-size:.8em;margin:0 0 1.5em}
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
        f"<div class='verdict {e(verdict)}'>Verdict: {e(verdict_line(results))}</div>",
    ]
    if not results.get("safe_to_share", True):
        parts.append(
            f"<p class='unsafe'>NOT SAFE TO SHARE: the final secret scan found secret "
            f"material in this folder (see {UNSAFE_MARKER}).</p>"
        )
    head = e(_headline(results)).split("`")
    # The markdown headline's `revision` becomes <code>revision</code>.
    head_html = "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(head))
    parts.append(f"<h2>{head_html}</h2><p>{e(rec['reason'])}</p>")
    pending = results.get("rollback_pending")
    if pending:
        parts.append(
            "<div class='pending'><h2>Rollback pending</h2><p>A rollback is recommended but "
            "traffic was not moved in this run. To perform it:</p>"
            f"<pre>{e(str(pending.get('command', '')))}</pre></div>"
        )
    if results.get("interrupted"):
        parts.append(f"<h2>Interrupted</h2><p>{e(_interrupted_text(results))}</p>")
    mutations = results.get("mutations") or []
    if mutations:
        parts.append("<h2>Mutations made by this run</h2><ul>")
        parts += [f"<li>{e(_mutation_text(m))}</li>" for m in mutations]
        parts.append("</ul>")
    config = _configuration(results)
    if config:
        parts.append("<h2>Configuration</h2><ul>")
        parts += [f"<li>{e(item)}</li>" for item in config]
        parts.append("</ul>")
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
                f"<tr class='s-{e(c['status'])}'><td class='k'><code>{e(c['id'])}</code></td>"
                f"<td class='k'>{c['phase']}</td><td class='k'>{e(c['status'])}</td>"
                f"<td class='t'>{e(str(c['detail']))}</td>"
                f"<td class='t'>{e(_md(c['observed'], 300))}</td>"
                f"<td class='t'>{e(_md(c['threshold'], 200))}</td></tr>"
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
                f"<tr class='s-before'><td class='k'><code>{e(c['id'])}</code></td>"
                f"<td class='k'>{e(c['status'])}</td><td class='t'>{e(str(c['detail']))}</td></tr>"
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
            f"<tr class='s-{e(p['status'])}'><td class='k'>{p['phase']}</td>"
            f"<td class='k'>{link}</td><td class='k'>{e(p['status'])}</td>"
            f"<td class='k'>{p['duration_s']}</td><td class='t'>{e(note)}</td></tr>"
        )
    parts.append("</table><h2>Figures</h2>")
    figures = sorted((run_dir / "figures").glob("*.png")) if (run_dir / "figures").is_dir() else []
    if not figures:
        parts.append("<p>No figure was drawn in this run.</p>")
    for fig in figures:
        data = base64.b64encode(fig.read_bytes()).decode()
        title = figure_caption(fig)
        parts.append(
            f"<h3>{e(title)}</h3><img alt='{e(title)}' src='data:image/png;base64,{data}'/>"
            f"<p class='file'>{e(fig.name)}</p>"
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
            f"<tr class='s-{e(cls)}'><td class='k'>{c['phase']}</td><td class='k'><code>"
            f"{e(c['id'])}</code></td><td class='k'>{e(status)}</td>"
            f"<td class='t'>{e(_md(c['observed'], 120))}</td>"
            f"<td class='t'>{e(_md(c['threshold'], 80))}</td><td class='t'>{e(str(c['detail']))}</td>"
            f"<td class='k'>{c['duration_s']}</td></tr>"
        )
    parts.append("</table></body></html>")
    path.write_text(redact("\n".join(parts)), encoding="utf-8")
