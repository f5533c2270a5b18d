"""Execute one phase notebook in a fresh Jupyter kernel (papermill + nbclient).

The runner's only way into a kernel: :func:`execute_phase` runs a notebook into the
run folder and returns a :class:`~runbook_lib.verdict.PhaseOutcome` (never raises for
a notebook failure), :func:`notebook_error` is the one translation of papermill's and
nbclient's failures into :class:`~runbook_lib.exceptions.NotebookError`. The kernel's
own stderr goes to a log in the run folder; an interrupted phase has its kernel (and
whatever it started) killed before the interrupt propagates, so nothing writes to the
folder while it is sealed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from . import evidence
from .exceptions import NotebookError
from .redaction import redact
from .settings_rules import CELL_TIMEOUT_S
from .verdict import PhaseOutcome

__all__ = ["execute_phase", "notebook_error", "signum_of"]

log = logging.getLogger(__name__)


def _step_name(source: str) -> str:
    """The step a cell runs (``rb.steps.<name>`` or ``open_phase``); '' for other cells."""
    m = re.search(r"rb\.steps\.(\w+)", source)
    if m:
        return m.group(1)
    return "open_phase" if "open_phase(" in source else ""


def _kernel_manager_class(stderr_file: Any, started: list[Any] | None = None) -> type:
    """A kernel manager that sends the kernel process's own stderr to ``stderr_file``.

    The kernel's process-level chatter (transport warnings, crash messages) would
    otherwise interleave with the progress lines; cell output is unaffected (it
    travels over the kernel protocol). The log stays in the run folder for a
    post-mortem of a dead kernel. Started managers are appended to ``started`` so an
    interrupted run can stop its kernel before sealing the folder.
    """
    from jupyter_client.manager import AsyncKernelManager

    class QuietKernelManager(AsyncKernelManager):
        async def _async_start_kernel(self, **kw: Any) -> None:
            if stderr_file is not None and "stderr" not in kw:
                kw["stderr"] = stderr_file
            if started is not None:
                started.append(self)
            await super()._async_start_kernel(**kw)

        start_kernel = _async_start_kernel

    return QuietKernelManager


def _kill_kernels(managers: Sequence[Any], timeout_s: float = 5.0) -> None:
    """Kill the kernels (and whatever they started) of an interrupted phase, bounded.

    A kernel left running would keep writing ``phases/NN.json`` while the folder is
    sealed (and could still be mutating the service); it runs in its own session.
    """
    import psutil

    for km in managers:
        provisioner = getattr(km, "provisioner", None)
        pid = getattr(provisioner, "pid", None)
        if not pid:
            continue
        try:
            root = psutil.Process(int(pid))
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            continue
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        pgid = getattr(provisioner, "pgid", None)
        if pgid and pgid != os.getpgrp():
            with contextlib.suppress(OSError):
                os.killpg(int(pgid), signal.SIGKILL)
        psutil.wait_procs(procs, timeout=timeout_s)


def signum_of(exc: BaseException) -> int:
    """The signal behind an interrupt (``RunInterrupted.signum``; SIGINT for Ctrl-C)."""
    return int(getattr(exc, "signum", 0) or signal.SIGINT)


def notebook_error(
    exc: Exception, notebook: str, current_cell: int = -1, cell_timeout_s: float = 0.0
) -> NotebookError:
    """The one translation of papermill's and nbclient's failures into :class:`NotebookError`.

    Args:
        exc: what papermill raised.
        notebook: the notebook's file name.
        current_cell: the cell that was executing (-1 when none had started).
        cell_timeout_s: the per-cell timeout in force (named in a timeout's reason).
    """
    from nbclient.exceptions import CellTimeoutError, DeadKernelError
    from papermill.exceptions import PapermillExecutionError

    if isinstance(exc, NotebookError):
        return exc
    cell = current_cell if current_cell >= 0 else None
    if isinstance(exc, PapermillExecutionError):
        return NotebookError(
            f"cell {exc.cell_index} (In [{exc.exec_count}]) raised {exc.ename}: {exc.evalue}",
            notebook,
            exc.cell_index,
        )
    if isinstance(exc, CellTimeoutError):
        return NotebookError(f"cell {cell} timed out after {int(cell_timeout_s)} s", notebook, cell)
    if isinstance(exc, DeadKernelError):
        return NotebookError(f"the kernel died while running cell {cell}: {exc}", notebook, cell)
    # Kernel failed to start, notebook unreadable, ...
    return NotebookError(f"{type(exc).__name__}: {exc}", notebook, cell)


def execute_phase(
    phase: int,
    *,
    notebook_in: Path,
    notebook_out: Path,
    parameters: Mapping[str, Any],
    cwd: Path,
    kernel_name: str = "python3",
    cell_timeout_s: float = CELL_TIMEOUT_S,
    start_timeout_s: float = 60.0,
    on_step: Callable[[int, str], None] | None = None,
    kernel_log: Path | None = None,
) -> PhaseOutcome:
    """Run one notebook with papermill into ``notebook_out``; never raises for notebook failures.

    Returns:
        ``PhaseOutcome`` with status ``pass`` (executed to the end; the checks decide the
        rest) or ``error`` with the reason and the failing cell's index.
    """
    import papermill as pm

    name = notebook_in.name
    current = {"index": -1}

    def hook(cell: Any = None, cell_index: int = -1, **_: Any) -> None:
        current["index"] = cell_index
        if on_step is not None and cell is not None and cell.get("cell_type") == "code":
            step = _step_name(cell.get("source", ""))
            if step:
                on_step(cell_index, step)

    start = time.monotonic()
    status, reason, cell = "pass", "", None
    kernels: list[Any] = []
    log_file: Any = contextlib.nullcontext(None)
    if kernel_log is not None:
        kernel_log.parent.mkdir(parents=True, exist_ok=True)
        log_file = kernel_log.open("ab")
    try:
        with log_file as stderr_file:
            pm.execute_notebook(
                str(notebook_in),
                str(notebook_out),
                parameters=dict(parameters),
                kernel_name=kernel_name,
                progress_bar=False,
                log_output=False,
                cwd=str(cwd),
                start_timeout=int(max(start_timeout_s, 1)),
                execution_timeout=max(int(cell_timeout_s), 1),
                on_cell_start=hook,
                kernel_manager_class=_kernel_manager_class(stderr_file, kernels),
            )
    except KeyboardInterrupt as exc:
        # Stop the kernel first: nothing may write to the folder (or the service) while
        # it is sealed. The partial notebook is still redacted below, then the interrupt
        # carries this phase's outcome up to the run.
        _kill_kernels(kernels)
        cell = current["index"] if current["index"] >= 0 else None
        where = f" at cell {cell}" if cell is not None else ""
        outcome = PhaseOutcome(
            phase,
            name,
            "interrupted",
            time.monotonic() - start,
            f"interrupted by signal {signum_of(exc)}{where}",
            cell,
        )
        _tidy(notebook_out, kernel_log)
        exc.phase_outcome = outcome  # type: ignore[attr-defined]
        raise
    except Exception as exc:
        err = notebook_error(exc, name, current["index"], cell_timeout_s)
        status, reason, cell = "error", err.reason, err.cell_index
    duration = time.monotonic() - start
    _tidy(notebook_out, kernel_log)
    return PhaseOutcome(phase, name, status, duration, redact(reason)[:2000], cell)


def _tidy(notebook_out: Path, kernel_log: Path | None) -> None:
    """Redact the executed notebook and the kernel's log in place."""
    if notebook_out.is_file():
        try:
            evidence.redact_notebook(notebook_out)
        except Exception as exc:  # unreadable partial notebook: the scan will still judge it
            log.warning("could not redact %s: %s", notebook_out, exc)
    if kernel_log is not None and kernel_log.is_file():
        text = kernel_log.read_text(encoding="utf-8", errors="replace")
        kernel_log.write_text(redact(text), encoding="utf-8")
