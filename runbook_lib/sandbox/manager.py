"""Start, inspect and stop the sandbox daemon; write the sandbox environment file.

One sandbox per checkout. Its state folder is anchored at the checkout
(``<checkout>/outputs/.sandbox/``, see :func:`checkout_root`), not at the current
directory, so ``status`` and ``down`` find it from anywhere. The state file (pids,
urls, owner, serving profile, deploy image, the JWT secret; mode 0600) lives there,
next to two lock files (``fcntl.flock``): ``sandbox.lock`` serialises start and stop
(two concurrent ``up`` give one daemon), ``run.lock`` is held by the run using the
sandbox (a second concurrent run is refused, exit 2).

``up`` spawns ``python -m runbook_lib.sandbox daemon`` in its own session, waits
(bounded) until the emulator, the auth service and the router all answer, and
writes ``environments/local.toml`` (no secret in it: tokens come from the auth
service's dev-token endpoint). An interrupted ``up`` stops what it started. A
sandbox started for a run has an *owner* (the run's process) and stops when the
owner is gone, however it died; ``runbook sandbox up`` starts one without owner.

Reuse rule: a running sandbox is reused only when its daemon answers and it
matches what was asked (``--serving``: the profile serving now; ``--deploy-image``:
the image recorded at start); otherwise :class:`SandboxBusy` says why (exit 2).
A sandbox whose owner is gone, or whose daemon died, is cleaned up and started
afresh. ``down`` works from any process: it signals the daemon, then its whole
process group, plus any daemon of the same state folder, and waits until every
process is gone.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from dataclasses import replace as dataclass_replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

from ..exceptions import SandboxError

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DEPLOY_IMAGE",
    "DEFAULT_ENV_FILE",
    "DEFAULT_SERVING",
    "DEFAULT_STATE_DIR",
    "RevisionRow",
    "Sandbox",
    "SandboxBusy",
    "SandboxInfo",
    "checkout_root",
    "down",
    "environment_toml",
    "is_running",
    "owner_alive",
    "retire_env_file",
    "run_holder",
    "sandbox_main",
    "status",
    "up",
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


DEFAULT_SERVING = "ws-routes-missing"
# How `--log-delay` reaches the daemon (through its environment, like the profile knobs).
LOG_DELAY_ENV = "SANDBOX_LOG_DELAY_S"


def log_delay_env(delay_s: float | None) -> dict[str, str] | None:
    """The daemon environment for an ingestion delay of ``delay_s`` seconds (None: none).

    Raises:
        SandboxError: a negative delay.
    """
    if not delay_s:
        return None
    if delay_s < 0:
        raise SandboxError(f"--log-delay must be >= 0 seconds, got {delay_s:g}")
    return {LOG_DELAY_ENV: repr(float(delay_s))}


DEFAULT_DEPLOY_IMAGE = "sandbox/backend:healthy"
DEFAULT_STATE_DIR = checkout_root() / "outputs" / ".sandbox"
DEFAULT_ENV_FILE = Path("environments/local.toml")  # under the checkout in fact
STATE_NAME = "sandbox.json"
LOG_NAME = "daemon.log"
LOCK_NAME = "sandbox.lock"
RUN_LOCK_NAME = "run.lock"
# How long `up`/`down` wait for a concurrent start or stop (a start is bounded by 60 s).
START_LOCK_WAIT_S = 90.0
# How long a run waits for another run on the same sandbox before refusing.
RUN_LOCK_WAIT_S = 5.0

Note = Callable[[str], None]


class SandboxBusy(SandboxError):
    """The sandbox is in use or does not match what was asked: refused (exit 2)."""


# Daemons this process spawned: reaped here so they never linger as zombies
# (a zombie still "exists" for kill(pid, 0) and would look like a live sandbox).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


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

    @property
    def router_url(self) -> str:
        """Alias of ``service_url`` (the router answers on the service URL)."""
        return self.service_url


def _default_env_file() -> Path:
    # RUNBOOK_ENV_DIR when set (as load_settings), else the checkout's environments/.
    if os.environ.get("RUNBOOK_ENV_DIR"):
        return Path(os.environ["RUNBOOK_ENV_DIR"]) / "local.toml"
    return checkout_root() / "environments" / "local.toml"


def _sdir(state_dir: str | os.PathLike[str] | None) -> Path:
    """The state folder: ``state_dir``, else ``$RUNBOOK_SANDBOX_DIR``, else the checkout's.

    Absolute, so the daemon's command line names it wherever it was started from.
    """
    if state_dir is None:
        state_dir = os.environ.get("RUNBOOK_SANDBOX_DIR") or DEFAULT_STATE_DIR
    return Path(os.path.abspath(state_dir))


def _state_path(state_dir: str | os.PathLike[str] | None) -> Path:
    return _sdir(state_dir) / STATE_NAME


def _on_force(hook: Callable[[], object]) -> Any:
    """``interrupts.on_force(hook)``; a no-op outside the runbook (the sandbox stands alone)."""
    try:
        from ..interrupts import on_force
    except ImportError:  # pragma: no cover - the sandbox package used on its own
        return contextlib.nullcontext()
    return on_force(hook)


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


def _note(note: Note | None, message: str) -> None:
    if note is not None:
        note(message)


class _FileLock:
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
    lock = _FileLock(_sdir(state_dir) / RUN_LOCK_NAME)
    if not lock.path.exists():
        return None
    if lock.try_acquire("probe"):
        lock.release()
        return None
    return lock.holder() or {"pid": "?"}


def _read_state(state_dir: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    path = _state_path(state_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        _CHILDREN.pop(pid, None)
        return False
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _group_members(pgid: int) -> list[psutil.Process]:
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


def _group_alive(pgid: int) -> bool:
    return bool(_group_members(pgid))


def _is_daemon(pid: int) -> bool:
    try:
        return "runbook_lib.sandbox" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return False


def _stale_reason(state: dict[str, Any]) -> str | None:
    """Why a state file does not describe a usable sandbox; ``None`` when it does."""
    pid = int(state.get("pid", 0) or 0)
    if not pid or not _alive(pid):
        return f"a stopped sandbox (daemon pid {pid or '?'} is gone)"
    if not state.get("ready"):
        return f"a sandbox that never became ready (daemon pid {pid})"
    owner = int(state.get("owner_pid", 0) or 0)
    if owner and not owner_alive(owner, float(state.get("owner_started", 0) or 0)):
        return f"the sandbox of a run that is gone (run pid {owner}, daemon pid {pid})"
    return None


def _daemons_for(sdir: Path) -> list[psutil.Process]:
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


def _info(
    state: dict[str, Any],
    state_dir: Path,
    env_file: str = "",
    revisions: tuple[RevisionRow, ...] = (),
    traffic: tuple[str, ...] = (),
) -> SandboxInfo:
    return SandboxInfo(
        state_dir=str(state_dir),
        env_file=env_file or str(state.get("env_file", "")),
        pid=int(state["pid"]),
        pgid=int(state.get("pgid", state["pid"])),
        service_url=str(state["service_url"]),
        emulator_url=str(state["emulator_url"]),
        auth_url=str(state["auth_url"]),
        project=str(state["project"]),
        region=str(state["region"]),
        service=str(state["service"]),
        serving=str(state.get("serving", "")),
        deploy_image=str(state.get("deploy_image", "")),
        started_at=str(state.get("started_at", "")),
        revisions=revisions,
        traffic=traffic,
        jwt_secret=str(state.get("jwt_secret", "")),
        owner_pid=int(state.get("owner_pid", 0) or 0),
        log_delay_s=float(state.get("log_delay_s", 0.0) or 0.0),
    )


def is_running(state_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when the state file names a live, ready daemon whose owner (if any) lives."""
    state = _read_state(state_dir)
    return bool(state and _stale_reason(state) is None)


