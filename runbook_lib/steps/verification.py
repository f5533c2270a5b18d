"""Probing one revision on its own tag URL, and the gates of a verify-then-shift rollout.

Shared by phase 2 (``deploy.tag_verified``, the gates between traffic steps) and
phase 6 (``rollback.target_verified``). Observation only: the judges of
:mod:`runbook_lib.checks` turn what is seen into results.
"""

from __future__ import annotations

import time
from collections.abc import Collection, Mapping
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ..checks import (
    Verdict,
    judge_health_backend,
    judge_isolation_no_cross_user,
    judge_ws_roundtrip,
    judge_ws_upgrade,
)
from ..cloudrun_plans import fitting_tag
from ..context import PhaseContext
from ..results import CheckResult
from ..settings import TargetSettings
from .common import applies, connect_auth

__all__ = [
    "VERIFY_TAG",
    "ShareTimeline",
    "gate_probe",
    "probe_revision",
    "tag_target",
    "users_probe",
    "verify_tag",
]

# The tag a revision gets while it is verified (removed afterwards; a left-over one from
# an interrupted run is simply moved, Cloud Run allows one target per tag).
VERIFY_TAG = "runbook-verify"
# Shorter fallbacks: Cloud Run limits tag + service name to 46 characters, so a service
# name over 32 characters cannot carry VERIFY_TAG (one report has tags under 3 refused).
_SHORT_TAGS = (VERIFY_TAG, "rbv")


def verify_tag(service: str) -> str:
    """The verification tag for ``service``: ``runbook-verify``, else ``rbv`` when the
    service name is too long for it. When neither fits (a name over 43 characters),
    ``runbook-verify``, whose plan is then refused with the reason."""
    return fitting_tag(service, _SHORT_TAGS) or VERIFY_TAG


def tag_target(target: TargetSettings, url: str) -> TargetSettings:
    """``target`` with its HTTP and WebSocket bases moved to ``url`` (a tag's own URL).

    The paths stay; the scheme follows the tag URL (``https`` -> ``wss``).
    """
    tag = urlsplit(url)
    base = urlsplit(target.base_url)
    ws = urlsplit(target.ws_url)
    ws_scheme = "wss" if tag.scheme == "https" else "ws"
    return replace(
        target,
        base_url=urlunsplit((tag.scheme, tag.netloc, base.path, "", "")),
        ws_url=urlunsplit((ws_scheme, tag.netloc, ws.path, "", "")),
    )


async def _token_error(ctx: PhaseContext, check_id: str) -> tuple[Any, CheckResult | None]:
    auth, err = await connect_auth(ctx)
    if not err:
        return auth, None
    return auth, Verdict(check_id, phase=ctx.phase).error(
        f"could not obtain a token to connect with: {err}"
    )


async def probe_revision(
    ctx: PhaseContext, url: str, check_id: str, *, isolation: bool = False
) -> dict[str, CheckResult]:
    """Health, the WebSocket upgrade of every path and a round trip, on ``url``.

    With ``isolation``: also a few users at once on ``url``, none of whom may receive
    another's events (what a traffic gate checks, here before any traffic moves).

    Returns:
        label (``health``, ``upgrade``, ``round trip``, ``isolation``) -> the part judged
        as ``check_id``; ``health`` is left out when the service declares no health endpoint.
    """
    from ..flow_runner import run_named_flow
    from ..handshake import observe_handshakes, with_subprotocols
    from ..http_checks import observe_get

    t = tag_target(ctx.settings.target, url)
    to = ctx.settings.timeouts
    parts: dict[str, CheckResult] = {}
    if t.health_path is not None:
        health = await observe_get(t.http(t.health_path), timeout_s=to.read_s)
        parts["health"] = judge_health_backend(health, check_id=check_id)
    auth, err = await _token_error(ctx, check_id)
    probes = await observe_handshakes(
        [t.ws(p) for p in t.ws_paths],
        timeout_s=to.connect_s,
        auth=with_subprotocols(auth, ctx.settings.protocol.subprotocols),
    )
    parts["upgrade"] = judge_ws_upgrade(probes, check_id=check_id)
    if err is not None:
        parts["round trip"] = err
    else:
        # The service's own ping conversation (the load flow), as ws.roundtrip runs it.
        rt = await run_named_flow(ctx.settings, "load", url=t.ws(), auth=auth)
        parts["round trip"] = judge_ws_roundtrip(rt, check_id=check_id)
    if isolation and applies(ctx, "isolation.no_cross_user"):
        parts["isolation"] = await _isolation(ctx, t.ws(), check_id)
    return parts


