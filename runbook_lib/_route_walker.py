"""List an ASGI app's routes; run as a script in the *app's* interpreter.

``source.list_app_routes`` runs this file by path (``python _route_walker.py APP ROOT
MARK``) with the interpreter of ``[source] python``, which need not have the runbook
(or anything but the app's own dependencies) installed: this module imports only the
standard library and recognises Starlette/FastAPI routes by class name, Socket.IO's
``ASGIApp`` by its attributes and middleware by the ``app`` it wraps. It prints one
line, ``MARK`` followed by JSON: ``{"routes": [...], "unlisted": [...], "installed": {...}}`` (which ASGI
servers and WebSocket libraries that interpreter can import) or ``{"error": {...}}``
naming the missing module and the interpreter when the import fails. Keep it compatible with
old Pythons (3.8+): it runs wherever the app runs.
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
import platform
import sys
import traceback
from typing import Any

__all__ = ["main", "walk_app", "walk_routes"]


def _kinds(obj: object) -> set:
    return {cls.__name__ for cls in type(obj).__mro__}


def walk_routes(routes: Any, prefix: str = "") -> list:
    """Flatten ``routes`` (mounted routers and included FastAPI routers too) to dicts."""
    out: list = []
    for r in list(routes or []):
        kinds = _kinds(r)
        path = getattr(r, "path", "") or ""
        if "WebSocketRoute" in kinds or "APIWebSocketRoute" in kinds:
            out.append(
                {"kind": "websocket", "path": prefix + path, "methods": [], "name": r.name or ""}
            )
        elif "Route" in kinds or "APIRoute" in kinds:
            methods = sorted(getattr(r, "methods", None) or [])
            out.append(
                {
                    "kind": "http",
                    "path": prefix + path,
                    "methods": methods,
                    "name": getattr(r, "name", "") or "",
                }
            )
        elif hasattr(r, "original_router") and hasattr(r, "include_context"):
            # FastAPI >= 0.16x keeps include_router() lazily as an _IncludedRouter.
            sub_prefix = getattr(r.include_context, "prefix", "") or ""
            out.extend(walk_routes(r.original_router.routes, prefix + sub_prefix))
        elif "Mount" in kinds or "Host" in kinds:
            sub = getattr(r, "routes", None) or []
            out.extend(walk_routes(sub, prefix + (path if "Mount" in kinds else "")))
        elif path:
            out.append(
                {"kind": "other", "path": prefix + path, "methods": [], "name": type(r).__name__}
            )
    return out


def _load(spec: str) -> object:
    mod_name, _, attr = spec.partition(":")
    obj = importlib.import_module(mod_name)
    for part in (attr or "app").split("."):
        obj = getattr(obj, part)
    if _is_factory(obj):
        obj = obj()  # type: ignore[operator]
    return obj


def _is_factory(obj: object) -> bool:
    """A plain function taking no arguments builds the app; anything else callable is
    the ASGI app itself (``app(scope, receive, send)``) and is never called here."""
    if not inspect.isfunction(obj) or inspect.iscoroutinefunction(obj):
        return False
    try:
        params = inspect.signature(obj).parameters.values()
    except (TypeError, ValueError):
        return False
    return not any(
        p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
        for p in params
    )


def walk_app(obj: object, prefix: str = "", depth: int = 0) -> tuple:
    """Routes of any ASGI callable, and why a part of it could not be listed.

    Starlette/FastAPI (``routes``), a Socket.IO/Engine.IO ``ASGIApp`` (its
    ``engineio_path`` upgrades; the app it forwards other requests to is walked too) and
    middleware that wraps an app (``.app``) are recognised. Returns ``(routes,
    unlisted)``: ``unlisted`` names each part whose routes cannot be read.
    """
    name = type(obj).__name__
    if depth > 32:
        return [], [f"{name}: wrapped more than 32 levels deep"]
    routes = getattr(obj, "routes", None)
    if routes is None and hasattr(obj, "router"):
        routes = getattr(obj.router, "routes", None)
    if isinstance(routes, (list, tuple)):
        return walk_routes(routes, prefix), []
    if hasattr(obj, "engineio_server") and hasattr(obj, "engineio_path"):
        kind = "socketio" if "socketio" in type(obj).__module__ else "engineio"
        out: list = []
        path = obj.engineio_path  # type: ignore[attr-defined]
        if path:
            out.append({"kind": "websocket", "path": prefix + path, "methods": [], "name": kind})
        unlisted: list = [] if path else [f"{name}: answers on every path"]
        other = getattr(obj, "other_asgi_app", None)
        if other is not None:
            more, why = walk_app(other, prefix, depth + 1)
            out += more
            unlisted += why
        return out, unlisted
    inner = getattr(obj, "app", None)
    if inner is not None and inner is not obj and callable(inner):
        return walk_app(inner, prefix, depth + 1)
    return [], [f"{name} ({type(obj).__module__}) does not expose its routes"]


def _servers() -> dict:
    """Which ASGI servers and WebSocket libraries the app's environment can import.

    uvicorn without ``websockets`` or ``wsproto`` answers 404 to every upgrade: the
    routes exist, the server cannot speak WebSocket.
    """
    import importlib.util

    found = {}
    for name in ("uvicorn", "hypercorn", "daphne", "websockets", "wsproto"):
        try:
            found[name] = importlib.util.find_spec(name) is not None
        except (ImportError, ValueError):
            found[name] = False
    return found


def _interpreter() -> str:
    return f"{sys.executable} (Python {platform.python_version()})"


def main(argv: list) -> int:
    """``argv`` = [app spec, import root, output mark]; prints the mark and one JSON line."""
    spec, root, mark = argv[0], argv[1], argv[2]
    here = os.path.dirname(os.path.abspath(__file__))
    # Run by path, Python put this package's directory first: its modules (settings,
    # logs, ...) must not shadow the app's own.
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != here]
    sys.path.insert(0, root)
    result: dict
    try:
        obj = _load(spec)
        routes, unlisted = walk_app(obj)
        result = {
            "routes": routes,
            "unlisted": unlisted,
            "python": _interpreter(),
            "installed": _servers(),
        }
    except ModuleNotFoundError as exc:
        result = {
            "error": {
                "kind": "missing_module",
                "module": exc.name or "",
                "message": f"{type(exc).__name__}: {exc}",
            },
            "python": _interpreter(),
        }
    except BaseException as exc:  # whatever the app's import raised, reported
        tail = traceback.format_exception_only(type(exc), exc)[-1].strip()
        result = {
            "error": {"kind": "exception", "module": "", "message": tail},
            "python": _interpreter(),
        }
    sys.stdout.write("\n" + mark + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