def status(
    state_dir: str | os.PathLike[str] | None = None, timeout_s: float = 5.0
) -> SandboxInfo | None:
    """The running sandbox with its revisions, or ``None`` when none is running.

    Raises:
        SandboxError: the daemon runs but its API does not answer.
    """
    state = _read_state(state_dir)
    if not state or _stale_reason(state) is not None:
        return None
    rows: list[RevisionRow] = []
    traffic: list[str] = []
    try:
        resp = httpx.get(f"{state['emulator_url']}/sandbox/state", timeout=timeout_s)
        resp.raise_for_status()
        for svc in resp.json().get("services", []):
            for t in svc.get("traffic", []):
                who = t.get("revision") or "LATEST"
                traffic.append(
                    f"{who}={t.get('percent', 0)}%" + (f" (tag {t['tag']})" if t.get("tag") else "")
                )
            for r in svc.get("revisions", []):
                rows.append(
                    RevisionRow(
                        name=r["name"],
                        profile=r["profile"],
                        ready=r["ready"],
                        percent=int(r["percent"]),
                        pid=int(r.get("pid") or 0),
                        message=r.get("message", ""),
                    )
                )
    except (httpx.HTTPError, ValueError, KeyError) as exc:
        raise SandboxError(
            f"the sandbox daemon (pid {state['pid']}) does not answer: {exc}"
        ) from exc
    return _info(state, _sdir(state_dir), revisions=tuple(rows), traffic=tuple(traffic))


