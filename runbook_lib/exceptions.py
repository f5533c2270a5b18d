"""The runbook's one exception tree.

::

    RunbookError
    ├── ConfigError          bad environment file, parameter or CLI usage (exit 2)
    ├── CloudRunError        the Cloud Run Admin API or Cloud Logging refused or failed
    ├── NotebookError        a phase notebook raised, timed out or lost its kernel (exit 3;
    │                        the runner records it as the phase's outcome and goes on)
    ├── ApprovalRequired     a mutating step was asked to run without approval
    └── SandboxError         the embedded sandbox could not start, stop or answer

    KeyboardInterrupt
    └── RunInterrupted       SIGINT, SIGTERM or a dead owner stopped the run (exit 3)

A failing *check* is never an exception: it is a ``CheckResult`` with status
``fail`` or ``error``; a host that cannot be reached is such a check, not an
exception. These exceptions are for the cases where the runbook itself cannot go
on. ``runbook_lib.cli.exit_code_for`` is the one place they become exit codes.
"""

from __future__ import annotations

__all__ = [
    "ApprovalRequired",
    "CloudRunError",
    "ConfigError",
    "NotebookError",
    "RunInterrupted",
    "RunbookError",
    "SandboxError",
]


class RunbookError(Exception):
    """Root of every error the runbook raises on purpose."""


class ConfigError(RunbookError):
    """The environment file, a parameter or the command line is wrong.

    Args:
        message: what is wrong, naming the key.
        source: the file (or ``--param``) the bad value came from.
    """

    def __init__(self, message: str, source: str | None = None) -> None:
        self.source = source
        super().__init__(f"{source}: {message}" if source else message)


class CloudRunError(RunbookError):
    """The Cloud Run Admin API or Cloud Logging call failed."""


class NotebookError(RunbookError):
    """A phase notebook failed to execute (raised, timed out, lost or never got its kernel).

    ``kernels.execute_phase`` turns papermill's and nbclient's errors into this one type
    and records it as the phase's ``error`` outcome; the run goes on and exits 3.

    Args:
        message: what happened (kept as ``reason``).
        notebook: the notebook's file name.
        cell_index: index of the failing cell, when known.
    """

    def __init__(self, message: str, notebook: str = "", cell_index: int | None = None) -> None:
        self.reason = message
        self.notebook = notebook
        self.cell_index = cell_index
        where = f"{notebook} cell {cell_index}" if cell_index is not None else notebook
        super().__init__(f"{where}: {message}" if where else message)


class ApprovalRequired(RunbookError):
    """A mutating step was asked to run without approval, or a second time."""


class SandboxError(RunbookError):
    """The embedded sandbox could not be started, stopped or reached."""


class RunInterrupted(KeyboardInterrupt):
    """A signal (SIGINT, SIGTERM) or the death of the owning process stopped the run.

    A ``KeyboardInterrupt`` so that ``except Exception`` never swallows it and every
    ``finally`` still runs; the run folder is sealed with verdict ``interrupted``.

    Args:
        signum: the signal number that stopped the run (0 when the owner died).
    """

    def __init__(self, signum: int = 0) -> None:
        self.signum = signum
        super().__init__(f"interrupted by signal {signum}" if signum else "interrupted")