async def _isolation(ctx: PhaseContext, ws_url: str, check_id: str) -> CheckResult:
    """The isolation flow as phase 5 runs it (markers, the service's own protocol), with a
    few users at once on ``ws_url``."""
    from ..ws_checks import observe_flow_users

    users = max(2, min(3, int(ctx.settings.thresholds.isolation_users)))
    runs = await observe_flow_users(ctx.settings, "isolation", users=users, url=ws_url)
    return judge_isolation_no_cross_user(runs, check_id=check_id)


async def gate_probe(
    ctx: PhaseContext, tag_url: str, check_id: str, *, failing_before: Collection[str] = ()
) -> dict[str, CheckResult]:
    """The gate after one traffic step: what users get, and the new revision under sharing.

    Through the service URL (the split in force): health and a WebSocket round trip.
    On the new revision's tag URL: a few users at once, none of whom may receive
    another's events (a fault that only shows once sockets share a revision).

    Args:
        failing_before: service-URL probes (``health``, ``round trip``) that already
            failed before the first shift (the incident being fixed): most users still
            reach the old revision, so they would fail the new one for the old one's
            fault; those probes run on the tag URL instead.
    """
    parts: dict[str, CheckResult] = {}
    t = ctx.settings.target
    tagged = tag_target(t, tag_url)
    for kind in ("health", "round trip"):
        on_tag = kind in failing_before
        found = await _user_probe(ctx, tagged if on_tag else t, kind, check_id)
        if found is not None:
            parts[f"{kind} ({'tag URL' if on_tag else 'service URL'})"] = found
    if applies(ctx, "isolation.no_cross_user"):
        parts["isolation (tag URL)"] = await _isolation(ctx, tagged.ws(), check_id)
    return parts


async def users_probe(ctx: PhaseContext, check_id: str) -> dict[str, CheckResult]:
    """What users get through the service URL now: ``health`` and ``round trip``."""
    t = ctx.settings.target
    parts = {kind: await _user_probe(ctx, t, kind, check_id) for kind in ("health", "round trip")}
    return {k: v for k, v in parts.items() if v is not None}


async def _user_probe(
    ctx: PhaseContext, t: TargetSettings, kind: str, check_id: str
) -> CheckResult | None:
    """One probe of what a user gets at ``t``: ``health`` (None without a health path) or
    ``round trip`` (the service's own ping conversation)."""
    from ..flow_runner import run_named_flow
    from ..http_checks import observe_get

    if kind == "health":
        if t.health_path is None:
            return None
        health = await observe_get(t.http(t.health_path), timeout_s=ctx.settings.timeouts.read_s)
        return judge_health_backend(health, check_id=check_id)
    auth, err = await _token_error(ctx, check_id)
    if err is not None:
        return err
    rt = await run_named_flow(ctx.settings, "load", url=t.ws(), auth=auth)
    return judge_ws_roundtrip(rt, check_id=check_id)


class ShareTimeline:
    """Traffic splits over time for the share figure: ``add(split, label)``, then ``samples``."""

    def __init__(self) -> None:
        self._t0 = time.monotonic()
        self.samples: list[tuple[float, dict[str, int], str]] = []

    def add(self, split: Mapping[str, int], label: str) -> None:
        """Record the split in force now, and what made it."""
        self.samples.append((round(time.monotonic() - self._t0, 3), dict(split), label))

    @property
    def max_share(self) -> dict[str, int]:
        """Revision -> the largest share it had."""
        out: dict[str, int] = {}
        for _, split, _ in self.samples:
            for rev, pct in split.items():
                out[rev] = max(out.get(rev, 0), pct)
        return out
