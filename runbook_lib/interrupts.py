"""Stop a run cleanly on SIGINT, SIGTERM, a hang-up or a dead parent; a second signal forces it.

:class:`InterruptGuard` (``with guard(): ...``, or the :func:`guarded` decorator on
``runner.run``) turns the first SIGINT, SIGTERM or SIGHUP into
:class:`~runbook_lib.exceptions.RunInterrupted` raised in the main thread, so every
``finally`` and ``__exit__`` runs: the sandbox is stopped, the run folder sealed. A
parent that dies (the process is re-parented) counts as a hang-up and raises
``RunInterrupted(0)``.

When the guarded block ends, however it ends, every process started during it that is
still running (papermill kernels, the commands they ran, a sandbox daemon that was not
stopped) is terminated, then killed after a grace period. A second signal, or a
signal during that final clean-up, does not wait: it kills every such process and
its process group at once and exits with code 3 (the run folder is not sealed).

While the guard is active it keeps these signals: another ``signal.signal`` (or
``siginterrupt``) call for them from the main thread is recorded but not applied.
nbclient installs asyncio handlers for SIGINT and SIGTERM around every notebook (they
shut the kernel down, so the run would carry on with the next phase) and removes them
by restoring SIG_DFL (a later SIGTERM would kill the run without any clean-up).

Signals whose disposition was "ignore" when the guard was entered stay ignored: a job
started in the background by a non-interactive shell (SIGINT ignored) or under
``nohup`` (SIGHUP ignored, and then a dead parent is ignored too) behaves as asked.
The guard only acts in the main thread; elsewhere (and when nested) it does nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any, ParamSpec, TypeVar

import psutil

from .exceptions import RunInterrupted

__all__ = [
    "EXIT_FORCED",
    "InterruptGuard",
    "guard",
    "guarded",
    "on_force",
    "stop_processes",
    "stop_started",
]

log = logging.getLogger(__name__)

EXIT_FORCED = 3
_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_ACTIVE: list[InterruptGuard] = []
_FORCE_HOOKS: list[Callable[[], object]] = []
_REAL_SIGNAL = signal.signal
_REAL_SIGINTERRUPT = signal.siginterrupt


def _kept(sig: int) -> InterruptGuard | None:
    guard = _ACTIVE[-1] if _ACTIVE else None
    if guard is not None and sig in guard._previous:
        return guard
    return None


def _signal(sig: int, handler: Any) -> Any:
    guard = _kept(sig)
    if guard is None or threading.current_thread() is not threading.main_thread():
        return _REAL_SIGNAL(sig, handler)
    previous = guard._shadow.get(sig, guard._handle)
    guard._shadow[sig] = handler
    return previous


def _siginterrupt(sig: int, flag: bool) -> None:
    # asyncio asks for SA_RESTART; the guard's handler must interrupt blocking calls.
    if _kept(sig) is None:
        _REAL_SIGINTERRUPT(sig, flag)


P = ParamSpec("P")
R = TypeVar("R")


def _key(proc: psutil.Process) -> tuple[int, float]:
    try:
        return proc.pid, proc.create_time()
    except psutil.Error:
        return proc.pid, 0.0


def _descendants() -> list[psutil.Process]:
    try:
        return psutil.Process().children(recursive=True)
    except psutil.Error:
        return []


def _parents(proc: psutil.Process) -> list[psutil.Process]:
    try:
        return proc.parents()
    except psutil.Error:
        return []


def _pgid(pid: int) -> int:
    try:
        return os.getpgid(pid)
    except OSError:
        return -1


def _own_groups(procs: list[psutil.Process]) -> set[int]:
    """Process groups led by one of ``procs`` (never this process's own group)."""
    pids = {p.pid for p in procs}
    groups = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            pgid = os.getpgid(pid)
            if pgid in pids and pgid != os.getpgid(0):
                groups.add(pgid)
    return groups


def _signal_all(procs: list[psutil.Process], groups: set[int], sig: int) -> None:
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, sig)
    for proc in procs:
        with contextlib.suppress(psutil.Error, OSError):
            proc.send_signal(sig)


