"""Cloud Run service checks: ``status.*``, ``cloudrun.ws_preflight``, ``deploy.*`` (but the
logs) and the rollback's ``rollback.target_identified``, ``rollback.target_verified`` and
``rollback.traffic_moved``; plus the rollback-target rule of SPEC section 9
(:func:`choose_rollback_target`) and the verify-then-shift deploy's judges.

They take the adapter's value objects (read through the views of
:mod:`runbook_lib.observations`) and return results; the steps only observe and act.

The rollback-target rule, in order:

1. ``served-before-deploy``: the revision that served before this run's deploy
   (phase 2 records the split it found);
2. ``passed-in-chain``: else the newest revision that an earlier run in the
   manifest chain judged ``pass``;
3. ``explicit``: else the revision the operator named (``--param rollback_to=REV``).

Whatever the rule, a target is never a revision this run or a chained run saw
failing, never the revision serving now, and always an existing, ready revision.
When a rule finds several equally good revisions the choice is refused with the
candidates listed: guessing is how a rollback re-creates the incident. When the
deploy's revision no longer serves and the split from before the deploy is back
(a verify-then-shift gate returned it), the rule says so (``already-serving``):
there is nothing to move.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from ..observations import CommandObservation, OperationView, RevisionView, ServiceView
from ..results import CheckResult, Status
from .causes import Verdict

if TYPE_CHECKING:
    from ..settings import Thresholds

__all__ = [
    "RULE_ALREADY_SERVING",
    "RULE_CHAIN_PASS",
    "RULE_EXPLICIT",
    "RULE_REFUSED",
    "RULE_SERVED_BEFORE",
    "Choice",
    "RevisionFacts",
    "ShiftRecord",
    "choose_rollback_target",
    "gate_outcome",
    "judge_deploy",
    "judge_latest_serving",
    "judge_rollback_target",
    "judge_service_status",
    "judge_target_verified",
    "judge_traffic_moved",
    "judge_ws_preflight",
]


def _cut(text: str, limit: int = 400) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _name(svc: ServiceView) -> str:
    """The service's name for a pasteable command (``SERVICE`` when the view has none)."""
    return str(getattr(svc, "name", "") or "SERVICE")


# Below this a long-lived socket is cut by Cloud Run's request timeout.
_WS_TIMEOUT_FLOOR_S = 3600.0


def judge_service_status(svc: ServiceView, revisions: Sequence[RevisionView]) -> list[CheckResult]:
    """``status.revision_identified``, ``status.traffic_on_latest``, ``status.revisions_listed``.

    Traffic is judged from ``trafficStatuses`` (what serves), not only from
    ``latestReadyRevision``: a pinned split makes a new revision serve 0 %.
    """
    serving: dict[str, int] = dict(svc.serving_revisions)
    results: list[CheckResult] = []
    if serving:
        main = max(serving, key=lambda k: serving[k])
        results.append(
            Verdict("status.revision_identified").ok(
                observed=serving,
                detail="serving revision(s): " + ", ".join(f"{k} {v}%" for k, v in serving.items()),
            )
        )
    else:
        main = None
        results.append(
            Verdict("status.revision_identified").fail(
                observed=serving,
                detail="no revision receives traffic: the service cannot answer. Check the service's "
                "conditions and deploy a working revision.",
            )
        )
    latest = svc.latest_ready_revision
    latest_share = serving.get(latest, 0) if latest else 0
    if latest and latest_share == 100:
        results.append(
            Verdict("status.traffic_on_latest").ok(
                observed={latest: 100},
                threshold=100,
                detail=f"the latest ready revision {latest} serves 100 % of traffic",
            )
        )
    else:
        pinned = any(t.type == "REVISION" for t in svc.traffic)
        why = (
            (
                " Traffic is pinned to named revisions, so new deploys serve 0 % until traffic is "
                f"moved: gcloud run services update-traffic {_name(svc)} --to-latest."
            )
            if pinned
            else ""
        )
        results.append(
            Verdict("status.traffic_on_latest").fail(
                observed=serving,
                threshold=100,
                detail=f"the latest ready revision {latest or '(none)'} serves {latest_share} %; "
                f"{main or 'no revision'} serves the most.{why}",
            )
        )
    if revisions:
        results.append(
            Verdict("status.revisions_listed").ok(
                observed=len(revisions),
                detail=f"{len(revisions)} revision(s); newest {revisions[0].name}"
                + ("" if revisions[0].ready else f" is NOT ready: {revisions[0].ready_message}"),
            )
        )
    else:
        results.append(
            Verdict("status.revisions_listed").fail(
                observed=0,
                detail="the service lists no revisions: check the service name and region",
            )
        )
    return results


