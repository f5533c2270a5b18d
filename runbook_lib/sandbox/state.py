"""The sandbox's state folder: where it is, the state file, its locks, its owner.

One sandbox per checkout. Its state folder is anchored at the checkout
(``<checkout>/outputs/.sandbox/``, see :func:`checkout_root`), not at the current
directory, so ``status`` and ``down`` find it from anywhere. The state file (pids,
urls, owner, serving profile, deploy image, the JWT secret; mode 0600) lives there,
next to two lock files (``fcntl.flock``): ``sandbox.lock`` serialises start and stop
(two concurrent ``up`` give one daemon), ``run.lock`` is held by the run using the
sandbox (a second concurrent run is refused, exit 2).

Both the manager (which starts and stops the daemon) and the daemon (which writes
the state file and watches its owner) read this module; it imports neither.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psutil

from ..exceptions import SandboxError

__all__ = [
    "DEFAULT_STATE_DIR",
    "LOCK_NAME",
    "LOG_NAME",
    "RUN_LOCK_NAME",
    "RUN_LOCK_WAIT_S",
    "START_LOCK_WAIT_S",
    "STATE_NAME",
    "FileLock",
    "RevisionRow",
    "SandboxBusy",
    "SandboxInfo",
    "checkout_root",
    "owner_alive",
    "read_state",
    "resolve_state_dir",
    "retire_env_file",
    "run_holder",
    "state_path",
    "write_state",
]


def checkout_root() -> Path:
    """The checkout the sandbox belongs to.

    The folder holding ``runbook_lib/`` and ``pyproject.toml`` (a source checkout or
    an editable install); else the nearest folder with ``environments/`` from the
    current directory up; else the current directory.
    """
    here = Path(__file__).resolve().parents[2]
    if (here / "pyproject.toml").is_file() and (here / "runbook_lib").is_dir():
        return here
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / "environments").is_dir():
            return folder
    return cwd


DEFAULT_STATE_DIR = checkout_root() / "outputs" / ".sandbox"
STATE_NAME = "sandbox.json"
LOG_NAME = "daemon.log"
LOCK_NAME = "sandbox.lock"
RUN_LOCK_NAME = "run.lock"
# How long `up`/`down` wait for a concurrent start or stop (a start is bounded by 60 s).
START_LOCK_WAIT_S = 90.0
# How long a run waits for another run on the same sandbox before refusing.
RUN_LOCK_WAIT_S = 5.0


class SandboxBusy(SandboxError):
    """The sandbox is in use or does not match what was asked: refused (exit 2)."""


@dataclass(frozen=True, slots=True)
class RevisionRow:
    """One revision as ``status`` shows it."""

    name: str
    profile: str
    ready: bool | None
    percent: int
    pid: int
    message: str = ""


@dataclass(frozen=True, slots=True)
class SandboxInfo:
    """A running sandbox: where each part answers and what it serves."""

    state_dir: str
    env_file: str
    pid: int
    pgid: int
    service_url: str
    emulator_url: str
    auth_url: str
    project: str
    region: str
    service: str
    serving: str
    deploy_image: str
    started_at: str
    revisions: tuple[RevisionRow, ...] = ()
    traffic: tuple[str, ...] = ()
    jwt_secret: str = field(default="", repr=False)
    owner_pid: int = 0  # 0: started by `runbook sandbox up`, runs until `down`
    log_delay_s: float = 0.0  # Cloud Logging's ingestion delay (`--log-delay`)


def resolve_state_dir(state_dir: str | os.PathLike[str] | None) -> Path:
    """The state folder: ``state_dir``, else ``$RUNBOOK_SANDBOX_DIR``, else the checkout's.

    Absolute, so the daemon's command line names it wherever it was started from.
    """
    if state_dir is None:
        state_dir = os.environ.get("RUNBOOK_SANDBOX_DIR") or DEFAULT_STATE_DIR
    return Path(os.path.abspath(state_dir))


def state_path(state_dir: str | os.PathLike[str] | None) -> Path:
    return resolve_state_dir(state_dir) / STATE_NAME


def owner_alive(pid: int, started: float = 0.0) -> bool:
    """True while process ``pid`` runs (and, given ``started``, is the one started then).

    A zombie counts as gone: a SIGKILLed run whose parent has not reaped it yet.
    """
    if pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if started and abs(proc.create_time() - started) > 0.05:
            return False
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def retire_env_file(state: dict[str, Any]) -> bool:
    """Remove the environment file written for this sandbox, if it still points at it.

    A stopped sandbox's ports may be reused by anything; an environment file naming them
    would send a later ``--env local`` run there. Only a file that still names this
    sandbox's service URL is removed (never one rewritten for another sandbox).
    """
    env_file, url = state.get("env_file"), state.get("service_url")
    if not env_file or not url:
        return False
    path = Path(str(env_file))
    try:
        if f'base_url = "{url}"' not in path.read_text(encoding="utf-8"):
            return False
        path.unlink()
    except OSError:
        return False
    return True


class FileLock:
    """An exclusive ``flock`` on ``path``, taken with a bounded wait; names its holder.

    The file stays (deleting a lock file races with its next user); its text says who
    holds it, for the messages of those who wait.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def holder(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8") or "{}")
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def try_acquire(self, what: str) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            return False
        self._fd = fd
        info = {
            "pid": os.getpid(),
            "what": what,
            "command": " ".join(sys.argv[:6]),
            "since": datetime.now(UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        return True

    def acquire(self, wait_s: float, what: str, busy: Callable[[dict[str, Any]], str]) -> None:
        deadline = time.monotonic() + wait_s
        while not self.try_acquire(what):
            if time.monotonic() >= deadline:
                raise SandboxBusy(busy(self.holder()))
            time.sleep(0.1)

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(fd, 0)
            os.close(fd)  # closing drops the flock

    @contextlib.contextmanager
    def held(self, wait_s: float, what: str) -> Any:
        def busy(h: dict[str, Any]) -> str:
            return (
                f"the sandbox of {self.path.parent} is being started or stopped by process "
                f"{h.get('pid', '?')} ({h.get('command', '?')}) for more than {wait_s:g}s; "
                f"try again, or `runbook sandbox down`"
            )

        self.acquire(wait_s, what, busy)
        try:
            yield self
        finally:
            self.release()


def run_holder(state_dir: str | os.PathLike[str] | None = None) -> dict[str, Any] | None:
    """Who holds the run lock of this sandbox (pid, command, since), or ``None``."""
    lock = FileLock(resolve_state_dir(state_dir) / RUN_LOCK_NAME)
    if not lock.path.exists():
        return None
    if lock.try_acquire("probe"):
        lock.release()
        return None
    return lock.holder() or {"pid": "?"}


def read_state(state_dir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    path = state_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def write_state(path: Path, state: dict[str, Any]) -> None:
    """Atomically write the state file with mode 0600 (it holds the JWT secret)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(state, fh, indent=2)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
