"""The sandbox's lifecycle with real processes: interrupted, killed, reused, concurrent.

Every test runs real ``runbook`` commands (``subprocess.Popen``, own session, bounded
waits) against its own state folder (``RUNBOOK_SANDBOX_DIR``) and environment folder
(``RUNBOOK_ENV_DIR``), and ends by checking with psutil that no process it started is
left (no command line holding the checkout or the test's folder) and that every port
the sandbox listened on is free.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from runbook_lib.sandbox import manager
from runbook_lib.sandbox import state as sandbox_state

# Every test here starts a process (kernel, sandbox or subprocess server).
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
RUNBOOK = Path(sys.executable).with_name("runbook")
# SIGINT back to default before exec: a test runner started in the background ignores
# it, and the runbook (rightly) leaves an ignored SIGINT ignored.
LAUNCHER = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def _key(p: psutil.Process) -> tuple[int, float]:
    try:
        return p.pid, p.create_time()
    except psutil.Error:
        return p.pid, 0.0


class Lab:
    """One test's sandbox folder, environment and process bookkeeping."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.state = tmp_path / "sandbox"
        self.envs = tmp_path / "environments"
        self.envs.mkdir()
        self.env = {
            **os.environ,
            "RUNBOOK_SANDBOX_DIR": str(self.state),
            "RUNBOOK_ENV_DIR": str(self.envs),
            "PYTHONUNBUFFERED": "1",
        }
        self.before = {_key(p) for p in psutil.process_iter()}
        self.ports: set[int] = set()
        self.procs: list[subprocess.Popen] = []

    def start(self, *args: str, cwd: Path | None = None) -> subprocess.Popen:
        cmd = (
            [str(RUNBOOK), *args]
            if RUNBOOK.exists()
            else [sys.executable, "-m", "runbook_lib", *args]
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", LAUNCHER, *cmd],
            cwd=cwd or self.tmp,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            restore_signals=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        return proc

    def runbook(
        self, *args: str, timeout: float = 90, cwd: Path | None = None
    ) -> tuple[int, str, str]:
        proc = self.start(*args, cwd=cwd)
        out, err = proc.communicate(timeout=timeout)
        return proc.returncode, out, err

    def ours(self) -> list[psutil.Process]:
        """Live processes started during the test that belong to the checkout or the test."""
        found = []
        for p in psutil.process_iter(["pid", "cmdline"]):
            with contextlib.suppress(psutil.Error):
                if _key(p) in self.before or p.pid == os.getpid():
                    continue
                cmd = " ".join(p.info["cmdline"] or [])
                if self._mine(p, cmd) and p.status() != psutil.STATUS_ZOMBIE:
                    found.append(p)
        return found

    def _mine(self, p: psutil.Process, cmd: str) -> bool:
        """Started for this test: it names the test's folder, or it is a process of the
        checkout that inherited this test's sandbox folder (kernels, revisions, daemons).
        Other tests running at the same time (pytest-xdist workers) have processes of the
        checkout too; they are never this test's to count or to kill."""
        if str(self.tmp) in cmd:
            return True
        if str(ROOT) not in cmd:
            return False
        try:
            return p.environ().get("RUNBOOK_SANDBOX_DIR") == str(self.state)
        except psutil.Error:
            return False

    def daemons(self) -> list[psutil.Process]:
        return [
            p
            for p in self.ours()
            if "runbook_lib.sandbox" in p.cmdline() and "daemon" in p.cmdline()
        ]

    def record_ports(self) -> None:
        """Remember every port a process of ours listens on (checked free at the end)."""
        for p in self.ours():
            with contextlib.suppress(psutil.Error):
                for c in p.net_connections(kind="tcp"):
                    if c.status == psutil.CONN_LISTEN:
                        self.ports.add(c.laddr.port)

    def wait_for(self, what, timeout: float = 60, poll: float = 0.05):
        deadline = time.monotonic() + timeout
        while True:
            self.record_ports()
            value = what()
            if value:
                return value
            assert time.monotonic() < deadline, f"timed out waiting for {what}"
            time.sleep(poll)

    def state_file(self) -> dict | None:
        try:
            return json.loads((self.state / "sandbox.json").read_text())
        except (OSError, ValueError):
            return None

    def ready(self) -> dict | None:
        state = self.state_file()
        return state if state and state.get("ready") else None

    def assert_clean(self, timeout: float = 20) -> None:
        """No process of ours left and every recorded port free (within ``timeout``)."""
        deadline = time.monotonic() + timeout
        while (left := self.ours()) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert left == [], [(p.pid, " ".join(p.cmdline())[:160]) for p in left]
        # A killed multi-threaded process shows as a zombie while its other threads
        # still hold its sockets for a moment: poll the ports within the same deadline.
        while (busy := self._bound()) and time.monotonic() < deadline:
            time.sleep(0.1)
        holders = []
        if busy:
            for c in psutil.net_connections(kind="tcp"):
                if c.laddr and c.laddr.port in busy:
                    with contextlib.suppress(psutil.Error):
                        who = psutil.Process(c.pid) if c.pid else None
                        holders.append(
                            (
                                c.laddr.port,
                                c.status,
                                c.pid,
                                who.status() if who else None,
                                " ".join(who.cmdline())[:120] if who else None,
                            )
                        )
        assert busy == [], f"ports still bound: {busy}: {holders}"

    def _bound(self) -> list[int]:
        busy = []
        for port in self.ports:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    busy.append(port)
        return busy

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
            with contextlib.suppress(Exception):
                proc.communicate(timeout=5)
        with contextlib.suppress(Exception):
            manager.down(self.state)
        for p in self.ours():
            with contextlib.suppress(psutil.Error):
                p.kill()


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.close()


def _kernels(lab: Lab, pid: int) -> list[psutil.Process]:
    with contextlib.suppress(psutil.Error):
        return [
            p
            for p in psutil.Process(pid).children(recursive=True)
            if "ipykernel_launcher" in " ".join(p.cmdline())
        ]
    return []


def _assert_run_ok(code: int, out: str, err: str, out_dir: Path) -> None:
    """The run ended normally and every check passed but ``source.*`` (a checkout being
    edited while the tests run is legitimately not git-clean)."""
    assert code in (0, 1), out[-3000:] + err[-3000:]
    run_dir = max(out_dir.glob("*-local"), key=lambda d: d.stat().st_mtime)
    checks = json.loads((run_dir / "results.json").read_text())["checks"]
    bad = [
        (c["id"], c["detail"])
        for c in checks
        if c["status"] in ("fail", "error") and not c["id"].startswith("source.")
    ]
    assert bad == [], bad


def _assert_interrupted(proc: subprocess.Popen, timeout: float = 40) -> tuple[str, str]:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 3, (proc.returncode, out[-2000:], err[-2000:])
    assert "Traceback" not in err and "Traceback" not in out, err[-3000:]
    return out, err


# ---------------------------------------------------------------- signals


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_sandbox_start_up_leaves_nothing(lab: Lab, sig: int) -> None:
    """SIGINT/SIGTERM while `runbook run` waits for the sandbox: exit 3, no process or port left."""
    proc = lab.start("run", "--phases", "1", "--serving", "healthy")
    lab.wait_for(lambda: lab.daemons(), timeout=30, poll=0.02)
    time.sleep(0.3)  # inside manager.up(), before the sandbox is ready
    assert lab.ready() is None, "too late: the sandbox was already ready"
    proc.send_signal(sig)
    _, err = _assert_interrupted(proc)
    assert "interrupted by signal" in err
    lab.assert_clean()
    assert lab.state_file() is None
    assert not (lab.envs / "local.toml").exists()  # never left pointing at dead ports


def test_sandbox_up_interrupted_leaves_nothing(lab: Lab) -> None:
    """SIGINT during `runbook sandbox up`: what it started is stopped, exit 3."""
    proc = lab.start("sandbox", "up")
    lab.wait_for(lambda: lab.daemons(), timeout=30, poll=0.02)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _assert_interrupted(proc)
    lab.assert_clean()


@pytest.mark.e2e
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_during_a_phase_leaves_nothing(lab: Lab, sig: int) -> None:
    """SIGINT/SIGTERM while a phase notebook runs: kernel, sandbox and ports all gone, exit 3."""
    proc = lab.start("run", "--phases", "1", "--serving", "healthy")
    lab.wait_for(lambda: _kernels(lab, proc.pid), timeout=60)
    time.sleep(1.0)
    assert proc.poll() is None
    proc.send_signal(sig)
    _assert_interrupted(proc)
    lab.assert_clean()


@pytest.mark.e2e
def test_a_second_signal_forces_the_stop(lab: Lab) -> None:
    """Two SIGINTs 0.1 s apart during a phase: exit 3 at once, nothing left running."""
    proc = lab.start("run", "--phases", "1", "--serving", "healthy")
    lab.wait_for(lambda: _kernels(lab, proc.pid), timeout=60)
    time.sleep(1.0)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.1)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 3, (out[-2000:], err[-2000:])
    assert "SIGINT again: killed" in err and "Traceback" not in err, err[-2000:]
    lab.assert_clean()
    assert not (lab.envs / "local.toml").exists()  # never left naming dead ports