def judge_ws_preflight(svc: ServiceView, thresholds: Thresholds) -> CheckResult:
    """``cloudrun.ws_preflight``: service settings that make WebSockets fail (warnings)."""
    warnings: list[str] = []
    observed = {
        "timeout_s": svc.timeout_s,
        "use_http2": svc.use_http2,
        "session_affinity": svc.session_affinity,
        "min_instances": svc.min_instances,
        "max_instances": svc.max_instances,
        "concurrency": svc.concurrency,
        "ingress": svc.ingress,
    }
    hold = float(thresholds.hold_s)
    if svc.timeout_s is not None and svc.timeout_s < max(hold, 1.0):
        warnings.append(
            f"request timeout {svc.timeout_s:.0f}s is shorter than the hold time {hold:.0f}s: "
            "sockets will be cut (clients see 1006). Raise it: gcloud run services update "
            f"{_name(svc)} --timeout=3600"
        )
    elif svc.timeout_s is not None and svc.timeout_s < _WS_TIMEOUT_FLOOR_S:
        warnings.append(
            f"request timeout {svc.timeout_s:.0f}s caps every WebSocket's lifetime; clients must "
            "reconnect at least that often (max 3600s)"
        )
    if svc.use_http2:
        warnings.append(
            "HTTP/2 end-to-end is on: WebSocket upgrades need HTTP/1.1 to the container and "
            f"fail with 502. Turn it off: gcloud run services update {_name(svc)} --no-use-http2"
        )
    if not svc.session_affinity:
        warnings.append(
            "session affinity is off: reconnecting clients may land on another instance "
            "(state kept per instance is lost). Consider --session-affinity"
        )
    if not svc.min_instances:
        warnings.append(
            "min instances is 0: the first connection after idle pays a cold start "
            "(--min-instances=1 keeps one warm)"
        )
    if svc.concurrency is not None and svc.concurrency < 10:
        warnings.append(
            f"max concurrency {svc.concurrency}: each open socket holds one request slot, so "
            "instances fill up fast (429s). Raise --concurrency"
        )
    if svc.max_instances is not None and svc.concurrency is not None:
        capacity = svc.max_instances * svc.concurrency
        want = int(thresholds.load_connections)
        if capacity < want:
            warnings.append(
                f"capacity {capacity} sockets (max instances x concurrency) is below the load "
                f"test's {want} connections"
            )
    if warnings:
        return Verdict("cloudrun.ws_preflight").warn(
            observed=observed,
            threshold="WebSocket-friendly settings",
            detail="; ".join(warnings),
            data={"warnings": warnings},
        )
    return Verdict("cloudrun.ws_preflight").ok(
        observed=observed,
        threshold="WebSocket-friendly settings",
        detail="timeout, HTTP/2, affinity, scaling and concurrency suit WebSockets",
    )


def judge_latest_serving(
    svc: ServiceView,
    deployed: str | None,
    previous: str | None,
    *,
    shift: ShiftRecord | None = None,
) -> CheckResult:
    """``deploy.latest_serving``: the deployed revision is the latest ready one and serves 100 %.

    With ``shift`` (a ``verify-then-shift`` rollout): every gate passed and the new revision
    serves 100 %, or the rollout stopped and the split from before the deploy is back.
    """
    if shift is not None:
        return _shift_result(shift, _name(svc))
    serving = dict(svc.serving_revisions)
    if not deployed:
        return Verdict("deploy.latest_serving").fail(
            observed=serving,
            threshold=100,
            detail=f"no new revision was created; still serving {previous}",
        )
    share = serving.get(deployed, 0)
    if svc.latest_ready_revision == deployed and share == 100:
        return Verdict("deploy.latest_serving").ok(
            observed={deployed: 100},
            threshold=100,
            detail=f"{deployed} is the latest ready revision and serves 100 % of traffic",
        )
    if svc.latest_ready_revision != deployed:
        why = (
            f"{deployed} is not ready (latest ready is {svc.latest_ready_revision}); the "
            f"service keeps serving {serving or previous}"
        )
    else:
        why = (
            f"{deployed} is ready but serves {share} %: traffic is pinned ({serving}). Move it: "
            f"gcloud run services update-traffic {_name(svc)} --to-latest"
        )
    return Verdict("deploy.latest_serving").fail(observed=serving, threshold=100, detail=why)


