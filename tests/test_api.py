"""The package re-exports exactly the union of its public modules' ``__all__``."""

from __future__ import annotations

import importlib
import subprocess
import sys
from collections import Counter

import runbook_lib


def test_package_all_is_the_union_of_module_alls_without_clashes():
    names: Counter[str] = Counter()
    for mod in runbook_lib.PUBLIC_MODULES:
        module = importlib.import_module(f"runbook_lib.{mod}")
        assert hasattr(module, "__all__"), mod
        names.update(module.__all__)
    assert [n for n, c in names.items() if c > 1] == []
    assert set(runbook_lib.__all__) == set(names)


def test_every_exported_name_resolves_to_the_module_object():
    for name in runbook_lib.__all__:
        assert getattr(runbook_lib, name) is not None, name


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


def test_import_is_cheap():
    """`import runbook_lib` (every kernel does it) does not drag in pandas or the clients."""
    heavy = ("pandas", "matplotlib", "google.cloud.run_v2")
    code = f"import sys, runbook_lib; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