@pytest.mark.e2e
def test_sigterm_while_a_kernel_runs_a_command_stops_the_command_too(lab: Lab) -> None:
    """SIGTERM during phase 2's pre-deploy suite (a grandchild in its own session): all gone."""

    def suite() -> list[psutil.Process]:
        return [p for p in lab.ours() if "runbook_lib.sandbox.suite" in " ".join(p.cmdline())]

    proc = lab.start("run", "--approve", "--phases", "2", "--out", str(lab.tmp / "outputs"))
    lab.wait_for(suite, timeout=60, poll=0.02)
    proc.send_signal(signal.SIGTERM)
    _assert_interrupted(proc)
    lab.assert_clean()


@pytest.mark.e2e
def test_sigkilled_run_is_cleaned_up_then_the_next_run_is_correct(lab: Lab) -> None:
    """SIGKILL of a run: its sandbox stops with it (owner gone); `down` and the next run are clean."""
    proc = lab.start("run", "--phases", "1", "--serving", "healthy")
    state = lab.wait_for(lab.ready, timeout=60)
    assert state["owner_pid"] == proc.pid or psutil.Process(state["owner_pid"]).ppid() == proc.pid
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=10)
    lab.assert_clean(timeout=30)  # the daemon saw its owner die; the kernel its parent
    assert not (lab.envs / "local.toml").exists()  # the daemon retired its env file
    code, out, _ = lab.runbook("sandbox", "down")
    assert code == 0
    code, out, err = lab.runbook("run", "--phases", "1", "--serving", "healthy", "--out", "next")
    _assert_run_ok(code, out, err, lab.tmp / "next")
    lab.assert_clean()


