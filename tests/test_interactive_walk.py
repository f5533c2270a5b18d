"""The README's interactive walk, executed cell by cell as JupyterLab would.

``runbook sandbox up`` in the default scenario (the incident: ``ws-routes-missing`` serves,
the deploy image is ``healthy``), then the seven notebooks in order, each in its own
kernel with its default parameters (no ``run_dir``: nothing is shared between notebooks
but the service itself). After each notebook a person's inspection cell reads the
phase's results, and the test reads the service's traffic through the real Cloud Run
client. Proven: traffic never goes to a revision that fails its checks (phase 6 with its
defaults refuses instead of re-creating the incident), and phase 3 passes after the fix
(its logs are scoped to the serving revision since the phase opened).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient

from runbook_lib import runner
from runbook_lib.cloudrun import cloudrun_client
from runbook_lib.context import PHASES
from runbook_lib.redaction import clear_secrets
from runbook_lib.sandbox import manager
from runbook_lib.settings_load import load_settings

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

NB_DIR = runner.notebooks_dir()
INSPECT = "import json\nprint(json.dumps([r.to_record() for r in ctx.results], default=str))"


@pytest.fixture
def sandbox(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``runbook sandbox up`` with an isolated state dir; notebooks find ``local`` through it."""
    state, envs = tmp_path / "state", tmp_path / "environments"
    info = manager.up(state_dir=state, env_file=envs / "local.toml")
    monkeypatch.setenv("RUNBOOK_ENV_DIR", str(envs))
    clear_secrets()
    try:
        yield info
    finally:
        manager.down(state)
        clear_secrets()


def _walk(phase: int) -> dict[str, dict[str, Any]]:
    """Run one notebook top to bottom in a fresh kernel, then the inspection cell."""
    nb = nbformat.read(NB_DIR / PHASES[phase][0], as_version=4)
    nb.cells.append(nbformat.v4.new_code_cell(INSPECT))
    client = NotebookClient(
        nb,
        timeout=300,
        kernel_name="python3",
        resources={"metadata": {"path": str(NB_DIR)}},
    )
    with client.setup_kernel():
        for index, cell in enumerate(nb.cells):
            if cell.cell_type == "code":
                client.execute_cell(cell, index)  # raises CellExecutionError on a traceback
    text = "".join(o.get("text", "") for o in nb.cells[-1].outputs if o.output_type == "stream")
    return {r["id"]: r for r in json.loads(text.strip().splitlines()[-1])}


def _serving(env_file: Path) -> dict[str, int]:
    async def read() -> dict[str, int]:
        svc = await cloudrun_client(load_settings(str(env_file))).get_service()
        return dict(svc.serving_revisions)

    return asyncio.run(read())


def _bad(checks: dict[str, dict[str, Any]]) -> dict[str, str]:
    return {i: c["detail"] for i, c in checks.items() if c["status"] in ("fail", "error")}


def test_the_readme_walk_never_routes_traffic_to_a_failing_revision(sandbox) -> None:
    env = Path(sandbox.env_file)
    incident = _serving(env)
    (broken,) = incident

    p1 = _walk(1)
    assert p1["ws.routes_probe"]["status"] == "fail"  # the incident, seen before the fix

    p2 = _walk(2)  # the sandbox approves by itself: the fix is deployed
    assert _bad(p2) == {}, _bad(p2)
    after_fix = _serving(env)
    (fixed,) = after_fix
    assert fixed != broken and after_fix == {fixed: 100}

    p3 = _walk(3)
    assert _bad(p3) == {}, _bad(p3)  # logs.no_routing_errors ignores phase 1's 404 probes
    assert "since this phase opened" in p3["logs.no_routing_errors"]["detail"]
    assert fixed in p3["logs.no_routing_errors"]["detail"]
    for phase in (4, 5):
        checks = _walk(phase)
        assert _bad(checks) == {}, (phase, _bad(checks))
        assert _serving(env) == after_fix

    p6 = _walk(6)  # defaults: no run_dir, no rollback_to: no evidence names a target
    # One refusal in the notebook's words; the steps after it have nothing to do.
    assert _bad(p6).keys() == {"rollback.target_identified"}, _bad(p6)
    refusal = p6["rollback.target_identified"]["detail"]
    assert "refused" in refusal and f"Traffic stays on {fixed}" in refusal
    assert 'set rollback_to = "REV" in the parameters cell' in refusal
    assert "--param" not in refusal
    # The incident revision is a candidate only with what is known of it said beside it.
    assert f"{broken} (no recorded run judged it: unknown)" in refusal, refusal
    assert {p6[i]["status"] for i in ("rollback.target_verified", "rollback.traffic_moved")} == {
        "skip"
    }
    assert _serving(env) == after_fix  # the incident was not re-created

    p7 = _walk(7)
    assert _bad(p7) == {}, _bad(p7)
    assert _serving(env) == after_fix
