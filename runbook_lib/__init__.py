"""Executable incident runbook for WebSocket services on Cloud Run.

The front door: the few names a notebook or a user needs (open a phase, the steps, run,
settings, the result types, the catalog, the exceptions, verify and compare). Everything
else is imported from the module that owns it (``runbook_lib.handshake``,
``runbook_lib.checks.ws``, ...). The notebook step functions live in
``runbook_lib.steps`` (used as ``rb.steps.<step>(ctx)``), the sandbox in
``runbook_lib.sandbox``.

Names are loaded lazily so that ``import runbook_lib`` (done by every notebook kernel and
the CLI) stays cheap; the ``TYPE_CHECKING`` imports let type checkers and editors see them.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from . import sandbox as sandbox
    from . import steps as steps
    from .checks.catalog import CATALOG as CATALOG
    from .checks.catalog import CHECK_IDS as CHECK_IDS
    from .checks.catalog import Check as Check
    from .cli import main as main
    from .compare import Comparison as Comparison
    from .compare import compare_runs as compare_runs
    from .context import PhaseContext as PhaseContext
    from .context import StepReport as StepReport
    from .context import open_phase as open_phase
    from .exceptions import ApprovalRequired as ApprovalRequired
    from .exceptions import CloudRunError as CloudRunError
    from .exceptions import ConfigError as ConfigError
    from .exceptions import NotebookError as NotebookError
    from .exceptions import RunbookError as RunbookError
    from .exceptions import RunInterrupted as RunInterrupted
    from .exceptions import SandboxError as SandboxError
    from .manifest import VerifyReport as VerifyReport
    from .manifest import scan_secrets as scan_secrets
    from .manifest import verify_run as verify_run
    from .results import CheckResult as CheckResult
    from .results import Recommendation as Recommendation
    from .results import Status as Status
    from .results import results_frame as results_frame
    from .runner import RunOptions as RunOptions
    from .runner import RunOutcome as RunOutcome
    from .runner import run as run
    from .settings import Settings as Settings
    from .settings_load import load_settings as load_settings


__version__ = "0.1.0"

# name -> the module that owns it (tests/test_api.py checks this against __all__).
_HOME: dict[str, str] = {
    "sandbox": "",
    "steps": "",
    "CATALOG": "checks.catalog",
    "CHECK_IDS": "checks.catalog",
    "Check": "checks.catalog",
    "main": "cli",
    "Comparison": "compare",
    "compare_runs": "compare",
    "PhaseContext": "context",
    "StepReport": "context",
    "open_phase": "context",
    "ApprovalRequired": "exceptions",
    "CloudRunError": "exceptions",
    "ConfigError": "exceptions",
    "NotebookError": "exceptions",
    "RunbookError": "exceptions",
    "RunInterrupted": "exceptions",
    "SandboxError": "exceptions",
    "VerifyReport": "manifest",
    "scan_secrets": "manifest",
    "verify_run": "manifest",
    "CheckResult": "results",
    "Recommendation": "results",
    "Status": "results",
    "results_frame": "results",
    "RunOptions": "runner",
    "RunOutcome": "runner",
    "run": "runner",
    "Settings": "settings",
    "load_settings": "settings_load",
}

__all__ = [
    "CATALOG",
    "CHECK_IDS",
    "ApprovalRequired",
    "Check",
    "CheckResult",
    "CloudRunError",
    "Comparison",
    "ConfigError",
    "NotebookError",
    "PhaseContext",
    "Recommendation",
    "RunInterrupted",
    "RunOptions",
    "RunOutcome",
    "RunbookError",
    "SandboxError",
    "Settings",
    "Status",
    "StepReport",
    "VerifyReport",
    "__version__",
    "compare_runs",
    "load_settings",
    "main",
    "open_phase",
    "results_frame",
    "run",
    "sandbox",
    "scan_secrets",
    "steps",
    "verify_run",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    if not home:
        return importlib.import_module(f"{__name__}.{name}")
    return getattr(importlib.import_module(f"{__name__}.{home}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOME})