# ---------------------------------------------------------------- reuse


def test_sandbox_of_a_dead_run_is_cleaned_up_by_down_and_by_the_next_start(lab: Lab) -> None:
    """A sandbox whose owner is gone (and that is still running) is stopped, never reused."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    notes: list[str] = []
    for stopper in ("down", "next start"):
        info = manager.up(serving="healthy", state_dir=lab.state, env_file=lab.envs / "local.toml")
        lab.record_ports()
        state = lab.state_file()
        state["owner_pid"], state["owner_started"] = dead.pid, 1.0
        (lab.state / "sandbox.json").write_text(json.dumps(state))
        assert not manager.is_running(lab.state)
        if stopper == "down":
            assert manager.down(lab.state) is True
        else:
            with manager.Sandbox(
                state_dir=lab.state, env_file=lab.envs / "local.toml", note=notes.append
            ) as fresh:
                assert fresh.pid != info.pid and fresh.owner_pid == os.getpid()
                assert (
                    manager.status(lab.state).service_url in (lab.envs / "local.toml").read_text()
                )
                lab.record_ports()
            assert any("run that is gone" in n for n in notes), notes
        assert (
            not psutil.pid_exists(info.pid)
            or psutil.Process(info.pid).status() == psutil.STATUS_ZOMBIE
        )
    lab.assert_clean()


def test_reuse_only_when_it_matches(lab: Lab) -> None:
    """A running sandbox is reused as it is, or refused when --serving/--deploy-image differ."""
    envf = lab.envs / "local.toml"
    info = manager.up(serving="healthy", state_dir=lab.state, env_file=envf)
    lab.record_ports()
    try:
        with pytest.raises(
            sandbox_state.SandboxBusy, match="--serving drop-events asked, it serves healthy"
        ):
            with manager.Sandbox(serving="drop-events", state_dir=lab.state, env_file=envf):
                pass
        with pytest.raises(
            sandbox_state.SandboxBusy,
            match="cross-user-leak asked, it deploys sandbox/backend:healthy",
        ):
            with manager.Sandbox(
                deploy_image="sandbox/backend:cross-user-leak", state_dir=lab.state, env_file=envf
            ):
                pass
        envf.write_text('name = "local"\n[target]\nbase_url = "http://127.0.0.1:1"\n')  # stale
        notes: list[str] = []
        with manager.Sandbox(
            serving="healthy", state_dir=lab.state, env_file=envf, note=notes.append
        ) as got:
            assert got.pid == info.pid
        assert manager.is_running(lab.state)  # not ours: left running
        assert any("already running: using it" in n and "serving healthy 100%" in n for n in notes)
        assert any("rewrote" in n for n in notes)
        assert info.service_url in envf.read_text()
        # The CLI says it too, and refuses another profile with exit 2.
        code, out, err = lab.runbook("sandbox", "up", "--serving", "drop-events")
        assert code == 2 and "does not match" in err and "sandbox down" in err
        code, out, err = lab.runbook("sandbox", "up")
        assert code == 0 and "already running" in out
    finally:
        manager.down(lab.state)
    assert not envf.exists()
    lab.assert_clean()


def test_a_sandbox_that_does_not_answer_is_refused(lab: Lab) -> None:
    """A live daemon whose API does not answer is not reused (clear message, exit 2)."""
    envf = lab.envs / "local.toml"
    info = manager.up(serving="healthy", state_dir=lab.state, env_file=envf)
    lab.record_ports()
    try:
        os.kill(info.pid, signal.SIGSTOP)
        code, out, err = lab.runbook("run", "--phases", "1", timeout=60)
        assert code == 2 and "does not answer" in err, (out, err)
    finally:
        os.kill(info.pid, signal.SIGCONT)
        manager.down(lab.state)
    lab.assert_clean()


# ---------------------------------------------------------------- one per checkout, concurrency


def test_status_and_down_find_the_sandbox_from_another_directory(lab: Lab, tmp_path: Path) -> None:
    """The default state folder is the checkout's, whatever the current directory."""
    assert sandbox_state.DEFAULT_STATE_DIR == ROOT / "outputs" / ".sandbox"
    assert sandbox_state.checkout_root() == ROOT
    env = {k: v for k, v in lab.env.items() if k != "RUNBOOK_SANDBOX_DIR"}
    out = subprocess.run(
        [sys.executable, "-m", "runbook_lib", "sandbox", "status"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert str(ROOT / "outputs" / ".sandbox") in out
    # Started in one directory, found and stopped from another.
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    code, out, _ = lab.runbook("sandbox", "up", "--serving", "healthy", cwd=tmp_path / "a")
    assert code == 0
    lab.record_ports()
    code, out, _ = lab.runbook("sandbox", "status", cwd=tmp_path / "b")
    assert code == 0 and "healthy" in out
    code, out, _ = lab.runbook("sandbox", "down", cwd=ROOT)
    assert code == 0 and "sandbox stopped" in out
    lab.assert_clean()


def test_two_concurrent_ups_give_one_daemon(lab: Lab) -> None:
    """Two `sandbox up` at the same moment: one daemon, both succeed, `down` stops it all."""
    a, b = lab.start("sandbox", "up"), lab.start("sandbox", "up")
    outs = [p.communicate(timeout=120) for p in (a, b)]
    assert (a.returncode, b.returncode) == (0, 0), outs
    assert sum("already running" in o for o, _ in outs) == 1, outs
    lab.record_ports()
    assert len(lab.daemons()) == 1
    code, out, _ = lab.runbook("sandbox", "down")
    assert code == 0 and "sandbox stopped" in out
    lab.assert_clean()


@pytest.mark.e2e
def test_a_second_concurrent_run_is_refused_clearly(lab: Lab) -> None:
    """While a run uses the sandbox, a second run exits 2 at once, naming the first."""
    first = lab.start("run", "--phases", "1", "--serving", "healthy", "--out", "first")
    lab.wait_for(lab.ready, timeout=60)
    # The first run holds the run lock from before its sandbox is ready until it ends.
    # Freeze it while the second run tries, so the test does not depend on the first
    # run being slower than the machine (phase 1 alone can end in under 4 s).
    os.kill(first.pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        code, out, err = lab.runbook("run", "--phases", "1", "--serving", "healthy", timeout=60)
    finally:
        os.kill(first.pid, signal.SIGCONT)
    assert code == 2, (out, err)
    assert "another run is using the sandbox" in err and str(first.pid) in err
    assert time.monotonic() - t0 < 30
    out, err = first.communicate(timeout=90)
    _assert_run_ok(first.returncode, out, err, lab.tmp / "first")
    lab.assert_clean()


@pytest.mark.e2e
def test_orphan_scenario_never_passes_a_leaking_deploy(lab: Lab) -> None:
    """SIGTERM a run, then deploy cross-user-leak: the leak is caught (exit 1), never exit 0."""
    first = lab.start("run", "--approve", "--phases", "1", "--out", str(lab.tmp / "interrupted"))
    lab.wait_for(lambda: _kernels(lab, first.pid), timeout=60)
    first.send_signal(signal.SIGTERM)
    _assert_interrupted(first)
    lab.assert_clean()
    code, out, err = lab.runbook(
        "run",
        "--approve",
        "--serving",
        "healthy",
        "--deploy-image",
        "sandbox/backend:cross-user-leak",
        "--phases",
        "2,5",
        "--out",
        str(lab.tmp / "outputs"),
        timeout=120,
    )
    assert code == 1, out[-3000:] + err[-3000:]
    run_dir = next((lab.tmp / "outputs").glob("*-local"))
    checks = {c["id"]: c for c in json.loads((run_dir / "results.json").read_text())["checks"]}
    assert checks["isolation.no_cross_user"]["status"] == "fail"
    lab.assert_clean()
