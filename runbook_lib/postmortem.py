"""From run folders to an incident's story: ``postmortem.md`` and ``postmortem.html``.

``runbook postmortem RUN_DIR ...`` (or ``--chain``) reads sealed run folders,
verifies each against its manifest, and writes one document: a timeline across the
runs (incident signature, deploys, traffic moves, rollbacks, verdicts, monitoring
holds, with wall-clock times), the standard postmortem sections with every fact the
runs establish linked to its run, check and executed notebook cell, the judgement
left as prompts for people, the figures side by side, and the manifests it rests on.

Three layers, as in the rest of the package: :func:`load_run` reads a folder into a
:class:`RunRecord` (I/O), :func:`build_postmortem` turns records into a
:class:`Postmortem` document model (pure, table-tested), and the writers render it.
A folder that fails verification, or that its own secret scan marked unsafe, is
named in the document and never used as evidence.
"""

from __future__ import annotations

import base64
import hashlib
import html
import json
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .checks.causes import INCIDENT_SIGNATURE
from .exceptions import ConfigError
from .manifest import MANIFEST, RESULTS, UNSAFE_MARKER, chain_runs, verify_run
from .phases import PHASES, phase_file
from .redaction import JWT_PATTERN, count_secrets, redact

__all__ = [
    "Event",
    "Fact",
    "FigureRow",
    "Link",
    "Postmortem",
    "RunRecord",
    "Section",
    "SourceRun",
    "Written",
    "build_postmortem",
    "chain_window",
    "load_run",
    "render_html",
    "render_markdown",
    "write_postmortem",
]

# ------------------------------------------------------------------ records (input)


@dataclass(frozen=True, slots=True)
class RunRecord:
    """What the postmortem reads from one run folder.

    Attributes:
        run_id: the folder's run id.
        href: the folder relative to the postmortem's own folder (links start here).
        results: ``results.json`` ({} when unreadable).
        verified: ``runbook verify`` passed (files and chain).
        verify_words: what verify said, in words.
        safe_to_share: the run's own secret scan found nothing.
        manifest_sha256: SHA-256 of its ``manifest.json`` ('' when there is none).
        phase_times: phase -> (started_at, updated_at) from ``phases/NN.json``.
        phase_artifacts: phase -> artifacts from ``phases/NN.json``.
        cells: check id -> (notebook HTML file name, cell id) where its step displayed it.
        notebooks_html: the notebook HTML files present in the folder.
        figures: figure path relative to the folder -> PNG bytes (empty in tests).
    """

    run_id: str
    href: str = ""
    results: Mapping[str, Any] = field(default_factory=dict)
    verified: bool = True
    verify_words: str = ""
    safe_to_share: bool = True
    manifest_sha256: str = ""
    phase_times: Mapping[int, tuple[str, str]] = field(default_factory=dict)
    phase_artifacts: Mapping[int, Mapping[str, Any]] = field(default_factory=dict)
    cells: Mapping[str, tuple[str, str]] = field(default_factory=dict)
    notebooks_html: frozenset[str] = frozenset()
    figures: Mapping[str, bytes] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        """Verified and safe to share: only then are its facts evidence."""
        return self.verified and self.safe_to_share

    @property
    def started_at(self) -> str:
        return str(self.results.get("started_at") or "")

    @property
    def finished_at(self) -> str:
        return str(self.results.get("finished_at") or "")


# ------------------------------------------------------------------ document model (output)


@dataclass(frozen=True, slots=True)
class Link:
    """Where a fact comes from: a run, a check, and the page that shows it."""

    run_id: str
    check_id: str = ""
    href: str = ""

    @property
    def label(self) -> str:
        return f"{self.run_id} · {self.check_id}" if self.check_id else self.run_id


@dataclass(frozen=True, slots=True)
class Fact:
    """A sentence the runs establish, with its evidence."""

    text: str
    links: tuple[Link, ...] = ()


@dataclass(frozen=True, slots=True)
class Event:
    """One line of the timeline."""

    at: str
    kind: str
    text: str
    links: tuple[Link, ...] = ()


@dataclass(frozen=True, slots=True)
class Section:
    """A postmortem section: facts from the runs, and a prompt for what people must judge."""

    title: str
    facts: tuple[Fact, ...] = ()
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class FigureRow:
    """One figure as each run drew it: (run id, path relative to that run) or '' when not."""

    title: str
    cells: tuple[tuple[str, str], ...]


@dataclass(frozen=True, slots=True)
class SourceRun:
    """A run folder the document was built from (or refused); ``href`` is the folder
    relative to the postmortem."""

    run_id: str
    verdict: str
    manifest_sha256: str
    verified: bool
    safe_to_share: bool
    verify_words: str
    href: str = ""

    @property
    def used(self) -> bool:
        return self.verified and self.safe_to_share


