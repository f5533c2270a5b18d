"""The package re-exports exactly the union of its public modules' ``__all__``."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import runbook_lib


def test_package_all_is_the_union_of_module_alls_without_clashes():
    names: Counter[str] = Counter()
    for mod in runbook_lib.PUBLIC_MODULES:
        module = importlib.import_module(f"runbook_lib.{mod}")
        assert hasattr(module, "__all__"), mod
        names.update(module.__all__)
    assert [n for n, c in names.items() if c > 1] == []
    static = set(runbook_lib.__all__)
    assert sorted(set(names) - static) == [], "missing from runbook_lib.__all__"
    assert sorted(static - set(names)) == [], "in runbook_lib.__all__ but no module exports it"
    assert len(runbook_lib.__all__) == len(static)


def test_package_all_is_static_and_type_checkers_see_every_name():
    """``__all__`` is a literal list, and the ``TYPE_CHECKING`` imports name the same objects."""
    assert "__all__" in vars(runbook_lib)  # not computed by the module's __getattr__
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
            seen[alias.asname or alias.name] = node.module or alias.name
    submodules = {"sandbox", "steps"}
    assert set(seen) - submodules == set(runbook_lib.__all__)
    for name in runbook_lib.__all__:
        module = importlib.import_module(f"runbook_lib.{seen[name]}")
        assert getattr(runbook_lib, name) is getattr(module, name), name


def test_every_exported_name_resolves_to_the_module_object():
    for mod in runbook_lib.PUBLIC_MODULES:
        module = importlib.import_module(f"runbook_lib.{mod}")
        for name in module.__all__:
            assert getattr(runbook_lib, name) is getattr(module, name), f"{mod}.{name}"


def test_every_module_declares_all():
    import pkgutil

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
