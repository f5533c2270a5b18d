"""A real ``runbook run`` stopped by SIGINT is sealed as interrupted (issue 11).

Each test starts the CLI as a subprocess in its own session (so the signal reaches only
the runbook process, as from a supervisor), waits for a marker the notebook or the
runner writes, sends SIGINT, and checks: exit 3 with one line and no traceback, a
folder sealed with verdict ``interrupted`` that ``runbook verify`` accepts, every
mutation already claimed recorded, no process left, and a correct next run.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from test_runner import _record, _write

# Every test here starts a process (kernel, sandbox or subprocess server).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RUNBOOK = [sys.executable, "-m", "runbook_lib"]
WAIT_S = 90.0


def _wait_for(predicate: Callable[[], bool], what: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            out, err = proc.communicate(timeout=10)
            pytest.fail(f"runbook exited {proc.returncode} before {what}:\n{out}\n{err}")
        time.sleep(0.02)
    proc.kill()
    proc.communicate(timeout=10)
    pytest.fail(f"timed out waiting for {what}")


def _argv(env: Path, nbs: Path, out: Path, *extra: str) -> list[str]:
    return ["run", "--env", str(env), "--notebooks", str(nbs), "--out", str(out), *extra]


def _start(argv: list[str]) -> subprocess.Popen:
    return subprocess.Popen(
        [*RUNBOOK, *argv],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        restore_signals=True,
        start_new_session=True,
    )


def _interrupt(proc: subprocess.Popen) -> tuple[int, str, str, list[psutil.Process]]:
    """SIGINT the runbook process; return its exit code, output and its former children."""
    children = psutil.Process(proc.pid).children(recursive=True)
    os.kill(proc.pid, signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=WAIT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=10)
        pytest.fail(f"runbook did not stop within {WAIT_S} s of SIGINT:\n{err}")
    return proc.returncode, out, err, children


def _alive(procs: list[psutil.Process]) -> list[int]:
    left = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                left.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return left


def _only_run_dir(out: Path) -> Path:
    (run_dir,) = [p for p in out.iterdir() if p.is_dir()]
    return run_dir


def _assert_sealed_interrupted(run_dir: Path, err: str, code: int) -> dict:
    assert code == 3, err
    assert "Traceback" not in err
    assert "interrupted by signal 2" in err and "sealed as interrupted" in err
    assert str(run_dir) in err
    results = json.loads((run_dir / "results.json").read_text())
    assert results["verdict"] == "interrupted"
    assert results["interrupted"]["signal"] == signal.SIGINT
    for name in ("junit.xml", "summary.md", "index.html", "manifest.json"):
        assert (run_dir / name).is_file(), name
    assert "INTERRUPTED" in (run_dir / "summary.md").read_text()
    verify = subprocess.run(
        [*RUNBOOK, "verify", str(run_dir)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "interrupted" in verify.stdout
    return results


# A phase 3 that marks its start, then outlasts any test.
SLOW_PHASE_3 = [
    "import pathlib, time",
    "pathlib.Path(run_dir, 'started-3').write_text('x')",
    "time.sleep(120)",
]


@pytest.fixture
def fixture_env(tmp_path: Path) -> Path:
    env = tmp_path / "fixture.toml"
    env.write_text('name = "fixture"\n')
    return env


def test_sigint_during_a_phase_seals_the_folder_and_the_next_run_is_correct(
    tmp_path: Path, fixture_env: Path
) -> None:
    nbs = _write(tmp_path / "nbs", {3: SLOW_PHASE_3})
    out = tmp_path / "out"
    proc = _start(_argv(fixture_env, nbs, out, "--phases", "1,3,4"))
    _wait_for(lambda: any(out.glob("*/started-3")), "phase 3 to start", proc)
    code, _, err, children = _interrupt(proc)
    assert children, "the phase's kernel should have been a child of the run"
    run_dir = _only_run_dir(out)
    results = _assert_sealed_interrupted(run_dir, err, code)
    phases = {p["phase"]: p for p in results["phases"]}
    assert phases[1]["status"] == "pass"
    assert phases[3]["status"] == "interrupted" and "cell" in phases[3]["reason"]
    assert phases[4]["status"] == "skipped" and "interrupted" in phases[4]["reason"]
    assert results["recommendation"]["action"] == "hold"
    assert "phase 3" in results["recommendation"]["reason"]
    # The kernel (and anything it started) is gone: nothing writes to the sealed folder.
    assert _alive(children) == []

    # The next run is a normal, complete, chained run.
    nbs2 = _write(tmp_path / "nbs2", {})
    nxt = subprocess.run(
        [*RUNBOOK, *_argv(fixture_env, nbs2, out, "--phases", "3,4")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=WAIT_S * 2,
    )
    assert nxt.returncode == 0, nxt.stderr
    second = next(p for p in out.iterdir() if p.is_dir() and p != run_dir)
    assert json.loads((second / "results.json").read_text())["verdict"] == "pass"
    manifest = json.loads((second / "manifest.json").read_text())
    assert manifest["previous_manifest"]["run_id"] == run_dir.name
    verify = subprocess.run(
        [*RUNBOOK, "verify", str(second)], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert verify.returncode == 0 and run_dir.name in verify.stdout
    # compare reads the interrupted record: phase 4's check never ran there.
    cmp = subprocess.run(
        [*RUNBOOK, "compare", str(run_dir), str(second), "--json", "--fail-on-regression"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert cmp.returncode == 0, cmp.stdout + cmp.stderr
    doc = json.loads(cmp.stdout)
    assert doc["verdict_a"] == "interrupted" and doc["verdict_b"] == "pass"
    changes = {d["id"]: (d["status_a"], d["status_b"]) for d in doc["status_changes"]}
    assert changes["fixture.phase4"] == (None, "pass")


def test_sigint_after_a_claimed_mutation_records_it(tmp_path: Path, fixture_env: Path) -> None:
    """A kernel killed mid-deploy still leaves the claimed deploy in the sealed record."""
    nbs = _write(
        tmp_path / "nbs",
        {
            2: [
                'ctx.artifacts.update(dry_run=False, previous_revision="rev-1")',
                'm = ctx.claim_mutation("deploy")',
                "import time",
                "time.sleep(120)",
            ]
        },
    )
    out = tmp_path / "out"
    proc = _start(_argv(fixture_env, nbs, out, "--phases", "1,2,3", "--approve"))

    def claimed() -> bool:
        for path in out.glob("*/phases/02.json"):
            try:
                return bool(json.loads(path.read_text())["artifacts"].get("mutations"))
            except (ValueError, KeyError):
                return False
        return False

    _wait_for(claimed, "the deploy to be claimed", proc)
    code, _, err, children = _interrupt(proc)
    run_dir = _only_run_dir(out)
    results = _assert_sealed_interrupted(run_dir, err, code)
    (mutation,) = results["mutations"]
    assert mutation["key"] == "deploy" and mutation["phase"] == 2
    assert mutation["state"] == "started" and mutation["started_at"]
    assert "deploy (started" in results["recommendation"]["reason"]
    assert "Mutations made by this run" in (run_dir / "summary.md").read_text()
    assert _alive(children) == []


def test_sigint_during_finalization_still_seals(tmp_path: Path, fixture_env: Path) -> None:
    """The seal is redone after an interrupt that hit it half-way; verify accepts it."""
    # A large file makes the final secret scan and hashing last long enough to be hit.
    nbs = _write(
        tmp_path / "nbs",
        {
            3: [
                "import pathlib",
                "pathlib.Path(run_dir, 'blob.bin').write_bytes(b'\\0' * (150 << 20))",
                _record(3, ("fixture.phase3", "pass")),
            ]
        },
    )
    out = tmp_path / "out"
    proc = _start(_argv(fixture_env, nbs, out, "--phases", "3"))
    _wait_for(lambda: any(out.glob("*/results.json")), "finalization to start", proc)
    sealed_before = any(out.glob("*/manifest.json"))
    code, _, err, _ = _interrupt(proc)
    run_dir = _only_run_dir(out)
    if sealed_before:  # pragma: no cover - the machine outran the signal
        pytest.skip("the seal finished before the signal arrived")
    results = _assert_sealed_interrupted(run_dir, err, code)
    assert results["interrupted"]["during"] == "finalization"
    (phase,) = results["phases"]
    assert phase["status"] == "pass"  # the phase completed; the seal was interrupted
    assert "finalization" in results["recommendation"]["reason"]
    # The chain holds this run once per seal, and the manifest does not link to itself.
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["previous_manifest"] is None


@pytest.mark.e2e
def test_sigint_during_a_sandbox_deploy_records_it_stops_the_sandbox_and_next_run_passes(
    tmp_path: Path,
) -> None:
    """The real notebooks against the real sandbox: interrupted while phase 2 deploys."""
    from runbook_lib.sandbox import manager

    state, out = tmp_path / "sandbox", tmp_path / "out"
    argv = ["run", "--approve", "--phases", "1,2,3", "--out", str(out)]
    argv += ["--sandbox-state-dir", str(state)]
    proc = _start(argv)

    def deploying() -> bool:
        for path in out.glob("*/phases/02.json"):
            try:
                return bool(json.loads(path.read_text())["artifacts"].get("mutations"))
            except (ValueError, KeyError):
                return False
        return False

    _wait_for(deploying, "phase 2 to claim the deploy", proc)
    ports = {
        c.laddr.port
        for p in psutil.Process(proc.pid).children(recursive=True)
        for c in _listening(p)
    }
    sandbox_procs = [
        p
        for p in psutil.process_iter(["cmdline"])
        if str(state) in " ".join(p.info["cmdline"] or [])
    ]
    assert sandbox_procs and ports, "the sandbox should be running and listening"
    code, _, err, children = _interrupt(proc)
    run_dir = _only_run_dir(out)
    results = _assert_sealed_interrupted(run_dir, err, code)
    deploys = [m for m in results["mutations"] if m["key"] == "deploy"]
    assert deploys and deploys[0]["phase"] == 2
    assert results["recommendation"]["action"] == "hold"
    # Everything the run started is gone: kernel, sandbox daemon, backends, their ports.
    assert not manager.is_running(state)
    assert _alive(children + sandbox_procs) == []
    busy = {c.laddr.port for c in psutil.net_connections("inet") if c.status == "LISTEN"}
    assert ports & busy == set()

    # The next run starts a fresh sandbox and is correct.
    nxt = subprocess.run(
        [*RUNBOOK, *argv], cwd=ROOT, capture_output=True, text=True, timeout=WAIT_S * 3
    )
    assert nxt.returncode == 0, nxt.stdout + nxt.stderr
    second = next(p for p in out.iterdir() if p.is_dir() and p != run_dir)
    assert json.loads((second / "results.json").read_text())["verdict"] == "pass"
    assert not manager.is_running(state)


def _listening(proc: psutil.Process) -> list:
    try:
        return [c for c in proc.net_connections("inet") if c.status == "LISTEN"]
    except psutil.Error:
        return []


def test_sigterm_as_run_interrupted_is_sealed_with_its_signal(
    tmp_path: Path, fixture_env: Path
) -> None:
    """SIGTERM turned into ``RunInterrupted(15)`` (as the CLI's handler does) seals the same way."""
    nbs = _write(tmp_path / "nbs", {3: SLOW_PHASE_3})
    out = tmp_path / "out"
    wrapper = (
        "import signal, sys\n"
        "from runbook_lib import cli\n"
        "from runbook_lib.exceptions import RunInterrupted\n"
        "def stop(signum, frame):\n"
        "    raise RunInterrupted(signum)\n"
        "signal.signal(signal.SIGTERM, stop)\n"
        "sys.exit(cli.main(sys.argv[1:]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper, *_argv(fixture_env, nbs, out, "--phases", "3")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        restore_signals=True,
        start_new_session=True,
    )
    _wait_for(lambda: any(out.glob("*/started-3")), "phase 3 to start", proc)
    children = psutil.Process(proc.pid).children(recursive=True)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=WAIT_S)
    assert proc.returncode == 3, err
    assert "interrupted by signal 15" in err and "Traceback" not in err
    results = json.loads((_only_run_dir(out) / "results.json").read_text())
    assert results["verdict"] == "interrupted" and results["interrupted"]["signal"] == 15
    assert _alive(children) == []
