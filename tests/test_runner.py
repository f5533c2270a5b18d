"""The runner, executing small fixture notebooks: for real (one kernel each, marked slow)
where the kernel is what is tested, else their cells in this process (the gates)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from runbook_lib import manifest, runner
from runbook_lib.engines import PhaseRequest
from runbook_lib.exceptions import ConfigError
from runbook_lib.phases import DEFAULT_PHASES, PHASES
from runbook_lib.runner import RunOptions
from runbook_lib.verdict import PhaseOutcome

TOKEN = "fixture-token-9f8e7d6c5b4a"


@pytest.fixture(autouse=True)
def _no_fixture_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIXTURE_TOKEN", raising=False)


def _record(phase: int, *checks: tuple[str, str]) -> str:
    results = ", ".join(
        f'rb.CheckResult("{cid}", {phase}, "{st}", detail="{cid} {st}")' for cid, st in checks
    )
    return f'ctx.record(rb.StepReport("step {phase}", [{results}]))'


def _notebook(phase: int, body: list[str]) -> nbformat.NotebookNode:
    params = new_code_cell(
        "\n".join(
            f"{k} = {v!r}" if k != "approve" else "approve = False"
            for k, v in {
                "environment": "local",
                "run_dir": "",
                "approve": False,
                "overrides_json": "{}",
                "rollback_to": "",
            }.items()
            if k in runner.NOTEBOOK_PARAMETERS[phase]
        )
    )
    params.metadata["tags"] = ["parameters"]
    cells = [
        params,
        new_code_cell("import runbook_lib as rb"),
        new_code_cell(
            f"ctx = rb.open_phase({phase}, environment=environment, "
            "run_dir=run_dir, approve=approve, overrides_json=overrides_json)"
        ),
    ]
    cells += [new_code_cell(src) for src in body]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i}"
    return nb


def _write(folder: Path, bodies: dict[int, list[str]]) -> Path:
    """Fixture notebooks: every phase passes one check unless ``bodies`` says otherwise."""
    folder.mkdir(exist_ok=True)
    for phase, (name, _, _) in PHASES.items():
        body = bodies.get(phase, [_record(phase, (f"fixture.phase{phase}", "pass"))])
        nbformat.write(_notebook(phase, body), folder / name)
    return folder


DEPLOY_OK = [
    'ctx.artifacts.update(dry_run=False, previous_revision="rev-1", deployed_revision="rev-2")',
    _record(2, ("deploy.executed", "pass"), ("deploy.operation_succeeded", "pass")),
]
DEPLOY_FAILS = [
    'ctx.artifacts.update(dry_run=False, previous_revision="rev-1", deployed_revision="rev-2")',
    _record(2, ("deploy.executed", "pass"), ("deploy.operation_succeeded", "fail")),
]


@pytest.fixture
def env_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("FIXTURE_TOKEN", TOKEN)  # a variable the file names must be set
    path = tmp_path / "fixture.toml"
    path.write_text('name = "fixture"\n[auth]\nmode = "bearer"\ntoken_env = "FIXTURE_TOKEN"\n')
    return path


class _CellsHere:
    """A phase engine for the gate tests: the fixture notebook's cells (plain calls that
    record results) executed in this process with the runner's parameters, no kernel."""

    def execute(self, request: PhaseRequest) -> PhaseOutcome:
        nb = nbformat.read(request.notebook_in, as_version=4)
        namespace = dict(request.parameters)
        for cell in nb.cells[1:]:  # the parameters come from the runner
            exec(cell.source, namespace)
        return PhaseOutcome(request.phase, request.notebook_in.name, "pass")


def _options(tmp_path: Path, env_file: Path, nbs: Path, **kw) -> RunOptions:
    kw.setdefault("cell_timeout_s", 60)
    return RunOptions(environment=str(env_file), out_dir=tmp_path / "out", notebooks=nbs, **kw)


