"""The sandbox's processes: is a daemon alive, which processes are its group, stop them.

Only processes running ``runbook_lib.sandbox`` are ever signalled, so a stale state
file whose pid or process group was reused by an unrelated program never gets that
program killed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import psutil

__all__ = [
    "CHILDREN",
    "alive",
    "daemons_for",
    "group_alive",
    "group_members",
    "is_daemon",
    "kill_group",
]


# Daemons this process spawned: reaped here so they never linger as zombies
# (a zombie still "exists" for kill(pid, 0) and would look like a live sandbox).
CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def alive(pid: int) -> bool:
    child = CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        CHILDREN.pop(pid, None)
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def group_members(pgid: int) -> list[psutil.Process]:
    """Live sandbox processes in process group ``pgid``.

    Only processes running ``runbook_lib.sandbox`` count, so a stale state file
    whose pgid was reused by an unrelated program can never get that program killed.
    """
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, OSError):
            if (
                os.getpgid(proc.pid) == pgid
                and proc.status() != psutil.STATUS_ZOMBIE
                and "runbook_lib.sandbox" in " ".join(proc.info["cmdline"] or ())
            ):
                out.append(proc)
    return out


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


def is_daemon(pid: int) -> bool:
    try:
        return "runbook_lib.sandbox" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def daemons_for(sdir: Path) -> list[psutil.Process]:
    """Every live daemon process started for state folder ``sdir`` (tracked or not)."""
    out = []
    for proc in psutil.process_iter(["pid", "cmdline"]):
        with contextlib.suppress(psutil.Error, ValueError, IndexError):
            cmd = proc.info["cmdline"] or []
            if (
                "runbook_lib.sandbox" in cmd
                and "daemon" in cmd
                and cmd[cmd.index("--state-dir") + 1] == str(sdir)
                and proc.pid != os.getpid()
                and proc.status() != psutil.STATUS_ZOMBIE
            ):
                out.append(proc)
    return out


def kill_group(pid: int, pgid: int, grace_s: float = 10.0) -> None:
    if alive(pid) and is_daemon(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)  # the daemon stops its revisions itself
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (alive(pid) or group_alive(pgid)):
        time.sleep(0.05)
    leftovers = group_members(pgid)
    if alive(pid) and is_daemon(pid):
        leftovers.append(psutil.Process(pid))
    if leftovers:
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (alive(pid) or group_alive(pgid)):
            time.sleep(0.05)
    child = CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)
