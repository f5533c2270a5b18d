"""The local source the deploy is built from: git state and the app's routes.

Phase 1 of the seed compares the local code with what is deployed: is the
checkout on the expected branch and clean, and does the ASGI app register the
WebSocket routes? The app is imported in a child interpreter with a timeout so
a broken or slow import cannot take the notebook kernel down with it.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from .redaction import redact_excerpt
from .settings import SourceSettings

__all__ = [
    "AppRoutesObservation",
    "GitObservation",
    "RouteInfo",
    "list_app_routes",
    "list_source_routes",
    "observe_git",
]

log = logging.getLogger(__name__)

_MARK = "@@RUNBOOK_ROUTES@@"


@dataclass(frozen=True, slots=True)
class GitObservation:
    """Branch and cleanliness of a checkout.

    Attributes:
        repo_dir: the directory inspected.
        is_repo: it is inside a git work tree.
        branch: the current branch ('' when detached or unknown).
        head: the short commit id.
        changed: tracked files with uncommitted changes (``git status --porcelain``).
        untracked: untracked files.
        error: why git could not answer ('' otherwise).
    """

    repo_dir: str
    is_repo: bool
    branch: str = ""
    head: str = ""
    changed: tuple[str, ...] = ()
    untracked: tuple[str, ...] = ()
    error: str = ""


def _git(repo: str, *args: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "-C", repo, *args],
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


def observe_git(repo_dir: str, *, timeout_s: float = 10.0) -> GitObservation:
    """Read branch, head and uncommitted changes of ``repo_dir``; never raises."""
    if not Path(repo_dir).is_dir():
        return GitObservation(repo_dir, False, error=f"{repo_dir} is not a directory")
    try:
        inside = _git(repo_dir, "rev-parse", "--is-inside-work-tree", timeout_s=timeout_s)
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return GitObservation(
                repo_dir,
                False,
                error=f"{repo_dir} is not a git work tree: {redact_excerpt(inside.stderr.strip(), 200)}",
            )
        branch = _git(repo_dir, "rev-parse", "--abbrev-ref", "HEAD", timeout_s=timeout_s)
        head = _git(repo_dir, "rev-parse", "--short", "HEAD", timeout_s=timeout_s)
        status = _git(
            repo_dir, "status", "--porcelain", "--untracked-files=normal", timeout_s=timeout_s
        )
    except FileNotFoundError:
        return GitObservation(repo_dir, False, error="git is not installed")
    except subprocess.TimeoutExpired:
        return GitObservation(repo_dir, True, error=f"git did not answer within {timeout_s:g}s")
    if status.returncode != 0:
        return GitObservation(
            repo_dir, True, error=f"git status failed: {redact_excerpt(status.stderr, 200)}"
        )
    changed: list[str] = []
    untracked: list[str] = []
    for line in status.stdout.splitlines():
        if len(line) < 4:
            continue
        (untracked if line.startswith("??") else changed).append(line[3:])
    name = branch.stdout.strip() if branch.returncode == 0 else ""
    return GitObservation(
        repo_dir=repo_dir,
        is_repo=True,
        branch="" if name == "HEAD" else name,
        head=head.stdout.strip() if head.returncode == 0 else "",
        changed=tuple(changed),
        untracked=tuple(untracked),
    )


@dataclass(frozen=True, slots=True)
class RouteInfo:
    """One route of the app: ``websocket`` or ``http``, its full path, methods, name."""

    kind: str
    path: str
    methods: tuple[str, ...] = ()
    name: str = ""


@dataclass(frozen=True, slots=True)
class AppRoutesObservation:
    """The routes an ASGI app registers (imported in a child interpreter).

    Attributes:
        app: the ``module:attr`` spec.
        routes: every route found, mounted routers flattened with their prefix.
        duration_s: how long the import took.
        error: why the app could not be imported or walked ('' otherwise).
        timed_out: the import did not finish within the timeout.
        missing_module: the module the import could not find ('' otherwise): a
            dependency missing from ``python``'s environment, not a bug in the app.
        python: the interpreter that imported the app.
        installed: server/WebSocket packages importable there (``uvicorn``, ``hypercorn``,
            ``daphne``, ``websockets``, ``wsproto`` -> bool; empty when unknown).
        unlisted: the parts of the app whose routes cannot be read (a bare ASGI
            callable, a server that routes internally), each named with why.
    """

    app: str
    routes: tuple[RouteInfo, ...] = ()
    duration_s: float = 0.0
    error: str = ""
    timed_out: bool = False
    missing_module: str = ""
    python: str = ""
    installed: Mapping[str, bool] = field(default_factory=dict)
    unlisted: tuple[str, ...] = ()

    @property
    def ws_library_missing(self) -> bool:
        """uvicorn is installed but neither ``websockets`` nor ``wsproto``: every upgrade
        would answer 404 although the routes exist (SPEC 8, "no WebSocket implementation")."""
        inst = self.installed
        return bool(inst.get("uvicorn")) and not (inst.get("websockets") or inst.get("wsproto"))

    @property
    def ws_paths(self) -> tuple[str, ...]:
        """Paths of the WebSocket routes."""
        return tuple(r.path for r in self.routes if r.kind == "websocket")

    @property
    def http_paths(self) -> tuple[str, ...]:
        """Paths of the HTTP routes."""
        return tuple(r.path for r in self.routes if r.kind == "http")


# Runs in the app's interpreter, by path (that interpreter need not have the runbook).
_WALKER_PATH = Path(__file__).with_name("_route_walker.py")


def _resolve(path: str, base: str) -> str:
    """``path`` made absolute against ``base`` when it is relative ('' stays '')."""
    if not path:
        return ""
    p = Path(path).expanduser()
    return str(p if p.is_absolute() else Path(base) / p)


def list_app_routes(
    app: str,
    *,
    cwd: str | None = None,
    timeout_s: float = 60.0,
    python: str = "",
    import_root: str = "",
) -> AppRoutesObservation:
    """Import ``module:attr`` in a child interpreter and list its routes; never raises.

    Args:
        app: ``"package.module:app"`` (attribute may be dotted or an app factory).
        cwd: directory to run in (``source.repo_dir``; default: the current directory).
        timeout_s: bound on the import (the child is killed after it).
        python: the app's interpreter (``[source] python``; relative to ``cwd``; default:
            the runbook's own).
        import_root: directory put first on ``sys.path`` (``[source] import_root``,
            relative to ``cwd``; default: ``cwd``).
    """
    workdir = cwd or str(Path.cwd())
    interpreter = python or sys.executable
    if python and ("/" in python or python.startswith(".")):
        interpreter = _resolve(python, workdir)
    root = _resolve(import_root, workdir) or workdir
    start = time.perf_counter()
    if ":" not in app and "." not in app:
        return AppRoutesObservation(app, error=f"app {app!r} is not of the form 'module:attr'")
    if not Path(root).is_dir():
        return AppRoutesObservation(
            app, error=f"import root {root} is not a directory (check [source] import_root)"
        )
    try:
        proc = subprocess.run(
            [interpreter, str(_WALKER_PATH), app, root, _MARK],
            cwd=workdir,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return AppRoutesObservation(
            app,
            duration_s=time.perf_counter() - start,
            timed_out=True,
            error=f"importing {app} with {interpreter} did not finish within {timeout_s:g}s",
        )
    except OSError as exc:
        return AppRoutesObservation(
            app,
            error=f"could not start the app's interpreter {interpreter}: {exc} "
            "(check [source] python)",
        )
    duration = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if not line.startswith(_MARK):
            continue
        try:
            out = json.loads(line[len(_MARK) :])
        except ValueError:
            break
        child = str(out.get("python") or "")
        # Name the configured interpreter, and what it really ran (a wrapper, a symlink).
        used = interpreter if child.startswith(interpreter + " ") else f"{interpreter} [{child}]"
        err = out.get("error")
        if err:
            message = redact_excerpt(str(err.get("message", "")), 300)
            if err.get("kind") == "missing_module" and err.get("module"):
                detail = (
                    f"importing {app} with {used} failed: module {err['module']!r} is not "
                    f"installed for that interpreter ({message}). If the app runs in its own "
                    "environment, set [source] python to its interpreter; otherwise install "
                    f"{err['module']!r} there"
                )
            else:
                detail = f"importing {app} with {used} failed: {message}"
            return AppRoutesObservation(
                app,
                duration_s=duration,
                error=detail,
                missing_module=str(err.get("module") or "")
                if err.get("kind") == "missing_module"
                else "",
                python=used,
            )
        routes = tuple(
            RouteInfo(r["kind"], r["path"], tuple(r["methods"]), r["name"])
            for r in out.get("routes", [])
        )
        installed = {str(k): bool(v) for k, v in (out.get("installed") or {}).items()}
        return AppRoutesObservation(
            app,
            routes=routes,
            duration_s=duration,
            python=used,
            installed=installed,
            unlisted=tuple(str(u) for u in out.get("unlisted") or ()),
        )
    err_lines = (proc.stderr or proc.stdout).strip().splitlines()
    last = err_lines[-1] if err_lines else f"exit code {proc.returncode}"
    return AppRoutesObservation(
        app,
        duration_s=duration,
        error=f"importing {app} with {interpreter} failed: {redact_excerpt(last, 300)}",
    )


def list_source_routes(source: SourceSettings, *, timeout_s: float = 60.0) -> AppRoutesObservation:
    """:func:`list_app_routes` for ``[source]``: ``app`` in ``python`` with ``import_root``."""
    return list_app_routes(
        source.app,
        cwd=source.repo_dir or None,
        timeout_s=timeout_s,
        python=source.python,
        import_root=source.import_root,
    )