@dataclass(frozen=True, slots=True)
class Postmortem:
    """The whole document, ready for the writers."""

    title: str
    generated_at: str
    sources: tuple[SourceRun, ...]
    timeline: tuple[Event, ...]
    sections: tuple[Section, ...]
    figures: tuple[FigureRow, ...]

    @property
    def refused(self) -> tuple[SourceRun, ...]:
        return tuple(s for s in self.sources if not s.used)


# ------------------------------------------------------------------ the pure builder

_PROMPT = "For people to write:"


def _checks(run: RunRecord) -> dict[str, Mapping[str, Any]]:
    return {
        str(c["id"]): c
        for c in run.results.get("checks") or []
        if isinstance(c, Mapping) and "id" in c
    }


def _notebook_html(phase: int) -> str:
    return Path(PHASES[phase].notebook).with_suffix(".html").name if phase in PHASES else ""


def _join(href: str, name: str) -> str:
    return f"{href.rstrip('/')}/{name}" if href else name


def _link(run: RunRecord, check_id: str = "") -> Link:
    """The run and check, linked to the notebook cell that showed it (else the notebook,
    else the run's front page)."""
    if not check_id:
        return Link(run.run_id, "", _join(run.href, "index.html"))
    where = run.cells.get(check_id)
    if where:
        page, cell = where
        return Link(run.run_id, check_id, _join(run.href, f"{page}#cell-id={cell}"))
    check = _checks(run).get(check_id) or {}
    page = _notebook_html(int(check.get("phase") or 0))
    target = page if page in run.notebooks_html else "index.html"
    return Link(run.run_id, check_id, _join(run.href, target))


def _parse(at: str) -> datetime | None:
    try:
        t = datetime.fromisoformat(at)
    except (TypeError, ValueError):
        return None
    return t if t.tzinfo else t.replace(tzinfo=UTC)


def _clock(at: str) -> str:
    t = _parse(at)
    return t.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if t else at or "?"


def _span(a: str, b: str) -> str:
    ta, tb = _parse(a), _parse(b)
    if ta is None or tb is None:
        return "?"
    s = (tb - ta).total_seconds()
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def _verdict_words(run: RunRecord) -> str:
    cov = run.results.get("coverage") or {}
    verdict = str(run.results.get("verdict") or "?").upper()
    if isinstance(cov, Mapping) and cov:
        return f"{verdict} ({cov.get('judged', 0)} judged, {cov.get('skipped', 0)} skipped)"
    return verdict


def _phases_run(run: RunRecord) -> str:
    ps = [str(p.get("phase")) for p in run.results.get("phases") or [] if isinstance(p, Mapping)]
    return ",".join(ps) or "none"


def _signature(run: RunRecord) -> Mapping[str, Any] | None:
    check = _checks(run).get("ws.routes_probe")
    if check and INCIDENT_SIGNATURE in str(check.get("detail") or ""):
        return check
    return None


def _signature_at(run: RunRecord) -> str:
    """When phase 1 named the signature: the end of its probe (phase 1's last write)."""
    return run.phase_times.get(1, ("", ""))[1] or run.started_at


def _bad(run: RunRecord, *, counted_only: bool = True) -> list[Mapping[str, Any]]:
    superseded = set(run.results.get("superseded_phases") or [])
    return [
        c
        for c in _checks(run).values()
        if c.get("status") in ("fail", "error")
        and not (counted_only and c.get("phase") in superseded)
        and c.get("id") != "evidence.secret_scan"
    ]


def _after(at: str, seconds: Any) -> str:
    t = _parse(at)
    if t is None or not isinstance(seconds, (int, float)):
        return at
    return (t + timedelta(seconds=float(seconds))).isoformat()


def _mutation_events(run: RunRecord) -> list[Event]:
    out: list[Event] = []
    for m in run.results.get("mutations") or []:
        if not isinstance(m, Mapping):
            continue
        key, state = str(m.get("key") or "mutation"), str(m.get("state") or "")
        revision = str(m.get("revision") or "")
        check = {"deploy": "deploy.executed", "rollback": "rollback.traffic_moved"}.get(key, "")
        if key == "deploy":
            what = state + (f": revision {revision}" if revision else "")
            if m.get("operation"):
                what += f" (operation {m['operation']})"
        elif key == "rollback":
            what = state + (f": traffic to revision {revision}" if revision else "")
        else:
            what = state + (f": revision {revision}" if revision else "")
        if m.get("error"):
            what += f"; error: {m['error']}"
        at = str(m.get("finished_at") or m.get("started_at") or run.started_at)
        out.append(Event(at, key, what, (_link(run, check),)))
    return out


