"""Executable incident runbook for WebSocket services on Cloud Run."""

from .context import PHASES, PhaseContext, StepReport, open_phase
from .exceptions import (
    ApprovalRequired,
    CloudRunError,
    ConfigError,
    NotebookError,
    RunbookError,
    SandboxError,
    TargetUnreachable,
)
from .results import CheckResult, Recommendation, Status, results_frame
from .settings import Settings, load_settings

__version__ = "0.1.0"

__all__ = [
    "PHASES",
    "ApprovalRequired",
    "CheckResult",
    "CloudRunError",
    "ConfigError",
    "NotebookError",
    "PhaseContext",
    "Recommendation",
    "RunbookError",
    "SandboxError",
    "Settings",
    "Status",
    "StepReport",
    "TargetUnreachable",
    "load_settings",
    "open_phase",
    "results_frame",
]
