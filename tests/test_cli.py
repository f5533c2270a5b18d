"""``runbook`` command line: parsing, exit codes, verify/compare output, progress printing."""

from __future__ import annotations

import io
import subprocess
import sys
import types
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runbook_lib import cli, evidence, runner
from runbook_lib.context import PhaseContext, StepReport
from runbook_lib.results import CheckResult, Recommendation
from runbook_lib.runner import Progress, RunOutcome
from runbook_lib.settings_load import settings_from_dict
from runbook_lib.verdict import PhaseOutcome


def _run_folder(out: Path, status: str) -> Path:
    run = evidence.create_run_dir(out, "cli")
    ctx = PhaseContext(
        phase=3, settings=settings_from_dict({"name": "cli"}), run_dir=run, approve=False
    )
    ctx.record(StepReport("s", [CheckResult("ws.upgrade", 3, status, observed=0.5)]))
    evidence.finalize_run(
        run,
        run_id=run.name,
        environment="cli",
        started_at=datetime.now(UTC).isoformat(),
        outcomes=[PhaseOutcome(3, "03_endpoint_validation.ipynb", "pass", 1.0)],
        parameters={},
    )
    return run


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["bogus"],
        ["run", "--phases", "9"],
        ["run", "--phases", "1,x"],
        ["run", "--param", "novalue"],
        ["run", "--env", "definitely-not-an-environment"],
        ["run", "--deadline", "0"],
        ["verify", "/nonexistent/run"],
        ["compare", "/nonexistent/a", "/nonexistent/b"],
    ],
)
def test_usage_and_config_errors_exit_2_without_traceback(argv, capsys) -> None:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip()


def test_verify_passes_untouched_and_fails_edited(tmp_path: Path, capsys) -> None:
    run = _run_folder(tmp_path, "pass")
    assert cli.main(["verify", str(run)]) == 0
    assert "OK" in capsys.readouterr().out
    (run / "summary.md").write_text("tampered")
    (run / "new.txt").write_text("x")
    assert cli.main(["verify", str(run)]) == 1
    out = capsys.readouterr().out
    assert "changed: summary.md" in out and "added: new.txt" in out and "FAILED" in out


def test_compare_prints_status_changes(tmp_path: Path, capsys) -> None:
    a = _run_folder(tmp_path, "fail")
    b = _run_folder(tmp_path, "pass")
    assert cli.main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "ws.upgrade" in out and "fail -> pass" in out
    assert "phase 3" in out