def _traffic_events(run: RunRecord) -> list[Event]:
    """Tags, traffic shifts and restores a verify-then-shift deploy recorded."""
    arts = run.phase_artifacts.get(2) or {}
    base = str(arts.get("deploy_started_at") or "")
    out: list[Event] = []
    verified = _checks(run).get("deploy.tag_verified") or {}
    for sample in arts.get("traffic_timeline") or []:
        if not isinstance(sample, Mapping):
            continue
        split = sample.get("split") or {}
        words = (
            ", ".join(f"{r} {p} %" for r, p in split.items()) if isinstance(split, Mapping) else ""
        )
        label = str(sample.get("label") or "traffic")
        if label == "before the deploy":
            continue  # the state the deploy started from, not a change
        if label.startswith("deploy:"):
            # verify-then-shift: the new revision at 0 % with its tag, probed on the tag URL.
            kind, check = "tag", "deploy.tag_verified"
            text = f"new revision at 0 % with a tag, verified on its tag URL: {verified.get('status', '?')}"
        else:
            kind = "restore" if label.startswith("restore") else "traffic"
            check, text = "deploy.latest_serving", label
        out.append(
            Event(
                _after(base, sample.get("t_s")),
                kind,
                f"{text} ({words})" if words else text,
                (_link(run, check),),
            )
        )
    serving = _checks(run).get("deploy.latest_serving")
    if not out and serving is not None and isinstance(serving.get("observed"), Mapping):
        # A direct deploy moves all traffic itself: what served once it finished.
        deploy: Mapping[str, Any] = next(
            (m for m in run.results.get("mutations") or [] if m.get("key") == "deploy"), {}
        )
        split = ", ".join(f"{r} {p} %" for r, p in serving["observed"].items())
        out.append(
            Event(
                str(deploy.get("finished_at") or base or run.started_at),
                "traffic",
                f"after the deploy: {split} ({serving.get('status')})",
                (_link(run, "deploy.latest_serving"),),
            )
        )
    tags = (run.phase_artifacts.get(6) or {}).get("tags_after")
    target = (run.phase_artifacts.get(6) or {}).get("rollback_target")
    if target and "rollback.target_verified" in _checks(run):
        probe = _checks(run)["rollback.target_verified"]
        t6 = run.phase_times.get(6, ("", ""))[0] or run.started_at
        out.append(
            Event(
                t6,
                "tag",
                f"rollback target {target} tagged and probed on its own URL: "
                f"{probe.get('status')}" + (f" (tags after: {', '.join(tags)})" if tags else ""),
                (_link(run, "rollback.target_verified"),),
            )
        )
    return out


def _timeline(runs: Sequence[RunRecord]) -> tuple[Event, ...]:
    events: list[Event] = []
    seen_signature = False
    for run in runs:
        events.append(
            Event(
                run.started_at,
                "run",
                f"{run.run_id} started (phases {_phases_run(run)}, "
                f"environment {run.results.get('environment', '?')})",
                (_link(run),),
            )
        )
        sig = _signature(run)
        if sig is not None:
            at = _signature_at(run)
            first = "first seen" if not seen_signature else "seen again"
            seen_signature = True
            events.append(
                Event(
                    at,
                    "signature",
                    f"{first}: {INCIDENT_SIGNATURE} (observed {json.dumps(sig.get('observed'))})",
                    (_link(run, "ws.routes_probe"),),
                )
            )
        events += _mutation_events(run)
        events += _traffic_events(run)
        hold = _checks(run).get("monitor.hold")
        if hold is not None:
            at = run.phase_times.get(7, ("", ""))[1] or run.finished_at
            events.append(
                Event(
                    at,
                    "hold",
                    f"{hold.get('status')}: {hold.get('detail')}",
                    (_link(run, "monitor.hold"),),
                )
            )
        rec = run.results.get("recommendation") or {}
        target = rec.get("target_revision")
        events.append(
            Event(
                run.finished_at,
                "verdict",
                f"{_verdict_words(run)}; recommendation {rec.get('action', '?')}"
                + (f" to {target}" if target else ""),
                (_link(run),),
            )
        )
    # Stable: events at the same instant keep the order they happened in within a run.
    order = {id(e): i for i, e in enumerate(events)}
    return tuple(
        sorted(
            events, key=lambda e: (_parse(e.at) or datetime.max.replace(tzinfo=UTC), order[id(e)])
        )
    )


def _fact(text: str, *links: Link) -> Fact:
    return Fact(text, tuple(links))


def _check_fact(run: RunRecord, check: Mapping[str, Any], prefix: str = "") -> Fact:
    detail = str(check.get("detail") or "")
    return _fact(
        f"{prefix}`{check['id']}` {check.get('status')}: {detail}", _link(run, str(check["id"]))
    )


def _summary(runs: Sequence[RunRecord], first_sig: RunRecord | None) -> Section:
    facts = [
        _fact(
            f"{len(runs)} run(s) between {_clock(runs[0].started_at)} and "
            f"{_clock(runs[-1].finished_at)} ({_span(runs[0].started_at, runs[-1].finished_at)}).",
            *(_link(r) for r in runs),
        )
    ]
    if first_sig is not None:
        facts.append(
            _fact(
                f"Incident signature first seen at {_clock(_signature_at(first_sig))}: "
                f"{INCIDENT_SIGNATURE}.",
                _link(first_sig, "ws.routes_probe"),
            )
        )
    last = runs[-1]
    facts.append(
        _fact(
            f"The last run ends with verdict {_verdict_words(last)}"
            f"{', rollback pending' if last.results.get('rollback_pending') else ''}.",
            _link(last),
        )
    )
    return Section(
        "Summary",
        tuple(facts),
        f"{_PROMPT} what happened, to whom, for how long, in two or three sentences.",
    )


