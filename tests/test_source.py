"""Source checks: git state of a checkout and the app's routes (imported in a child)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from runbook_lib.checks.source import judge_git_branch, judge_git_clean, judge_ws_routes_present
from runbook_lib.results import Status
from runbook_lib.settings import SourceSettings
from runbook_lib.source import list_app_routes, list_source_routes, observe_git

APP = """
from fastapi import APIRouter, FastAPI, WebSocket
from starlette.routing import Mount, WebSocketRoute

app = FastAPI()
router = APIRouter()

@app.get("/health")
async def health():
    return {"status": "ok"}

@router.websocket("/websocket")
async def ws(websocket: WebSocket):
    await websocket.accept()

@router.get("/ws/health")
async def ws_health():
    return {"connections": {"active": 0}}

async def echo(websocket):
    await websocket.accept()

app.include_router(router)
api = APIRouter()

@api.websocket("/stream")
async def stream(websocket: WebSocket):
    await websocket.accept()

app.include_router(api, prefix="/api")
app.router.routes.append(Mount("/v2", routes=[WebSocketRoute("/ws/test", echo)]))

broken = FastAPI()
broken.include_router(APIRouter())

def factory():
    return app
"""


def git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-C", str(repo), *args],
        check=True,
        capture_output=True,
        env={
            "GIT_AUTHOR_NAME": "t",
            "GIT_AUTHOR_EMAIL": "t@x",
            "GIT_COMMITTER_NAME": "t",
            "GIT_COMMITTER_EMAIL": "t@x",
            "HOME": str(repo),
            "PATH": "/usr/bin:/bin:/usr/local/bin",
        },
    )


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    git(tmp_path, "init", "-q", "-b", "develop-long-lived")
    (tmp_path / "svc_app.py").write_text(textwrap.dedent(APP))
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "init")
    return tmp_path


def test_clean_repo_on_expected_branch(repo: Path) -> None:
    obs = observe_git(str(repo))
    assert obs.is_repo and obs.branch == "develop-long-lived" and obs.head
    assert judge_git_clean(obs).status is Status.PASS
    assert judge_git_branch(obs, "develop-long-lived").status is Status.PASS
    r = judge_git_branch(obs, "main")
    assert r.status is Status.FAIL and "not main" in r.detail
    assert judge_git_branch(obs, "").status is Status.SKIP


def test_dirty_and_untracked(repo: Path) -> None:
    (repo / "new.txt").write_text("x")
    assert judge_git_clean(observe_git(str(repo))).status is Status.WARN
    (repo / "svc_app.py").write_text("changed")
    r = judge_git_clean(observe_git(str(repo)))
    assert r.status is Status.FAIL and "svc_app.py" in r.detail


def test_not_a_repo_is_clear(tmp_path: Path) -> None:
    obs = observe_git(str(tmp_path))
    assert not obs.is_repo and "not a git work tree" in obs.error
    assert judge_git_clean(obs).status is Status.FAIL
    assert not observe_git(str(tmp_path / "missing")).is_repo
    assert judge_git_clean(None).status is Status.SKIP


def test_routes_listed_including_mounts(repo: Path) -> None:
    obs = list_app_routes("svc_app:app", cwd=str(repo), timeout_s=60)
    assert obs.error == ""
    assert set(obs.ws_paths) == {"/websocket", "/api/stream", "/v2/ws/test"}
    assert "/health" in obs.http_paths and "/ws/health" in obs.http_paths
    assert judge_ws_routes_present(obs, ["/websocket", "/v2/ws/test"]).status is Status.PASS
    r = judge_ws_routes_present(obs, ["/websocket", "/ws/health"])
    assert r.status is Status.FAIL and "HTTP routes only" in r.detail
    assert list_app_routes("svc_app:factory", cwd=str(repo)).ws_paths


def test_app_without_ws_routes_fails(repo: Path) -> None:
    obs = list_app_routes("svc_app:broken", cwd=str(repo), timeout_s=60)
    r = judge_ws_routes_present(obs, [])
    assert r.status is Status.FAIL


def test_bad_import_and_hanging_import_are_results(repo: Path) -> None:
    (repo / "bad_app.py").write_text("raise RuntimeError('config missing')\n")
    obs = list_app_routes("bad_app:app", cwd=str(repo), timeout_s=60)
    assert "config missing" in obs.error
    assert judge_ws_routes_present(obs, ["/websocket"]).status is Status.FAIL
    (repo / "slow_app.py").write_text("import time\ntime.sleep(60)\n")
    obs = list_app_routes("slow_app:app", cwd=str(repo), timeout_s=1)
    assert obs.timed_out and judge_ws_routes_present(obs, []).status is Status.ERROR
    assert judge_ws_routes_present(None, []).status is Status.SKIP


# ---------------------------------------------------------------- the app's own interpreter


@pytest.fixture
def bare_python(tmp_path: Path) -> str:
    """A second interpreter without site-packages: this one run with ``-S``."""
    import sys

    script = tmp_path / "bin" / "bare-python"
    script.parent.mkdir()
    script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -S "$@"\n')
    script.chmod(0o755)
    return str(script)


def test_import_root_puts_the_apps_own_tree_first(tmp_path: Path) -> None:
    """An app importing a sibling that exists only under ``import_root``."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "routes_only_here.py").write_text("PATH = '/only/here'\n")
    (src / "rooted_app.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.routing import WebSocketRoute\n"
        "from routes_only_here import PATH\n"
        "async def ws(websocket):\n    await websocket.accept()\n"
        "app = Starlette(routes=[WebSocketRoute(PATH, ws)])\n"
    )
    without = list_app_routes("rooted_app:app", cwd=str(tmp_path), timeout_s=60)
    assert "'rooted_app'" in without.error and not without.ws_paths
    obs = list_app_routes("rooted_app:app", cwd=str(tmp_path), import_root="src", timeout_s=60)
    assert obs.error == "" and obs.ws_paths == ("/only/here",)
    assert obs.installed["uvicorn"] and obs.installed["websockets"]
    assert not obs.ws_library_missing
    src_settings = SourceSettings(repo_dir=str(tmp_path), app="rooted_app:app", import_root="src")
    assert list_source_routes(src_settings, timeout_s=60).ws_paths == ("/only/here",)


