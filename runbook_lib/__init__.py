"""Executable incident runbook for WebSocket services on Cloud Run.

Every public name of the library's modules is re-exported here, loaded lazily so that
``import runbook_lib`` (done by every notebook kernel and the CLI) stays cheap:
``runbook_lib.observe_handshake`` imports ``ws_checks`` on first use. The notebook step
functions live in ``runbook_lib.steps`` (used as ``rb.steps.<step>(ctx)``), the sandbox in
``runbook_lib.sandbox``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public modules whose ``__all__`` make up the package's API (tests/test_api.py checks it).
PUBLIC_MODULES = (
    "checks",
    "cli",
    "cloudrun",
    "commands",
    "context",
    "evidence",
    "exceptions",
    "flow_runner",
    "flows",
    "handshake",
    "http_checks",
    "init",
    "load",
    "logs",
    "monitor",
    "observations",
    "plots",
    "protocol",
    "redaction",
    "results",
    "runner",
    "settings",
    "source",
    "tokens",
    "ws_checks",
)
_SUBMODULES = (*PUBLIC_MODULES, "steps", "sandbox")

# name -> module; generated from the modules' __all__ and checked by tests/test_api.py.
_INDEX: dict[str, str] = {}


def _index() -> dict[str, str]:
    if not _INDEX:
        for mod in PUBLIC_MODULES:
            for name in importlib.import_module(f"{__name__}.{mod}").__all__:
                _INDEX[name] = mod
    return _INDEX


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name == "__all__":
        return sorted(_index())
    mod = _index().get(name)
    if mod is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{mod}"), name)


def __dir__() -> list[str]:
    return sorted({*globals(), *_index(), *_SUBMODULES})