def judge_deploy(
    done: OperationView | CommandObservation, after: ServiceView, previous: str | None
) -> list[CheckResult]:
    """``deploy.executed`` and ``deploy.operation_succeeded``.

    Args:
        done: the image deploy's operation, or the ``deploy_command``'s run.
        after: the service read after the deploy.
        previous: the revision that served before.
    """
    if isinstance(done, CommandObservation):
        return _command_results(done, after, previous)
    return _operation_results(done, previous)


def _operation_results(outcome: OperationView, previous: str | None) -> list[CheckResult]:
    results = [
        Verdict("deploy.executed").ok(
            f"deploy request accepted: operation {outcome.name}", observed=outcome.name
        )
    ]
    done = Verdict("deploy.operation_succeeded")
    if outcome.succeeded:
        results.append(
            done.ok(
                f"operation finished in {outcome.duration_s:.1f}s; "
                f"revision {outcome.revision} is ready",
                observed=outcome.revision,
                data={"duration_s": outcome.duration_s},
            )
        )
    else:
        results.append(
            done.fail(
                f"the deploy operation failed: {outcome.error or 'no detail'}. The new revision "
                f"did not become ready; the service still serves {previous}. Read the revision's "
                "logs (deploy.logs_clean) for the startup error.",
                observed=outcome.error or "failed",
            )
        )
    return results


def _command_results(
    run: CommandObservation, after: ServiceView, previous: str | None
) -> list[CheckResult]:
    ok = run.exit_code == 0 and not run.timed_out
    deployed = after.latest_created_revision
    ready = after.latest_ready_revision == deployed and deployed != previous
    executed = Verdict("deploy.executed").result(
        Status.PASS if ok else Status.FAIL,
        f"deploy command exited {run.exit_code}" + (" (timed out)" if run.timed_out else ""),
        observed=run.exit_code,
    )
    succeeded = Verdict("deploy.operation_succeeded").result(
        Status.PASS if ok and ready else Status.FAIL,
        f"latest created revision {deployed} "
        + ("is ready" if ready else "is not ready (or no new revision)"),
        observed=deployed,
    )
    return [executed, succeeded]


def judge_traffic_moved(
    target: str | None,
    outcome: OperationView | None,
    serving: Mapping[str, int],
    gcloud: str = "",
    *,
    why_not: str = "",
) -> CheckResult:
    """``rollback.traffic_moved``: the target serves 100 % after the traffic update.

    Args:
        target: the rollback target (None when none was identified).
        outcome: the traffic update's operation (None when none was sent).
        serving: revision -> percent read after the update.
        gcloud: the equivalent command, named when the move failed.
        why_not: with a target but no operation, why no update was sent (refused).
    """
    v = Verdict("rollback.traffic_moved")
    if target and outcome is None and why_not:
        return v.fail(
            f"traffic was not moved to {target}: {why_not}; serving now {dict(serving)}",
            observed=dict(serving),
        )
    if not target or outcome is None:
        return v.fail("no rollback target was identified (see the step above)")
    if outcome.succeeded and serving.get(target) == 100:
        return v.ok(f"{target} now receives 100 % of traffic", observed=dict(serving))
    return v.fail(
        f"traffic did not move to {target}: operation "
        f"{'succeeded' if outcome.succeeded else 'failed: ' + outcome.error}; "
        f"serving now {dict(serving)}. Run: {gcloud}",
        observed=dict(serving),
    )


def judge_rollback_target(choice: Choice, current: str | None) -> CheckResult:
    """``rollback.target_identified``: a target chosen by SPEC 9's evidence rules, or a refusal.

    Args:
        choice: :func:`choose_rollback_target`'s answer.
        current: the revision serving the most traffic now.
    """
    v = Verdict("rollback.target_identified", threshold="a revision chosen by evidence (SPEC 9)")
    data = {
        "rule": choice.rule,
        "candidates": list(choice.candidates),
        "excluded": dict(choice.excluded),
        "current": current,
    }
    ruled_out = "; ".join(f"{rev}: {why}" for rev, why in choice.excluded)
    also = f" Ruled out: {ruled_out}." if ruled_out else ""
    if choice.refused:
        return v.fail(
            f"refused: {choice.reason}. Traffic stays on {current or 'the revision serving now'}."
            f"{also}",
            data=data,
        )
    if choice.rule == RULE_ALREADY_SERVING:
        return v.ok(f"rule {choice.rule}: {choice.reason}", observed=choice.revision, data=data)
    return v.ok(
        f"roll back from {current} to {choice.revision} (rule {choice.rule}: {choice.reason})."
        f"{also}",
        observed=choice.revision,
        data=data,
    )