def _repo_root() -> str:
    """The checkout this package runs from: the sandbox's "local source" (fixed code)."""
    here = Path(__file__).resolve().parents[2]
    return str(here if (here / "pyproject.toml").is_file() else Path.cwd())


def environment_toml(info: SandboxInfo) -> str:
    """The complete environment file (SPEC section 4) for a running sandbox; no secrets."""
    app_line = ""
    with contextlib.suppress(Exception):
        import importlib

        if hasattr(importlib.import_module("runbook_lib.sandbox.backend"), "app"):
            app_line = 'app = "runbook_lib.sandbox.backend:app"\n'
    py = shlex.quote(sys.executable)
    junit_local = Path(info.state_dir) / "junit-predeploy.xml"
    junit_remote = Path(info.state_dir) / "junit-mission-critical.xml"
    remote_cmd = (
        f"{py} -m runbook_lib.sandbox.suite --base-url {info.service_url} "
        f"--auth-url {info.auth_url} --junit {junit_remote}"
    )
    return f'''# Written by `runbook sandbox up` at {info.started_at}; rewritten on every `up`.
# The embedded sandbox: every URL is on 127.0.0.1 and changes with each start.
# No secret lives here: WebSocket tokens come from the auth service's dev-token endpoint.
name = "local"
sandbox = true
auto_approve = true

[target]
base_url = "{info.service_url}"
ws_paths = ["/websocket", "/ws/test"]
primary_ws_path = "/websocket"
health_path = "/health"
ws_health_path = "/ws/health"
ws_health_field = "connections.active"
ws_test_path = "/ws/test"
auth_url = "{info.auth_url}"
auth_config_path = "/auth/config"
auth_health_path = "/health"

[auth]
mode = "subprotocol"
subprotocol = "jwt.{{token}}"
token_endpoint = "{info.auth_url}/auth/dev-token"
ttl_s = 300

[cloudrun]
project = "{info.project}"
region = "{info.region}"
service = "{info.service}"
api_endpoint = "{info.emulator_url}"
deploy_image = "{info.deploy_image}"

[logging]
enabled = true
lookback_s = 900

[source]
repo_dir = "{_repo_root()}"
{app_line}expected_ws_routes = ["/websocket", "/ws/test"]

# The sandbox's own mission-critical suite (runbook_lib/sandbox/suite.py), as the seed
# runs tests/mission_critical/*: against the fixed code before the deploy, and against
# the service after it.
[[commands.predeploy]]
name = "local_agent_events_suite"
run = "{py} -m runbook_lib.sandbox.suite --local --junit {junit_local}"
timeout_s = 60
junit = "{junit_local}"

[[commands.mission_critical]]
name = "websocket_agent_events"
run = "{remote_cmd}"
timeout_s = 60
junit = "{junit_remote}"

[thresholds]
# Short windows so a full sandbox run takes a couple of minutes.
health_ready_s = 30
ws_health_ready_s = 60
event_timeout_s = 10
tests_max_s = 120
monitor_window_s = 8
monitor_interval_s = 1
hold_s = 4
poll_interval_s = 0.5

[timeouts]
connect_s = 3
read_s = 10
cloudrun_s = 15
operation_s = 60
command_s = 120
'''