def test_run_passes_options_and_returns_the_runner_exit_code(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    seen = {}

    def fake_run(options, progress=None, sandbox=None):
        seen["options"] = options
        return RunOutcome(
            tmp_path,
            1,
            "fail",
            Recommendation("rollback", "failed after deploy: x", "rev-1"),
            (),
            True,
            1.5,
        )

    monkeypatch.setattr(runner, "run", fake_run)
    code = cli.main(
        [
            "run",
            "--env",
            "staging",
            "--phases",
            "1,3-5",
            "--approve",
            "--out",
            str(tmp_path),
            "--param",
            "thresholds.hold_s=5",
            "--param",
            "rollback_to=rev-0",
        ]
    )
    assert code == 1
    opts = seen["options"]
    assert opts.phases == (1, 3, 4, 5) and opts.approve and opts.environment == "staging"
    assert opts.overrides == {"thresholds.hold_s": 5} and opts.rollback_to == "rev-0"
    out = capsys.readouterr().out
    assert "verdict: FAIL" in out and "rollback to rev-1" in out


def test_progress_is_quiet_when_not_a_terminal_but_keeps_notes() -> None:
    """Not a TTY: one line per phase and every note; a TTY also sees each step."""
    events = [
        Progress("note", message="sandbox already running: using it"),
        Progress("phase-start", 2, 1, 3, "02_deploy.ipynb"),
        Progress("step", 2, 1, 3, "02_deploy.ipynb", step="deploy", elapsed_s=4.0),
        Progress("phase-end", 2, 1, 3, "02_deploy.ipynb", status="pass", message="9.0 s"),
        Progress("phase-skip", 3, 2, 3, "03_endpoint_validation.ipynb", message="deploy failed"),
    ]
    quiet, loud = io.StringIO(), io.StringIO()
    q, tty = cli.ConsoleProgress(quiet, tty=False), cli.ConsoleProgress(loud, tty=True, tick_s=0)
    for e in events:
        q(e)
        tty(e)
    q.close()
    tty.close()
    assert quiet.getvalue().count("\n") == 3
    assert quiet.getvalue().startswith("- sandbox already running: using it\n")
    assert "[1/3] 02_deploy.ipynb: PASS" in quiet.getvalue()
    assert "SKIPPED (deploy failed)" in quiet.getvalue()
    lines = loud.getvalue().splitlines()
    assert lines[0] == "- sandbox already running: using it"
    assert lines[1].startswith("[1/3] 02_deploy.ipynb starting")
    assert lines[2].startswith("    > deploy") and lines[3].startswith(
        "[1/3] 02_deploy.ipynb: PASS"
    )


def test_progress_goes_to_stderr_by_default(capsys) -> None:
    cli.ConsoleProgress(tty=False)(Progress("note", message="configuration: unknown key x"))
    captured = capsys.readouterr()
    assert captured.out == "" and "- configuration: unknown key x" in captured.err


def test_progress_ticks_the_elapsed_time_of_a_long_step() -> None:
    """On a terminal the live step line is rewritten with its elapsed time."""
    import time

    out = io.StringIO()
    progress = cli.ConsoleProgress(out, tty=True, tick_s=0.05)
    progress(Progress("step", 7, 1, 1, "07_monitoring.ipynb", step="monitor", message="cell 6"))
    time.sleep(0.5)
    progress.close()
    assert "\r    > monitor" in out.getvalue() and " s" in out.getvalue()
    assert out.getvalue().endswith("\n")


@pytest.mark.slow
def test_without_a_terminal_a_long_step_gets_a_bounded_heartbeat() -> None:
    """No TTY (CI): a silent step still prints "still running" with its phase, step and
    elapsed time once per heartbeat interval, never more often; none after the phase ends."""
    import time

    out = io.StringIO()
    progress = cli.ConsoleProgress(out, tty=False, heartbeat_s=0.3)
    progress(Progress("phase-start", 7, 6, 6, "07_monitoring.ipynb"))
    progress(Progress("step", 7, 6, 6, "07_monitoring.ipynb", step="monitor", message="cell 6"))
    time.sleep(1.05)
    progress(Progress("phase-end", 7, 6, 6, "07_monitoring.ipynb", status="pass", message="1 s"))
    time.sleep(0.5)
    progress.close()
    lines = out.getvalue().splitlines()
    beats = [line for line in lines if "still running" in line]
    assert 2 <= len(beats) <= 4, lines  # about one per 0.3 s over 1.05 s
    assert beats[0].startswith(
        "    ... still running phase 7 [6/6] 07_monitoring.ipynb, step monitor "
    ), beats
    assert lines[-1].startswith("[6/6] 07_monitoring.ipynb: PASS"), lines  # quiet afterwards
    assert "\r" not in out.getvalue()


def test_sandbox_subcommand_delegates_to_the_sandbox_cli(monkeypatch) -> None:
    got = []
    fake = types.ModuleType("runbook_lib.sandbox.cli")
    fake.sandbox_main = lambda argv: got.append(argv) or 0  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "runbook_lib.sandbox.cli", fake)
    import runbook_lib.sandbox as pkg

    monkeypatch.setattr(pkg, "cli", fake, raising=False)
    assert cli.main(["sandbox", "up", "--serving", "healthy"]) == 0
    assert got == [["up", "--serving", "healthy"]]


@pytest.mark.slow  # starts a process
def test_module_entry_point_runs() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runbook_lib", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0 and "verify" in proc.stdout


