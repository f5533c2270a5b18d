"""kernels.py: one phase notebook through papermill, its failures in one error type.

The run-level behaviour (exit codes, the phases after a failed one) is tested through
``runner.run`` in ``test_runner.py``; here, what ``execute_phase`` and
``notebook_error`` themselves promise.
"""

from __future__ import annotations

import signal
from pathlib import Path

import nbformat
import pytest
from nbclient.exceptions import CellTimeoutError, DeadKernelError
from nbformat.v4 import new_code_cell, new_notebook
from papermill.exceptions import PapermillExecutionError

from runbook_lib.exceptions import NotebookError, RunInterrupted
from runbook_lib.kernels import execute_phase, notebook_error, signum_of
from runbook_lib.redaction import REDACTED, register_secret

SECRET = "kernel-secret-5e4d3c2b1a09"


def _notebook(path: Path, *sources: str) -> Path:
    nb = new_notebook(cells=[new_code_cell(s) for s in sources])
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    for i, c in enumerate(nb.cells):
        c["id"] = f"c{i}"
    nbformat.write(nb, path)
    return path


def test_notebook_error_names_the_cell_of_each_papermill_and_nbclient_failure() -> None:
    raised = PapermillExecutionError(4, 2, "boom()", "RuntimeError", "probe exploded", [])
    err = notebook_error(raised, "03.ipynb", current_cell=4)
    assert (err.reason, err.notebook, err.cell_index) == (
        "cell 4 (In [2]) raised RuntimeError: probe exploded",
        "03.ipynb",
        4,
    )
    timed_out = notebook_error(CellTimeoutError("slow"), "04.ipynb", 6, cell_timeout_s=600.5)
    assert timed_out.reason == "cell 6 timed out after 600 s" and timed_out.cell_index == 6
    died = notebook_error(DeadKernelError("Kernel died"), "05.ipynb", 2)
    assert died.reason == "the kernel died while running cell 2: Kernel died"
    # Before any cell started (the kernel never came up): no cell to name.
    never = notebook_error(RuntimeError("Kernel didn't respond in 60 seconds"), "01.ipynb")
    assert never.cell_index is None and never.reason.startswith("RuntimeError: Kernel didn't")
    already = NotebookError("x", "02.ipynb", 1)
    assert notebook_error(already, "other.ipynb") is already


def test_signum_of_an_interrupt_is_its_signal_and_ctrl_c_is_sigint() -> None:
    assert signum_of(RunInterrupted(signal.SIGTERM)) == signal.SIGTERM
    assert signum_of(RunInterrupted(0)) == signal.SIGINT  # the owner died: as a Ctrl-C
    assert signum_of(KeyboardInterrupt()) == signal.SIGINT


@pytest.mark.slow
def test_execute_phase_reports_each_step_and_redacts_the_notebook_and_the_kernel_log(
    tmp_path: Path,
) -> None:
    register_secret(SECRET)
    secret_expr = " + ".join(repr(part) for part in (SECRET[:10], SECRET[10:]))
    nb_in = _notebook(
        tmp_path / "03_in.ipynb",
        "x = 1",
        f"s = {secret_expr}  # rb.steps.ws_upgrade(ctx)",
        "print('token', s)  # rb.steps.ws_roundtrip(ctx)",
        "import os; os.write(2, ('stderr ' + s + '\\n').encode())",
    )
    steps: list[tuple[int, str]] = []
    nb_out, kernel_log = tmp_path / "03.ipynb", tmp_path / "logs" / "kernel-03.log"
    outcome = execute_phase(
        3,
        notebook_in=nb_in,
        notebook_out=nb_out,
        parameters={},
        cwd=tmp_path,
        cell_timeout_s=60,
        on_step=lambda index, step: steps.append((index, step)),
        kernel_log=kernel_log,
    )
    assert outcome.status == "pass", outcome.reason
    assert [s for _, s in steps] == ["ws_upgrade", "ws_roundtrip"]
    printed = nbformat.read(nb_out, as_version=4).cells[2].outputs[0]["text"]
    assert printed == f"token {REDACTED}\n"
    assert SECRET not in nb_out.read_text(encoding="utf-8")
    log_text = kernel_log.read_text(encoding="utf-8")
    assert "stderr " in log_text and SECRET not in log_text


@pytest.mark.slow
def test_execute_phase_turns_a_dead_kernel_into_an_error_naming_its_cell(tmp_path: Path) -> None:
    nb_in = _notebook(tmp_path / "05_in.ipynb", "x = 1", "import os; os._exit(1)", "y = 2")
    outcome = execute_phase(
        5,
        notebook_in=nb_in,
        notebook_out=tmp_path / "05.ipynb",
        parameters={},
        cwd=tmp_path,
        cell_timeout_s=60,
    )
    assert outcome.status == "error" and outcome.cell_index == 1
    assert "kernel died while running cell 1" in outcome.reason, outcome.reason
    assert (tmp_path / "05.ipynb").is_file()  # the partial notebook stays as evidence