def judge_target_verified(
    parts: Mapping[str, CheckResult],
    *,
    check_id: str = "rollback.target_verified",
    revision: str,
    url: str,
    refusal: str = "",
    where: str = "its tag URL",
) -> CheckResult:
    """``rollback.target_verified`` / ``deploy.tag_verified``: a revision proved itself on its
    own tag URL (health, WebSocket upgrade, round trip) before any traffic moves to it.

    Args:
        parts: what was probed (``"health"``, ``"upgrade"``, ``"round trip"``) -> the judged
            part (from the HTTP and WebSocket judges, with ``check_id``).
        check_id: which check this is.
        revision: the revision probed.
        url: the URL it was probed on (its tag URL).
        refusal: what the refusal means and what to do next (appended when it fails).
        where: what ``url`` is, in words (``"the service URL"`` when it already serves).
    """
    v = Verdict(check_id, threshold="health 200, WebSocket 101 with a valid accept, pong")
    observed = {label: str(r.status) for label, r in parts.items()}
    if not parts:
        return v.fail(
            f"nothing was probed on {revision}'s URL {url or '(none)'}: no evidence, no "
            f"traffic. {refusal}".strip(),
            observed=observed,
        )
    bad = {label: r for label, r in parts.items() if not r.ok}
    if bad:
        words = []
        for label, r in bad.items():
            if label == "round trip" and "upgrade" in bad:
                words.append("round trip: no socket (the upgrade was refused)")
            else:
                words.append(f"{label}: {_cut(r.detail)}")
        why = "; ".join(words)
        return v.fail(
            f"{revision} failed on {where} {url}: {why}. {refusal}".strip(),
            observed=observed,
            data={"url": url, "revision": revision},
        )
    return v.ok(
        f"{revision} answers on {where} {url}: {', '.join(parts)} all passed",
        observed=observed,
        data={"url": url, "revision": revision},
    )


def gate_outcome(parts: Mapping[str, CheckResult]) -> tuple[bool, tuple[str, ...], str]:
    """One verify-then-shift gate: (passed, the labels that failed, their details in words).

    No part probed is no evidence: the gate fails.
    """
    if not parts:
        return False, ("no probe",), "no gate probe ran"
    bad = {label: r for label, r in parts.items() if not r.ok}
    words = "; ".join(f"{label}: {r.detail}" for label, r in bad.items())
    return not bad, tuple(bad), words


@dataclass(frozen=True, slots=True)
class ShiftRecord:
    """What a verify-then-shift rollout did, for :func:`judge_shift`.

    Attributes:
        new_revision: the deployed revision ('' when the deploy made none).
        previous: the split before the deploy (revision -> percent).
        verified: the tag-URL verification passed.
        gates: ``(percent, passed, words)`` per traffic step taken, in order.
        restored: ``None`` when no restore was needed, else whether it succeeded.
        final: the split read at the end.
        error: a traffic update that failed ('' when none did).
    """

    new_revision: str
    previous: Mapping[str, int]
    verified: bool
    gates: tuple[tuple[int, bool, str], ...] = ()
    restored: bool | None = None
    final: Mapping[str, int] = dataclass_field(default_factory=dict)
    error: str = ""

    @property
    def max_share(self) -> int:
        """The largest share of traffic the new revision was given."""
        return max((pct for pct, _, _ in self.gates), default=0)


