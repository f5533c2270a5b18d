"""WebSocket checks: ``ws.routes_probe``, ``ws.upgrade``, ``ws.roundtrip``, ``rollback.smoke``,
``auth.ws_authenticated``, ``auth.rejects_invalid``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from ..observations import (
    AuthObservation,
    HandshakeObservation,
    HttpObservation,
)
from ..results import CheckResult

if TYPE_CHECKING:
    from ..flows import FlowObservation
from .causes import (
    INCIDENT_SIGNATURE,
    NO_WS_IMPLEMENTATION,
    UNREADABLE,
    Verdict,
    WsEvidence,
    diagnose_refusal,
    ended_words,
    explain_close,
    explain_status,
    flow_drop,
    upgrade_words,
)

__all__ = [
    "judge_auth_rejects_invalid",
    "judge_auth_ws_authenticated",
    "judge_ws_roundtrip",
    "judge_ws_routes_probe",
    "judge_ws_upgrade",
]


def judge_ws_routes_probe(
    health: HttpObservation | None,
    probes: Sequence[HandshakeObservation],
    *,
    evidence: WsEvidence | None = None,
    check_id: str = "ws.routes_probe",
) -> CheckResult:
    """``ws.routes_probe``: every WebSocket path upgrades; names the incident signature.

    The remedy comes from all the evidence (:func:`~.causes.diagnose_refusal`): a 404 while
    the source registers the route and nothing configured would deploy other code is a
    server without a WebSocket implementation, not a revision to redeploy.

    Args:
        health: the health GET (None when the service declares no health endpoint:
            then the incident signature cannot be named).
        probes: one upgrade attempt per WebSocket path.
        evidence: what the source, logs and deploy configuration say (None: nothing).
    """
    v = Verdict(check_id, threshold=101)
    observed = {p.path: (p.status if p.status is not None else p.error) for p in probes}
    data: dict[str, object] = {
        "probes": [p.to_record() for p in probes],
        "health_status": health and health.status,
    }
    if not probes:
        return v.error("no WebSocket path was probed: set target.ws_paths", threshold=None)
    bad = [p for p in probes if not p.upgraded]
    if not bad:
        return v.ok(
            f"all {len(probes)} WebSocket path(s) answered 101 with a valid Sec-WebSocket-Accept",
            observed=observed,
            data=data,
        )
    causes = {
        p.path: diagnose_refusal(p.status, p.path, evidence, server=p.headers.get("server", ""))
        for p in bad
        if p.status is not None and p.status != 101
    }
    keys = sorted({key for key, _ in causes.values()})
    data["causes"] = {path: key for path, (key, _) in causes.items()}
    if len(keys) == 1:
        data["cause"] = keys[0]
        data["cause_words"] = next(iter(causes.values()))[1]
    four04 = [p.path for p in bad if p.status == 404]
    if health is not None and health.status == 200 and four04:
        key, words = causes[four04[0]]
        if key == "route_unknown":
            # No source to compare with: the seed's reading, with the other explanation.
            words = (
                "the serving revision does not have the WebSocket routes (built from code "
                "without them, router not included): deploy the revision built from the "
                f"fixed source (phase 2); or {NO_WS_IMPLEMENTATION}. Configure [source] app "
                "to tell them apart"
            )
        detail = (
            f"Incident signature: {INCIDENT_SIGNATURE} ({', '.join(four04)} -> 404, "
            f"{health.url} -> 200). Cause: {words}"
        )
        others = [upgrade_words(p, evidence) for p in bad if p.path not in four04]
        if others:
            detail += "; also " + "; ".join(others)
        return v.fail(
            detail,
            observed=observed,
            data={**data, "incident_signature": True},
        )
    return v.fail(
        "; ".join(upgrade_words(p, evidence) for p in bad),
        observed=observed,
        data=data,
    )


def judge_ws_upgrade(
    probes: Sequence[HandshakeObservation],
    *,
    evidence: WsEvidence | None = None,
    check_id: str = "ws.upgrade",
) -> CheckResult:
    """``ws.upgrade``: every WebSocket path answers 101 with a valid ``Sec-WebSocket-Accept``.

    The probe of phase 1 without the health answer: each failed path gets its cause.
    """
    return judge_ws_routes_probe(None, probes, evidence=evidence, check_id=check_id)


def judge_ws_roundtrip(obs: FlowObservation, *, check_id: str = "ws.roundtrip") -> CheckResult:
    """``ws.roundtrip`` (and ``rollback.smoke``): a ping is answered with a pong.

    ``obs`` is the ``load`` flow run: the service's ping conversation (e.g. GraphQL
    ``connection_init`` -> ``ping`` -> ``pong``, or a text ``PING``/``PONG`` line); every
    step must succeed.
    """
    return _flow_roundtrip(Verdict(check_id, threshold="pong"), obs)


def _flow_roundtrip(v: Verdict, obs: FlowObservation) -> CheckResult:
    data: dict[str, Any] = {"flow": obs.to_record()}
    if not obs.connected:
        words = (
            f"upgrade refused with HTTP {obs.status}: {explain_status(obs.status)}"
            if obs.status is not None and obs.status != 101
            else f"could not connect ({obs.connect_error}: {obs.connect_detail})"
        )
        return v.fail(words, observed=obs.status or obs.connect_error, data=data)
    if obs.completed and obs.response_s is not None:
        return v.ok(
            f"the {obs.flow} flow's {len(obs.steps)} step(s) completed: answered after "
            f"{obs.response_s * 1000:.0f} ms",
            observed=round(obs.response_s, 4),
            data=data,
        )
    answered = obs.stop_reason == "error_frame"
    # An error frame is an answer, not a missing pong: quote it.
    detail = f"{'answered with an error' if answered else 'no pong'}: {obs.stop_detail}"
    if (drop := flow_drop(obs)) is not None:
        detail += f" ({drop[1]})"
        data["cause"] = drop[0]
    elif obs.close_code is not None:
        detail += f" (close {obs.close_code}: {explain_close(obs.close_code)})"
    bad = [f.frame for f in obs.frames if str(f.kind) in UNREADABLE]
    if bad and obs.stop_reason == "timeout":
        # The server did answer, with frames the flow cannot read: say what they were.
        detail += ". " + ended_words("timeout", None, bad)
    return v.fail(
        detail, observed="error frame" if answered else obs.stop_reason or "incomplete", data=data
    )


def judge_auth_ws_authenticated(
    obs: AuthObservation, *, check_id: str = "auth.ws_authenticated"
) -> CheckResult:
    """``auth.ws_authenticated``: a valid token opens a working socket (subprotocol echoed)."""
    v = Verdict(check_id)
    a = obs.authenticated
    if a is None:
        return v.error(
            f"no valid token could be obtained: {obs.token_error}",
            threshold="accepted",
        )
    if a.accepted is not True:
        cause = (
            explain_status(a.status)
            if a.status
            else explain_close(a.close_code)
            if a.close_code
            else a.how
        )
        return v.fail(
            f"a valid token ({a.reason}) was not accepted: {a.how} - {cause}",
            observed=a.how,
            threshold="accepted",
        )
    if obs.mode == "subprotocol" and not a.subprotocol:
        return v.fail(
            "the socket opened but the server did not echo the "
            "jwt subprotocol: browsers drop such connections; the server must select the "
            "offered subprotocol",
            observed="no subprotocol",
            threshold="echoed",
        )
    return v.ok(
        f"authenticated socket works ({a.how})",
        observed="accepted",
        threshold="accepted",
    )


def judge_auth_rejects_invalid(
    obs: AuthObservation, *, check_id: str = "auth.rejects_invalid"
) -> CheckResult:
    """``auth.rejects_invalid``: missing, malformed, wrongly signed and expired tokens refused."""
    v = Verdict(check_id)
    if obs.mode == "none":
        return v.skip("auth.mode is none: no credentials are configured")
    rows = {
        n.case: (
            ("refused: " + n.how)
            if n.accepted is False
            else ("ACCEPTED: " + n.how)
            if n.accepted
            else ("not produced: " + n.reason)
            if not n.produced
            else ("undecided: " + n.how)
        )
        for n in obs.negatives
    }
    accepted = [n.case for n in obs.negatives if n.accepted is True]
    undecided = [n.case for n in obs.negatives if n.produced and n.accepted is None]
    missing = [n.case for n in obs.negatives if not n.produced]
    threshold = "all invalid credentials refused"
    if accepted:
        return v.fail(
            f"the server ACCEPTED invalid credentials: "
            f"{', '.join(accepted)}. Token verification is off or bypassed: anyone can "
            "connect as any user; roll back.",
            observed=rows,
            threshold=threshold,
        )
    if undecided:
        return v.fail(
            f"refusal not shown for {', '.join(undecided)}: "
            + "; ".join(rows[c] for c in undecided),
            observed=rows,
            threshold=threshold,
        )
    valid = obs.authenticated
    if [n for n in obs.negatives if n.accepted is False] and (valid is None or not valid.accepted):
        # A server that refuses everything (404, 403, down) also "refuses" bad tokens:
        # that proves nothing about token checks. No evidence, no pass.
        why = obs.token_error or (valid.how if valid else "") or "no valid connect was tried"
        return v.error(
            "the valid credential was not accepted either "
            f"({why}): refusing the invalid ones proves nothing about token checks. "
            "Make auth.ws_authenticated pass first (the upgrade, the token source).",
            observed=rows,
            threshold=threshold,
        )
    if not [n for n in obs.negatives if n.produced]:
        return v.error(
            "no invalid credential could be produced",
            observed=rows,
            threshold=threshold,
        )
    if missing:
        return v.warn(
            f"produced cases were refused; not testable with this "
            f"configuration: {', '.join(missing)}",
            observed=rows,
            threshold=threshold,
        )
    return v.ok(
        "every invalid credential was refused",
        observed=rows,
        threshold=threshold,
    )