def _impact(runs: Sequence[RunRecord], first_sig: RunRecord | None) -> Section:
    facts: list[Fact] = []
    if first_sig is not None:
        sig = _checks(first_sig)["ws.routes_probe"]
        observed = sig.get("observed")
        answers = (
            ", ".join(f"{path} -> {status}" for path, status in observed.items())
            if isinstance(observed, Mapping)
            else json.dumps(observed)
        )
        facts.append(
            _fact(
                f"Before remediation: {INCIDENT_SIGNATURE} ({answers}): no WebSocket "
                "conversation could start.",
                _link(first_sig, "ws.routes_probe"),
            )
        )
        healed = next(
            (
                r
                for r in runs
                if r.started_at >= first_sig.started_at
                and r.results.get("verdict") == "pass"
                and _checks(r).get("ws.upgrade", {}).get("status") == "pass"
            ),
            None,
        )
        if healed is not None:
            facts.append(
                _fact(
                    f"WebSocket upgrades observed failing from {_clock(first_sig.started_at)} "
                    f"until a passing run at {_clock(healed.finished_at)} "
                    f"({_span(first_sig.started_at, healed.finished_at)} observed by the runs; "
                    "the real impact started before the first run).",
                    _link(first_sig, "ws.routes_probe"),
                    _link(healed, "ws.upgrade"),
                )
            )
    for run in runs:
        for check in _bad(run):
            if check["id"] in ("ws.routes_probe",) and run is first_sig:
                continue
            if str(check["id"]).startswith(("isolation.", "events.", "auth.", "load.", "monitor.")):
                facts.append(_check_fact(run, check, f"Run {run.run_id}: "))
    last = runs[-1]
    for cid in ("monitor.uptime", "monitor.ws_failure_rate", "load.success_rate"):
        after = _checks(last).get(cid)
        if after is not None:
            facts.append(_check_fact(last, after, "After remediation: "))
    return Section(
        "Impact",
        tuple(facts),
        f"{_PROMPT} which users and features were affected, how many, for how long "
        "(from your own metrics: the runs only saw their own probes), SLO budget spent.",
    )


def _detection(runs: Sequence[RunRecord], first_sig: RunRecord | None) -> Section:
    facts: list[Fact] = []
    if first_sig is not None:
        facts.append(
            _fact(
                f"Run {first_sig.run_id} (phases {_phases_run(first_sig)}) named the incident "
                f"signature; it failed {len(_bad(first_sig, counted_only=False))} check(s): "
                + ", ".join(f"`{c['id']}`" for c in _bad(first_sig, counted_only=False))
                + ".",
                *(_link(first_sig, str(c["id"])) for c in _bad(first_sig, counted_only=False)),
            )
        )
    for run in runs:
        rec = run.results.get("recommendation") or {}
        if rec.get("action") == "rollback" and run.results.get("mutations"):
            bad = _bad(run)
            facts.append(
                _fact(
                    f"Run {run.run_id} caught its own deploy: "
                    + ", ".join(f"`{c['id']}` {c.get('status')}" for c in bad)
                    + f"; recommendation rollback to {rec.get('target_revision') or '?'}.",
                    *(_link(run, str(c["id"])) for c in bad),
                )
            )
    if not facts:
        facts.append(_fact("No run saw the incident signature or a failing deploy."))
    return Section(
        "Detection",
        tuple(facts),
        f"{_PROMPT} how the incident was first noticed (alert, user report, CI), when, "
        "and how long before the first run.",
    )


def _root_cause(runs: Sequence[RunRecord], first_sig: RunRecord | None) -> Section:
    facts: list[Fact] = []
    if first_sig is not None:
        cause = (first_sig.phase_artifacts.get(1) or {}).get("ws_cause")
        words = ""
        if isinstance(cause, Mapping):
            words = str(cause.get("cause") or cause.get("words") or cause.get("detail") or "")
        sig = _checks(first_sig)["ws.routes_probe"]
        detail = str(sig.get("detail") or "")
        diagnosed = words or (
            detail.split("Cause:", 1)[1].strip() if "Cause:" in detail else detail
        )
        facts.append(
            _fact(
                f"Diagnosed by the runbook from the evidence: {diagnosed}",
                _link(first_sig, "ws.routes_probe"),
                *(
                    [_link(first_sig, "source.ws_routes_present")]
                    if "source.ws_routes_present" in _checks(first_sig)
                    else []
                ),
            )
        )
    for run in runs:
        rec = run.results.get("recommendation") or {}
        if rec.get("action") == "rollback":
            facts.append(
                _fact(
                    f"Run {run.run_id}: {rec.get('reason')}",
                    *(_link(run, str(c["id"])) for c in _bad(run)),
                )
            )
    return Section(
        "Root cause",
        tuple(facts),
        f"{_PROMPT} confirm or correct the diagnosis; why the faulty change was built, "
        "reviewed and deployed (ask why until the answer is a process, not a person).",
    )