def _shift_result(rec: ShiftRecord, service: str) -> CheckResult:
    """``deploy.latest_serving`` for ``verify-then-shift``: every gate passed and the new
    revision serves 100 %, or the rollout stopped and the previous split is back."""
    v = Verdict("deploy.latest_serving", threshold=100)
    final = dict(rec.final)
    new = rec.new_revision
    data = {
        "max_share": rec.max_share,
        "gates": [{"percent": p, "passed": ok, "detail": w} for p, ok, w in rec.gates],
        "previous": dict(rec.previous),
    }
    before = ", ".join(f"{r} {p} %" for r, p in rec.previous.items()) or "the previous split"
    back = "to-revisions=" + ",".join(f"{r}={p}" for r, p in rec.previous.items())
    if not new:
        return v.fail(f"no new revision was created; {before} keeps serving", observed=final)
    if not rec.verified:
        return v.fail(
            f"{new} was refused on its tag URL (deploy.tag_verified): no traffic moved; "
            f"{before} keeps serving",
            observed=final,
            data=data,
        )
    failed = next(((p, w) for p, ok, w in rec.gates if not ok), None)
    if rec.error or failed:
        cause = (
            f"the gate at {failed[0]} % failed ({failed[1]})"
            if failed
            else f"a traffic step failed ({rec.error})"
        )
        if rec.restored:
            outcome = f"traffic returned to the split before the deploy ({before})"
        else:
            outcome = (
                f"returning traffic to {before} FAILED: serving now {final}. Restore it by "
                f"hand: gcloud run services update-traffic {service} --{back}"
            )
        return v.fail(
            f"{cause}: {outcome}; {new} served at most {rec.max_share} %",
            observed=final,
            data=data,
        )
    if final.get(new) == 100 and rec.gates and all(ok for _, ok, _ in rec.gates):
        steps = ", ".join(f"{p} %" for p, _, _ in rec.gates)
        return v.ok(
            f"{new} serves 100 %: verified on its tag URL, then every gate passed ({steps})",
            observed={new: 100},
            data=data,
        )
    return v.fail(
        f"the rollout ended with {new} at {final.get(new, 0)} % (serving {final}); expected 100 %",
        observed=final,
        data=data,
    )


# ------------------------------------------------------------------ rollback target (SPEC 9)

RULE_SERVED_BEFORE = "served-before-deploy"
RULE_CHAIN_PASS = "passed-in-chain"
RULE_EXPLICIT = "explicit"
RULE_REFUSED = "refused"
RULE_ALREADY_SERVING = "already-serving"


class RevisionFacts(Protocol):
    """What the rule needs of a revision (``cloudrun.RevisionInfo`` has it)."""

    @property
    def name(self) -> str: ...

    @property
    def create_time(self) -> datetime | None: ...

    @property
    def ready(self) -> bool: ...


@dataclass(frozen=True, slots=True)
class Choice:
    """The rollback target, or a refusal.

    Attributes:
        revision: the target, or ``None`` when refused.
        rule: which rule chose it (``RULE_*``), ``"refused"`` otherwise.
        candidates: with a refusal, the revisions a person could pick from; with a
            choice, the revisions the rule considered (the chosen one first).
        reason: one sentence a person can act on.
        excluded: (revision, why) for every revision ruled out on the way.
    """

    revision: str | None
    rule: str
    candidates: tuple[str, ...]
    reason: str
    excluded: tuple[tuple[str, str], ...] = ()

    @property
    def refused(self) -> bool:
        """True when no target was chosen."""
        return self.revision is None


def _serving_now(serving: Mapping[str, int] | str | None) -> set[str]:
    if not serving:
        return set()
    if isinstance(serving, str):
        return {serving}
    return {rev for rev, pct in serving.items() if pct > 0}


def _main(serving: Mapping[str, int] | str | None) -> str | None:
    if not serving:
        return None
    if isinstance(serving, str):
        return serving
    return max(sorted(serving), key=lambda r: serving[r])