def _write_env_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _wait_ready(info: SandboxInfo, deadline: float) -> None:
    probes = {
        "emulator": f"{info.emulator_url}/v2/projects/{info.project}/locations/{info.region}"
        f"/services/{info.service}",
        "auth service": f"{info.auth_url}/health",
        "router": f"{info.service_url}/health",
    }
    last = ""
    with httpx.Client(timeout=2.0) as client:
        for part, url in probes.items():
            while True:
                try:
                    resp = client.get(url)
                    # The router may legitimately answer 5xx (a crashed serving
                    # revision); any HTTP answer proves the part is up.
                    if part == "router" or resp.status_code == 200:
                        break
                    last = f"{part} answered {resp.status_code}"
                except httpx.HTTPError as exc:
                    last = f"{part} at {url}: {exc!r}"
                if time.monotonic() > deadline:
                    raise SandboxError(f"the sandbox started but does not answer: {last}")
                time.sleep(0.1)


def _describe(info: SandboxInfo) -> str:
    serving = (
        ", ".join(f"{r.profile} {r.percent}%" for r in info.revisions if r.percent > 0) or "nothing"
    )
    who = (
        f"belongs to process {info.owner_pid}"
        if info.owner_pid
        else "started by `runbook sandbox up`"
    )
    return (
        f"daemon pid {info.pid}, {who}, since {info.started_at}; serving {serving}; "
        f"deploy image {info.deploy_image}"
    )


def _mismatch(info: SandboxInfo, serving: str | None, deploy_image: str | None) -> str:
    """What differs between the running sandbox and what was asked ('' = it matches)."""
    problems = []
    if serving is not None:
        now = sorted({r.profile for r in info.revisions if r.percent > 0})
        if now != [serving]:
            problems.append(f"--serving {serving} asked, it serves {', '.join(now) or 'nothing'}")
    if deploy_image is not None and deploy_image != info.deploy_image:
        problems.append(f"--deploy-image {deploy_image} asked, it deploys {info.deploy_image}")
    return "; ".join(problems)


def _probe(info: SandboxInfo, timeout_s: float = 3.0) -> str:
    """'' when the auth service and the router answer, else what failed."""
    for part, url in (("auth service", info.auth_url), ("router", info.service_url)):
        try:
            httpx.get(f"{url}/health", timeout=timeout_s)
        except httpx.HTTPError as exc:
            return f"the {part} at {url} does not answer: {exc!r}"
    return ""


def _stop_stale(sdir: Path, state: dict[str, Any] | None) -> None:
    if state and "pid" in state:
        pid = int(state["pid"])
        pgid = int(state.get("pgid", pid))
        if pgid != os.getpgid(0):  # never our own group (a corrupted state file)
            _kill_group(pid, pgid)
    for proc in _daemons_for(sdir):
        _kill_group(proc.pid, proc.pid)
    with contextlib.suppress(FileNotFoundError):
        (sdir / STATE_NAME).unlink()
    if state:
        retire_env_file(state)


def _reuse(
    sdir: Path,
    envf: Path,
    serving: str | None,
    deploy_image: str | None,
    note: Note | None,
) -> SandboxInfo:
    """The running sandbox, checked: it answers, matches, and the env file points at it."""
    try:
        info = status(sdir)
    except SandboxError as exc:
        raise SandboxBusy(
            f"{exc}. It was not started by this run, so it is left alone: stop it with "
            f"`runbook sandbox down` and try again"
        ) from exc
    if info is None:  # stopped while we looked
        raise SandboxError(f"the sandbox of {sdir} stopped while being inspected; try again")
    problem = _probe(info)
    if problem:
        raise SandboxBusy(
            f"a sandbox is running ({_describe(info)}) but {problem}; stop it with "
            f"`runbook sandbox down` and try again"
        )
    differs = _mismatch(info, serving, deploy_image)
    if differs:
        raise SandboxBusy(
            f"a sandbox is already running ({_describe(info)}) and does not match: {differs}. "
            f"Stop it with `runbook sandbox down` to start one as asked, or leave out "
            f"--serving/--deploy-image to use it as it is"
        )
    _note(note, f"sandbox already running: using it ({_describe(info)})")
    text = environment_toml(dataclass_replace(info, env_file=str(envf)))
    try:
        current = envf.read_text(encoding="utf-8")
    except OSError:
        current = ""
    if current != text:
        _write_env_file(envf, text)
        _note(note, f"rewrote {envf}: it did not point at the running sandbox")
    return dataclass_replace(info, env_file=str(envf))