def _remediation(runs: Sequence[RunRecord]) -> Section:
    facts: list[Fact] = []
    for run in runs:
        for e in _mutation_events(run):
            facts.append(_fact(f"{_clock(e.at)}, run {run.run_id}: {e.kind} {e.text}.", *e.links))
        if run.results.get("mutations") or run is runs[-1]:
            facts.append(
                _fact(
                    f"Run {run.run_id} ends {_verdict_words(run)}.",
                    _link(run),
                )
            )
        pending = run.results.get("rollback_pending")
        if isinstance(pending, Mapping):
            facts.append(
                _fact(
                    f"Run {run.run_id}: rollback to {pending.get('target_revision')} "
                    f"recommended but not performed: `{pending.get('command')}`",
                    _link(run),
                )
            )
    return Section(
        "Remediation",
        tuple(facts),
        f"{_PROMPT} what was done outside the runbook (manual steps, communication).",
    )


def _went_well(runs: Sequence[RunRecord]) -> Section:
    facts: list[Fact] = []
    for run in runs:
        moved = [
            m
            for m in run.results.get("mutations") or []
            if isinstance(m, Mapping) and m.get("key") == "rollback" and m.get("state") == "done"
        ]
        deploy = next(
            (
                m
                for m in run.results.get("mutations") or []
                if isinstance(m, Mapping) and m.get("key") == "deploy"
            ),
            None,
        )
        if moved and deploy is not None:
            spent = _span(
                str(deploy.get("started_at") or ""), str(moved[0].get("finished_at") or "")
            )
            facts.append(
                _fact(
                    f"Run {run.run_id} rolled its faulty deploy back to "
                    f"{moved[0].get('revision') or '?'} {spent} after the deploy started.",
                    _link(run, "deploy.executed"),
                    _link(run, "rollback.traffic_moved"),
                )
            )
    verified = [r for r in runs if r.verified]
    if verified:
        facts.append(
            _fact(
                f"{len(verified)} of {len(runs)} run folder(s) verified against their "
                "manifests and the hash chain.",
                *(_link(r) for r in verified),
            )
        )
    return Section("What went well", tuple(facts), f"{_PROMPT} what helped, and why.")


def _action_items(runs: Sequence[RunRecord]) -> Section:
    facts: list[Fact] = []
    last = runs[-1]
    for check in _bad(last):
        facts.append(_check_fact(last, check, "Still failing in the last run: "))
    for check in _checks(last).values():
        if check.get("status") == "warn":
            facts.append(_check_fact(last, check, "Warning in the last run: "))
    for warning in (last.results.get("configuration") or {}).get("warnings") or []:
        facts.append(_fact(f"Configuration warning: {warning}", _link(last)))
    return Section(
        "Action items",
        tuple(facts),
        f"{_PROMPT} each item with an owner and a date (prevent, detect sooner, "
        "mitigate faster); link the tickets here.",
    )


def _figures(runs: Sequence[RunRecord]) -> tuple[FigureRow, ...]:
    stems: list[str] = []
    for run in runs:
        for fig in run.results.get("figures") or []:
            stem = Path(str(fig)).stem
            if stem not in stems:
                stems.append(stem)
    rows = []
    for stem in sorted(stems):
        m = re.match(r"p(\d+)-(.*)", stem)
        words = m.group(2).replace("-", " ").capitalize() if m else stem
        words = re.sub(r"(?i)websocket", "WebSocket", words)
        title = f"{words} (phase {int(m.group(1))})" if m else words
        cells = []
        for run in runs:
            rel = f"figures/{stem}.png"
            have = rel in {str(f) for f in run.results.get("figures") or []}
            cells.append((run.run_id, rel if have else ""))
        rows.append(FigureRow(title, tuple(cells)))
    return tuple(rows)


def build_postmortem(
    runs: Iterable[RunRecord], *, generated_at: str = "", title: str = ""
) -> Postmortem:
    """The postmortem document from run records (pure: no I/O, no clock).

    Runs that failed verification or are unsafe to share are listed among the
    sources, marked, and contribute no fact, event or figure.
    """
    ordered = sorted(runs, key=lambda r: (r.started_at or r.run_id, r.run_id))
    sources = tuple(
        SourceRun(
            r.run_id,
            str(r.results.get("verdict") or "?"),
            r.manifest_sha256,
            r.verified,
            r.safe_to_share,
            r.verify_words,
            r.href,
        )
        for r in ordered
    )
    used = [r for r in ordered if r.usable]
    name = title or (
        f"Postmortem: {used[0].results.get('environment', '?')}, {_clock(used[0].started_at)[:10]}"
        if used
        else "Postmortem"
    )
    if not used:
        return Postmortem(name, generated_at, sources, (), (), ())
    first_sig = next((r for r in used if _signature(r) is not None), None)
    sections = (
        _summary(used, first_sig),
        _impact(used, first_sig),
        _detection(used, first_sig),
        _root_cause(used, first_sig),
        _remediation(used),
        _went_well(used),
        Section(
            "What went wrong",
            (),
            f"{_PROMPT} what made the incident longer or worse than it had to be.",
        ),
        _action_items(used),
    )
    return Postmortem(name, generated_at, sources, _timeline(used), sections, _figures(used))


