"""interrupts: a signal stops the guarded block cleanly, a second one forces, a dead parent stops it.

Each test runs a small real program in a subprocess (signals, process groups and parent
death cannot be faked in-process) and checks with psutil that what it started is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import psutil
import pytest

from runbook_lib.exceptions import RunInterrupted
from runbook_lib.interrupts import InterruptGuard, stop_processes

# Every test here starts a process (a guarded program, a child to stop).
pytestmark = pytest.mark.slow

# A guarded block that starts a child in its own session (like a kernel or the sandbox
# daemon), reports its pid, and waits; a `finally` writes a marker.
PROGRAM = """
import os, signal, subprocess, sys, time
from runbook_lib.exceptions import RunInterrupted
from runbook_lib.interrupts import guarded

out = sys.argv[1]
mode = sys.argv[2] if len(sys.argv) > 2 else ""

@guarded
def work():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"],
                             start_new_session=True)
    with open(out + ".child", "w") as f:
        f.write(str(child.pid))
    try:
        time.sleep(60)
    finally:
        with open(out + ".finally", "w") as f:
            f.write("ran")
        if mode == "stuck":
            time.sleep(60)   # a clean-up that hangs: only a second signal ends it

try:
    work()
except RunInterrupted as exc:
    with open(out + ".signum", "w") as f:
        f.write(str(exc.signum))
    sys.exit(3)
"""


def _wait_file(path: Path, timeout_s: float = 20.0) -> str:
    deadline = time.monotonic() + timeout_s
    while not path.exists() or not path.read_text():
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


def _start(tmp_path: Path, *args: str, **kw) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    out = tmp_path / "out"
    # SIGINT reset to default: a test runner started in the background may ignore it,
    # and an ignored SIGINT is (rightly) left ignored by the guard.
    launcher = (
        "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
        "os.execv(sys.executable, [sys.executable, *sys.argv[1:]])"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", launcher, str(script), str(out), *args],
        cwd=Path(__file__).resolve().parents[1],
        restore_signals=True,
        start_new_session=True,
        **kw,
    )
    return proc, out


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_raises_run_interrupted_runs_finally_and_stops_children(tmp_path, sig):
    """SIGINT/SIGTERM/SIGHUP: RunInterrupted(signum), finally ran, the child (own session) gone."""
    proc, out = _start(tmp_path)
    try:
        child = int(_wait_file(Path(str(out) + ".child")))
        time.sleep(0.3)
        proc.send_signal(sig)
        assert proc.wait(timeout=20) == 3
        assert _wait_file(Path(str(out) + ".signum")) == str(int(sig))
        assert Path(str(out) + ".finally").read_text() == "ran"
        assert _gone(child, 2)
    finally:
        proc.kill()


def test_second_signal_forces_exit_and_kills_children(tmp_path):
    """A clean-up that hangs: the second SIGTERM kills the child and exits 3 at once."""
    proc, out = _start(tmp_path, "stuck", stderr=subprocess.PIPE, text=True)
    try:
        child = int(_wait_file(Path(str(out) + ".child")))
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        _wait_file(Path(str(out) + ".finally"))
        assert proc.poll() is None  # stuck in its finally
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 3
        assert time.monotonic() - t0 < 5
        assert _gone(child, 5)
        assert "SIGTERM again" in proc.stderr.read()
    finally:
        proc.kill()
        proc.wait(5)
        proc.stderr.close()


def test_dead_parent_interrupts_the_block(tmp_path):
    """The parent dies (SIGKILL): the block gets RunInterrupted(0) and stops its child."""
    script = tmp_path / "prog.py"
    script.write_text(PROGRAM)
    out = tmp_path / "out"
    # The middle process starts the guarded program, then waits to be killed.
    middle = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                import subprocess, sys, time
                subprocess.Popen([sys.executable, {str(script)!r}, {str(out)!r}])
                time.sleep(120)
                """
            ),
        ],
        cwd=Path(__file__).resolve().parents[1],
        start_new_session=True,
    )
    try:
        child = int(_wait_file(Path(str(out) + ".child")))
        time.sleep(0.3)
        middle.kill()
        middle.wait(5)
        assert _wait_file(Path(str(out) + ".signum")) == "0"
        assert Path(str(out) + ".finally").read_text() == "ran"
        assert _gone(child, 10)
    finally:
        middle.kill()


