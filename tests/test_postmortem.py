"""``runbook postmortem``: verified run folders become one linked, self-contained story."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest
from run_records import JWT, deploy_ok, finalize, pass_outcomes, persist_phase

from runbook_lib import cli, evidence
from runbook_lib.checks.causes import INCIDENT_SIGNATURE
from runbook_lib.manifest import UNSAFE_MARKER, scan_secrets
from runbook_lib.postmortem import (
    RunRecord,
    build_postmortem,
    chain_window,
    render_html,
    render_markdown,
    write_postmortem,
)
from runbook_lib.redaction import register_secret

SIG = f"Incident signature: {INCIDENT_SIGNATURE} (/websocket -> 404). Cause: route missing"


def _check(cid: str, phase: int, status: str, detail: str = "", observed=None) -> dict:
    return {
        "id": cid,
        "phase": phase,
        "status": status,
        "observed": observed,
        "threshold": None,
        "detail": detail or f"{cid} {status}",
        "duration_s": 0.1,
    }


def _incident(run_id: str = "20261207T100000Z-prod", **kw) -> RunRecord:
    """Phases 1,3 against the broken service: the signature, no mutation."""
    results = {
        "run_id": run_id,
        "environment": "prod",
        "started_at": "2026-12-07T10:00:00+00:00",
        "finished_at": "2026-12-07T10:00:20+00:00",
        "verdict": "fail",
        "coverage": {"judged": 16, "skipped": 1, "not_applicable": 0},
        "phases": [{"phase": 1}, {"phase": 3}],
        "checks": [
            _check("ws.routes_probe", 1, "fail", SIG, {"/websocket": 404}),
            _check("ws.upgrade", 3, "fail"),
        ],
        "recommendation": {"action": "hold", "reason": "", "target_revision": None},
        "figures": ["figures/p01-health-and-websocket-route-probe.png"],
    }
    defaults = {
        "href": f"../{run_id}",
        "results": results,
        "phase_times": {1: ("2026-12-07T10:00:02+00:00", "2026-12-07T10:00:05+00:00")},
        "cells": {"ws.routes_probe": ("01_deployment_status.html", "phase1-cell10")},
        "notebooks_html": frozenset({"01_deployment_status.html", "03_endpoint_validation.html"}),
        "manifest_sha256": "a" * 64,
        "verify_words": "verified",
    }
    return RunRecord(run_id, **{**defaults, **kw})


def _bad_deploy(run_id: str = "20261207T101000Z-prod") -> RunRecord:
    """A deploy that leaked events between users, rolled back by phase 6."""
    results = {
        "run_id": run_id,
        "environment": "prod",
        "started_at": "2026-12-07T10:10:00+00:00",
        "finished_at": "2026-12-07T10:11:00+00:00",
        "verdict": "fail",
        "phases": [{"phase": p} for p in (2, 5, 6, 7)],
        "checks": [
            _check("deploy.executed", 2, "pass"),
            _check("deploy.latest_serving", 2, "pass", observed={"b-3": 100}),
            _check("isolation.no_cross_user", 5, "fail", "foreign frames: a data leak"),
            _check("rollback.target_verified", 6, "pass"),
            _check("rollback.traffic_moved", 6, "pass"),
            _check("monitor.hold", 7, "pass", "held 4.0s and closed with 1000"),
        ],
        "recommendation": {
            "action": "rollback",
            "reason": "failed after deploy: isolation.no_cross_user",
            "target_revision": "b-1",
        },
        "mutations": [
            {
                "key": "deploy",
                "state": "done",
                "phase": 2,
                "started_at": "2026-12-07T10:10:05+00:00",
                "finished_at": "2026-12-07T10:10:08+00:00",
                "revision": "b-3",
            },
            {
                "key": "rollback",
                "state": "done",
                "phase": 6,
                "started_at": "2026-12-07T10:10:40+00:00",
                "finished_at": "2026-12-07T10:10:41+00:00",
                "revision": "b-1",
            },
        ],
        "figures": ["figures/p05-multi-user-isolation.png"],
    }
    return RunRecord(
        run_id,
        href=f"../{run_id}",
        results=results,
        phase_times={
            6: ("2026-12-07T10:10:39+00:00", "2026-12-07T10:10:42+00:00"),
            7: ("2026-12-07T10:10:43+00:00", "2026-12-07T10:10:59+00:00"),
        },
        phase_artifacts={6: {"rollback_target": "b-1"}},
        cells={"rollback.traffic_moved": ("06_rollback.html", "phase6-cell08")},
        notebooks_html=frozenset({"02_deploy.html", "06_rollback.html", "07_monitoring.html"}),
    )


def _kinds(doc) -> list[str]:
    return [e.kind for e in doc.timeline]


def test_timeline_is_in_wall_clock_order_across_runs_given_in_any_order():
    doc = build_postmortem([_bad_deploy(), _incident()])
    assert _kinds(doc) == [
        "run",
        "signature",
        "verdict",
        "run",
        "deploy",
        "traffic",
        "tag",
        "rollback",
        "hold",
        "verdict",
    ]
    times = [e.at for e in doc.timeline]
    assert times == sorted(times)


@pytest.mark.parametrize(
    ("kind", "check", "href"),
    [
        ("signature", "ws.routes_probe", "../R1/01_deployment_status.html#cell-id=phase1-cell10"),
        ("rollback", "rollback.traffic_moved", "../R2/06_rollback.html#cell-id=phase6-cell08"),
        # No cell recorded for the check: its notebook's page.
        ("deploy", "deploy.executed", "../R2/02_deploy.html"),
        ("hold", "monitor.hold", "../R2/07_monitoring.html"),
        # A run-level fact: the run's front page.
        ("verdict", "", "../R2/index.html"),
    ],
)
def test_each_timeline_event_links_its_run_check_and_cell(kind, check, href):
    doc = build_postmortem(
        [
            _incident("R1", href="../R1"),
            RunRecord(**{**_fields(_bad_deploy("R2")), "href": "../R2"}),
        ]
    )
    event = [e for e in doc.timeline if e.kind == kind][-1]
    (link,) = event.links
    assert (link.check_id, link.href) == (check, href)


def _fields(run: RunRecord) -> dict:
    return {f: getattr(run, f) for f in RunRecord.__slots__}


def test_a_verify_then_shift_deploy_shows_its_tag_steps_and_restore():
    run = _bad_deploy()
    results = {**run.results}
    results["checks"] = [*results["checks"], _check("deploy.tag_verified", 2, "pass")]
    timeline = [
        {"t_s": 0.0, "split": {"b-1": 100}, "label": "before the deploy"},
        {"t_s": 2.0, "split": {"b-1": 100, "b-3": 0}, "label": "deploy: b-3 at 0 %"},
        {"t_s": 9.5, "split": {"b-1": 90, "b-3": 10}, "label": "step 10 %"},
        {"t_s": 20.0, "split": {"b-1": 100}, "label": "restore: previous split"},
    ]
    arts = {2: {"deploy_started_at": "2026-12-07T10:10:05+00:00", "traffic_timeline": timeline}}
    doc = build_postmortem(
        [RunRecord(**{**_fields(run), "results": results, "phase_artifacts": arts})]
    )
    shift = [
        (e.at[11:19], e.kind, e.text)
        for e in doc.timeline
        if e.kind in ("tag", "traffic", "restore")
    ]
    assert shift[:3] == [
        (
            "10:10:07",
            "tag",
            "new revision at 0 % with a tag, verified on its tag URL: pass (b-1 100 %, b-3 0 %)",
        ),
        ("10:10:14", "traffic", "step 10 % (b-1 90 %, b-3 10 %)"),
        ("10:10:25", "restore", "restore: previous split (b-1 100 %)"),
    ]


def test_the_signature_is_first_seen_once_then_seen_again():
    later = _incident(
        "20261207T102000Z-prod",
        results={
            **_incident().results,
            "run_id": "20261207T102000Z-prod",
            "started_at": "2026-12-07T10:20:00+00:00",
            "finished_at": "2026-12-07T10:20:20+00:00",
        },
        phase_times={1: ("2026-12-07T10:20:02+00:00", "2026-12-07T10:20:05+00:00")},
    )
    doc = build_postmortem([later, _incident()])
    sig = [e for e in doc.timeline if e.kind == "signature"]
    assert [e.text.split(":")[0] for e in sig] == ["first seen", "seen again"]
    assert sig[0].at == "2026-12-07T10:00:05+00:00"


def test_every_section_fact_has_evidence_and_judgement_is_left_to_people():
    doc = build_postmortem([_incident(), _bad_deploy()])
    titles = [s.title for s in doc.sections]
    assert titles == [
        "Summary",
        "Impact",
        "Detection",
        "Root cause",
        "Remediation",
        "What went well",
        "What went wrong",
        "Action items",
    ]
    for section in doc.sections:
        assert section.prompt.startswith("For people to write:"), section.title
        for fact in section.facts:
            assert fact.links, (section.title, fact.text)
    by_title = {s.title: s for s in doc.sections}
    root = " ".join(f.text for f in by_title["Root cause"].facts)
    assert "route missing" in root and "isolation.no_cross_user" in root
    well = " ".join(f.text for f in by_title["What went well"].facts)
    assert "rolled its faulty deploy back to b-1 36 s after the deploy started" in well


def test_a_run_that_failed_verification_is_named_and_contributes_nothing():
    tampered = _incident(verified=False, verify_words="FAILED verification: changed: summary.md")
    doc = build_postmortem([tampered, _bad_deploy()])
    assert [s.run_id for s in doc.refused] == [tampered.run_id]
    used_ids = {lk.run_id for e in doc.timeline for lk in e.links}
    used_ids |= {lk.run_id for s in doc.sections for f in s.facts for lk in f.links}
    assert tampered.run_id not in used_ids
    assert all(rid != tampered.run_id for row in doc.figures for rid, _ in row.cells)
    page = render_html(doc, {})
    assert f"NOT USED: run {tampered.run_id}: FAILED verification: changed: summary.md" in page
    assert f"**NOT USED: run {tampered.run_id}**" in render_markdown(doc)


def test_a_run_unsafe_to_share_is_not_used_either():
    doc = build_postmortem([_incident(safe_to_share=False)])
    assert doc.timeline == () and doc.sections == ()
    assert "marked not safe to share" in render_html(doc, {})


def test_figures_sit_side_by_side_and_say_when_a_run_did_not_draw_one():
    doc = build_postmortem([_incident(), _bad_deploy()])
    rows = {r.title: r.cells for r in doc.figures}
    assert rows["Health and WebSocket route probe (phase 1)"] == (
        ("20261207T100000Z-prod", "figures/p01-health-and-websocket-route-probe.png"),
        ("20261207T101000Z-prod", ""),
    )
    page = render_html(doc, {("20261207T100000Z-prod", doc.figures[0].cells[0][1]): b"\x89PNG"})
    assert "src='data:image/png;base64,iVBORw==" in page
    assert "20261207T101000Z-prod: not drawn" in page


def test_the_page_is_self_contained_and_redacted():
    run = _incident()
    results = dict(run.results)
    results["checks"] = [
        _check("ws.routes_probe", 1, "fail", f"{SIG} Authorization: Bearer {JWT}", {"/w": 404})
    ]
    doc = build_postmortem([RunRecord(**{**_fields(run), "results": results})])
    page = render_html(doc, {})
    assert JWT not in page and JWT not in render_markdown(doc)
    # Nothing fetched: no external script, stylesheet or image.
    assert not re.search(r"<(script|link)\b", page)
    assert all(src.startswith("data:") for src in re.findall(r"src='([^']*)'", page))


# ------------------------------------------------------------------ real run folders


def _seal(out: Path, when: datetime, *, deploy: bool = False, detail: str = "") -> Path:
    run_dir = evidence.create_run_dir(out, "test", now=when)
    persist_phase(run_dir, 1, [("ws.routes_probe", "fail")], figure=True)
    if deploy:
        deploy_ok(run_dir)
    if detail:
        persist_phase(run_dir, 3, [("ws.upgrade", "pass")], {"note": detail})
    finalize(run_dir, pass_outcomes(1, 2) if deploy else pass_outcomes(1))
    return run_dir


def test_postmortem_cli_names_a_tampered_folder_and_exits_1(tmp_path, capsys):
    out = tmp_path / "outputs"
    first = _seal(out, datetime(2026, 12, 7, 10, 0, tzinfo=UTC))
    second = _seal(out, datetime(2026, 12, 7, 10, 5, tzinfo=UTC), deploy=True)
    (first / "summary.md").write_text("edited after the fact\n", encoding="utf-8")
    code = cli.main(["postmortem", str(second), str(first), "--out", str(tmp_path / "pm")])
    printed = capsys.readouterr().out
    assert code == 1
    assert f"NOT USED: {first.name}: FAILED verification: changed: summary.md" in printed
    assert f"used: {second.name}: verified" in printed
    page = (tmp_path / "pm" / "postmortem.html").read_text(encoding="utf-8")
    assert f"NOT USED: run {first.name}" in page
    assert f"href='../outputs/{second.name}/index.html'" in page
    # The good run's figure is embedded; the refused run's is not.
    assert page.count("data:image/png;base64,") == 1


def test_written_files_pass_the_secret_scan_even_for_a_secret_known_only_later(tmp_path):
    """A value registered after a run was sealed is still redacted from the postmortem."""
    secret = "s3cr3t-token-value-42"
    run_dir = _seal(tmp_path / "outputs", datetime(2026, 12, 7, 10, 0, tzinfo=UTC), detail=secret)
    register_secret(secret)
    written = write_postmortem([run_dir], tmp_path / "pm")
    assert written.leaks == ()
    assert scan_secrets(tmp_path / "pm") == []
    assert not (tmp_path / "pm" / UNSAFE_MARKER).exists()
    assert written.markdown.is_file() and written.html.is_file()


def test_chain_window_picks_the_chained_runs_started_in_the_window(tmp_path):
    out = tmp_path / "outputs"
    runs = [_seal(out, datetime(2026, 12, 7, 10, m, tzinfo=UTC)) for m in (0, 10, 20)]
    (out / "20261207T103000Z-test").mkdir()  # not sealed: not in the chain
    assert chain_window(out) == runs
    assert (
        chain_window(
            out,
            since=datetime(2026, 12, 7, 10, 5, tzinfo=UTC),
            until=datetime(2026, 12, 7, 10, 20, tzinfo=UTC),
        )
        == runs[1:]
    )


def test_postmortem_chain_cli_writes_beside_the_runs_by_default(tmp_path, capsys):
    out = tmp_path / "outputs"
    _seal(out, datetime(2026, 12, 7, 10, 0, tzinfo=UTC))
    late = _seal(out, datetime(2026, 12, 7, 11, 0, tzinfo=UTC))
    code = cli.main(["postmortem", "--chain", str(out), "--since", "2026-12-07T10:30"])
    assert code == 0, capsys.readouterr()
    md = (out / "postmortem" / "postmortem.md").read_text(encoding="utf-8")
    assert f"| [{late.name}](../{late.name}/index.html) |" in md
    assert "| [20261207T100000Z-test]" not in md


@pytest.mark.parametrize(
    "argv",
    [
        ["postmortem"],
        ["postmortem", "--since", "2026-12-07", "x"],
        ["postmortem", "--chain", "no-such-folder"],
        ["postmortem", "--chain", ".", "--since", "yesterday"],
        ["postmortem", "20261207T100000Z-test", "--out", "20261207T100000Z-test/pm"],
    ],
)
def test_postmortem_usage_errors_exit_2(argv, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "20261207T100000Z-test").mkdir()
    assert cli.main(argv) == 2


@pytest.mark.slow
@pytest.mark.e2e
def test_postmortem_over_real_sandbox_runs_links_every_fact_to_a_real_cell(tmp_path):
    """The incident seen (phases 1,3), then the fix deployed (2,3): one linked story."""
    out, state = tmp_path / "outputs", tmp_path / "sandbox"
    common = ["--out", str(out), "--sandbox-state-dir", str(state)]
    assert cli.main(["run", "--phases", "1,3", *common]) == 1
    assert cli.main(["run", "--phases", "2,3", "--approve", *common]) == 0
    assert cli.main(["postmortem", "--chain", str(out)]) == 0
    page_path = out / "postmortem" / "postmortem.html"
    page = page_path.read_text(encoding="utf-8")
    doc = write_postmortem(chain_window(out), out / "postmortem").document
    assert [e.kind for e in doc.timeline] == [
        "run",
        "signature",
        "verdict",
        "run",
        "deploy",
        "traffic",
        "verdict",
    ]
    links = {lk for e in doc.timeline for lk in e.links}
    links |= {lk for s in doc.sections for f in s.facts for lk in f.links}
    cells = [lk for lk in links if "#cell-id=" in lk.href]
    assert {lk.check_id for lk in cells} >= {"ws.routes_probe", "deploy.executed"}
    for lk in links:
        target, _, anchor = lk.href.partition("#")
        path = (page_path.parent / target).resolve()
        assert path.is_file(), lk
        if anchor:
            assert f'id="{anchor}"' in path.read_text(encoding="utf-8"), lk
    assert scan_secrets(out / "postmortem") == []
    assert page.count("data:image/png;base64,") >= 3