# ------------------------------------------------------------------ reading run folders

_CHECK_ID = re.compile(r"(?<![\w.])([a-z0-9_]+(?:\.[a-z0-9_]+)+)(?![\w.])")


def _cell_links(run_dir: Path, known: Iterable[str]) -> dict[str, tuple[str, str]]:
    """check id -> (notebook HTML, cell id): the first code cell whose output names it."""
    wanted = set(known)
    out: dict[str, tuple[str, str]] = {}
    for nb in sorted(run_dir.glob("[0-9][0-9]_*.ipynb")):
        page = nb.with_suffix(".html").name
        if not (run_dir / page).is_file():
            continue
        try:
            doc = json.loads(nb.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for cell in doc.get("cells") or []:
            if not isinstance(cell, dict) or cell.get("cell_type") != "code" or not cell.get("id"):
                continue
            text = json.dumps(cell.get("outputs") or [])
            for cid in set(_CHECK_ID.findall(text)) & wanted:
                out.setdefault(cid, (page, str(cell["id"])))
    return out


def _verify_words(run_dir: Path) -> tuple[bool, bool, str]:
    report = verify_run(run_dir)
    if report.chain == "no-manifest":
        return False, False, f"no readable {MANIFEST}: the folder was never sealed"
    problems = [
        f"{label}: {', '.join(items[:5])}"
        for label, items in (
            ("changed", report.changed),
            ("missing", report.missing),
            ("added", report.added),
        )
        if items
    ]
    if report.chain == "broken":
        problems.append(f"chain broken: {report.chain_detail}")
    if problems:
        return False, report.safe_to_share, "FAILED verification: " + "; ".join(problems)
    chain = {
        "ok": f"linked to {report.previous_run_id}",
        "genesis": "first run of its chain",
        "unchecked": "previous run absent, link not checked",
    }.get(report.chain, report.chain)
    return True, report.safe_to_share, f"verified: every file matches; {chain}"


def load_run(run_dir: str | os.PathLike[str], *, relative_to: str | os.PathLike[str]) -> RunRecord:
    """Read and verify one run folder (never raises for a damaged one: it is marked).

    Args:
        run_dir: the run folder.
        relative_to: the folder the postmortem is written to (links are relative to it).
    """
    root = Path(run_dir).resolve()
    verified, safe, words = _verify_words(root)
    try:
        results = json.loads((root / RESULTS).read_text(encoding="utf-8"))
        if not isinstance(results, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        results = {}
        verified, words = False, f"{words}; unreadable {RESULTS}: {exc}"
    if (root / UNSAFE_MARKER).exists():
        safe = False
    manifest = root / MANIFEST
    sha = hashlib.sha256(manifest.read_bytes()).hexdigest() if manifest.is_file() else ""
    href = Path(os.path.relpath(root, Path(relative_to).resolve())).as_posix()
    if not (verified and safe):
        # Named in the document, never read further: nothing in it is evidence.
        return RunRecord(root.name, href, results, verified, words, safe, sha)
    times: dict[int, tuple[str, str]] = {}
    arts: dict[int, Mapping[str, Any]] = {}
    for phase in PHASES:
        try:
            doc = json.loads(phase_file(root, phase).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(doc, dict):
            times[phase] = (str(doc.get("started_at") or ""), str(doc.get("updated_at") or ""))
            a = doc.get("artifacts")
            arts[phase] = a if isinstance(a, dict) else {}
    ids = [str(c.get("id")) for c in results.get("checks") or [] if isinstance(c, dict)]
    figures: dict[str, bytes] = {}
    for rel in results.get("figures") or []:
        path = (root / str(rel)).resolve()
        if path.is_file() and path.is_relative_to(root) and path.suffix == ".png":
            figures[str(rel)] = path.read_bytes()
    return RunRecord(
        run_id=root.name,
        href=href,
        results=results,
        verified=verified,
        verify_words=words,
        safe_to_share=safe,
        manifest_sha256=sha,
        phase_times=times,
        phase_artifacts=arts,
        cells=_cell_links(root, ids),
        notebooks_html=frozenset(p.name for p in root.glob("[0-9][0-9]_*.html")),
        figures=figures,
    )


def chain_window(
    out_dir: str | os.PathLike[str], since: datetime | None = None, until: datetime | None = None
) -> list[Path]:
    """The run folders of the outputs folder's manifest chain started in [since, until]."""
    root = Path(out_dir)
    picked = []
    for rid in chain_runs(root):
        try:
            started = datetime.strptime(rid[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
        except ValueError:
            continue
        if (since is None or started >= since) and (until is None or started <= until):
            picked.append(root / rid)
    return picked


# ------------------------------------------------------------------ writers


def _folders(doc: Postmortem) -> dict[str, str]:
    """run id -> its folder relative to the postmortem."""
    return {s.run_id: s.href for s in doc.sources}


def _md_links(links: Sequence[Link]) -> str:
    return " ".join(f"[{lk.label}]({lk.href})" for lk in links)


def _md_text(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


def render_markdown(doc: Postmortem) -> str:
    """``postmortem.md``."""
    lines = [
        f"# {doc.title}",
        "",
        f"Generated {_clock(doc.generated_at)} by `runbook postmortem`.",
        "",
    ]
    for s in doc.refused:
        lines += [
            f"> **NOT USED: run {s.run_id}** ({s.verify_words}"
            f"{'' if s.safe_to_share else '; marked not safe to share'}).",
            "",
        ]
    lines += ["## Timeline", "", "| time (UTC) | what | evidence |", "|---|---|---|"]
    for e in doc.timeline:
        lines.append(
            f"| {_clock(e.at)[11:19]} | **{e.kind}** {_md_text(e.text)} | {_md_links(e.links)} |"
        )
    for sec in doc.sections:
        lines += ["", f"## {sec.title}", ""]
        for f in sec.facts:
            lines.append(f"- {f.text} {_md_links(f.links)}".rstrip())
        if sec.prompt:
            lines += ["", f"> _{sec.prompt}_", ">", "> TODO", ""]
    if doc.figures:
        runs = [rid for rid, _ in doc.figures[0].cells]
        lines += [
            "",
            "## Figures across the runs",
            "",
            "| figure | " + " | ".join(runs) + " |",
            "|---|" + "---|" * len(runs),
        ]
        for row in doc.figures:
            href = _folders(doc)
            cells = [
                f"![{row.title}]({_join(href.get(rid, ''), rel)})" if rel else "not drawn"
                for rid, rel in row.cells
            ]
            lines.append(f"| {row.title} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Built from",
        "",
        "| run | verdict | manifest SHA-256 | verify |",
        "|---|---|---|---|",
    ]
    for s in doc.sources:
        lines.append(
            f"| [{s.run_id}]({_join(s.href, 'index.html')}) | {s.verdict} | `{s.manifest_sha256 or '-'}` | "
            f"{_md_text(s.verify_words)}{'' if s.used else ' **NOT USED**'} |"
        )
    return redact("\n".join(lines) + "\n")


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;max-width:1200px;color:#222;line-height:1.4}
table{border-collapse:collapse;width:100%;font-size:.9em;margin:.5em 0 1.5em}
td,th{border:1px solid #ddd;padding:4px 6px;text-align:left;vertical-align:top}
td.t{overflow-wrap:anywhere}td.k,th{white-space:nowrap}td.k{width:1%}
.refused{background:#000;color:#ff5252;padding:.6em 1em;font-weight:bold}
.prompt{border-left:4px solid #e65100;background:#fff3e0;padding:.4em 1em;margin:.5em 0 1em}
.ev a{font-size:.85em;margin-right:.5em;white-space:nowrap}
tr.signature{background:#f8d7da}tr.verdict{background:#e8eaf6}tr.rollback{background:#fff3cd}
tr.deploy{background:#e3f2fd}tr.hold{background:#e8f5e9}
.figs{display:grid;grid-template-columns:repeat(auto-fit,minmax(260px,1fr));gap:.6em}
.figs figure{margin:0}.figs img{width:100%;border:1px solid #eee}
.figs figcaption{font-size:.8em;color:#555}.none{color:#999;font-size:.85em;padding:2em 0}
code{overflow-wrap:anywhere}li{margin:.3em 0}td code.sha{font-size:.75em}
"""


def _html_links(links: Sequence[Link]) -> str:
    e = html.escape
    return " ".join(f"<a href='{e(lk.href)}'>{e(lk.label)}</a>" for lk in links)


def _html_text(text: str) -> str:
    parts = html.escape(text).split("`")
    return "".join(f"<code>{p}</code>" if i % 2 else p for i, p in enumerate(parts))


def render_html(doc: Postmortem, figures: Mapping[tuple[str, str], bytes]) -> str:
    """``postmortem.html``: self-contained (figures as data URIs)."""
    e = html.escape
    out = [
        f"<!doctype html><html><head><meta charset='utf-8'><meta name='viewport' "
        f"content='width=device-width'><title>{e(doc.title)}</title><style>{_CSS}</style>"
        f"</head><body><h1>{e(doc.title)}</h1><p>Generated {e(_clock(doc.generated_at))} by "
        "<code>runbook postmortem</code>. Every fact links to the run and check that "
        "establish it; the orange boxes are for people to fill in.</p>"
    ]
    for s in doc.refused:
        why = s.verify_words + ("" if s.safe_to_share else "; marked not safe to share")
        out.append(f"<p class='refused'>NOT USED: run {e(s.run_id)}: {e(why)}</p>")
    out.append("<h2>Timeline</h2><table><tr><th>time (UTC)</th><th>what</th><th>evidence</th></tr>")
    for ev in doc.timeline:
        out.append(
            f"<tr class='{e(ev.kind)}'><td class='k'>{e(_clock(ev.at)[:19])}</td>"
            f"<td class='t'><b>{e(ev.kind)}</b> {_html_text(ev.text)}</td>"
            f"<td class='ev'>{_html_links(ev.links)}</td></tr>"
        )
    out.append("</table>")
    for sec in doc.sections:
        out.append(f"<h2>{e(sec.title)}</h2>")
        if sec.facts:
            out.append("<ul>")
            out += [
                f"<li>{_html_text(f.text)} <span class='ev'>{_html_links(f.links)}</span></li>"
                for f in sec.facts
            ]
            out.append("</ul>")
        if sec.prompt:
            out.append(f"<div class='prompt'>{e(sec.prompt)}</div>")
    if doc.figures:
        out.append("<h2>Figures across the runs</h2>")
        folders = _folders(doc)
        for row in doc.figures:
            out.append(f"<h3>{e(row.title)}</h3><div class='figs'>")
            for rid, rel in row.cells:
                data = figures.get((rid, rel)) if rel else None
                if data:
                    src = "data:image/png;base64," + base64.b64encode(data).decode()
                    out.append(
                        f"<figure><img alt='{e(row.title)}, run {e(rid)}' src='{src}'/>"
                        f"<figcaption>run {e(rid)} (<a href='{e(_join(folders.get(rid, ''), rel))}'>"
                        "full size</a>)</figcaption></figure>"
                    )
                else:
                    out.append(f"<figure><div class='none'>run {e(rid)}: not drawn</div></figure>")
            out.append("</div>")
    out.append(
        "<h2>Built from</h2><table><tr><th>run</th><th>verdict</th><th>manifest SHA-256</th>"
        "<th>verify</th></tr>"
    )
    for s in doc.sources:
        mark = "" if s.used else " <b>NOT USED</b>"
        out.append(
            f"<tr><td class='k'><a href='{e(_join(s.href, 'index.html'))}'>{e(s.run_id)}</a></td>"
            f"<td class='k'>{e(s.verdict)}</td><td class='t'><code class='sha'>{e(s.manifest_sha256 or '-')}"
            f"</code></td><td class='t'>{e(s.verify_words)}{mark}</td></tr>"
        )
    out.append("</table></body></html>")
    return redact("\n".join(out))


def _has_secret(text: str) -> bool:
    """The run folders' final scan, over one written file: registered values, JWTs."""
    return bool(count_secrets(text) or JWT_PATTERN.search(text))


@dataclass(frozen=True, slots=True)
class Written:
    """What :func:`write_postmortem` wrote, and what its secret scan found."""

    html: Path
    markdown: Path
    document: Postmortem
    leaks: tuple[str, ...] = ()


def write_postmortem(
    run_dirs: Sequence[str | os.PathLike[str]],
    out_dir: str | os.PathLike[str],
    *,
    now: datetime | None = None,
) -> Written:
    """Verify and read the run folders, build the document, write both files, scan them.

    A secret found by the scan (after redaction) leaves ``UNSAFE_TO_SHARE`` beside the
    files and is reported in ``leaks`` (file names, never values).

    Raises:
        ConfigError: ``out_dir`` is inside one of the run folders (it would unseal it).
    """
    out = Path(out_dir)
    for d in run_dirs:
        if out.resolve().is_relative_to(Path(d).resolve()):
            # A file added to a sealed folder would fail its verification from then on.
            raise ConfigError(f"--out {out} is inside the run folder {d}: write it elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    runs = [load_run(d, relative_to=out) for d in run_dirs]
    doc = build_postmortem(runs, generated_at=(now or datetime.now(UTC)).isoformat())
    figures = {(r.run_id, rel): data for r in runs if r.usable for rel, data in r.figures.items()}
    md = out / "postmortem.md"
    page = out / "postmortem.html"
    md.write_text(render_markdown(doc), encoding="utf-8")
    page.write_text(render_html(doc, figures), encoding="utf-8")
    marker = out / UNSAFE_MARKER
    leaks = tuple(p.name for p in (md, page) if _has_secret(p.read_text(encoding="utf-8")))
    if leaks:
        marker.write_text(
            "The secret scan found secret material in: " + ", ".join(leaks) + "\n",
            encoding="utf-8",
        )
    elif marker.exists():
        marker.unlink()
    return Written(page, md, doc, leaks)
