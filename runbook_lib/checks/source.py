"""Source checks: ``source.git_clean``, ``source.git_branch``, ``source.ws_routes_present``."""

from __future__ import annotations

from collections.abc import Sequence

from ..observations import AppRoutesView, GitView
from ..results import CheckResult, Status
from .causes import Verdict

__all__ = ["judge_git_branch", "judge_git_clean", "judge_ws_routes_present"]


def judge_git_clean(obs: GitView | None) -> CheckResult:
    """``source.git_clean``: no uncommitted changes to tracked files (untracked: warn)."""
    v = Verdict("source.git_clean")
    if obs is None:
        return v.skip(detail="source.repo_dir is not configured")
    if not obs.is_repo or obs.error:
        return v.result(
            Status.FAIL if not obs.is_repo else Status.ERROR,
            observed=None,
            threshold="clean",
            detail=f"{obs.error}: cannot tell what the deploy would be built "
            "from; point source.repo_dir at the service's checkout",
        )
    if obs.changed:
        return v.fail(
            observed=len(obs.changed),
            threshold=0,
            detail=f"{len(obs.changed)} uncommitted change(s) "
            f"({', '.join(obs.changed[:5])}): the deployed image would not match "
            "any commit; commit or stash them first",
            data={"changed": list(obs.changed)},
        )
    if obs.untracked:
        return v.warn(
            observed=len(obs.untracked),
            threshold=0,
            detail=f"clean, but {len(obs.untracked)} untracked file(s) "
            f"({', '.join(obs.untracked[:5])}) would be in a local build",
            data={"untracked": list(obs.untracked)},
        )
    return v.ok(observed=0, threshold=0, detail=f"working tree clean at {obs.head}")


def judge_git_branch(obs: GitView | None, expected: str) -> CheckResult:
    """``source.git_branch``: the checkout is on ``expected`` (skip when none is configured)."""
    v = Verdict("source.git_branch")
    if obs is None:
        return v.skip(detail="source.repo_dir is not configured")
    if not obs.is_repo or obs.error:
        return v.result(
            Status.FAIL if not obs.is_repo else Status.ERROR,
            threshold=expected or None,
            detail=obs.error,
        )
    if not expected:
        return v.skip(
            observed=obs.branch,
            detail="source.expected_branch is not configured",
        )
    if obs.branch == expected:
        return v.ok(
            observed=obs.branch,
            threshold=expected,
            detail=f"on {expected} at {obs.head}",
        )
    shown = obs.branch or f"a detached HEAD ({obs.head})"
    return v.fail(
        observed=obs.branch or obs.head,
        threshold=expected,
        detail=f"the checkout is on {shown}, not {expected}: a deploy from here "
        f"would not ship the fixes on {expected}; switch branches first",
    )


def judge_ws_routes_present(obs: AppRoutesView | None, expected: Sequence[str]) -> CheckResult:
    """``source.ws_routes_present``: the app registers every expected WebSocket route."""
    v = Verdict("source.ws_routes_present")
    if obs is None:
        return v.skip(detail="source.app is not configured")
    threshold = list(expected) or "at least one WebSocket route"
    if obs.error:
        return v.result(
            Status.ERROR if obs.timed_out else Status.FAIL,
            threshold=threshold,
            detail=f"{obs.error}. The app must import cleanly before it can be "
            "deployed; fix the import error (see the traceback's last line)",
        )
    found = obs.ws_paths
    data = {"ws_routes": list(found), "http_routes": list(obs.http_paths)}
    missing = [p for p in expected if p not in found]
    if found and not missing:
        detail = (
            f"all {len(expected)} expected WebSocket route(s) registered"
            if expected
            else f"{len(found)} WebSocket route(s): {', '.join(found)}"
        )
        return v.ok(
            observed=list(found),
            threshold=threshold,
            detail=detail,
            data=data,
        )
    if obs.unlisted:
        # Routes the walker cannot read may be there: say so, never fail a healthy service.
        return v.warn(
            observed=list(found),
            threshold=threshold,
            detail=f"could not list every route of the app ({'; '.join(obs.unlisted)[:300]})"
            + (f"; found {', '.join(found)}" if found else "")
            + ". The handshake checks judge the WebSocket paths instead; list them in "
            "[source] expected_ws_routes only when the app exposes its routes",
            data={**data, "unlisted": list(obs.unlisted)},
        )
    http_same = [p for p in missing if p in obs.http_paths]
    extra = f" ({', '.join(http_same)} exist as HTTP routes only)" if http_same else ""
    return v.fail(
        observed=list(found),
        threshold=threshold,
        detail=f"missing WebSocket route(s): {', '.join(missing) or 'all'}{extra}. "
        "The router that defines them is not included in the app: include it "
        "before deploying",
        data=data,
    )
