"""What every step shares: the catalog-driven :func:`step` decorator (title, ids, skips,
the error boundary), the dry-run report, auth, log reading and table helpers."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar, cast
from urllib.parse import urlencode

from ..checks import STEPS, Verdict, applicability, judge_log_entries, skip_reason, step_ids
from ..checks.causes import explain_status
from ..checks.monitor import log_entry_fails
from ..context import PhaseContext, StepReport
from ..exceptions import ApprovalRequired, CloudRunError
from ..observations import HandshakeObservation
from ..phases import phase_file
from ..redaction import redact
from ..results import CheckResult, Status

if TYPE_CHECKING:
    from ..cloudrun import CloudRun
    from ..tokens import ConnectAuth

__all__ = [
    "TABLE_MAX_ROWS",
    "applies",
    "cloudrun",
    "connect_auth",
    "dropped_words",
    "dry_run",
    "evidence_scope",
    "handshake_rows",
    "log_step",
    "main_revision",
    "phase_summary",
    "previous_phase_artifact",
    "report",
    "since",
    "skip_all",
    "step",
    "table",
    "token_errors",
    "with_query",
    "ws_urls",
]


log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Awaitable[StepReport] | StepReport])

# Most severe first: how a phase summary orders its results.
_SUMMARY_ORDER = (Status.ERROR, Status.FAIL, Status.WARN, Status.SKIP, Status.PASS)


def report(
    results: Sequence[CheckResult],
    *,
    table: Any = None,
    figure: Any = None,
    note: str = "",
    caption: str = "",
) -> StepReport:
    """A step's report; the :func:`step` decorator gives it the catalog's title.

    ``caption`` titles the figure for a person (the step's title when empty).
    """
    return StepReport("", list(results), table=table, figure=figure, note=note, caption=caption)


def _ids(name: str, ctx: PhaseContext) -> list[str]:
    """The ids a step records: its dynamic ids from the settings, then its catalog ids."""
    prefix = STEPS[name].dynamic
    specs = {"predeploy.": ctx.settings.predeploy, "tests.": ctx.settings.mission_critical}
    dynamic = [f"{prefix}{c.name}" for c in specs.get(prefix, ())]
    return dynamic + list(step_ids(name))


def _complete(
    results: Sequence[CheckResult], ids: Sequence[str], skips: Mapping[str, str], ctx: PhaseContext
) -> list[CheckResult]:
    """Every id with a skip reason is ``skip``: a declared reason always wins, a step's own
    ``skip`` (it may carry an observation) is kept, a missing one is added; catalog order."""
    out: list[CheckResult] = []
    for r in results:
        reason = skips.get(r.id)
        if reason is not None and (
            r.status is not Status.SKIP or applicability(r.id, ctx.settings) is not None
        ):
            r = Verdict(r.id, phase=r.phase).skip(reason)
        out.append(r)
    seen = {r.id for r in out}
    out += [Verdict(i, phase=ctx.phase).skip(skips[i]) for i in ids if i in skips and i not in seen]
    order = {i: n for n, i in enumerate(ids)}
    return sorted(out, key=lambda r: order.get(r.id, len(order)))


def step(fn: F) -> F:
    """Make ``fn`` a notebook step, described by its catalog entry (``checks.STEPS``).

    The decorator gives the report its title, skips every check whose configuration is
    absent or declared not applicable (without calling ``fn`` when none is left), turns
    an unexpected exception into ``error`` results for the step's ids (a step never
    crashes a notebook), spreads the elapsed time over results without a duration and
    records the report in the context. ``fn`` may be a coroutine function or a plain one.
    """
    info = STEPS[fn.__name__]

    def before(ctx: PhaseContext) -> tuple[list[str], dict[str, str], StepReport | None]:
        ids = _ids(info.name, ctx)
        skips = {i: r for i in ids if (r := skip_reason(i, ctx.settings)) is not None}
        if ids and len(skips) == len(ids):
            return ids, skips, report([Verdict(i, phase=ctx.phase).skip(skips[i]) for i in ids])
        return ids, skips, None

    def failed(ctx: PhaseContext, ids: list[str], exc: Exception) -> StepReport:
        log.exception("step %s failed", info.name)
        detail = f"the check could not run: {redact(f'{type(exc).__name__}: {exc}')}"
        wanted = ids or [info.dynamic.rstrip(".")]
        return report([Verdict(i, phase=ctx.phase).error(detail) for i in wanted])

    def after(
        ctx: PhaseContext, rep: StepReport, ids: list[str], skips: dict[str, str], start: float
    ) -> StepReport:
        rep.results = _complete(rep.results, ids, skips, ctx)
        rep.title = rep.title or info.title
        share = (time.perf_counter() - start) / max(len(rep.results), 1)
        rep.results = [r if r.duration_s else r.with_duration(share) for r in rep.results]
        return ctx.record(rep)

    if inspect.iscoroutinefunction(fn):

        @functools.wraps(fn)
        async def awrapper(ctx: PhaseContext, *args: Any, **kwargs: Any) -> StepReport:
            start = time.perf_counter()
            ids, skips, rep = before(ctx)
            if rep is None:
                try:
                    rep = await fn(ctx, *args, **kwargs)
                except ApprovalRequired:
                    raise
                except Exception as exc:  # the one boundary: a step never crashes a notebook
                    rep = failed(ctx, ids, exc)
            return after(ctx, rep, ids, skips, start)

        wrapper: Any = awrapper
    else:

        @functools.wraps(fn)
        def swrapper(ctx: PhaseContext, *args: Any, **kwargs: Any) -> StepReport:
            start = time.perf_counter()
            ids, skips, rep = before(ctx)
            if rep is None:
                try:
                    rep = cast(StepReport, fn(ctx, *args, **kwargs))
                except ApprovalRequired:
                    raise
                except Exception as exc:  # the one boundary: a step never crashes a notebook
                    rep = failed(ctx, ids, exc)
            return after(ctx, rep, ids, skips, start)

        wrapper = swrapper
    # The ids it records: a tuple, or (ids built from the settings) a function of the context.
    wrapper.check_ids = (lambda ctx: _ids(info.name, ctx)) if info.dynamic else step_ids(info.name)
    return wrapper  # type: ignore[no-any-return]


def applies(ctx: PhaseContext, check_id: str) -> bool:
    """True unless ``check_id`` is skipped for this environment (not configured or declared)."""
    return skip_reason(check_id, ctx.settings) is None


def skip_all(ctx: PhaseContext, ids: Sequence[str], reason: str) -> list[CheckResult]:
    """``skip`` results with ``reason`` for ``ids``."""
    return [Verdict(i, phase=ctx.phase).skip(reason) for i in ids]


def dry_run(
    ctx: PhaseContext, ids: Sequence[str], request: Any, gcloud: str = "", what: str = ""
) -> StepReport:
    """The report of a mutating step that was not approved: what would be sent, and skips.

    Args:
        request: a ``cloudrun_plans.RequestPlan`` or a sequence of them (shown once each: the
            JSON body beside the equivalent gcloud and curl commands), or a deploy
            command / legacy request mapping with its ``gcloud`` form.
        what: the action, for the note ("deploy", "move traffic").
    """
    plans = list(request) if isinstance(request, list | tuple) else [request]
    rows: list[dict[str, Any]] = []
    commands: list[str] = []
    for plan in plans:
        if hasattr(plan, "body_json"):
            rows.append(
                {
                    "step": plan.what,
                    "REST request": f"{plan.method} {plan.url}",
                    "body (JSON)": plan.body_json,
                    "gcloud": plan.gcloud,
                    "curl": plan.curl,
                }
            )
            commands.append(plan.gcloud)
        else:
            body = (
                json.dumps(plan, indent=2, default=str) if isinstance(plan, Mapping) else str(plan)
            )
            rows.append({"step": what, "REST request": "", "body (JSON)": body, "gcloud": gcloud})
            commands.append(gcloud or str(plan))
    detail = (
        f"dry-run: not approved; would run {' then '.join(c for c in commands if c)} (the REST "
        "request as JSON and with curl: in the step's table)"
    )
    return report(
        skip_all(ctx, ids, detail),
        table=table(rows),
        note=f"Dry run. Re-run with approve=True (CLI: --approve) to {what}.",
    )


# Rows a notebook table shows: every row is rendered into the executed notebook and its
# HTML, so a chatty service must not turn the audit record into hundreds of megabytes.
TABLE_MAX_ROWS = 100


def table(rows: list[dict[str, Any]], max_rows: int = TABLE_MAX_ROWS) -> Any:
    """A DataFrame of ``rows`` (pandas imported on first use); past ``max_rows`` the rest
    is summarised in one last row that says how many were not shown."""
    import pandas as pd

    if len(rows) > max_rows:
        first = next(iter(rows[0]), "note")
        more = len(rows) - max_rows
        rows = [*rows[:max_rows], {first: f"... {more} more row(s) not shown"}]
    return pd.DataFrame(rows)


def dropped_words(n: int) -> str:
    """What a table says about frames received but not kept."""
    from ..flow_runner import MAX_FRAMES_KEPT

    return (
        f"{n} more frame(s) received and judged but not recorded (a session keeps its first "
        f"{MAX_FRAMES_KEPT} frames and every matching, error or foreign one)"
    )


def cloudrun(ctx: PhaseContext) -> CloudRun:
    """The Cloud Run adapter for this environment."""
    from ..cloudrun import cloudrun_client

    return cloudrun_client(ctx.settings)


def previous_phase_artifact(ctx: PhaseContext, phase: int, key: str) -> Any:
    """An artifact another phase of the same run recorded (``None`` when absent)."""
    if ctx.run_dir is None:
        return None
    path = phase_file(ctx.run_dir, phase)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("artifacts", {}).get(key)
    except (OSError, ValueError):
        return None


def main_revision(serving: Mapping[str, int]) -> str | None:
    """The revision with the largest share of traffic (None when nothing serves)."""
    if not serving:
        return None
    return max(serving.items(), key=lambda kv: kv[1])[0]


async def connect_auth(ctx: PhaseContext, user: str | None = None) -> tuple[ConnectAuth, str]:
    """Auth to connect with as ``user`` (token obtained and registered as secret), and an error."""
    from ..tokens import ConnectAuth, connect_auth, obtain_token

    auth = ctx.settings.auth
    if not auth.enabled:
        return ConnectAuth(), ""
    tok = await obtain_token(auth, user, timeout_s=ctx.settings.timeouts.connect_s)
    if tok.error:
        return ConnectAuth(), tok.error
    return connect_auth(auth, tok.token), ""


def token_errors(ctx: PhaseContext, ids: Sequence[str], err: str) -> list[CheckResult]:
    """``error`` results for ``ids``: no token could be obtained to connect with."""
    detail = (
        f"could not obtain a token to connect with: {err}. Check [auth] (token_env, "
        "jwt_secret_env or token_endpoint) and the auth service."
    )
    return [Verdict(i, phase=ctx.phase).error(detail) for i in ids]


def handshake_rows(probes: Sequence[HandshakeObservation], base: str) -> list[dict[str, Any]]:
    """One table row per upgrade attempt: path, status, ok, likely cause, latency."""
    rows = []
    for p in probes:
        ok = p.status == 101 and bool(p.accept_valid)
        path = p.url[len(base) :] if p.url.startswith(base) else p.url
        cause = (
            "" if ok else (explain_status(p.status) if p.status else f"{p.error}: {p.error_detail}")
        )
        rows.append(
            {
                "path": path or "/",
                "status": p.status,
                "ok": ok,
                "cause": cause,
                "latency_ms": round(p.latency_s * 1000, 1),
            }
        )
    return rows


def ws_urls(ctx: PhaseContext) -> list[str]:
    """The WebSocket URL of every configured path."""
    t = ctx.settings.target
    return [t.ws(p) for p in t.ws_paths]


def since(ctx: PhaseContext, iso: str | None) -> datetime:
    """``iso`` as a time, else the logging lookback before now."""
    if iso:
        try:
            return datetime.fromisoformat(iso)
        except ValueError:
            pass
    return datetime.now(UTC) - timedelta(seconds=ctx.settings.logging.lookback_s)


async def log_step(
    ctx: PhaseContext,
    check_id: str,
    *,
    kind: str,
    what: str,
    since: datetime | None = None,
    revision: str | None = None,
    scope: Any = None,
) -> StepReport:
    """Read the service's logs with the ``kind`` filter (``errors`` or ``routing``) and
    judge them as ``check_id``, once this run's own requests are seen in them.

    ``scope`` (a ``logs.LogScope``) names the revision under test and the start of
    the evidence; without it, ``since`` and ``revision`` do. The check sends one
    request of its own first (``logs.send_fence``) and passes only when the request log
    lists it; it waits at most ``[logging] ingestion_wait_s``.
    """
    from ..logs import gather_evidence, gcloud_logging_command, logging_filter, send_fence

    ws_paths = ctx.settings.target.ws_paths
    where = {"scope": scope} if scope is not None else {"since": since, "revision": revision}
    flt = logging_filter(ctx.settings, kind=kind, ws_paths=ws_paths, **where)
    gcloud = gcloud_logging_command(ctx.settings, flt)
    under_test = scope.revision if scope is not None else revision
    fence = await send_fence(ctx.settings, under_test) if under_test else None
    try:
        ev = await gather_evidence(
            ctx.settings,
            kind=kind,
            ws_paths=ws_paths,
            fence=fence,
            fails=lambda e: log_entry_fails(e, ws_paths),
            **where,
        )
    except CloudRunError as exc:
        return report(
            [Verdict(check_id, phase=ctx.phase).error(f"could not read logs: {exc}")],
            note=f"equivalent: {gcloud}",
        )
    if scope is not None:
        what = f"{what} ({scope.describe()})"
    result = judge_log_entries(
        ev.entries,
        check_id=check_id,
        what=what,
        ws_paths=ws_paths,
        own_requests=len(ev.own),
        fenced=ev.fenced,
        waited_s=ev.waited_s,
    )
    rows = [
        {
            "timestamp": e.timestamp.isoformat(timespec="seconds"),
            "severity": e.severity,
            "revision": e.revision,
            "status": e.status,
            "path": e.path,
            "text": e.text[:160],
        }
        for e in ev.entries[:30]
    ]
    return report([result], table=table(rows) if rows else None, note=f"equivalent: {gcloud}")


async def evidence_scope(ctx: PhaseContext, check_id: str, *, after_rollback: bool = False) -> Any:
    """The log entries that are evidence for ``check_id``: a ``logs.LogScope``, or an
    ``error`` result when no revision under test can be named.

    The revision this run deployed since its deploy began (phase 2's record); with
    ``after_rollback``, the rollback target since traffic moved back when phase 6 did
    so first; without a record (interactively, no ``run_dir``), the revision serving
    all traffic since this phase opened. Phase 1's probes of the old revision and
    older errors are never evidence against the revision under test.
    """
    from ..logs import LogScope, scope_for

    if after_rollback and previous_phase_artifact(ctx, 6, "rollback_moved"):
        target = previous_phase_artifact(ctx, 6, "rollback_target")
        at = previous_phase_artifact(ctx, 6, "rolled_back_at")
        if target and at:
            return LogScope(
                str(target), datetime.fromisoformat(at), f"since the rollback to {target}"
            )
    deployed = started = None
    if previous_phase_artifact(ctx, 2, "dry_run") is False:
        deployed = previous_phase_artifact(ctx, 2, "deployed_revision") or None
        started = previous_phase_artifact(ctx, 2, "deploy_started_at") or None
    try:
        return await scope_for(
            ctx.settings,
            deployed_revision=deployed,
            deploy_started_at=started if deployed else None,
            phase_opened_at=ctx.started_at,
        )
    except CloudRunError as exc:
        return Verdict(check_id, phase=ctx.phase).error(f"cannot name the logs to read: {exc}")


def with_query(url: str, query: Sequence[tuple[str, str]]) -> str:
    """``url`` with ``query`` appended."""
    if not query:
        return url
    return url + ("&" if "?" in url else "?") + urlencode(list(query))


def phase_summary(ctx: PhaseContext) -> StepReport:
    """The phase's results so far, failed checks first (persisted as well)."""
    ordered = sorted(ctx.results, key=lambda r: (_SUMMARY_ORDER.index(r.status), r.id))
    ctx.persist()
    failed = [r for r in ordered if not r.ok]
    note = (
        (f"{len(failed)} check(s) failed: " + ", ".join(r.id for r in failed))
        if failed
        else f"all {len(ordered)} check(s) passed, warned or were skipped"
    )
    return StepReport(f"Phase {ctx.phase} summary", ordered, note=note)