def stop_processes(procs: list[psutil.Process], grace_s: float = 5.0) -> int:
    """SIGTERM ``procs`` (and the process groups they lead), SIGKILL what is left after
    ``grace_s``; return how many were still running when asked to stop."""
    live = [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    if not live:
        return 0
    groups = _own_groups(live)
    _signal_all(live, groups, signal.SIGTERM)
    _, alive = psutil.wait_procs(live, timeout=grace_s)
    if alive:
        _signal_all(alive, groups, signal.SIGKILL)
        psutil.wait_procs(alive, timeout=5.0)
    else:
        # Members of a group whose leader exited (a daemon's revisions) may remain.
        for pgid in groups:
            with contextlib.suppress(OSError):
                os.killpg(pgid, signal.SIGKILL)
    return len(live)


def _settle_abandoned_loop(timeout_s: float) -> int:
    """Wind down the tasks an interrupt left in this thread's notebook event loop.

    The interrupt leaves papermill's loop (jupyter_core's, for this thread) with the
    cell's tasks pending and nbclient's signal callbacks registered (a signal byte may
    wait in the loop's self-pipe: run again, the loop would call them). The callbacks are
    removed, the tasks cancelled and awaited (they shut their kernel down the normal
    way), and the loop's late error reports ("Task exception was never retrieved") go to
    the debug log: they are consequences of the interrupt. Returns how many tasks were
    pending.
    """
    utils = sys.modules.get("jupyter_core.utils")
    if utils is None:
        return 0
    try:
        loop = utils.ensure_event_loop()
    except Exception:
        return 0
    if loop.is_running() or loop.is_closed():
        return 0
    loop.set_exception_handler(lambda _loop, ctx: log.debug("after interrupt: %s", ctx))
    for sig in _SIGNALS:
        with contextlib.suppress(Exception):
            loop.remove_signal_handler(sig)
    deadline = time.monotonic() + timeout_s
    count = 0
    while (pending := [t for t in asyncio.all_tasks(loop) if not t.done()]) and (
        remaining := deadline - time.monotonic()
    ) > 0:
        count += len(pending)
        for task in pending:
            task.cancel()
        with contextlib.suppress(Exception):
            loop.run_until_complete(asyncio.wait(pending, timeout=remaining))
    return count


class InterruptGuard:
    """Signals become :class:`RunInterrupted`; what the block started is stopped at the end.

    Args:
        reap: at exit, stop every process started inside the block that still runs.
            ``False`` for a block whose purpose is to leave a process running
            (``runbook sandbox up``).
        grace_s: how long stopped processes get between SIGTERM and SIGKILL.
        watch_parent: treat the death of the parent process as a hang-up.
        poll_s: how often the parent is checked.
    """

    def __init__(
        self,
        *,
        reap: bool = True,
        grace_s: float = 5.0,
        watch_parent: bool = True,
        poll_s: float = 0.5,
    ) -> None:
        self.reap = reap
        self.grace_s = grace_s
        self.watch_parent = watch_parent
        self.poll_s = poll_s
        self.signum: int | None = None  # the signal that interrupted the block, if any
        self._active = False
        self._closing = False
        self._parent_died = False
        self._before: set[tuple[int, float]] = set()
        self._previous: dict[int, Any] = {}
        self._shadow: dict[int, Any] = {}  # what others installed while the guard kept it
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None
        self._ppid = 0

    # ------------------------------------------------------------ context manager

    def __enter__(self) -> InterruptGuard:
        if _ACTIVE or threading.current_thread() is not threading.main_thread():
            return self
        self._active = True
        _ACTIVE.append(self)
        self._before = {_key(p) for p in _descendants()}
        for sig in _SIGNALS:
            current = signal.getsignal(sig)
            if current == signal.SIG_IGN:
                continue
            self._previous[sig] = current
            _REAL_SIGNAL(sig, self._handle)
        signal.signal, signal.siginterrupt = _signal, _siginterrupt  # type: ignore[assignment]
        self._ppid = os.getppid()
        if self.watch_parent and signal.SIGHUP in self._previous and self._ppid > 1:
            self._watcher = threading.Thread(
                target=self._watch_parent, name="parent-watch", daemon=True
            )
            self._watcher.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._active:
            return
        try:
            self._closing = True  # from here on, a signal forces
            self._stop.set()
            if self.signum is not None:
                _settle_abandoned_loop(self.grace_s)
            if self.reap:
                self.stop_started(self.grace_s)
        finally:
            signal.signal, signal.siginterrupt = _REAL_SIGNAL, _REAL_SIGINTERRUPT
            for sig, handler in self._previous.items():
                with contextlib.suppress(ValueError, TypeError):
                    _REAL_SIGNAL(sig, handler)
            self._active = False
            _ACTIVE.remove(self)

    # ------------------------------------------------------------ processes

    def started(self) -> list[psutil.Process]:
        """Processes started inside the block that are still running (descendants only).

        A process that a process older than the block started (the revisions of a sandbox
        whose daemon was already running) is that process's to stop, not the block's.
        """
        return [
            p
            for p in _descendants()
            if _key(p) not in self._before and not any(_key(a) in self._before for a in _parents(p))
        ]

    def stop_started(self, grace_s: float | None = None, keep: tuple[int, ...] = ()) -> int:
        """Stop every process started inside the block; return how many were running.

        Callable early (before sealing an interrupted run, so no kernel keeps writing).
        ``keep``: pids whose process groups are spared (the sandbox daemon, to be
        asked what happened and stopped by its own ``down``).
        """
        procs = [p for p in self.started() if p.pid not in keep and _pgid(p.pid) not in keep]
        return stop_processes(procs, self.grace_s if grace_s is None else grace_s)

    # ------------------------------------------------------------ signals

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None or self._closing:
            self._force(signum)
        self.signum = signum
        raise RunInterrupted(0 if self._parent_died else signum)

    def _force(self, signum: int) -> None:
        procs = self.started()
        _signal_all(procs, _own_groups(procs), signal.SIGKILL)
        for hook in reversed(_FORCE_HOOKS):
            with contextlib.suppress(Exception):
                hook()
        with contextlib.suppress(OSError):
            name = signal.Signals(signum).name
            msg = (
                f"runbook: {name} again: killed {len(procs)} process(es) the run started; "
                f"exiting now without sealing the run folder\n"
            )
            os.write(sys.stderr.fileno(), msg.encode())
        os._exit(EXIT_FORCED)

    def _watch_parent(self) -> None:
        while not self._stop.wait(self.poll_s):
            if os.getppid() != self._ppid:
                self._parent_died = True
                # A real signal to the main thread: it also wakes a blocking call there.
                signal.pthread_kill(threading.main_thread().ident or 0, signal.SIGHUP)
                return


@contextlib.contextmanager
def on_force(hook: Callable[[], object]) -> Iterator[None]:
    """Within the block, a forced stop calls ``hook`` (quick, best effort) before exiting.

    For state that must not outlive a killed run (the sandbox's environment file).
    """
    _FORCE_HOOKS.append(hook)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            _FORCE_HOOKS.remove(hook)


def stop_started(grace_s: float = 5.0, keep: tuple[int, ...] = ()) -> int:
    """Stop what the active guard's block started (kernels, commands), sparing ``keep``.

    For the code that seals an interrupted run: call it first, so that no kernel still
    writes into the run folder. Returns how many processes were running (0 without a guard).
    """
    return _ACTIVE[-1].stop_started(grace_s, keep) if _ACTIVE else 0


@contextlib.contextmanager
def guard(**kw: Any) -> Iterator[InterruptGuard]:
    """``with guard(): ...``: an :class:`InterruptGuard` (same arguments)."""
    with InterruptGuard(**kw) as g:
        yield g


def guarded(func: Callable[P, R]) -> Callable[P, R]:
    """Run ``func`` inside an :class:`InterruptGuard` (``runner.run`` is decorated)."""

    @functools.wraps(func)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with InterruptGuard():
            return func(*args, **kwargs)

    return wrapper