def up(
    serving: str | None = None,
    deploy_image: str | None = None,
    state_dir: str | os.PathLike[str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    *,
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
    owner_pid: int | None = None,
    note: Note | None = None,
    lock_wait_s: float = START_LOCK_WAIT_S,
) -> SandboxInfo:
    """Start the sandbox (or return the running one, checked) and write its environment file.

    Args:
        serving: profile of the revision serving at start (default ``ws-routes-missing``).
            Given explicitly, a running sandbox must serve exactly this profile.
        deploy_image: the image the runbook's deploy phase will roll out (default
            ``sandbox/backend:healthy``). Given explicitly, a running sandbox must match.
        state_dir: where the state file, locks and daemon log live (default: the
            checkout's ``outputs/.sandbox``).
        env_file: where the environment TOML is written.
        timeout_s: bound on the whole start-up (the machine may be busy).
        env: extra environment for the daemon and its revisions (e.g. ``SANDBOX_WARMUP_S``).
        owner_pid: the process the sandbox belongs to: it stops when that process is
            gone. ``None``: no owner (``runbook sandbox up``), it runs until ``down``.
        note: receives one-line notes (reuse, clean-up of a stale sandbox, start).
        lock_wait_s: bound on waiting for a concurrent start or stop.

    Raises:
        SandboxBusy: a running sandbox does not match or does not answer (exit 2).
        SandboxError: unknown profile, or the daemon died / did not answer in time.
    """
    sdir = _sdir(state_dir)
    envf = Path(env_file) if env_file is not None else _default_env_file()
    _check_profiles(serving, deploy_image)
    with _FileLock(sdir / LOCK_NAME).held(lock_wait_s, "up"):
        info, _ = _up_locked(serving, deploy_image, sdir, envf, timeout_s, env, owner_pid, note)
    return info


def _check_profiles(serving: str | None, deploy_image: str | None) -> None:
    from .profiles import profile_from_image

    try:
        profile_from_image(f"sandbox/backend:{serving or DEFAULT_SERVING}")
        profile_from_image(deploy_image or DEFAULT_DEPLOY_IMAGE)
    except ValueError as exc:
        raise SandboxError(str(exc)) from exc


def _up_locked(
    serving: str | None,
    deploy_image: str | None,
    sdir: Path,
    envf: Path,
    timeout_s: float,
    env: dict[str, str] | None,
    owner_pid: int | None,
    note: Note | None,
) -> tuple[SandboxInfo, bool]:
    """``up`` under the start lock; returns the sandbox and whether this call started it."""
    state = _read_state(sdir)
    if state:
        stale = _stale_reason(state)
        if stale is None:
            return _reuse(sdir, envf, serving, deploy_image, note), False
        _note(note, f"cleaning up {stale}")
    orphans = _daemons_for(sdir)
    if state or orphans:
        if orphans and not state:
            _note(note, f"cleaning up {len(orphans)} untracked sandbox daemon(s) of {sdir}")
        _stop_stale(sdir, state)
    serving = serving or DEFAULT_SERVING
    deploy_image = deploy_image or DEFAULT_DEPLOY_IMAGE
    _note(
        note,
        f"starting the sandbox (serving {serving}, deploy image {deploy_image}"
        + (f", stops with process {owner_pid})" if owner_pid else ", no owner)"),
    )
    sdir.mkdir(parents=True, exist_ok=True)
    state_file = sdir / STATE_NAME
    root = str(Path(__file__).resolve().parents[2])
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join(
        p for p in (root, child_env.get("PYTHONPATH", "")) if p
    )
    cmd = [
        sys.executable,
        "-m",
        "runbook_lib.sandbox",
        "daemon",
        "--state-dir",
        str(sdir),
        "--serving",
        serving,
        "--deploy-image",
        deploy_image,
    ]
    if owner_pid:
        cmd += [
            "--owner-pid",
            str(owner_pid),
            "--owner-started",
            repr(psutil.Process(owner_pid).create_time()),
        ]
    with open(sdir / LOG_NAME, "ab") as logf:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=child_env,
            start_new_session=True,
        )
    _CHILDREN[proc.pid] = proc
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            state = _read_state(sdir)
            if state and state.get("ready") and state.get("pid") == proc.pid:
                break
            if proc.poll() is not None:
                _CHILDREN.pop(proc.pid, None)
                raise SandboxError(
                    f"the sandbox daemon exited with code {proc.returncode}: {_log_tail(sdir)}"
                )
            if time.monotonic() > deadline:
                raise SandboxError(
                    f"the sandbox did not start within {timeout_s:g}s: {_log_tail(sdir)}"
                )
            time.sleep(0.1)
        info = _info(state, sdir, env_file=str(envf))
        _wait_ready(info, deadline)
        _write_env_file(envf, environment_toml(info))
        state["env_file"] = str(envf)
        from .daemon import write_state

        write_state(state_file, state)
        return status(sdir) or info, True
    except BaseException:
        # Interrupted (RunInterrupted, KeyboardInterrupt) or failed: stop what we started.
        _kill_group(proc.pid, proc.pid)
        with contextlib.suppress(FileNotFoundError):
            current = _read_state(sdir)
            if current is None or current.get("pid") == proc.pid:
                state_file.unlink()
        if state:
            retire_env_file({**state, "env_file": str(envf)})
        raise


