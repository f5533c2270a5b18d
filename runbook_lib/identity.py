"""Who the runbook is on the wire: one User-Agent per run, on every request it makes.

Every request (HTTP checks, WebSocket handshakes, the load engine, a Cloud Run Job
task) carries ``User-Agent: runbook/<version> (run <run_id>)``, so the run can find
its own requests in the service's request log and prove that the logs it judges are
the ones it caused (see :mod:`runbook_lib.logs`). A phase opened with a run folder
binds the run id (the folder's name); interactively, one id per process.
"""

from __future__ import annotations

import uuid

__all__ = ["bind_run", "run_id", "user_agent"]

_bound: list[str] = []
_interactive = f"interactive-{uuid.uuid4().hex[:8]}"


def bind_run(run: str | None) -> None:
    """Make ``run`` this process's run id (``None`` or empty: the interactive id)."""
    _bound[:] = [run] if run else []


def run_id() -> str:
    """The run id requests are marked with."""
    return _bound[0] if _bound else _interactive


def user_agent(run: str | None = None) -> str:
    """``runbook/<version> (run <run_id>)`` for ``run`` (default: the bound run)."""
    from . import __version__

    return f"runbook/{__version__} (run {run or run_id()})"
