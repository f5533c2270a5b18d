"""The front door: ``runbook_lib.__all__`` is a short deliberate list, and every name resolves."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import runbook_lib

FRONT_DOOR = [
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


def test_package_all_is_the_deliberate_front_door_of_at_most_40_names():
    assert runbook_lib.__all__ == FRONT_DOOR
    assert len(FRONT_DOOR) <= 40


def test_every_front_door_name_resolves_to_its_owning_module_object():
    for name in runbook_lib.__all__:
        value = getattr(runbook_lib, name)
        home = runbook_lib._HOME.get(name)
        if home:
            assert value is getattr(importlib.import_module(f"runbook_lib.{home}"), name), name
    assert set(runbook_lib._HOME) == set(runbook_lib.__all__) - {"__version__"}


def test_type_checkers_see_the_same_names_as_runtime():
    """The ``TYPE_CHECKING`` imports name exactly the front door, from the same modules."""
    tree = ast.parse(Path(runbook_lib.__file__).read_text(encoding="utf-8"))
    guarded = next(
        node
        for node in tree.body
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name)
        if node.test.id == "TYPE_CHECKING"
    )
    seen: dict[str, str] = {}
    for node in guarded.body:
        assert isinstance(node, ast.ImportFrom) and node.level == 1
        for alias in node.names:
            seen[alias.asname or alias.name] = node.module or ""
    assert seen == runbook_lib._HOME


def test_a_name_outside_the_front_door_is_not_an_attribute_of_the_package():
    """Modules own their API: no second address through the package."""
    assert not hasattr(runbook_lib, "observe_handshake")
    assert not hasattr(runbook_lib, "judge_ws_upgrade")


def test_every_module_declares_all():
    for info in pkgutil.iter_modules(runbook_lib.__path__):
        if info.name.startswith("__"):
            continue
        module = importlib.import_module(f"runbook_lib.{info.name}")
        assert hasattr(module, "__all__"), info.name


def test_notebook_api_names():
    """What the notebooks call: rb.open_phase and rb.steps.<step>."""
    assert callable(runbook_lib.open_phase)
    assert callable(runbook_lib.steps.phase_summary)


@pytest.mark.slow  # starts a process
def test_import_is_cheap():
    """`import runbook_lib` (every kernel does it) does not drag in pandas or the clients."""
    heavy = ("pandas", "matplotlib", "numpy", "google", "httpx", "websockets", "papermill")
    code = (
        "import sys, runbook_lib; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_no_module_exports_a_name_it_only_imports():
    """One address per name: a module's ``__all__`` lists what it defines, never a re-export.

    Package ``__init__`` files (the front door and the wings' doors) are the exception.
    """
    root = Path(runbook_lib.__file__).parent
    second_addresses = []
    for path in sorted(root.rglob("*.py")):
        if path.name == "__init__.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        defined: set[str] = set()
        exported: list[str] = []
        for node in tree.body:
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                defined.add(node.name)
            elif isinstance(node, ast.Assign | ast.AnnAssign):
                targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                for target in targets:
                    names = target.elts if isinstance(target, ast.Tuple) else [target]
                    defined |= {n.id for n in names if isinstance(n, ast.Name)}
                    if isinstance(target, ast.Name) and target.id == "__all__":
                        exported = [ast.literal_eval(e) for e in node.value.elts]  # type: ignore[union-attr]
        rel = path.relative_to(root)
        second_addresses += [f"{rel}: {name}" for name in exported if name not in defined]
    assert second_addresses == []
