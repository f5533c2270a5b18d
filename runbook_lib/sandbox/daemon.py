"""The sandbox daemon: one asyncio process running every part of the sandbox.

``python -m runbook_lib.sandbox daemon --state-file F`` (normally spawned by
:func:`runbook_lib.sandbox.manager.up`, in its own session) runs on 127.0.0.1:

1. the Cloud Run Admin API v2 + Cloud Logging emulator (one uvicorn server),
2. the traffic router on the service URL (the peer's :class:`~.router.Router`),
3. the sandbox auth service (its own uvicorn server),
4. one backend child process per revision, supervised by :class:`Supervisor`.

When everything answers it writes the state file (mode 0600: it holds the JWT
secret) and serves until SIGTERM/SIGINT/SIGHUP, or until its *owner* is gone: a
daemon started for a ``runbook run`` watches that process (pid and start time)
and stops with it, however it died (SIGKILL included); one started by
``runbook sandbox up`` has no owner. A stop request during start-up aborts the
start-up at once. Children live in the daemon's process group and get
``PR_SET_PDEATHSIG`` so that even a daemon killed with SIGKILL leaves no orphan
behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import secrets
import signal
import socket
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import uvicorn

from .api import create_emulator_app
from .emulator import CloudRunEmulator, RevisionStartError
from .resources import RevisionState
from .state import owner_alive, retire_env_file, write_state

__all__ = [
    "DaemonConfig",
    "Supervisor",
    "backend_command",
    "daemon_main",
    "run_daemon",
]

log = logging.getLogger(__name__)

HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    """What the daemon starts.

    Args:
        state_file: where the state (ports, urls, pids, secret) is written once ready.
        serving: profile of the revision serving at start (the incident by default).
        deploy_image: image the runbook will deploy (recorded in the state only).
        project, region, service: the emulated service's coordinates.
        start_timeout_s: how long a revision may take to listen before its deploy fails.
        owner_pid: the process the sandbox belongs to (0: none, it runs until stopped).
        owner_started: that process's start time (``psutil`` ``create_time``), so that a
            recycled pid is never mistaken for the owner.
        owner_poll_s: how often the owner is checked.
        deny: IAM permissions the emulator answers with 403 (``--deny``).
        log_delay_s: Cloud Logging's ingestion delay (``--log-delay``): an entry is
            listed this many seconds after its timestamp.
    """

    state_file: Path
    serving: str = "ws-routes-missing"
    deploy_image: str = "sandbox/backend:healthy"
    project: str = "sandbox-project"
    region: str = "local"
    service: str = "backend"
    start_timeout_s: float = 30.0
    owner_pid: int = 0
    owner_started: float = 0.0
    owner_poll_s: float = 0.25
    deny: tuple[str, ...] = ()
    log_delay_s: float = 0.0


async def _watch_owner(config: DaemonConfig, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if not owner_alive(config.owner_pid, config.owner_started):
            log.warning("owner process %s is gone: stopping the sandbox", config.owner_pid)
            stop.set()
            return
        await asyncio.sleep(config.owner_poll_s)


def _load_prctl() -> Any:
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: the process group still covers `down`
        return None


# Resolved in the parent: the forked child must not load libraries before exec.
_PRCTL = _load_prctl()
_PR_SET_PDEATHSIG = 1


def _pdeathsig() -> None:  # pragma: no cover - runs in the forked child
    # The kernel kills the child when the daemon dies, however it dies (even SIGKILL).
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def backend_command(revision: RevisionState) -> list[str]:
    """The command line of one revision's backend process."""
    return [
        sys.executable, "-m", "runbook_lib.sandbox.backend",
        "--host", HOST, "--port", "0",
        "--profile", revision.profile,
        "--revision", revision.name,
        "--service", revision.service.name,
    ]  # fmt: skip


