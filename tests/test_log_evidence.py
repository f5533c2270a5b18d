"""Self-evidencing log checks against a sandbox whose Cloud Logging lists entries late.

The log checks (``deploy.logs_clean``, ``logs.no_routing_errors``, ``monitor.log_errors``)
may pass only after this run's own requests are listed in the request log of the revision
under test; a 404 on a WebSocket path fails them from ``httpRequest.status`` alone.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from timing import T

from runbook_lib import steps
from runbook_lib.context import open_phase
from runbook_lib.results import Status
from runbook_lib.sandbox import manager

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

DELAY_S = 10.0


@pytest.fixture(scope="module")
def late_logs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """The default sandbox (the incident serving, the fix to deploy) with late logs."""
    state = tmp_path_factory.mktemp("late-logs")
    info = manager.up(
        state_dir=state,
        env_file=state / "local.toml",
        env=manager.log_delay_env(DELAY_S),
    )
    try:
        yield info
    finally:
        manager.down(state)


async def _run(ctx: Any, *names: str) -> dict[str, Any]:
    out = {}
    for name in names:
        result = getattr(steps, name)(ctx)
        report = await result if hasattr(result, "__await__") else result
        out.update({r.id: r for r in report.results})
    return out


async def test_a_ws_404_fails_routing_errors_from_the_request_status_once_listed(
    late_logs: Any, tmp_path: Path
) -> None:
    """The incident revision: its WS 404s are request-log entries with no text payload;
    the check waits for them (the delay) and fails on their status alone."""
    ctx = open_phase(
        3,
        environment=str(late_logs.env_file),
        overrides={"logging.ingestion_wait_s": T(DELAY_S * 4)},
    )
    started = time.monotonic()
    got = await _run(ctx, "ws_upgrade", "routing_logs")
    assert got["ws.upgrade"].status is Status.FAIL
    routing = got["logs.no_routing_errors"]
    assert routing.status is Status.FAIL, routing.detail
    assert "GET /websocket 404" in routing.detail and "not registered" in routing.detail
    assert time.monotonic() - started >= DELAY_S - 1  # it waited for the late entries
    examples = routing.data["examples"]
    assert examples and all(e["status"] == 404 and e["text"] == "" for e in examples)


async def test_logs_later_than_the_wait_make_every_log_check_an_error(
    late_logs: Any, tmp_path: Path
) -> None:
    """--log-delay longer than ingestion_wait_s: deploy.logs_clean, logs.no_routing_errors
    and monitor.log_errors are each `error` naming the causes, never `pass`."""
    overrides = {
        "logging.ingestion_wait_s": 1.5,
        "thresholds.health_ready_s": 10,
        "thresholds.ws_health_ready_s": 10,
    }
    env = str(late_logs.env_file)
    results: dict[str, Any] = {}
    for phase, names in ((2, ("deploy", "warmup", "deploy_logs")), (3, ("routing_logs",)),
                         (7, ("log_errors",))):  # fmt: skip
        ctx = open_phase(
            phase, environment=env, run_dir=str(tmp_path), approve=True, overrides=overrides
        )
        results.update(await _run(ctx, *names))
    assert results["deploy.operation_succeeded"].status is Status.PASS
    for check in ("deploy.logs_clean", "logs.no_routing_errors", "monitor.log_errors"):
        r = results[check]
        assert r.status is Status.ERROR, (check, r.status, r.detail)
        assert "not in the logs after" in r.detail and "roles/logging.viewer" in r.detail


@pytest.mark.parametrize("delay_s", [25.0])
def test_a_run_with_late_logs_passes_its_log_checks_only_after_seeing_its_requests(
    tmp_path: Path, delay_s: float
) -> None:
    """`runbook run --log-delay 25` (phases 2 and 3): each log check waits until this
    run's requests are listed, then passes, and says how many it saw."""
    from runbook_lib.runner import RunOptions, run

    outcome = run(
        RunOptions(
            phases=(2, 3),
            approve=True,
            out_dir=tmp_path / "outputs",
            sandbox_state_dir=tmp_path / "sandbox",
            log_delay_s=delay_s,
        )
    )
    results = json.loads((outcome.run_dir / "results.json").read_text())
    checks = {c["id"]: c for c in results["checks"]}
    for check in ("deploy.logs_clean", "logs.no_routing_errors"):
        c = checks[check]
        assert c["status"] == "pass", c
        seen = int(c["detail"].split(" of this run's requests seen")[0].rsplit(" ", 1)[-1])
        assert seen >= 1, c["detail"]
        assert c["duration_s"] >= delay_s - 10, c  # it waited for the late entries
    assert not manager.is_running(tmp_path / "sandbox")