def test_parse_phases_and_params() -> None:
    assert runner.parse_phases("1,3-5") == (1, 3, 4, 5)
    assert runner.parse_phases("") == DEFAULT_PHASES
    for bad in ("8", "0", "2-x", "5-3"):
        with pytest.raises(ConfigError):
            runner.parse_phases(bad)
    overrides, nb = runner.parse_params(
        ["thresholds.hold_s=5", 'target.ws_paths=["/a"]', "rollback_to=rev-1", "source.app=pkg:app"]
    )
    assert overrides == {"thresholds.hold_s": 5, "target.ws_paths": ["/a"], "source.app": "pkg:app"}
    assert nb == {"rollback_to": "rev-1"}
    for bad in (["novalue"], ["hold_s=5"]):
        with pytest.raises(ConfigError):
            runner.parse_params(bad)


def test_bad_environment_is_a_config_error_before_any_kernel(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [1\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        runner.run(RunOptions(environment=str(bad), out_dir=tmp_path / "out"))
    with pytest.raises(ConfigError, match=r"thresholds\.hold_s"):
        runner.run(
            RunOptions(
                environment=str(_good(tmp_path)),
                out_dir=tmp_path / "out",
                overrides={"thresholds.hold_s": "long"},
            )
        )
    with pytest.raises(ConfigError, match="unknown environment"):
        runner.run(RunOptions(environment="no-such-env", out_dir=tmp_path / "out"))
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def _good(tmp_path: Path) -> Path:
    path = tmp_path / "good.toml"
    path.write_text('name = "good"\n')
    return path


@pytest.mark.slow  # Jupyter kernels
def test_deploy_applied_run_passes_and_folder_is_complete(
    tmp_path: Path, env_file: Path, monkeypatch
) -> None:
    """Phase 1 shows the incident, phase 2 deploys, phase 3 passes: exit 0, complete folder."""
    monkeypatch.setenv("FIXTURE_TOKEN", TOKEN)
    nbs = _write(
        tmp_path / "nbs",
        {
            1: [_record(1, ("ws.routes_probe", "fail")), f"print('{TOKEN}')"],
            2: DEPLOY_OK,
        },
    )
    events = []
    out = runner.run(_options(tmp_path, env_file, nbs, phases=(1, 2, 3)), progress=events.append)
    assert out.exit_code == 0, out
    assert out.verdict == "pass" and out.recommendation.action == "none"
    run = out.run_dir
    for name in (
        "01_deployment_status.ipynb",
        "01_deployment_status.html",
        "02_deploy.ipynb",
        "03_endpoint_validation.html",
        "results.json",
        "junit.xml",
        "summary.md",
        "index.html",
        "manifest.json",
        "phases/01.json",
    ):
        assert (run / name).is_file(), name
    results = json.loads((run / "results.json").read_text())
    assert results["superseded_phases"] == [1]
    assert [p["phase"] for p in results["phases"]] == [1, 2, 3]
    # The token printed by a cell was redacted from the executed notebook and its HTML.
    for path in run.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    assert "[REDACTED]" in (run / "01_deployment_status.ipynb").read_text()
    params = json.loads((run / "02_deploy.ipynb").read_text())["metadata"]["papermill"]
    assert set(params["parameters"]) == set(runner.NOTEBOOK_PARAMETERS[2])
    assert manifest.verify_run(run).ok
    kinds = {e.event for e in events}
    assert {"phase-start", "step", "phase-end"} <= kinds
    assert any(e.event == "step" and e.step == "open_phase" for e in events)


def test_deploy_failure_skips_validation_and_rolls_back_when_approved(
    tmp_path: Path, env_file: Path
) -> None:
    """Gate: deploy fails -> 3,4,5,7 skipped, rollback recommended, phase 6 runs (approved)."""
    nbs = _write(
        tmp_path / "nbs", {2: DEPLOY_FAILS, 6: [_record(6, ("rollback.traffic_moved", "pass"))]}
    )
    out = runner.run(_options(tmp_path, env_file, nbs, approve=True), engine=_CellsHere())
    assert out.exit_code == 1
    status = {o.phase: o.status for o in out.phases}
    assert status == {
        1: "pass",
        2: "fail",
        3: "skipped",
        4: "skipped",
        5: "skipped",
        6: "pass",
        7: "skipped",
    }
    assert out.recommendation.action == "rollback"
    assert out.recommendation.target_revision == "rev-1"
    assert "deploy.operation_succeeded" in out.recommendation.reason
    skipped = next(o for o in out.phases if o.phase == 3)
    assert "deploy failed" in skipped.reason


def test_rollback_not_run_without_approval(tmp_path: Path, env_file: Path) -> None:
    nbs = _write(tmp_path / "nbs", {2: DEPLOY_FAILS})
    out = runner.run(_options(tmp_path, env_file, nbs, phases=None), engine=_CellsHere())
    six = next(o for o in out.phases if o.phase == 6)
    assert six.status == "skipped" and "not approved" in six.reason
    assert out.exit_code == 1


@pytest.mark.slow  # Jupyter kernels
def test_notebook_that_raises_exits_3_with_cell_index(tmp_path: Path, env_file: Path) -> None:
    nbs = _write(tmp_path / "nbs", {3: ["x = 1", "raise RuntimeError('probe exploded')"]})
    out = runner.run(_options(tmp_path, env_file, nbs, phases=(3,)))
    assert out.exit_code == 3
    (phase,) = out.phases
    assert phase.status == "error" and phase.cell_index == 5
    assert "RuntimeError" in phase.reason and "probe exploded" in phase.reason
    results = json.loads((out.run_dir / "results.json").read_text())
    assert results["verdict"] == "error"
    assert results["phases"][0]["cell_index"] == 5
    assert (out.run_dir / "03_endpoint_validation.ipynb").is_file()  # partial evidence kept


@pytest.mark.slow  # Jupyter kernels
def test_cell_timeout_exits_3(tmp_path: Path, env_file: Path) -> None:
    nbs = _write(tmp_path / "nbs", {4: ["import time", "time.sleep(60)"]})
    out = runner.run(_options(tmp_path, env_file, nbs, phases=(4, 5), cell_timeout_s=3))
    assert out.exit_code == 3
    four, five = out.phases
    assert four.status == "error" and "timed out" in four.reason and four.cell_index == 5
    assert five.status == "pass"  # one slow phase does not stop the others


@pytest.mark.slow  # Jupyter kernels
def test_secret_written_by_a_kernel_marks_folder_unsafe(
    tmp_path: Path, env_file: Path, monkeypatch
) -> None:
    """A token that bypasses redaction (raw file write) is caught by the final scan."""
    monkeypatch.setenv("FIXTURE_TOKEN", TOKEN)
    nbs = _write(
        tmp_path / "nbs",
        {
            3: [
                "import os, pathlib",
                "pathlib.Path(run_dir, 'raw.txt').write_text(os.environ['FIXTURE_TOKEN'])",
                _record(3, ("ws.upgrade", "pass")),
            ]
        },
    )
    out = runner.run(_options(tmp_path, env_file, nbs, phases=(3,)))
    assert not out.safe_to_share
    assert out.verdict == "error" and out.exit_code == 1
    marker = (out.run_dir / manifest.UNSAFE_MARKER).read_text()
    assert "raw.txt" in marker and TOKEN not in marker


@pytest.mark.slow  # Jupyter kernels
def test_sandbox_is_started_and_stopped_when_no_env_given(tmp_path: Path, env_file: Path) -> None:
    """No --env: the runner starts the sandbox, uses its env file, and stops it after."""
    calls: list[tuple[str, dict]] = []

    class FakeManager:  # the interface of runbook_lib.sandbox.manager the runner relies on
        class Sandbox:
            def __init__(self, note, **kw):
                calls.append(("claim", kw))
                self.note = note
                self.started = False

            def __enter__(self):
                self.note("starting the sandbox")
                self.started = True
                calls.append(("enter", {}))
                return SimpleNamespace(env_file=str(env_file), jwt_secret="sandbox-secret-123456")

            def __exit__(self, *exc):
                calls.append(("exit", {}))

    nbs = _write(tmp_path / "nbs", {})
    options = RunOptions(
        out_dir=tmp_path / "out",
        notebooks=nbs,
        phases=(3,),
        serving="healthy",
        deploy_image="sandbox/backend:cross-user-leak",
    )
    out = runner.run(options, sandbox=FakeManager)
    assert out.exit_code == 0
    assert [c[0] for c in calls] == ["claim", "enter", "exit"]
    assert calls[0][1] == {"serving": "healthy", "deploy_image": "sandbox/backend:cross-user-leak"}
    # What the operator was told about the sandbox is in the record too.
    results = json.loads((out.run_dir / "results.json").read_text())
    assert "starting the sandbox" in results["notes"]
    assert "starting the sandbox" in (out.run_dir / "summary.md").read_text()


@pytest.mark.slow  # Jupyter kernels
def test_run_deadline_stops_the_run_with_exit_3(tmp_path: Path, env_file: Path) -> None:
    """The whole-run deadline bounds a slow cell and marks the phases it cut off as errors."""
    nbs = _write(tmp_path / "nbs", {3: ["import time", "time.sleep(120)"]})
    out = runner.run(_options(tmp_path, env_file, nbs, phases=(3, 4), deadline_s=6))
    assert out.exit_code == 3
    three, four = out.phases
    assert three.status == "error" and "deadline" in three.reason
    assert four.status == "error" and "not executed" in four.reason
    assert out.elapsed_s < 60
    assert json.loads((out.run_dir / "results.json").read_text())["verdict"] == "error"


def test_late_failure_rolls_back_at_the_end_and_the_counter_announces_it(
    tmp_path: Path, env_file: Path
) -> None:
    """Phase 7 finds the failure after phase 6's slot: 6 runs last, announced first."""
    nbs = _write(
        tmp_path / "nbs",
        {
            2: DEPLOY_OK,
            6: [_record(6, ("rollback.traffic_moved", "pass"))],
            7: [_record(7, ("monitor.hold", "fail"))],
        },
    )
    events: list[runner.Progress] = []
    out = runner.run(
        _options(tmp_path, env_file, nbs, approve=True),
        progress=events.append,
        engine=_CellsHere(),
    )
    assert out.exit_code == 1
    assert [o.phase for o in out.phases] == [1, 2, 3, 4, 5, 7, 6]
    assert out.phases[-1].status == "pass"
    ends = [(e.phase, e.index, e.total) for e in events if e.event == "phase-end"]
    assert ends[-2:] == [(7, 6, 6), (6, 7, 7)]
    note = next(i for i, e in enumerate(events) if e.event == "note" and "rollback" in e.message)
    start6 = next(i for i, e in enumerate(events) if e.event == "phase-start" and e.phase == 6)
    assert note < start6 and "7 phases" in events[note].message
    results = json.loads((out.run_dir / "results.json").read_text())
    assert results["rollback_pending"] is None
    assert any("phase 6" in n for n in results["notes"])


def test_late_failure_without_approval_reports_the_rollback_pending(
    tmp_path: Path, env_file: Path
) -> None:
    nbs = _write(tmp_path / "nbs", {2: DEPLOY_OK, 7: [_record(7, ("monitor.hold", "fail"))]})
    out = runner.run(_options(tmp_path, env_file, nbs), engine=_CellsHere())
    assert out.exit_code == 1
    six = next(o for o in out.phases if o.phase == 6)
    assert six.status == "skipped" and "not approved" in six.reason
    results = json.loads((out.run_dir / "results.json").read_text())
    pending = results["rollback_pending"]
    assert pending["target_revision"] == "rev-1"
    assert pending["command"] == (
        f"runbook run --env {env_file} --approve --phases 6 --param rollback_to=rev-1"
    )
    assert pending["command"] in (out.run_dir / "summary.md").read_text()
    assert pending["command"] in (out.run_dir / "index.html").read_text()