class Supervisor:
    """Starts revision processes, pumps their output into the log store, reports exits.

    Args:
        jwt_secret: passed to every backend as ``SANDBOX_JWT_SECRET``.
        start_timeout_s: bound on waiting for the ``listening`` line.
    """

    def __init__(
        self,
        jwt_secret: str,
        start_timeout_s: float = 30.0,
        command: Callable[[RevisionState], list[str]] | None = None,
    ) -> None:
        self._secret = jwt_secret
        self._timeout = start_timeout_s
        self._command = command or backend_command
        self._procs: dict[str, asyncio.subprocess.Process] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def pids(self) -> dict[str, int]:
        """Revision name -> pid of every process still running."""
        return {name: p.pid for name, p in self._procs.items() if p.returncode is None}

    async def start(self, revision: RevisionState, sink: CloudRunEmulator) -> int:
        """Spawn the backend for ``revision``; return its port once it prints ``listening``.

        Raises:
            RevisionStartError: the process exited first or stayed silent past the timeout.
        """
        env = {**os.environ, "SANDBOX_JWT_SECRET": self._secret, "PYTHONUNBUFFERED": "1"}
        proc = await asyncio.create_subprocess_exec(
            *self._command(revision),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=env,
            preexec_fn=_pdeathsig,
            limit=1 << 20,
        )
        revision.pid = proc.pid
        self._procs[revision.name] = proc
        assert proc.stdout is not None and proc.stderr is not None
        self._spawn(self._pump(proc.stderr, revision, sink, "stderr"))
        last_error = ""
        deadline = time.monotonic() + self._timeout
        port = 0
        while not port:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                await self._terminate(proc)
                raise RevisionStartError(f"the container did not listen within {self._timeout:g}s")
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), remaining)
            except TimeoutError:
                continue
            if not raw:
                rc = await asyncio.wait_for(proc.wait(), 10)
                why = last_error or "no error was logged"
                raise RevisionStartError(f"container exited with code {rc} ({why})")
            line = raw.decode("utf-8", "replace")
            sink.log_line(revision, line)
            with contextlib.suppress(ValueError):
                data = json.loads(line)
                if isinstance(data, dict):
                    if data.get("event") == "listening":
                        port = int(data["port"])
                    elif str(data.get("severity", "")).upper() in ("ERROR", "CRITICAL"):
                        last_error = str(data.get("message") or data.get("textPayload") or "")
        self._spawn(self._follow(proc, revision, sink))
        return port

    async def _pump(
        self, stream: asyncio.StreamReader, rev: RevisionState, sink: CloudRunEmulator, name: str
    ) -> None:
        try:
            while raw := await stream.readline():
                sink.log_line(rev, raw.decode("utf-8", "replace"), name)
        except (ValueError, OSError) as exc:  # an over-long line or a broken pipe
            log.warning("revision %s: stopped reading %s: %s", rev.name, name, exc)

    async def _follow(
        self, proc: asyncio.subprocess.Process, rev: RevisionState, sink: CloudRunEmulator
    ) -> None:
        assert proc.stdout is not None
        await self._pump(proc.stdout, rev, sink, "stdout")
        rc = await proc.wait()
        log.info("revision %s exited with %s", rev.name, rc)
        sink.revision_exited(rev, rc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _terminate(self, proc: asyncio.subprocess.Process) -> None:
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.terminate()
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), 5)

    async def stop(self, revision: RevisionState) -> None:
        """Stop one revision's process (no-op when not running)."""
        proc = self._procs.get(revision.name)
        if proc is not None:
            await self._terminate(proc)

    async def stop_all(self) -> None:
        """Stop every process and the output pumps."""
        await asyncio.gather(*(self._terminate(p) for p in self._procs.values()))
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


class _Server(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the daemon (several share one loop)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _bind() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((HOST, 0))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


async def _serve(app: Any, sock: socket.socket) -> tuple[_Server, asyncio.Task[None]]:
    config = uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="off", timeout_graceful_shutdown=2
    )
    server = _Server(config)
    task = asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
    deadline = time.monotonic() + 20
    while not server.started:
        if task.done() or time.monotonic() > deadline:
            raise RuntimeError("an internal HTTP server did not start")
        await asyncio.sleep(0.02)
    return server, task


