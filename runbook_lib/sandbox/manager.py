"""The sandbox's lifecycle: start, reuse, inspect and stop the sandbox daemon.

One sandbox per checkout; its state folder, state file and locks are
:mod:`runbook_lib.sandbox.state`, its environment file
:mod:`runbook_lib.sandbox.env_file`, its command line :mod:`runbook_lib.sandbox.cli`.

``up`` spawns ``python -m runbook_lib.sandbox daemon`` in its own session, waits
(bounded) until the emulator, the auth service and the router all answer, and
writes ``environments/local.toml``. An interrupted ``up`` stops what it started. A
sandbox started for a run has an *owner* (the run's process) and stops when the
owner is gone, however it died; ``runbook sandbox up`` starts one without owner.
:class:`Sandbox` is a run's claim on it (the run lock held for the whole run).

Reuse rule: a running sandbox is reused only when its daemon answers and it
matches what was asked (``--serving``: the profile serving now; ``--deploy-image``:
the image recorded at start); otherwise ``SandboxBusy`` says why (exit 2).
A sandbox whose owner is gone, or whose daemon died, is cleaned up and started
afresh. ``down`` works from any process: it signals the daemon, then its whole
process group, plus any daemon of the same state folder, and waits until every
process is gone.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import replace as dataclass_replace
from pathlib import Path
from typing import Any

import httpx
import psutil

from ..exceptions import SandboxError
from .env_file import default_env_file, environment_toml, write_env_file
from .processes import CHILDREN, alive, daemons_for, group_alive, kill_group
from .state import (
    LOCK_NAME,
    LOG_NAME,
    RUN_LOCK_NAME,
    RUN_LOCK_WAIT_S,
    START_LOCK_WAIT_S,
    STATE_NAME,
    FileLock,
    RevisionRow,
    SandboxBusy,
    SandboxInfo,
    owner_alive,
    read_state,
    resolve_state_dir,
    retire_env_file,
    write_state,
)

log = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_DEPLOY_IMAGE",
    "DEFAULT_SERVING",
    "Sandbox",
    "down",
    "is_running",
    "status",
    "up",
]


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

Note = Callable[[str], None]
# Carries `sandbox up --deny` to the daemon (comma-separated IAM permissions).
DENY_ENV = "SANDBOX_DENY"
# The emulated service's name (default backend).
SERVICE_ENV = "SANDBOX_SERVICE"


def _on_force(hook: Callable[[], object]) -> Any:
    """``interrupts.on_force(hook)``; a no-op outside the runbook (the sandbox stands alone)."""
    try:
        from ..interrupts import on_force
    except ImportError:  # pragma: no cover - the sandbox package used on its own
        return contextlib.nullcontext()
    return on_force(hook)


def _note(note: Note | None, message: str) -> None:
    if note is not None:
        note(message)


def _stale_reason(state: dict[str, Any]) -> str | None:
    """Why a state file does not describe a usable sandbox; ``None`` when it does."""
    pid = int(state.get("pid", 0) or 0)
    if not pid or not alive(pid):
        return f"a stopped sandbox (daemon pid {pid or '?'} is gone)"
    if not state.get("ready"):
        return f"a sandbox that never became ready (daemon pid {pid})"
    owner = int(state.get("owner_pid", 0) or 0)
    if owner and not owner_alive(owner, float(state.get("owner_started", 0) or 0)):
        return f"the sandbox of a run that is gone (run pid {owner}, daemon pid {pid})"
    return None


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
    state = read_state(state_dir)
    return bool(state and _stale_reason(state) is None)


def status(
    state_dir: str | os.PathLike[str] | None = None, timeout_s: float = 5.0
) -> SandboxInfo | None:
    """The running sandbox with its revisions, or ``None`` when none is running.

    Raises:
        SandboxError: the daemon runs but its API does not answer.
    """
    state = read_state(state_dir)
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
    return _info(state, resolve_state_dir(state_dir), revisions=tuple(rows), traffic=tuple(traffic))


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
            kill_group(pid, pgid)
    for proc in daemons_for(sdir):
        kill_group(proc.pid, proc.pid)
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
        write_env_file(envf, text)
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
    sdir = resolve_state_dir(state_dir)
    envf = Path(env_file) if env_file is not None else default_env_file()
    _check_profiles(serving, deploy_image)
    with FileLock(sdir / LOCK_NAME).held(lock_wait_s, "up"):
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
    state = read_state(sdir)
    if state:
        stale = _stale_reason(state)
        if stale is None:
            return _reuse(sdir, envf, serving, deploy_image, note), False
        _note(note, f"cleaning up {stale}")
    orphans = daemons_for(sdir)
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
    CHILDREN[proc.pid] = proc
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            state = read_state(sdir)
            if state and state.get("ready") and state.get("pid") == proc.pid:
                break
            if proc.poll() is not None:
                CHILDREN.pop(proc.pid, None)
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
        write_env_file(envf, environment_toml(info))
        state["env_file"] = str(envf)
        write_state(state_file, state)
        return status(sdir) or info, True
    except BaseException:
        # Interrupted (RunInterrupted, KeyboardInterrupt) or failed: stop what we started.
        kill_group(proc.pid, proc.pid)
        with contextlib.suppress(FileNotFoundError):
            current = read_state(sdir)
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
    sdir = resolve_state_dir(state_dir)
    lock = FileLock(sdir / LOCK_NAME)
    try:
        lock.acquire(lock_wait_s, "down", lambda _h: "")
    except SandboxBusy:
        log.warning("stopping the sandbox without its start lock (held too long)")
    try:
        return _down_locked(sdir)
    finally:
        lock.release()


def _down_locked(sdir: Path) -> bool:
    state = read_state(sdir)
    was_alive = False
    if state and "pid" in state:
        pid = int(state["pid"])
        pgid = int(state.get("pgid", pid))
        was_alive = alive(pid) or group_alive(pgid)
    orphans = daemons_for(sdir)
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
        self.state_dir = resolve_state_dir(state_dir)
        self.env_file = Path(env_file) if env_file is not None else default_env_file()
        self.env = env
        self.note = note
        self.run_lock_wait_s = run_lock_wait_s
        self.timeout_s = timeout_s
        self.info: SandboxInfo | None = None
        self.started = False
        self._run_lock = FileLock(self.state_dir / RUN_LOCK_NAME)
        self._forget: Any = None

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
            with FileLock(sdir / LOCK_NAME).held(START_LOCK_WAIT_S, "run"):
                state = read_state(sdir)
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
        state = read_state(self.state_dir)
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