def test_verify_of_an_unsealed_folder_says_so_without_traceback(tmp_path: Path, capsys) -> None:
    run = evidence.create_run_dir(tmp_path, "killed")
    (run / "phases").mkdir()
    (run / "phases" / "01.json").write_text("{}")
    ctx = PhaseContext(
        phase=2, settings=settings_from_dict({"name": "cli"}), run_dir=run, approve=True
    )
    ctx.claim_mutation("deploy")  # then the process was SIGKILLed mid-deploy
    assert cli.main(["verify", str(run)]) == 1
    captured = capsys.readouterr()
    assert "never sealed" in captured.out and run.name in captured.out
    assert "phases persisted: 1, 2" in captured.out
    assert "mutation claimed in phase 2: deploy (started" in captured.out
    assert "Traceback" not in captured.err


def test_compare_json_and_fail_on_regression(tmp_path: Path, capsys) -> None:
    import json

    a = _run_folder(tmp_path, "pass")
    b = _run_folder(tmp_path, "fail")
    assert cli.main(["compare", str(a), str(b)]) == 0
    assert "REGRESSION" in capsys.readouterr().out
    assert cli.main(["compare", str(a), str(b), "--fail-on-regression"]) == 1
    assert "FAILED" in capsys.readouterr().out
    assert cli.main(["compare", str(a), str(b), "--json", "--fail-on-regression"]) == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["regressions"] == ["ws.upgrade"]
    assert cli.main(["compare", str(b), str(a), "--fail-on-regression"]) == 0


def test_interrupt_is_exit_3_with_one_line(monkeypatch, tmp_path: Path, capsys) -> None:
    from runbook_lib.exceptions import RunInterrupted

    def interrupted_run(options, progress=None, sandbox=None):
        exc = RunInterrupted(15)
        exc.run_dir = tmp_path  # type: ignore[attr-defined]
        exc.sealed = True  # type: ignore[attr-defined]
        raise exc

    monkeypatch.setattr(runner, "run", interrupted_run)
    assert cli.main(["run", "--env", "staging"]) == 3
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == (
        f"runbook: interrupted by signal 15; run folder sealed as interrupted: {tmp_path} (exit 3)"
    )
    assert "Traceback" not in err


def test_exit_code_mapping() -> None:
    from runbook_lib.exceptions import (
        CloudRunError,
        ConfigError,
        NotebookError,
        RunInterrupted,
        SandboxError,
    )

    assert cli.exit_code_for(KeyboardInterrupt()) == 3
    assert cli.exit_code_for(RunInterrupted(2)) == 3
    assert cli.exit_code_for(NotebookError("x")) == 3
    for exc in (ConfigError("x"), SandboxError("x"), CloudRunError("x"), OSError("x")):
        assert cli.exit_code_for(exc) == 2


def test_run_help_documents_the_exit_codes(capsys) -> None:
    assert cli.main(["run", "--help"]) == 0
    out = capsys.readouterr().out
    assert "exit codes" in out and "interrupted" in out and "3  a notebook" in out


@pytest.mark.parametrize(
    ("body", "words"),
    [
        # Issue 9: a typo made every check skip and the run green (exit 0).
        ('name = "x"\n[targets]\nbase_url = "http://127.0.0.1:9"\n', "did you mean [target]"),
        # Issue 9: health_path = "" silently probed "/".
        (
            'name = "x"\n[target]\nbase_url = "http://127.0.0.1:9"\nhealth_path = ""\n',
            "health_path",
        ),
        # Issue 9: an unset token_env was found late and reported as "no token source".
        (
            'name = "x"\n[target]\nbase_url = "http://127.0.0.1:9"\n'
            '[auth]\nmode = "bearer"\ntoken_env = "RB_ISSUE9_UNSET"\n',
            "RB_ISSUE9_UNSET",
        ),
    ],
)
def test_issue9_configuration_bugs_exit_2_before_any_kernel(
    tmp_path, monkeypatch, capsys, body, words
) -> None:
    from runbook_lib.cli import main

    monkeypatch.delenv("RB_ISSUE9_UNSET", raising=False)
    env = tmp_path / "env.toml"
    env.write_text(body)
    assert main(["run", "--env", str(env), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert words in err and str(env) in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