def test_missing_dependency_names_the_module_and_the_interpreter(
    repo: Path, bare_python: str
) -> None:
    obs = list_app_routes("svc_app:app", cwd=str(repo), python=bare_python, timeout_s=60)
    assert "module 'fastapi' is not installed" in obs.error
    assert bare_python in obs.error and "[source] python" in obs.error
    assert obs.missing_module == "fastapi" and obs.python.startswith(bare_python)
    assert judge_ws_routes_present(obs, ["/websocket"]).status is Status.FAIL


def test_runbook_package_modules_do_not_shadow_the_apps(tmp_path: Path) -> None:
    """The walker runs from runbook_lib/: an app module named ``settings`` is the app's."""
    (tmp_path / "settings.py").write_text("WS = '/from-app-settings'\n")
    (tmp_path / "shadow_app.py").write_text(
        "from starlette.applications import Starlette\n"
        "from starlette.routing import WebSocketRoute\n"
        "import settings\n"
        "async def ws(websocket):\n    await websocket.accept()\n"
        "app = Starlette(routes=[WebSocketRoute(settings.WS, ws)])\n"
    )
    obs = list_app_routes("shadow_app:app", cwd=str(tmp_path), timeout_s=60)
    assert obs.ws_paths == ("/from-app-settings",), obs.error


def test_bad_interpreter_and_import_root_are_clear(repo: Path) -> None:
    obs = list_app_routes("svc_app:app", cwd=str(repo), python="./no/such/python")
    assert "could not start the app's interpreter" in obs.error and "[source] python" in obs.error
    obs = list_app_routes("svc_app:app", cwd=str(repo), import_root="missing-dir")
    assert "import root" in obs.error and "is not a directory" in obs.error


@pytest.mark.slow  # starts a process
def test_uvicorn_without_a_websocket_library_is_reported(tmp_path: Path) -> None:
    """The app's environment has uvicorn but no websockets/wsproto: every upgrade would 404."""
    site = tmp_path / "site"
    (site / "uvicorn").mkdir(parents=True)
    (site / "uvicorn" / "__init__.py").write_text("")
    (tmp_path / "plain_app.py").write_text(
        "class R:\n    path = '/ws'\n    name = 'ws'\n"
        "class WebSocketRoute(R):\n    pass\n"
        "class App:\n    routes = [WebSocketRoute()]\n"
        "app = App()\n"
    )
    python = tmp_path / "py"
    python.write_text(f'#!/bin/sh\nPYTHONPATH="{site}" exec "{sys.executable}" -S "$@"\n')
    python.chmod(0o755)
    obs = list_app_routes("plain_app:app", cwd=str(tmp_path), python=str(python), timeout_s=60)
    assert obs.error == "" and obs.ws_paths == ("/ws",)
    assert obs.installed == {
        "uvicorn": True,
        "hypercorn": False,
        "daphne": False,
        "websockets": False,
        "wsproto": False,
    }
    assert obs.ws_library_missing
