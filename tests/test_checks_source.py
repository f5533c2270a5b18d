"""Table tests of the source checks (``runbook_lib.checks.source``); tests/test_source.py
runs them against real git checkouts and apps."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from runbook_lib.checks import judge_git_branch, judge_git_clean, judge_ws_routes_present
from runbook_lib.results import Status


@dataclass(frozen=True)
class Git:
    """A ``GitView``."""

    is_repo: bool = True
    branch: str = "main"
    head: str = "abc123"
    changed: tuple[str, ...] = ()
    untracked: tuple[str, ...] = ()
    error: str = ""


@dataclass(frozen=True)
class Routes:
    """An ``AppRoutesView``."""

    ws_paths: tuple[str, ...] = ("/websocket",)
    http_paths: tuple[str, ...] = ("/health",)
    error: str = ""
    timed_out: bool = False
    unlisted: tuple[str, ...] = ()


@pytest.mark.parametrize(
    ("git", "status", "words"),
    [
        (Git(), Status.PASS, "clean at abc123"),
        (Git(untracked=("notes.txt",)), Status.WARN, "notes.txt"),
        (Git(changed=("app.py",)), Status.FAIL, "app.py"),
        (Git(is_repo=False, error="/x is not a git work tree"), Status.FAIL, "not a git"),
        (Git(error="git did not answer within 10s"), Status.ERROR, "did not answer"),
        (None, Status.SKIP, "not configured"),
    ],
)
def test_git_clean(git, status, words) -> None:
    r = judge_git_clean(git)
    assert (r.id, r.phase, r.status) == ("source.git_clean", 1, status)
    assert words in r.detail


@pytest.mark.parametrize(
    ("git", "expected", "status", "words"),
    [
        (Git(), "main", Status.PASS, "on main"),
        (Git(branch="feature"), "main", Status.FAIL, "on feature, not main"),
        (Git(branch=""), "main", Status.FAIL, "detached HEAD (abc123)"),
        (Git(), "", Status.SKIP, "expected_branch"),
        (Git(is_repo=False, error="not a repo"), "main", Status.FAIL, "not a repo"),
    ],
)
def test_git_branch(git, expected, status, words) -> None:
    r = judge_git_branch(git, expected)
    assert (r.id, r.status) == ("source.git_branch", status)
    assert words in r.detail


@pytest.mark.parametrize(
    ("routes", "expected", "status", "words"),
    [
        (Routes(), ["/websocket"], Status.PASS, "all 1 expected"),
        (Routes(), [], Status.PASS, "1 WebSocket route(s): /websocket"),
        (Routes(ws_paths=()), [], Status.FAIL, "missing WebSocket route(s): all"),
        (
            Routes(ws_paths=(), unlisted=("App (m) does not expose its routes",)),
            [],
            Status.WARN,
            "could not list",
        ),
        (Routes(), ["/websocket", "/health"], Status.FAIL, "/health exist as HTTP routes only"),
        (Routes(error="importing app failed: boom"), [], Status.FAIL, "boom"),
        (Routes(error="timed out", timed_out=True), [], Status.ERROR, "timed out"),
        (None, [], Status.SKIP, "not configured"),
    ],
)
def test_ws_routes_present(routes, expected, status, words) -> None:
    r = judge_ws_routes_present(routes, expected)
    assert (r.id, r.status) == ("source.ws_routes_present", status)
    assert words in r.detail
