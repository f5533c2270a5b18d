"""The route walker lists the routes of any ASGI callable and never calls an app."""

from __future__ import annotations

import pytest
from corpus import socketio_chat
from starlette.applications import Starlette
from starlette.routing import Route, WebSocketRoute
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware

from runbook_lib._route_walker import _is_factory, walk_app
from runbook_lib.checks.source import judge_ws_routes_present
from runbook_lib.source import AppRoutesObservation, RouteInfo, list_app_routes


async def _ws(ws) -> None:  # pragma: no cover - never served here
    await ws.close()


def _starlette() -> Starlette:
    return Starlette(routes=[Route("/health", lambda r: None), WebSocketRoute("/ws", _ws)])


def test_socketio_asgiapp_lists_its_engineio_path_and_the_app_it_forwards_to() -> None:
    routes, unlisted = walk_app(socketio_chat.make_app(frozenset()))
    assert {(r["kind"], r["path"]) for r in routes} == {
        ("websocket", "/socket.io/"),
        ("http", "/health"),
    }
    assert unlisted == []


def test_middleware_wrapped_app_is_walked_through_its_app_attribute() -> None:
    routes, unlisted = walk_app(ProxyHeadersMiddleware(_starlette()))
    assert [r["path"] for r in routes if r["kind"] == "websocket"] == ["/ws"] and not unlisted


def test_a_bare_asgi_callable_is_never_called_and_is_reported_unlisted() -> None:
    async def app(scope, receive, send):  # pragma: no cover - must not run
        raise AssertionError("called")

    class Callable:
        def __call__(self, scope, receive, send):  # pragma: no cover
            raise AssertionError("called")

    assert not _is_factory(app) and not _is_factory(Callable())
    routes, unlisted = walk_app(Callable())
    assert routes == [] and "does not expose its routes" in unlisted[0]


def test_a_zero_argument_function_is_an_app_factory() -> None:
    assert _is_factory(_starlette) and not _is_factory(lambda scope: None)


def test_routes_that_cannot_be_listed_warn_and_never_fail() -> None:
    obs = AppRoutesObservation("m:app", unlisted=("App (m) does not expose its routes",))
    r = judge_ws_routes_present(obs, [])
    assert r.status == "warn" and "could not list" in r.detail
    found = AppRoutesObservation("m:app", routes=(RouteInfo("websocket", "/a", (), ""),))
    assert judge_ws_routes_present(found, ["/a"]).status == "pass"


@pytest.mark.slow
def test_socketio_corpus_app_lists_in_a_child_interpreter(tmp_path) -> None:
    from pathlib import Path

    obs = list_app_routes("corpus.socketio_chat:app", cwd=str(Path(__file__).parent), timeout_s=60)
    assert obs.error == "" and obs.ws_paths == ("/socket.io/",) and obs.unlisted == ()


@pytest.mark.slow
def test_declaring_the_route_check_not_applicable_keeps_the_library_evidence(tmp_path) -> None:
    """source.ws_routes_present declared away is skipped, but the app is still listed so
    the handshake diagnosis still knows whether a WebSocket library is missing."""
    from pathlib import Path

    from runbook_lib import steps
    from runbook_lib.context import open_phase

    env = tmp_path / "env.toml"
    env.write_text(
        'name = "t"\n[target]\nbase_url = "http://127.0.0.1:9"\nws_paths = ["/ws"]\n'
        f'[source]\nrepo_dir = "{Path(__file__).parent}"\napp = "corpus.no_health:app"\n'
        '[checks.not_applicable]\n"source.ws_routes_present" = "routes built at runtime"\n'
    )
    ctx = open_phase(1, environment=str(env))
    rep = steps.source_status(ctx)
    routes = next(r for r in rep.results if r.id == "source.ws_routes_present")
    assert routes.status == "skip" and "routes built at runtime" in routes.detail
    assert ctx.artifacts["ws_library_missing"] is False
