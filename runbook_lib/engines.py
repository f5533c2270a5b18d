"""How the runner executes one phase: the engine seam.

:func:`runbook_lib.runner.run` hands every phase to a :class:`PhaseEngine`, as
papermill hands a notebook to its registered engine and httpx a request to its
transport:

* :class:`KernelEngine` (the default, and the audit record): the phase's notebook in a
  fresh Jupyter kernel through papermill (:func:`runbook_lib.kernels.execute_phase`);
  the executed ``.ipynb`` and its HTML land in the run folder.
* :class:`InProcessEngine`: the same steps, in the order of the one phase -> steps
  table (:func:`runbook_lib.checks.catalog.steps_of`), called in the caller's process
  on a private event loop, ending with the phase summary. It writes the same
  ``phases/NN.json`` (no notebook). Environment variables, the working directory and
  the secret registry are restored after each phase, as a kernel's end would discard
  them. For tests and for embedding the runbook where a kernel is not wanted.

An engine never raises for a phase that fails: the outcome says ``error`` with the
reason. An interrupt (SIGINT/SIGTERM) propagates with the phase's outcome attached
as ``exc.phase_outcome`` once the phase's work has stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from .checks.catalog import steps_of
from .kernels import execute_phase, signum_of
from .redaction import clear_secrets, redact, register_secret, registered_secrets
from .settings_rules import CELL_TIMEOUT_S
from .verdict import PhaseOutcome

__all__ = ["InProcessEngine", "KernelEngine", "PhaseEngine", "PhaseRequest"]

# How long an interrupted in-process phase may take to unwind its steps.
_CANCEL_WAIT_S = 10.0


@dataclass(frozen=True, slots=True)
class PhaseRequest:
    """One phase to execute.

    Attributes:
        phase: 1-7.
        notebook_in: the phase's notebook (what a kernel executes).
        notebook_out: where the executed notebook is written (kernel engine only).
        parameters: the notebook's parameters (``environment``, ``run_dir``, ``approve``,
            ``overrides_json``, and ``rollback_to`` for phase 6).
        cwd: working directory of the phase (the repository root).
        cell_timeout_s: bound on each cell (kernel) or step (in process).
        start_timeout_s: how long a kernel may take to start.
        kernel_name: Jupyter kernel to use.
        on_step: called with (cell or step index, step name) as each step starts.
        kernel_log: where a kernel's own stderr goes.
    """

    phase: int
    notebook_in: Path
    notebook_out: Path
    parameters: Mapping[str, Any]
    cwd: Path
    cell_timeout_s: float = CELL_TIMEOUT_S
    start_timeout_s: float = 60.0
    kernel_name: str = "python3"
    on_step: Callable[[int, str], None] | None = None
    kernel_log: Path | None = None


class PhaseEngine(Protocol):
    """Executes one phase and says how it ended (never raises for a failed phase)."""

    def execute(self, request: PhaseRequest) -> PhaseOutcome:
        """Run ``request``'s phase; its checks are in ``<run_dir>/phases/NN.json``."""
        ...


class KernelEngine:
    """The phase's notebook in a fresh Jupyter kernel (papermill): the product's default."""

    def execute(self, request: PhaseRequest) -> PhaseOutcome:
        """Execute the notebook into ``request.notebook_out`` (see :func:`execute_phase`)."""
        return execute_phase(
            request.phase,
            notebook_in=request.notebook_in,
            notebook_out=request.notebook_out,
            parameters=request.parameters,
            cwd=request.cwd,
            kernel_name=request.kernel_name,
            cell_timeout_s=request.cell_timeout_s,
            start_timeout_s=request.start_timeout_s,
            on_step=request.on_step,
            kernel_log=request.kernel_log,
        )


class _StepTimeout(Exception):
    def __init__(self, step: str, timeout_s: float) -> None:
        super().__init__(f"step {step} timed out after {int(timeout_s)} s")


