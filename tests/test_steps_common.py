"""The step decorator: catalog titles and ids, the not-configured / not-applicable skips
(SPEC section 8) before anything is observed, and the error boundary; against a real
loopback server that records what it was asked."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path

import pytest

from runbook_lib.checks import STEPS, Verdict
from runbook_lib.context import PhaseContext, StepReport
from runbook_lib.results import Status
from runbook_lib.settings import Settings
from runbook_lib.settings_load import load_settings
from runbook_lib.steps import http_endpoints, ws_roundtrip
from runbook_lib.steps.common import step


def _settings(tmp_path: Path, base_url: str) -> Settings:
    env = tmp_path / "t.toml"
    env.write_text(f'name = "t"\n[target]\nbase_url = "{base_url}"\n', encoding="utf-8")
    return load_settings(env)


@pytest.fixture
async def http_server(raw_server):
    """A loopback HTTP server answering 200 JSON to every GET; records the paths asked."""
    seen: list[str] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        seen.append(head.split(b" ")[1].decode())
        body = b'{"status": "ok", "connections": {"active": 0}}'
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()

    port = await raw_server(handler)
    return f"http://127.0.0.1:{port}", seen


async def test_a_step_whose_checks_are_all_not_applicable_observes_nothing(
    tmp_path, http_server
) -> None:
    base, seen = http_server
    s = replace(_settings(tmp_path, base), not_applicable={"ws.roundtrip": "no ping in protocol"})
    ctx = PhaseContext(phase=3, settings=s, run_dir=None, approve=False)
    report = await ws_roundtrip(ctx)
    assert report.title == STEPS["ws_roundtrip"].title
    assert [(r.id, r.phase, r.status, r.detail) for r in report.results] == [
        ("ws.roundtrip", 3, Status.SKIP, "no ping in protocol")
    ]
    assert seen == [] and ctx.results == report.results


async def test_a_key_declared_absent_skips_its_check_and_is_never_requested(
    tmp_path, http_server
) -> None:
    base, seen = http_server
    s = replace(_settings(tmp_path, base), declared_absent=frozenset({"target.ws_test_path"}))
    ctx = PhaseContext(phase=3, settings=s, run_dir=None, approve=False)
    report = await http_endpoints(ctx)
    by_id = {r.id: r for r in report.results}
    assert [r.id for r in report.results] == ["ws.health", "ws.test_endpoint", "http.latency"]
    assert by_id["ws.test_endpoint"].status is Status.SKIP
    assert by_id["ws.test_endpoint"].detail == (
        "target.ws_test_path = false: declared absent by the environment file"
    )
    assert by_id["ws.health"].status is Status.PASS and by_id["http.latency"].status is Status.PASS
    assert "/ws/test" not in seen and "/ws/health" in seen and "/health" in seen


async def test_without_a_target_every_check_is_skipped_naming_the_section(tmp_path) -> None:
    s = _settings(tmp_path, "http://127.0.0.1:9")
    s = replace(s, target=replace(s.target, base_url=""))
    ctx = PhaseContext(phase=3, settings=s, run_dir=None, approve=False)
    report = await http_endpoints(ctx)
    assert {(r.status, r.detail) for r in report.results} == {
        (Status.SKIP, "skip: [target] base_url is not configured")
    }


def test_record_turns_a_declared_not_applicable_result_into_skip(tmp_path) -> None:
    s = replace(
        _settings(tmp_path, "http://127.0.0.1:9"),
        not_applicable={"events.order": "one event per request"},
    )
    ctx = PhaseContext(phase=5, settings=s, run_dir=tmp_path, approve=False)
    failed = Verdict("events.order").fail("out of order", observed=["a", "b"])
    passed = Verdict("events.latency").ok("fast")
    ctx.record(StepReport("events", [failed, passed]))
    assert [(r.id, r.status, r.detail, r.observed) for r in ctx.results] == [
        ("events.order", Status.SKIP, "one event per request", None),
        ("events.latency", Status.PASS, "fast", None),
    ]
    assert (tmp_path / "phases" / "05.json").is_file()


async def test_an_exception_in_a_step_becomes_error_results_for_its_ids(tmp_path) -> None:
    async def ws_roundtrip(ctx: PhaseContext) -> StepReport:  # the catalog's step of that name
        raise RuntimeError("boom")

    wrapped = step(ws_roundtrip)
    ctx = PhaseContext(
        phase=3, settings=_settings(tmp_path, "http://127.0.0.1:9"), run_dir=None, approve=False
    )
    report = await wrapped(ctx)
    assert [(r.id, r.status) for r in report.results] == [("ws.roundtrip", Status.ERROR)]
    assert "RuntimeError: boom" in report.results[0].detail


def test_steps_table_follows_the_notebooks_cell_order() -> None:
    import json
    import re

    from runbook_lib.context import PHASES

    notebooks = Path(__file__).parent.parent / "notebooks"
    for phase, (notebook, _, _) in PHASES.items():
        cells = json.loads((notebooks / notebook).read_text(encoding="utf-8"))["cells"]
        called = [
            m
            for c in cells
            if c["cell_type"] == "code"
            for m in re.findall(r"rb\.steps\.(\w+)", "".join(c["source"]))
            if m != "phase_summary"
        ]
        assert called == [s.name for s in STEPS.values() if s.phase == phase], notebook


def test_a_dry_run_shows_each_request_once_as_json_beside_gcloud_and_curl(tmp_path) -> None:
    """Not a Python repr in three rows: one table row per request, JSON body, gcloud, curl."""
    import json

    from runbook_lib.cloudrun_plans import ServiceRef, TrafficTarget, plan_split, plan_tag
    from runbook_lib.steps.common import dry_run

    ctx = PhaseContext(
        phase=6, settings=_settings(tmp_path, "http://x"), run_dir=None, approve=False
    )
    ref = ServiceRef("p", "r", "backend")
    now = [TrafficTarget("REVISION", "b-2", 100)]
    plans = [plan_tag(ref, now, "b-1", "runbook-verify"), plan_split(ref, now, {"b-1": 100})]
    rep = dry_run(ctx, ["rollback.target_verified", "rollback.traffic_moved"], plans, "", "move")
    rows = rep.table.to_dict("records")
    assert [json.loads(r["body (JSON)"])["traffic"][-1]["revision"] for r in rows] == ["b-1", "b-1"]
    assert all(r["curl"].startswith("curl -sS -X PATCH") for r in rows)
    assert "--update-tags=runbook-verify=b-1" in rows[0]["gcloud"]
    for r in rep.results:
        assert r.status is Status.SKIP and r.detail.startswith("dry-run: not approved; would run")
        assert "{" not in r.detail  # the body is in the table, once


def test_a_step_table_shows_missing_values_empty_and_text_left_aligned() -> None:
    """JupyterLab shows what ``_repr_html_`` gives: no ``nan`` where a threshold is missing
    beside a numeric one, and every cell and header left-aligned (the lab right-aligns)."""
    import re

    import pandas as pd

    from runbook_lib.results import results_frame

    results = [
        Verdict("rollback.traffic_moved", phase=6).fail("no rollback target was identified"),
        Verdict("load.latency_p95", phase=4, threshold=3.0).ok("p95 0.1 s", observed=0.1),
    ]
    frame = results_frame(results)
    assert frame["threshold"].tolist() == ["", "3.0"]
    table = pd.DataFrame({"revision": ["a", "b"], "traffic_%": [100, None]})
    html = StepReport("Rollback", results, table=table)._repr_html_()
    assert "nan" not in html.lower() and "None" not in html
    cells = re.findall(r"<t[dh][^>]*>", html)
    assert cells and all("text-align: left" in c for c in cells), cells