def choose_rollback_target(
    serving: Mapping[str, int] | str | None,
    revisions: Sequence[RevisionFacts],
    previous_serving: Mapping[str, int] | str | None = None,
    passed_in_chain: Collection[str] = (),
    failed_seen: Collection[str] = (),
    explicit: str | None = None,
    deployed: str | None = None,
) -> Choice:
    """Choose the revision to roll back to, by SPEC 9's rules (see the module docstring).

    Args:
        serving: the split now (revision -> percent), or the one serving revision.
        revisions: every revision of the service (name, create_time, ready).
        previous_serving: the split (or revision) before this run's deploy, if one ran.
        passed_in_chain: revisions that chained earlier runs judged ``pass``.
        failed_seen: revisions this run or a chained run saw failing.
        explicit: the operator's ``rollback_to``, if given.
        deployed: the revision this run's deploy created, if one ran: when it serves
            nothing and the split from before the deploy serves again, the choice is
            that split's main revision with rule ``already-serving`` (nothing to move).

    Returns:
        The :class:`Choice`; ``revision is None`` when refused.
    """
    by_name = {r.name: r for r in revisions}
    now = _serving_now(serving)
    failed = set(failed_seen)
    excluded: dict[str, str] = {}

    def why_not(rev: str) -> str:
        """Empty when ``rev`` may receive traffic, else the reason it may not."""
        if rev in now:
            return "it is the revision serving now"
        if rev in failed:
            return "it was seen failing"
        info = by_name.get(rev)
        if info is None:
            return "no such revision"
        if not info.ready:
            return "it is not ready"
        return ""

    def usable(revs: Sequence[str]) -> list[str]:
        out = []
        for rev in revs:
            if why := why_not(rev):
                excluded.setdefault(rev, why)
            else:
                out.append(rev)
        return out

    def done(revision: str | None, rule: str, candidates: Sequence[str], reason: str) -> Choice:
        return Choice(revision, rule, tuple(candidates), reason, tuple(excluded.items()))

    notes: list[str] = []

    # 0. The deploy's revision no longer serves and the split from before it is back.
    before = sorted(_serving_now(previous_serving))
    if deployed and before and deployed not in now and now and now <= set(before):
        main = _main(serving) or before[0]
        sick = sorted(now & failed)
        warning = (
            f"; but {', '.join(sick)} was itself seen failing: the state before the deploy "
            "is back, not a healthy one; fix forward"
            if sick
            else ""
        )
        return done(
            main,
            RULE_ALREADY_SERVING,
            sorted(now),
            f"{deployed} (this run's deploy) serves 0 % and {', '.join(sorted(now))}, which "
            f"served before the deploy, serve(s) again: nothing to move{warning}",
        )

    # 1. The revision that served before this run's deploy.
    if before:
        ok = usable(before)
        if len(ok) == 1:
            extra = (
                f"; rollback_to={explicit} not used: this rule comes first"
                if explicit and explicit != ok[0]
                else ""
            )
            return done(
                ok[0],
                RULE_SERVED_BEFORE,
                ok,
                f"{ok[0]} served before this run's deploy{extra}",
            )
        if len(ok) > 1:
            return done(
                None,
                RULE_REFUSED,
                ok,
                f"several revisions served before this run's deploy ({', '.join(ok)}): "
                "name one with --param rollback_to=REV",
            )
        notes.append(
            "the revision(s) that served before the deploy cannot take traffic ("
            + "; ".join(f"{r}: {excluded[r]}" for r in before)
            + ")"
        )

    # 2. The newest revision a chained earlier run judged pass.
    passed = usable(sorted(set(passed_in_chain)))
    if passed:
        times = {r: t for r in passed if (t := by_name[r].create_time) is not None}
        if len(passed) == 1:
            return done(
                passed[0],
                RULE_CHAIN_PASS,
                passed,
                f"{passed[0]} is the newest revision an earlier run in the chain judged pass",
            )
        if len(times) == len(passed):
            ordered = sorted(passed, key=lambda r: times[r], reverse=True)
            if times[ordered[0]] != times[ordered[1]]:
                return done(
                    ordered[0],
                    RULE_CHAIN_PASS,
                    ordered,
                    f"{ordered[0]} is the newest revision an earlier run in the chain judged pass",
                )
        return done(
            None,
            RULE_REFUSED,
            passed,
            "earlier runs judged several revisions pass and their order is unknown "
            f"({', '.join(passed)}): name one with --param rollback_to=REV",
        )
    if passed_in_chain:
        notes.append("no revision an earlier run judged pass can take traffic")

    # 3. The operator's explicit choice.
    if explicit:
        if why := why_not(explicit):
            excluded.setdefault(explicit, why)
            return done(
                None,
                RULE_REFUSED,
                _fallback(revisions, why_not),
                f"rollback_to={explicit} refused: {why}",
            )
        return done(explicit, RULE_EXPLICIT, [explicit], f"{explicit} was named by rollback_to")

    candidates = _fallback(revisions, why_not)
    context = f" ({'; '.join(notes)})" if notes else ""
    if candidates:
        hint = f"candidates: {', '.join(candidates)}; name one with --param rollback_to=REV"
    else:
        hint = "no other revision is ready and unblemished: fix forward instead"
    return done(
        None,
        RULE_REFUSED,
        candidates,
        "no evidence names a rollback target: no revision served before a deploy in "
        f"this run and no earlier run judged one pass{context}; {hint}",
    )


def _fallback(revisions: Sequence[RevisionFacts], why_not: Callable[[str], str]) -> list[str]:
    """Ready revisions that may take traffic, newest first (for a person to pick from)."""
    ordered = sorted(
        revisions,
        key=lambda r: r.create_time.timestamp() if r.create_time else 0.0,
        reverse=True,
    )
    return [r.name for r in ordered if not why_not(r.name)]