def _log_tail(sdir: Path, lines: int = 8) -> str:
    try:
        text = (sdir / LOG_NAME).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return "(no daemon log)"
    return " | ".join(text.strip().splitlines()[-lines:]) or "(empty daemon log)"


def _kill_group(pid: int, pgid: int, grace_s: float = 10.0) -> None:
    if _alive(pid) and _is_daemon(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGTERM)  # the daemon stops its revisions itself
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and (_alive(pid) or _group_alive(pgid)):
        time.sleep(0.05)
    leftovers = _group_members(pgid)
    if _alive(pid) and _is_daemon(pid):
        leftovers.append(psutil.Process(pid))
    if leftovers:
        for proc in leftovers:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (_alive(pid) or _group_alive(pgid)):
            time.sleep(0.05)
    child = _CHILDREN.pop(pid, None)
    if child is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=1)


def down(
    state_dir: str | os.PathLike[str] | None = None,
    *,
    lock_wait_s: float = START_LOCK_WAIT_S,
) -> bool:
    """Stop the sandbox and every process it started (any daemon of this state folder).

    Idempotent. Waits (bounded) for a concurrent start to finish, then stops it.

    Returns:
        True when a sandbox process was stopped, False when none was running.
    """
    sdir = _sdir(state_dir)
    lock = _FileLock(sdir / LOCK_NAME)
    try:
        lock.acquire(lock_wait_s, "down", lambda _h: "")
    except SandboxBusy:
        log.warning("stopping the sandbox without its start lock (held too long)")
    try:
        return _down_locked(sdir)
    finally:
        lock.release()


def _down_locked(sdir: Path) -> bool:
    state = _read_state(sdir)
    was_alive = False
    if state and "pid" in state:
        pid = int(state["pid"])
        pgid = int(state.get("pgid", pid))
        was_alive = _alive(pid) or _group_alive(pgid)
    orphans = _daemons_for(sdir)
    _stop_stale(sdir, state)
    return was_alive or bool(orphans)