class InProcessEngine:
    """The phase's steps called in this process, as its notebook's cells call them.

    Args:
        only: run just these steps of each phase (still in the catalog's order, still
            closed by the summary), e.g. to exercise one step against a real service;
            None runs them all, as the notebook does.
    """

    def __init__(self, only: Iterable[str] | None = None) -> None:
        self.only = None if only is None else frozenset(only)

    def execute(self, request: PhaseRequest) -> PhaseOutcome:
        """Open the phase, run :func:`steps_of` in order and the summary; bounded per step."""
        notebook = request.notebook_in.name
        start = time.monotonic()
        current: dict[str, Any] = {"index": -1, "step": "open_phase", "task": None, "loop": None}
        failure: list[BaseException] = []

        def worker() -> None:
            loop = asyncio.new_event_loop()
            current["loop"] = loop
            try:
                task = loop.create_task(_run_steps(request, current, self.only))
                current["task"] = task
                loop.run_until_complete(task)
            except BaseException as exc:  # handed to the caller's thread below
                failure.append(exc)
            finally:
                loop.close()

        with _isolated(request.cwd):
            thread = threading.Thread(target=worker, name=f"phase-{request.phase}", daemon=True)
            thread.start()
            try:
                while thread.is_alive():
                    thread.join(0.2)
            except KeyboardInterrupt as exc:
                # Stop the steps first: nothing may write to the folder while it is sealed.
                _cancel(current, thread)
                where = f" at step {current['step']}" if current["index"] >= 0 else ""
                exc.phase_outcome = PhaseOutcome(  # type: ignore[attr-defined]
                    request.phase,
                    notebook,
                    "interrupted",
                    time.monotonic() - start,
                    f"interrupted by signal {signum_of(exc)}{where}",
                    None,
                )
                raise
        duration = time.monotonic() - start
        if not failure or isinstance(failure[0], asyncio.CancelledError):
            status, reason = ("pass", "") if not failure else ("error", "the phase was cancelled")
            return PhaseOutcome(request.phase, notebook, status, duration, reason, None)
        err = failure[0]
        if isinstance(err, _StepTimeout):
            reason = str(err)
        else:
            reason = f"step {current['step']} raised {type(err).__name__}: {err}"
        return PhaseOutcome(request.phase, notebook, "error", duration, redact(reason)[:2000], None)


async def _run_steps(
    request: PhaseRequest, current: dict[str, Any], only: frozenset[str] | None
) -> None:
    from . import steps
    from .context import open_phase

    params = dict(request.parameters)
    ctx = open_phase(
        request.phase,
        environment=str(params["environment"]),
        run_dir=str(params.get("run_dir", "")),
        approve=bool(params.get("approve", False)),
        overrides_json=str(params.get("overrides_json", "")),
    )
    for index, info in enumerate(steps_of(request.phase)):
        if only is not None and info.name not in only:
            continue
        current.update(index=index, step=info.name)
        if request.on_step is not None:
            request.on_step(index, info.name)
        fn = getattr(steps, info.name)
        # Notebook parameters a step takes by name (phase 6's ``rollback_to``).
        accepted = inspect.signature(fn).parameters
        kwargs = {k: v for k, v in params.items() if k in accepted and k != "ctx"}
        result = fn(ctx, **kwargs)
        if inspect.isawaitable(result):
            try:
                await asyncio.wait_for(result, request.cell_timeout_s)
            except TimeoutError:
                raise _StepTimeout(info.name, request.cell_timeout_s) from None
    current.update(step="phase_summary")
    steps.phase_summary(ctx)


def _cancel(current: Mapping[str, Any], thread: threading.Thread) -> None:
    loop, task = current.get("loop"), current.get("task")
    if loop is not None and task is not None:
        with contextlib.suppress(RuntimeError):  # the loop already closed
            loop.call_soon_threadsafe(task.cancel)
    thread.join(_CANCEL_WAIT_S)


@contextlib.contextmanager
def _isolated(cwd: Path) -> Iterator[None]:
    """Run a phase as a kernel would: in ``cwd``, its environment and secrets its own."""
    environ = dict(os.environ)
    secrets = registered_secrets()
    old_cwd = Path.cwd()
    os.chdir(cwd)
    try:
        yield
    finally:
        os.chdir(old_cwd)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        clear_secrets()
        for value in secrets:
            register_secret(value)
