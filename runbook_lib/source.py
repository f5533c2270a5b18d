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
from dataclasses import dataclass
from pathlib import Path

from .redaction import redact_excerpt

__all__ = [
    "AppRoutesObservation",
    "GitObservation",
    "RouteInfo",
    "list_app_routes",
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
    """

    app: str
    routes: tuple[RouteInfo, ...] = ()
    duration_s: float = 0.0
    error: str = ""
    timed_out: bool = False

    @property
    def ws_paths(self) -> tuple[str, ...]:
        """Paths of the WebSocket routes."""
        return tuple(r.path for r in self.routes if r.kind == "websocket")

    @property
    def http_paths(self) -> tuple[str, ...]:
        """Paths of the HTTP routes."""
        return tuple(r.path for r in self.routes if r.kind == "http")


# Runs in the child interpreter: import the app, walk its routes, print one JSON line.
_WALKER = r"""
import json, sys
sys.path.insert(0, sys.argv[2])
mod_name, _, attr = sys.argv[1].partition(":")
import importlib
obj = importlib.import_module(mod_name)
for part in (attr or "app").split("."):
    obj = getattr(obj, part)
if callable(obj) and not hasattr(obj, "routes") and not hasattr(obj, "router"):
    obj = obj()  # an app factory
from starlette.routing import Host, Mount, Route, WebSocketRoute
out = []
def walk(routes, prefix):
    for r in routes:
        if isinstance(r, WebSocketRoute):
            out.append({"kind": "websocket", "path": prefix + r.path, "methods": [],
                        "name": r.name or ""})
        elif isinstance(r, Route):
            out.append({"kind": "http", "path": prefix + r.path,
                        "methods": sorted(r.methods or []), "name": r.name or ""})
        elif hasattr(r, "original_router") and hasattr(r, "include_context"):
            # FastAPI >= 0.16x keeps include_router() lazily as an _IncludedRouter.
            walk(r.original_router.routes, prefix + (r.include_context.prefix or ""))
        elif isinstance(r, (Mount, Host)):
            sub = getattr(r, "routes", None) or []
            walk(sub, prefix + (r.path if isinstance(r, Mount) else ""))
        elif hasattr(r, "path"):
            out.append({"kind": "other", "path": prefix + r.path, "methods": [],
                        "name": type(r).__name__})
routes = getattr(obj, "routes", None)
if routes is None and hasattr(obj, "router"):
    routes = obj.router.routes
walk(routes or [], "")
sys.stdout.write("\n" + sys.argv[3] + json.dumps(out) + "\n")
"""


def list_app_routes(
    app: str,
    *,
    cwd: str | None = None,
    timeout_s: float = 60.0,
    python: str = sys.executable,
) -> AppRoutesObservation:
    """Import ``module:attr`` in a child interpreter and list its routes; never raises.

    Args:
        app: ``"package.module:app"`` (attribute may be dotted or an app factory).
        cwd: directory to run in and put first on ``sys.path`` (``source.repo_dir``).
        timeout_s: bound on the import (the child is killed after it).
        python: interpreter to use (default: the current one).
    """
    workdir = cwd or str(Path.cwd())
    start = time.perf_counter()
    if ":" not in app and "." not in app:
        return AppRoutesObservation(app, error=f"app {app!r} is not of the form 'module:attr'")
    try:
        proc = subprocess.run(
            [python, "-c", _WALKER, app, workdir, _MARK],
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
            error=f"importing {app} did not finish within {timeout_s:g}s",
        )
    except OSError as exc:
        return AppRoutesObservation(app, error=f"could not start {python}: {exc}")
    duration = time.perf_counter() - start
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith(_MARK):
            try:
                rows = json.loads(line[len(_MARK) :])
            except ValueError:
                break
            routes = tuple(
                RouteInfo(r["kind"], r["path"], tuple(r["methods"]), r["name"]) for r in rows
            )
            return AppRoutesObservation(app, routes=routes, duration_s=duration)
    err_lines = (proc.stderr or proc.stdout).strip().splitlines()
    last = err_lines[-1] if err_lines else f"exit code {proc.returncode}"
    return AppRoutesObservation(
        app, duration_s=duration, error=f"importing {app} failed: {redact_excerpt(last, 300)}"
    )


# The judges moved to runbook_lib.checks.source; the old names keep working.
from .checks.source import judge_git_branch as judge_git_branch  # noqa: E402
from .checks.source import judge_git_clean as judge_git_clean  # noqa: E402
from .checks.source import judge_ws_routes_present as judge_ws_routes_present  # noqa: E402