class Sandbox:
    """A run's use of the checkout's sandbox: ``with Sandbox(...) as info: ...``.

    Holds the run lock for the whole block (a concurrent run is refused after
    ``run_lock_wait_s``), reuses a running sandbox only when it answers and matches
    (see :func:`up`) and is not owned by another live process, else starts one owned
    by this process. Stops the sandbox on exit only when this object started it.

    Attributes:
        info: the sandbox in use (after ``__enter__``).
        started: whether this object started it.
    """

    def __init__(
        self,
        serving: str | None = None,
        deploy_image: str | None = None,
        state_dir: str | os.PathLike[str] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
        *,
        note: Note | None = None,
        run_lock_wait_s: float = RUN_LOCK_WAIT_S,
        timeout_s: float = 60.0,
    ) -> None:
        self.serving = serving
        self.deploy_image = deploy_image
        self.state_dir = _sdir(state_dir)
        self.env_file = Path(env_file) if env_file is not None else _default_env_file()
        self.env = env
        self.note = note
        self.run_lock_wait_s = run_lock_wait_s
        self.timeout_s = timeout_s
        self.info: SandboxInfo | None = None
        self.started = False
        self._run_lock = _FileLock(self.state_dir / RUN_LOCK_NAME)
        self._forget: Any = None

    @property
    def _started(self) -> bool:  # the old private name
        return self.started

    def __enter__(self) -> SandboxInfo:
        sdir = self.state_dir

        def busy(h: dict[str, Any]) -> str:
            return (
                f"another run is using the sandbox of this checkout ({sdir}): process "
                f"{h.get('pid', '?')} ({h.get('command', '?')}) since {h.get('since', '?')}. "
                f"Two runs would deploy into the same service. Wait for it to finish, "
                f"stop it (kill -INT {h.get('pid', '<pid>')}), or run against another "
                f"environment with --env"
            )

        self._run_lock.acquire(self.run_lock_wait_s, "run", busy)
        try:
            with _FileLock(sdir / LOCK_NAME).held(START_LOCK_WAIT_S, "run"):
                state = _read_state(sdir)
                owner = int((state or {}).get("owner_pid", 0) or 0)
                if state and _stale_reason(state) is None and owner and owner != os.getpid():
                    raise SandboxBusy(
                        f"the running sandbox (daemon pid {state.get('pid')}) belongs to "
                        f"process {owner} and stops when that process ends; wait for it, or "
                        f"stop the sandbox with `runbook sandbox down`"
                    )
                _check_profiles(self.serving, self.deploy_image)
                self.info, self.started = _up_locked(
                    self.serving,
                    self.deploy_image,
                    sdir,
                    self.env_file,
                    self.timeout_s,
                    self.env,
                    os.getpid(),
                    self.note,
                )
        except BaseException:
            try:
                if self.started:
                    down(sdir)
            finally:
                self._run_lock.release()
            raise
        if self.started:
            self._forget = _on_force(self._forced)
            self._forget.__enter__()
        return self.info

    def _forced(self) -> None:
        # The run is being killed (second signal): its daemon is SIGKILLed with it, so
        # leave no state or environment file naming its ports.
        state = _read_state(self.state_dir)
        if state and self.info is not None and state.get("pid") == self.info.pid:
            (self.state_dir / STATE_NAME).unlink()
            retire_env_file(state)

    def __exit__(self, *exc: object) -> None:
        try:
            if self.started:
                _note(self.note, "stopping the sandbox")
                down(self.state_dir)
        finally:
            if self._forget is not None:
                self._forget.__exit__(None, None, None)
                self._forget = None
            self._run_lock.release()


# ------------------------------------------------------------------ CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="runbook sandbox", description="The embedded Cloud Run sandbox (all on 127.0.0.1)."
    )
    p.add_argument(
        "command",
        choices=["up", "down", "status", "daemon"],
        metavar="{up,down,status}",  # `daemon` is internal: what `up` spawns
        help="up: start; down: stop everything; status: show revisions and URLs",
    )
    p.add_argument(
        "--serving",
        default=None,
        help=f"profile of the revision serving at start (default {DEFAULT_SERVING}); "
        "a running sandbox serving another profile is refused",
    )
    p.add_argument(
        "--deploy-image",
        default=None,
        help=f"image the deploy phase rolls out (default {DEFAULT_DEPLOY_IMAGE}); "
        "a running sandbox with another one is refused",
    )
    p.add_argument(
        "--state-dir",
        default=None,
        help=f"state folder (default $RUNBOOK_SANDBOX_DIR, else {DEFAULT_STATE_DIR}, "
        "whatever the current directory)",
    )
    p.add_argument(
        "--env-file",
        default=None,
        help="environment file to write (default: the checkout's environments/local.toml)",
    )
    p.add_argument(
        "--log-delay",
        type=float,
        default=0.0,
        metavar="S",
        help="Cloud Logging ingestion delay: a log entry is listed S seconds after its "
        "timestamp (default 0), to rehearse the log checks' wait",
    )
    p.add_argument("--owner-pid", type=int, default=0, help=argparse.SUPPRESS)
    p.add_argument("--owner-started", type=float, default=0.0, help=argparse.SUPPRESS)
    return p


