"""Start, inspect and stop the sandbox daemon; write the sandbox environment file.

``up`` spawns ``python -m runbook_lib.sandbox daemon`` in its own session,
waits (bounded) until the emulator, the auth service and the router all answer,
and writes ``environments/local.toml`` (no secret in it: tokens come from the
auth service's dev-token endpoint). ``down`` works from any process: it signals
the daemon, then its whole process group, and waits until every process is
gone. The state file (pids, urls, the JWT secret; mode 0600) lives in the
state dir, ``outputs/.sandbox/`` by default.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from ..exceptions import SandboxError

__all__ = [
    "DEFAULT_DEPLOY_IMAGE",
    "DEFAULT_ENV_FILE",
    "DEFAULT_SERVING",
    "DEFAULT_STATE_DIR",
    "RevisionRow",
    "Sandbox",
    "SandboxInfo",
    "down",
    "environment_toml",
    "is_running",
    "sandbox_main",
    "status",
    "up",
]

DEFAULT_SERVING = "ws-routes-missing"
DEFAULT_DEPLOY_IMAGE = "sandbox/backend:healthy"
DEFAULT_STATE_DIR = Path("outputs/.sandbox")
DEFAULT_ENV_FILE = Path("environments/local.toml")  # under environments_dir() in fact
STATE_NAME = "sandbox.json"
LOG_NAME = "daemon.log"

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

    @property
    def router_url(self) -> str:
        """Alias of ``service_url`` (the router answers on the service URL)."""
        return self.service_url


def _default_env_file() -> Path:
    # Where load_settings("local") looks: RUNBOOK_ENV_DIR or ./environments.
    from ..settings import environments_dir

    return environments_dir() / "local.toml"


def _state_path(state_dir: str | os.PathLike[str] | None) -> Path:
    return Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR) / STATE_NAME


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
    )


def is_running(state_dir: str | os.PathLike[str] | None = None) -> bool:
    """True when the state file names a live daemon."""
    state = _read_state(state_dir)
    return bool(state and state.get("ready") and _alive(int(state.get("pid", 0))))


def status(
    state_dir: str | os.PathLike[str] | None = None, timeout_s: float = 5.0
) -> SandboxInfo | None:
    """The running sandbox with its revisions, or ``None`` when none is running."""
    state = _read_state(state_dir)
    if not state or not state.get("ready") or not _alive(int(state.get("pid", 0))):
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
    return _info(
        state, Path(state_dir or DEFAULT_STATE_DIR), revisions=tuple(rows), traffic=tuple(traffic)
    )


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


def up(
    serving: str = DEFAULT_SERVING,
    deploy_image: str = DEFAULT_DEPLOY_IMAGE,
    state_dir: str | os.PathLike[str] | None = None,
    env_file: str | os.PathLike[str] | None = None,
    *,
    timeout_s: float = 60.0,
    env: dict[str, str] | None = None,
) -> SandboxInfo:
    """Start the sandbox (or return the running one) and write its environment file.

    Args:
        serving: profile of the revision serving at start.
        deploy_image: the image the runbook's deploy phase will roll out.
        state_dir: where the state file and daemon log live.
        env_file: where the environment TOML is written.
        timeout_s: bound on the whole start-up (the machine may be busy).
        env: extra environment for the daemon and its revisions (e.g. ``SANDBOX_WARMUP_S``).

    Raises:
        SandboxError: unknown profile, or the daemon died / did not answer in time.
    """
    from .profiles import profile_from_image

    sdir = Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR)
    envf = Path(env_file) if env_file is not None else _default_env_file()
    try:
        profile_from_image(f"sandbox/backend:{serving}")
        profile_from_image(deploy_image)
    except ValueError as exc:
        raise SandboxError(str(exc)) from exc
    current = status(sdir) if is_running(sdir) else None
    if current is not None:
        return current
    sdir.mkdir(parents=True, exist_ok=True)
    state_file = sdir / STATE_NAME
    with contextlib.suppress(FileNotFoundError):
        state_file.unlink()
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
            _kill_group(proc.pid, proc.pid)
            raise SandboxError(
                f"the sandbox did not start within {timeout_s:g}s: {_log_tail(sdir)}"
            )
        time.sleep(0.1)
    info = _info(state, sdir, env_file=str(envf))
    try:
        _wait_ready(info, deadline)
    except SandboxError:
        _kill_group(proc.pid, proc.pid)
        raise
    _write_env_file(envf, environment_toml(info))
    state["env_file"] = str(envf)
    from .daemon import write_state

    write_state(state_file, state)
    return status(sdir) or info


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


def down(state_dir: str | os.PathLike[str] | None = None) -> bool:
    """Stop the sandbox and every process it started; idempotent.

    Returns:
        True when a sandbox was stopped, False when none was running.
    """
    state = _read_state(state_dir)
    if not state or "pid" not in state:
        return False
    pid = int(state["pid"])
    pgid = int(state.get("pgid", pid))
    was_alive = _alive(pid) or _group_alive(pgid)
    # Our own process group must never be the target (a corrupted state file).
    if pgid != os.getpgid(0):
        _kill_group(pid, pgid)
    with contextlib.suppress(FileNotFoundError):
        _state_path(state_dir).unlink()
    return was_alive


class Sandbox:
    """The sandbox as a context manager: ``with Sandbox(state_dir=...) as info: ...``.

    Stops the sandbox on exit only when this object started it.
    """

    def __init__(
        self,
        serving: str = DEFAULT_SERVING,
        deploy_image: str = DEFAULT_DEPLOY_IMAGE,
        state_dir: str | os.PathLike[str] | None = None,
        env_file: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.serving = serving
        self.deploy_image = deploy_image
        self.state_dir = Path(state_dir if state_dir is not None else DEFAULT_STATE_DIR)
        self.env_file = env_file
        self.env = env
        self.info: SandboxInfo | None = None
        self._started = False

    def __enter__(self) -> SandboxInfo:
        self._started = not is_running(self.state_dir)
        self.info = up(self.serving, self.deploy_image, self.state_dir, self.env_file, env=self.env)
        return self.info

    def __exit__(self, *exc: object) -> None:
        if self._started:
            down(self.state_dir)


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
        default=DEFAULT_SERVING,
        help=f"profile of the revision serving at start (default {DEFAULT_SERVING})",
    )
    p.add_argument(
        "--deploy-image",
        default=DEFAULT_DEPLOY_IMAGE,
        help=f"image the deploy phase rolls out (default {DEFAULT_DEPLOY_IMAGE})",
    )
    p.add_argument("--state-dir", default=str(DEFAULT_STATE_DIR))
    p.add_argument(
        "--env-file",
        default=None,
        help="environment file to write (default environments/local.toml)",
    )
    return p


def _print_info(info: SandboxInfo) -> None:
    print(f"sandbox running (daemon pid {info.pid}, since {info.started_at})")
    print(f"  service url : {info.service_url}")
    print(f"  auth url    : {info.auth_url}")
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


def sandbox_main(argv: list[str]) -> int:
    """``runbook sandbox up|down|status``; exit 0 ok, 1 not running (status), 2 usage error."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    if args.command == "daemon":
        from .daemon import DaemonConfig, daemon_main

        return daemon_main(
            DaemonConfig(
                start_timeout_s=float(os.environ.get("SANDBOX_START_TIMEOUT_S") or 30.0),
                state_file=Path(args.state_dir) / STATE_NAME,
                serving=args.serving,
                deploy_image=args.deploy_image,
            )
        )
    try:
        if args.command == "up":
            if is_running(args.state_dir):
                info = status(args.state_dir)
                print("sandbox already running; not starting a second one")
                if info:
                    _print_info(info)
                return 0
            info = up(args.serving, args.deploy_image, args.state_dir, args.env_file)
            _print_info(info)
            return 0
        if args.command == "down":
            stopped = down(args.state_dir)
            print("sandbox stopped" if stopped else "sandbox was not running")
            return 0
        info = status(args.state_dir)
        if info is None:
            print("sandbox not running")
            return 1
        _print_info(info)
        return 0
    except SandboxError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2 if "unknown sandbox profile" in str(exc) or "not a sandbox" in str(exc) else 1
