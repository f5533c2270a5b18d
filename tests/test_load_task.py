"""Load fan-out tasks: shards add up, each task prints one result line, merging is honest."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from websockets.asyncio.server import ServerConnection

from runbook_lib.load.histogram import LatencyHistogram
from runbook_lib.load.task import merge_results, parse_result_line, shard

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


@pytest.mark.parametrize(("total", "count"), [(10, 4), (3, 4), (10_000, 7), (0, 2)])
def test_shards_add_up_to_the_plan(total: int, count: int) -> None:
    parts = [shard(total, 100.0, i, count) for i in range(count)]
    assert sum(p.sessions for p in parts) == total
    assert max(p.sessions for p in parts) - min(p.sessions for p in parts) <= 1
    rates = [p.rate or 0.0 for p in parts]
    assert sum(rates) == pytest.approx(100.0 if total else 0.0)


@pytest.mark.parametrize(("index", "count"), [(4, 4), (-1, 2), (0, 0)])
def test_invalid_task_index_is_refused(index: int, count: int) -> None:
    with pytest.raises(ValueError):
        shard(10, None, index, count)


def _record(index: int, rtts: list[float], attempt: int = 0, **extra: object) -> dict:
    h = LatencyHistogram()
    h.extend(rtts)
    return {
        "runbook_load_result": 1,
        "task_index": index,
        "attempt": attempt,
        "planned": len(rtts),
        "attempted": len(rtts),
        "succeeded": len(rtts),
        "failed": 0,
        "errors_by_kind": {},
        "handshake_statuses": {"101": len(rtts)},
        "rtt_histogram": h.to_dict(),
        "connect_histogram": h.to_dict(),
        **extra,
    }


def test_merge_pools_percentiles_and_names_missing_tasks() -> None:
    rng = np.random.default_rng(11)
    shards = [rng.lognormal(-5 + i, 0.5, 500).tolist() for i in range(3)]
    merged = merge_results([_record(i, s) for i, s in enumerate(shards)], task_count=4)
    assert merged.missing == (3,) and not merged.complete
    pooled = np.concatenate(shards)
    exact = float(np.percentile(pooled, 95, method="inverted_cdf"))
    p95 = merged.rtt.quantile(0.95)
    assert p95 is not None and abs(p95 - exact) <= 0.01 * exact
    assert merged.planned == merged.succeeded == 1500


def test_merge_keeps_the_newest_attempt_and_reports_task_errors() -> None:
    old = _record(0, [0.5] * 10, attempt=0)
    new = _record(0, [0.01] * 10, attempt=1)
    bad = {"runbook_load_result": 1, "task_index": 1, "error": "RUNBOOK_LOAD_PLAN is not set"}
    merged = merge_results([new, old, bad], task_count=2)
    assert merged.rtt.quantile(0.5) == pytest.approx(0.01, rel=0.01)
    assert merged.task_errors == {1: "RUNBOOK_LOAD_PLAN is not set"} and not merged.complete


def test_a_garbled_histogram_is_an_error_not_data() -> None:
    rec = _record(0, [0.01])
    rec["rtt_histogram"]["count"] = 99
    with pytest.raises(ValueError):
        merge_results([rec], task_count=1)


def test_parse_result_line_ignores_other_log_lines() -> None:
    assert parse_result_line('{"runbook_load_result": 1, "task_index": 0}') is not None
    assert parse_result_line("uvloop installed") is None
    assert parse_result_line({"message": "hello"}) is None


def _task(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    full = {**os.environ, **env}
    return subprocess.run(
        [sys.executable, "-m", "runbook_lib.load.task"],
        env=full,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_four_real_tasks_cover_the_whole_schedule(loop_thread) -> None:
    """Four task processes, each with Cloud Run's task variables, run their shards of one
    plan against a real server; their lines merge into the whole schedule."""
    seen_auth: list[str] = []

    async def pong(ws: ServerConnection) -> None:
        seen_auth.append(ws.request.headers.get("Authorization", "") if ws.request else "")
        async for _ in ws:
            await ws.send('{"type": "pong"}')

    port = loop_thread.websocket(pong)
    plan = {
        "url": f"ws://127.0.0.1:{port}/ws",
        "sessions": 42,
        "messages": 3,
        "headers": [["Authorization", "Bearer {token}"]],
        "deadline_s": 30.0,
        "workers": 0,
    }
    lines = []
    for i in range(4):
        proc = _task(
            {
                "RUNBOOK_LOAD_PLAN": json.dumps(plan),
                "RUNBOOK_LOAD_TOKEN": "tok-123",
                "CLOUD_RUN_TASK_INDEX": str(i),
                "CLOUD_RUN_TASK_COUNT": "4",
            }
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        out = [ln for ln in proc.stdout.splitlines() if ln.strip()]
        assert len(out) == 1, out  # exactly one structured line per task
        assert "tok-123" not in out[0]
        lines.append(parse_result_line(out[0]))
    merged = merge_results([ln for ln in lines if ln], task_count=4)
    assert merged.complete
    assert merged.planned == merged.succeeded == 42
    assert merged.rtt.count == 42 * 3
    assert [r["planned"] for _, r in sorted(merged.per_task.items())] == [11, 11, 10, 10]
    assert seen_auth and set(seen_auth) == {"Bearer tok-123"}


def test_a_misconfigured_task_prints_an_error_line_and_exits_2() -> None:
    proc = _task({"RUNBOOK_LOAD_PLAN": "{not json", "CLOUD_RUN_TASK_COUNT": "1"})
    assert proc.returncode == 2
    rec = parse_result_line(proc.stdout.strip())
    assert rec is not None and "not valid JSON" in rec["error"]