def _print_info(info: SandboxInfo) -> None:
    print(f"sandbox running (daemon pid {info.pid}, since {info.started_at})")
    owner = (
        f"process {info.owner_pid} (the sandbox stops when it ends)"
        if info.owner_pid
        else "none (started by `runbook sandbox up`; stop it with `runbook sandbox down`)"
    )
    print(f"  owner       : {owner}")
    print(f"  state dir   : {info.state_dir}")
    print(f"  service url : {info.service_url}")
    print(f"  auth url    : {info.auth_url}")
    if info.log_delay_s:
        print(f"  log delay   : {info.log_delay_s:g} s (entries are listed that late)")
    print(
        f"  cloud run   : {info.emulator_url}  "
        f"(projects/{info.project}/locations/{info.region}/services/{info.service})"
    )
    print(f"  env file    : {info.env_file}")
    print(f"  deploy image: {info.deploy_image}")
    print(f"  traffic     : {', '.join(info.traffic) or '(none)'}")
    print("  revisions:")
    for r in info.revisions:
        ready = {True: "ready", False: "NOT READY", None: "starting"}[r.ready]
        extra = f"  ({r.message})" if r.message and r.ready is not True else ""
        print(f"    {r.name:24} {r.profile:22} {ready:9} {r.percent:3d}%{extra}")


def _say(message: str) -> None:
    print(f"- {message}", flush=True)


def sandbox_main(argv: list[str]) -> int:
    """``runbook sandbox up|down|status``.

    Exit codes: 0 ok; 1 not running (status) or the sandbox failed; 2 usage error, or a
    running sandbox that does not match or answer (refused); 3 interrupted.
    """
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if args.command == "daemon":
        from .daemon import DaemonConfig, daemon_main

        return daemon_main(
            DaemonConfig(
                start_timeout_s=float(os.environ.get("SANDBOX_START_TIMEOUT_S") or 30.0),
                state_file=_sdir(args.state_dir) / STATE_NAME,
                serving=args.serving or DEFAULT_SERVING,
                deploy_image=args.deploy_image or DEFAULT_DEPLOY_IMAGE,
                owner_pid=args.owner_pid,
                owner_started=args.owner_started,
                log_delay_s=float(os.environ.get(LOG_DELAY_ENV) or 0.0),
            )
        )
    from ..interrupts import guard

    try:
        if args.command == "up":
            # No reaping: the daemon is meant to outlive this command.
            with guard(reap=False):
                before = _read_state(args.state_dir)
                info = up(
                    args.serving,
                    args.deploy_image,
                    args.state_dir,
                    args.env_file,
                    env=log_delay_env(args.log_delay),
                    note=_say,
                )
            if before and before.get("pid") == info.pid:
                print("sandbox already running; not starting a second one")
            _print_info(info)
            return 0
        if args.command == "down":
            holder = run_holder(args.state_dir)
            if holder:
                print(
                    f"note: a run (process {holder.get('pid', '?')}: "
                    f"{holder.get('command', '?')}) is using this sandbox; it will end "
                    f"with errors"
                )
            stopped = down(args.state_dir)
            print("sandbox stopped" if stopped else "sandbox was not running")
            return 0
        shown = status(args.state_dir)
        if shown is None:
            print(f"sandbox not running (state dir {_sdir(args.state_dir)})")
            return 1
        _print_info(shown)
        return 0
    except SandboxBusy as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if "unknown sandbox profile" in str(exc) or "not a sandbox" in str(exc) else 1
    except KeyboardInterrupt as exc:
        print(
            f"interrupted ({exc or 'SIGINT'}): every process this command started is stopped",
            file=sys.stderr,
        )
        return 3
