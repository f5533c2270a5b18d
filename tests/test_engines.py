"""The in-process engine, checked without any process: a phase's record, a step bound,
the caller's secrets and environment left as they were. The parity of the two engines
on the default scenario is proved end to end in test_e2e.py.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import pytest

from runbook_lib.checks.catalog import step_ids, steps_of
from runbook_lib.engines import InProcessEngine, PhaseRequest
from runbook_lib.redaction import registered_secrets
from runbook_lib.runner import notebook_parameters, notebooks_dir, repo_root


def _request(phase: int, env_file: Path, run_dir: Path, **kw: float) -> PhaseRequest:
    params = notebook_parameters(
        phase, environment=str(env_file), run_dir=str(run_dir), approve=False
    )
    nb = notebooks_dir() / "x.ipynb"
    return PhaseRequest(phase, nb, run_dir / nb.name, params, repo_root(), **kw)


def test_in_process_phase_records_every_step_id_in_phases_json(tmp_path: Path) -> None:
    """Without a target every check of the phase is recorded skip, with its reason."""
    env = tmp_path / "minimal.toml"
    env.write_text('name = "minimal"\n')
    outcome = InProcessEngine().execute(_request(3, env, tmp_path / "run"))
    assert outcome.status == "pass", outcome
    doc = json.loads((tmp_path / "run" / "phases" / "03.json").read_text())
    ids = [i for s in steps_of(3) for i in step_ids(s.name)]
    assert sorted(c["id"] for c in doc["checks"]) == sorted(ids)
    assert {c["status"] for c in doc["checks"]} == {"skip"}


def test_in_process_step_that_outlives_its_bound_errors_the_phase(tmp_path: Path) -> None:
    """A target that accepts TCP and never answers: the step bound ends the phase as error."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)  # connections queue, nothing ever answers
        port = listener.getsockname()[1]
        env = tmp_path / "silent.toml"
        env.write_text(f'name = "silent"\n[target]\nbase_url = "http://127.0.0.1:{port}"\n')
        outcome = InProcessEngine().execute(_request(3, env, tmp_path / "run", cell_timeout_s=1))
    assert outcome.status == "error"
    assert "step ws_upgrade timed out after 1 s" in outcome.reason


def test_in_process_phase_leaves_the_callers_secrets_and_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a phase registers or sets dies with it, as it would with its kernel."""
    monkeypatch.setenv("ENGINE_TEST_TOKEN", "tok-" + "x" * 20)
    env = tmp_path / "auth.toml"
    env.write_text('name = "auth"\n[auth]\nmode = "bearer"\ntoken_env = "ENGINE_TEST_TOKEN"\n')
    before = dict(os.environ)
    outcome = InProcessEngine().execute(_request(5, env, tmp_path / "run"))
    assert outcome.status == "pass", outcome
    assert registered_secrets() == frozenset()
    assert dict(os.environ) == before