def test_guard_is_a_no_op_outside_the_main_thread_and_when_nested():
    """Only the outermost guard in the main thread installs handlers."""
    import threading

    before = signal.getsignal(signal.SIGTERM)
    with InterruptGuard(watch_parent=False) as outer:
        installed = signal.getsignal(signal.SIGTERM)
        assert installed == outer._handle
        with InterruptGuard(watch_parent=False):
            assert signal.getsignal(signal.SIGTERM) == installed
        seen = []

        def other() -> None:
            with InterruptGuard(watch_parent=False) as g:
                seen.append(g._active)

        t = threading.Thread(target=other)
        t.start()
        t.join(5)
        assert seen == [False]
    assert signal.getsignal(signal.SIGTERM) == before


def test_guard_raises_for_signal_sent_to_itself():
    """In-process: a SIGTERM to this process becomes RunInterrupted with its number."""
    with pytest.raises(RunInterrupted) as info, InterruptGuard(watch_parent=False):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert info.value.signum == signal.SIGTERM
    assert isinstance(info.value, KeyboardInterrupt)


def test_stop_processes_terminates_then_kills(tmp_path):
    """A process ignoring SIGTERM is killed after the grace period."""
    code = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True)
    try:
        time.sleep(0.5)
        t0 = time.monotonic()
        assert stop_processes([psutil.Process(proc.pid)], grace_s=1.0) == 1
        assert _gone(proc.pid, 1)  # reaped by psutil: Popen cannot see the signal any more
        assert time.monotonic() - t0 < 5
    finally:
        proc.kill()


def test_stop_started_spares_kept_groups_and_exit_reaps_the_rest():
    """stop_started() stops what the block started except `keep`; leaving the block stops all."""
    from runbook_lib import interrupts

    sleeper = [sys.executable, "-c", "import time; time.sleep(60)"]
    outside = subprocess.Popen(sleeper, start_new_session=True)
    try:
        with InterruptGuard(watch_parent=False):
            kept = subprocess.Popen(sleeper, start_new_session=True)
            kernel = subprocess.Popen(sleeper, start_new_session=True)
            assert interrupts.stop_started(grace_s=2, keep=(kept.pid,)) == 1
            assert _gone(kernel.pid, 1) and not _gone(kept.pid, 0.2)
        assert _gone(kept.pid, 1)
        kept.wait(5), kernel.wait(5)  # already reaped: only clears Popen's bookkeeping
        assert not _gone(outside.pid, 0.2)  # started before the block: not ours to stop
    finally:
        outside.kill()
        outside.wait(5)
    assert interrupts.stop_started() == 0  # no guard active


def test_asyncio_signal_handlers_cannot_take_the_signals_away():
    """nbclient's pattern (loop.add_signal_handler, then remove -> SIG_DFL) leaves the guard in charge."""
    import asyncio

    called: list[int] = []
    with pytest.raises(RunInterrupted) as info, InterruptGuard(watch_parent=False) as g:
        loop = asyncio.new_event_loop()
        try:
            loop.add_signal_handler(signal.SIGTERM, called.append, 1)
            loop.add_signal_handler(signal.SIGINT, called.append, 2)
            assert signal.getsignal(signal.SIGTERM) == g._handle
            loop.remove_signal_handler(signal.SIGTERM)
            loop.remove_signal_handler(signal.SIGINT)
        finally:
            loop.close()
        assert signal.getsignal(signal.SIGTERM) == g._handle
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
    assert info.value.signum == signal.SIGTERM and called == []
    assert signal.signal is not None and signal.getsignal(signal.SIGTERM) != g._handle
