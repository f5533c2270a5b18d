"""The CI examples under ``examples/ci/`` are valid YAML whose every ``runbook`` command
the CLI's own parser accepts, and they gate, archive and authenticate as documented."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from runbook_lib.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples" / "ci"
GITHUB = EXAMPLES / "github-actions.yml"
CLOUD_BUILD = EXAMPLES / "cloudbuild.yaml"


def _scripts(path: Path) -> list[str]:
    """The shell scripts a CI file runs: GitHub steps' ``run``, Cloud Build's ``bash -c``."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    scripts: list[str] = []
    for job in (doc.get("jobs") or {}).values():
        scripts += [s["run"] for s in job.get("steps") or [] if "run" in s]
    for step in doc.get("steps") or []:
        args = step.get("args") or []
        if "-c" in args:
            scripts.append(args[args.index("-c") + 1])
    return scripts


def runbook_commands(script: str) -> list[list[str]]:
    """Every ``runbook ...`` invocation in a shell script, as its argument list."""
    text = script.replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        lexer.commenters = "#"
        tokens = list(lexer)
        for i, tok in enumerate(tokens):
            if tok != "runbook":
                continue
            args = []
            for t in tokens[i + 1 :]:
                if t and all(c in "();<>|&" for c in t):
                    break
                args.append(t)
            commands.append(args)
    return commands


def _commands(path: Path) -> list[list[str]]:
    return [c for s in _scripts(path) for c in runbook_commands(s)]


@pytest.mark.parametrize("path", [GITHUB, CLOUD_BUILD], ids=lambda p: p.name)
def test_every_runbook_command_in_the_ci_file_parses_with_the_cli_parser(path):
    commands = _commands(path)
    assert commands, path
    for argv in commands:
        args = build_parser().parse_args(argv)  # raises on an unknown option or subcommand
        assert args.command in ("run", "verify", "compare", "postmortem"), argv


@pytest.mark.parametrize("path", [GITHUB, CLOUD_BUILD], ids=lambda p: p.name)
def test_the_ci_file_runs_the_phases_verifies_the_baseline_and_fails_on_regression(path):
    parsed = [build_parser().parse_args(argv) for argv in _commands(path)]
    runs = [a for a in parsed if a.command == "run"]
    assert len(runs) == 1 and runs[0].env and runs[0].phases and runs[0].out == "outputs"
    assert not runs[0].approve, "the gate after a deploy runs the read-only phases"
    assert [a.fail_on_regression for a in parsed if a.command == "compare"] == [True]
    assert [a.command for a in parsed].index("verify") < [a.command for a in parsed].index(
        "compare"
    )


def _no_key(text: str) -> None:
    for forbidden in ("credentials_json", "private_key", "BEGIN PRIVATE KEY", ".json\n"):
        assert forbidden not in text, forbidden


def test_github_actions_authenticates_by_workload_identity_and_reports_junit():
    text = GITHUB.read_text(encoding="utf-8")
    _no_key(text)
    doc: dict[str, Any] = yaml.safe_load(text)
    assert doc["permissions"]["id-token"] == "write"
    steps = doc["jobs"]["runbook-gate"]["steps"]
    uses = {s.get("uses", "").split("@")[0]: s for s in steps}
    assert set(uses["google-github-actions/auth"]["with"]) == {
        "workload_identity_provider",
        "service_account",
    }
    artifact = uses["actions/upload-artifact"]
    assert artifact["with"]["path"] == "${{ steps.gate.outputs.run_dir }}"
    assert artifact["if"].startswith("always()")
    junit = uses["mikepenz/action-junit-report"]
    assert junit["with"]["report_paths"].endswith("/junit.xml")
    assert junit["if"].startswith("always()")


def test_cloud_build_uses_its_service_account_and_archives_before_failing():
    text = CLOUD_BUILD.read_text(encoding="utf-8")
    _no_key(text)
    doc: dict[str, Any] = yaml.safe_load(text)
    assert doc["serviceAccount"].startswith("projects/$PROJECT_ID/serviceAccounts/")
    assert doc["options"]["logging"] == "CLOUD_LOGGING_ONLY"
    ids = [s["id"] for s in doc["steps"]]
    assert ids == ["runbook-restore", "runbook-gate", "runbook-archive"]
    gate, archive = doc["steps"][1]["args"][-1], doc["steps"][2]["args"][-1]
    # The gate step records the verdict; only the archive step, after uploading, fails.
    assert "exit" not in gate and "> gate.rc" in gate
    assert archive.index("gcloud storage rsync") < archive.index('exit "$$(cat gate.rc)"')
    # User substitutions are declared (Cloud Build refuses undeclared ones).
    assert {"_RUNBOOK_ENV", "_RUNBOOK_PHASES", "_RUNBOOK_BUCKET"} <= set(doc["substitutions"])


def test_the_checker_catches_a_misspelt_option():
    (argv,) = runbook_commands('runbook compare "a" "$b" --fail-on-regresion || rc=1')
    with pytest.raises(Exception, match="unrecognized arguments"):
        build_parser().parse_args(argv)
