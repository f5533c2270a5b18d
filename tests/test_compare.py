"""Comparing two run folders: status changes first, then numeric deltas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from run_records import deploy_ok, finalize, pass_outcomes, persist_phase

from runbook_lib import compare, evidence
from runbook_lib.context import PhaseContext, StepReport
from runbook_lib.results import CheckResult
from runbook_lib.settings_load import settings_from_dict


def test_compare_reports_status_changes_and_numeric_deltas(tmp_path: Path) -> None:
    a = evidence.create_run_dir(tmp_path, "x")
    persist_phase(a, 3, [("ws.upgrade", "fail"), ("http.latency", "pass")])
    finalize(a, pass_outcomes(3))
    b = evidence.create_run_dir(tmp_path, "x")
    persist_phase(b, 3, [("ws.upgrade", "pass"), ("http.latency", "pass")])
    finalize(b, pass_outcomes(3))
    cmp = compare.compare_runs(a, b)
    assert (cmp.verdict_a, cmp.verdict_b) == ("fail", "pass")
    changed = {d.id: (d.status_a, d.status_b) for d in cmp.status_changes}
    assert changed == {"ws.upgrade": ("fail", "pass")}
    latency = next(d for d in cmp.numeric if d.id == "http.latency")
    assert latency.delta == pytest.approx(0.0)
    assert cmp.phase_durations == ((3, 1.0, 1.0),)


def _observed(run_dir: Path, phase: int, checks: list[tuple[str, str, float, str]]) -> None:
    settings = settings_from_dict({"name": "test"})
    ctx = PhaseContext(phase=phase, settings=settings, run_dir=run_dir, approve=False)
    ctx.record(
        StepReport(
            "s",
            [
                CheckResult(cid, phase, st, observed=obs, threshold=thr)
                for cid, st, obs, thr in checks
            ],
        )
    )


def test_compare_puts_regressions_first_sorts_deltas_and_ignores_superseded(
    tmp_path: Path,
) -> None:
    a = evidence.create_run_dir(tmp_path, "x")
    persist_phase(a, 1, [("ws.routes_probe", "fail")])
    deploy_ok(a)
    _observed(
        a,
        3,
        [
            ("ws.upgrade", "fail", 1.0, ""),
            ("http.latency", "pass", 0.1, "< 1.0 s"),
            ("ws.roundtrip", "pass", 1.0, "< 2 s"),
            ("load.success_rate", "pass", 99.0, ">= 95 %"),
        ],
    )
    finalize(a, pass_outcomes(1, 2, 3))
    b = evidence.create_run_dir(tmp_path, "x")
    persist_phase(b, 1, [("ws.routes_probe", "pass")])
    deploy_ok(b)
    _observed(
        b,
        3,
        [
            ("ws.upgrade", "pass", 1.0, ""),
            ("http.latency", "fail", 0.9, "< 1.0 s"),
            ("ws.roundtrip", "pass", 1.1, "< 2 s"),
            ("load.success_rate", "pass", 98.0, ">= 95 %"),
        ],
    )
    finalize(b, pass_outcomes(1, 2, 3))
    cmp = compare.compare_runs(a, b)
    assert [d.id for d in cmp.status_changes] == ["http.latency", "ws.upgrade"]
    assert [d.id for d in cmp.regressions] == ["http.latency"]
    # The phase-1 "before" finding changed too, but a deploy superseded it in both runs.
    assert [d.id for d in cmp.superseded_changes] == ["ws.routes_probe"]
    # Largest relative change first, with units.
    assert [d.id for d in cmp.numeric][:3] == ["http.latency", "ws.roundtrip", "load.success_rate"]
    units = {d.id: d.unit for d in cmp.numeric}
    assert units["http.latency"] == "s" and units["load.success_rate"] == "%"
    doc = cmp.to_record()
    assert doc["regressions"] == ["http.latency"] and json.dumps(doc)


def test_compare_of_a_partial_folder_is_a_clear_error(tmp_path: Path) -> None:
    from runbook_lib.exceptions import ConfigError

    a = evidence.create_run_dir(tmp_path, "x")
    persist_phase(a, 3, [("ws.upgrade", "pass")])  # killed before results.json was written
    b = evidence.create_run_dir(tmp_path, "x")
    persist_phase(b, 3, [("ws.upgrade", "pass")])
    finalize(b, pass_outcomes(3))
    with pytest.raises(ConfigError, match=r"no results\.json"):
        compare.compare_runs(a, b)
    (a / "results.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable"):
        compare.compare_runs(a, b)


def test_compare_units_fit_what_each_check_observes() -> None:
    """Rates are fractions shown in %, exit codes and counts have no unit, latencies are s."""
    from runbook_lib.compare import CheckDelta, unit_of

    assert unit_of({"id": "isolation.sessions", "threshold": ">= 80% of users, each < 5s"}) == "%"
    assert unit_of({"id": "predeploy.local_agent_events_suite", "threshold": "exit 0"}) == ""
    for cid in ("health.no_5xx_during_warmup", "load.no_server_errors", "evidence.secret_scan"):
        assert unit_of({"id": cid, "threshold": 0}) == ""
    for cid in ("ws.roundtrip", "monitor.avg_response", "chat.flow", "e2e.agent_response"):
        assert unit_of({"id": cid, "threshold": "pong"}) == "s"
    rate = CheckDelta("isolation.sessions", "pass", "pass", 0.8, 1.0, 0.2, "%")
    assert rate.scale == 100.0 and rate.relative == pytest.approx(0.25)
    assert CheckDelta("x", "pass", "pass", 95.0, 99.0, 4.0, "%").scale == 1.0


def test_compare_cli_hides_unchanged_rows_and_shows_the_relative_change(
    tmp_path: Path, capsys
) -> None:
    from runbook_lib.cli import main

    a = evidence.create_run_dir(tmp_path, "x")
    _observed(a, 3, [("http.latency", "pass", 0.1, "< 1.0 s"), ("ws.roundtrip", "pass", 1.0, "")])
    finalize(a, pass_outcomes(3))
    b = evidence.create_run_dir(tmp_path, "x")
    _observed(b, 3, [("http.latency", "pass", 0.2, "< 1.0 s"), ("ws.roundtrip", "pass", 1.0, "")])
    finalize(b, pass_outcomes(3))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "http.latency" in out and "+0.1 s, +100%" in out
    assert (
        "ws.roundtrip"
        not in out.split("numeric")[1].split("phase durations")[0].split("unchanged")[0]
    )
    assert "unchanged not shown" in out