async def run_daemon(config: DaemonConfig) -> int:
    """Run the sandbox until SIGTERM/SIGINT/SIGHUP or its owner is gone; return the exit code."""
    from .auth_service import create_auth_app
    from .profiles import ROUTER_STRIPS_UPGRADE, image_for_profile
    from .router import Router, Upstream

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)

    secret = secrets.token_urlsafe(32)
    supervisor = Supervisor(secret, config.start_timeout_s)
    emulator = CloudRunEmulator(
        supervisor,
        project=config.project,
        region=config.region,
        deny=config.deny,
        log_delay_s=config.log_delay_s,
    )
    svc = emulator.create_service(config.service, {})

    def choose() -> Upstream | None:
        rev = emulator.pick(svc)
        if rev is None:
            return None
        return Upstream(
            HOST, rev.port, rev.name, strip_upgrade=rev.profile in ROUTER_STRIPS_UPGRADE
        )

    router = Router(choose)
    servers: list[tuple[_Server, asyncio.Task[None]]] = []
    started = False
    state: dict[str, Any] = {}
    watcher = None
    if config.owner_pid:
        watcher = loop.create_task(_watch_owner(config, stop))

    async def start_up() -> None:
        router_port = await router.start(HOST, 0)
        svc.uri = f"http://{HOST}:{router_port}"
        emu_sock, auth_sock = _bind(), _bind()
        emulator_url = f"http://{HOST}:{emu_sock.getsockname()[1]}"
        auth_url = f"http://{HOST}:{auth_sock.getsockname()[1]}"
        state.update(
            {
                "pid": os.getpid(),
                "pgid": os.getpgid(0),
                "started_at": datetime.now(UTC).isoformat(),
                "project": config.project,
                "region": config.region,
                "service": config.service,
                "serving": config.serving,
                "deploy_image": config.deploy_image,
                "deny": sorted(config.deny),
                "log_delay_s": config.log_delay_s,
                "owner_pid": config.owner_pid,
                "owner_started": config.owner_started,
                "state_dir": str(config.state_file.parent),
                "emulator_url": emulator_url,
                "service_url": svc.uri,
                "auth_url": auth_url,
                "jwt_secret": secret,
                "ready": False,
            }
        )

        def extra() -> dict[str, Any]:
            return {
                "daemon_pid": os.getpid(),
                "pids": supervisor.pids(),
                "service_url": svc.uri,
                "auth_url": auth_url,
            }

        servers.append(await _serve(create_emulator_app(emulator, extra), emu_sock))
        servers.append(await _serve(create_auth_app(jwt_secret=secret), auth_sock))

        # Two revisions before the incident: an older healthy one (rollback target)
        # and the serving one, at LATEST 100%.
        first = await emulator.deploy(svc, image_for_profile("healthy"))
        if first.error:
            raise RuntimeError(f"the initial healthy revision failed: {first.error['message']}")
        second = await emulator.deploy(svc, image_for_profile(config.serving), force=True)
        if second.error:
            log.warning("serving revision failed to start: %s", second.error["message"])

    # A stop (signal, owner gone) during start-up wins: the start-up is cancelled
    # and the finally below stops whatever it had started.
    starting = loop.create_task(start_up())
    stopping = loop.create_task(stop.wait())
    try:
        await asyncio.wait({starting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
            log.warning("stopped during start-up")
            return 1
        starting.result()
        state["ready"] = True
        write_state(config.state_file, state)
        started = True
        log.info(
            "sandbox ready: service %s, emulator %s, auth %s (owner %s)",
            state["service_url"],
            state["emulator_url"],
            state["auth_url"],
            config.owner_pid or "none",
        )
        await stop.wait()
        return 0
    except Exception as exc:
        log.exception("sandbox daemon failed")
        state["error"] = str(exc)
        return 1
    finally:
        stopping.cancel()
        if watcher is not None:
            watcher.cancel()
        for server, _ in servers:
            server.should_exit = True
        with contextlib.suppress(Exception):
            await asyncio.wait_for(router.stop(), 5)
        await emulator.aclose()
        await supervisor.stop_all()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(
                asyncio.gather(*(t for _, t in servers), return_exceptions=True), 5
            )
        if started:
            with contextlib.suppress(OSError, ValueError):
                current = json.loads(config.state_file.read_text(encoding="utf-8"))
                if current.get("pid") == os.getpid():
                    config.state_file.unlink()
                    retire_env_file(current)


def daemon_main(config: DaemonConfig) -> int:
    """Process entry point: logging to stderr, then :func:`run_daemon`."""
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .profiles import run_fast

    return run_fast(run_daemon(config))
