"""Shared machinery of the step functions: the error boundary, results, auth, logs."""

from __future__ import annotations

import functools
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from ..context import PhaseContext, StepReport
from ..exceptions import ApprovalRequired, CloudRunError
from ..redaction import redact
from ..results import CheckResult, Status

__all__ = ["phase_summary"]


log = logging.getLogger(__name__)


StepFn = Callable[..., Awaitable[StepReport]]


def _step(title: str, ids: Sequence[str] | Callable[[PhaseContext], Sequence[str]]):
    """Decorate a step: time it, turn unexpected exceptions into ``error`` results, record."""

    def failed(ctx: PhaseContext, fn: Callable[..., Any], exc: Exception) -> StepReport:
        log.exception("step %s failed", fn.__name__)
        wanted = ids(ctx) if callable(ids) else ids
        reason = redact(f"{type(exc).__name__}: {exc}")
        return StepReport(
            title,
            [
                CheckResult(i, ctx.phase, Status.ERROR, detail=f"the check could not run: {reason}")
                for i in wanted
            ],
        )

    def finish(ctx: PhaseContext, report: StepReport, start: float) -> StepReport:
        elapsed = time.perf_counter() - start
        share = elapsed / max(len(report.results), 1)
        report.results = [r if r.duration_s else r.with_duration(share) for r in report.results]
        return ctx.record(report)

    def deco(fn: Callable[..., Any]) -> Callable[..., Any]:
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(ctx: PhaseContext, *args: Any, **kwargs: Any) -> StepReport:
                start = time.perf_counter()
                try:
                    report = await fn(ctx, *args, **kwargs)
                except ApprovalRequired:
                    raise
                except Exception as exc:  # the one boundary: a step never crashes a notebook
                    report = failed(ctx, fn, exc)
                return finish(ctx, report, start)

            awrapper.check_ids = ids  # type: ignore[attr-defined]
            return awrapper

        @functools.wraps(fn)
        def wrapper(ctx: PhaseContext, *args: Any, **kwargs: Any) -> StepReport:
            start = time.perf_counter()
            try:
                report = fn(ctx, *args, **kwargs)
            except ApprovalRequired:
                raise
            except Exception as exc:  # the one boundary: a step never crashes a notebook
                report = failed(ctx, fn, exc)
            return finish(ctx, report, start)

        wrapper.check_ids = ids  # type: ignore[attr-defined]
        return wrapper

    return deco


def _result(
    ctx: PhaseContext,
    check_id: str,
    status: Status | str,
    detail: str,
    observed: Any = None,
    threshold: Any = None,
    **data: Any,
) -> CheckResult:
    return CheckResult(check_id, ctx.phase, Status(status), observed, threshold, detail, data=data)


def _skip_all(ctx: PhaseContext, ids: Sequence[str], reason: str) -> list[CheckResult]:
    return [_result(ctx, i, Status.SKIP, reason) for i in ids]


def _table(rows: list[dict[str, Any]]) -> Any:
    import pandas as pd

    return pd.DataFrame(rows)


_CR_MISSING = "skip: [cloudrun] project, region and service are not configured"


def _cloudrun(ctx: PhaseContext) -> Any:
    from ..cloudrun import cloudrun_client

    return cloudrun_client(ctx.settings)


def _previous_phase_artifact(ctx: PhaseContext, phase: int, key: str) -> Any:
    """An artifact another phase of the same run recorded (``None`` when absent)."""
    import json

    from ..context import phase_file

    if ctx.run_dir is None:
        return None
    path = phase_file(ctx.run_dir, phase)
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("artifacts", {}).get(key)
    except (OSError, ValueError):
        return None


def _main_revision(serving: dict[str, int]) -> str | None:
    if not serving:
        return None
    return max(serving.items(), key=lambda kv: kv[1])[0]


def _timeouts(ctx: PhaseContext) -> Any:
    return ctx.settings.timeouts


async def _connect_auth(ctx: PhaseContext, user: str | None = None) -> tuple[Any, str]:
    """Auth to connect with as ``user`` (token obtained and registered as secret), and an error."""
    from ..tokens import ConnectAuth, connect_auth, obtain_token

    auth = ctx.settings.auth
    if not auth.enabled:
        return ConnectAuth(), ""
    tok = await obtain_token(auth, user, timeout_s=_timeouts(ctx).connect_s)
    if tok.error:
        return ConnectAuth(), tok.error
    return connect_auth(auth, tok.token), ""


def _token_errors(ctx: PhaseContext, ids: Sequence[str], err: str) -> list[CheckResult]:
    detail = (
        f"could not obtain a token to connect with: {err}. Check [auth] (token_env, "
        "jwt_secret_env or token_endpoint) and the auth service."
    )
    return [_result(ctx, i, Status.ERROR, detail) for i in ids]


def _handshake_rows(probes: Sequence[Any], base: str) -> list[dict[str, Any]]:
    from ..evaluate import explain_status

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


def _ws_urls(ctx: PhaseContext) -> list[str]:
    t = ctx.settings.target
    return [t.ws(p) for p in t.ws_paths]


_TARGET_MISSING = "skip: [target] base_url is not configured"


def _no_target(ctx: PhaseContext) -> bool:
    return not ctx.settings.target.base_url


def _since(ctx: PhaseContext, iso: str | None) -> datetime:
    from datetime import timedelta

    if iso:
        try:
            return datetime.fromisoformat(iso)
        except ValueError:
            pass
    return datetime.now(UTC) - timedelta(seconds=ctx.settings.logging.lookback_s)


async def _log_step(
    ctx: PhaseContext,
    title: str,
    check_id: str,
    *,
    since: datetime,
    revision: str | None,
    min_severity: str | None,
    contains: Sequence[str],
    what: str,
    status_404_paths: Sequence[str] = (),
) -> StepReport:
    from ..evaluate import judge_log_entries
    from ..logs import gcloud_logging_command, logging_filter, read_logs

    flt = logging_filter(
        ctx.settings, since=since, revision=revision, min_severity=min_severity, contains=contains
    )
    gcloud = gcloud_logging_command(ctx.settings, flt)
    try:
        entries = await read_logs(
            ctx.settings,
            since=since,
            revision=revision,
            min_severity=min_severity,
            contains=contains,
        )
    except CloudRunError as exc:
        return StepReport(
            title,
            [_result(ctx, check_id, Status.ERROR, f"could not read logs: {exc}", observed=None)],
            note=f"equivalent: {gcloud}",
        )
    result = judge_log_entries(
        entries, check_id=check_id, what=what, phase=ctx.phase, ws_paths=status_404_paths
    )
    rows = [
        {
            "timestamp": e.timestamp.isoformat(timespec="seconds"),
            "severity": e.severity,
            "revision": e.revision,
            "status": e.status,
            "text": e.text[:160],
        }
        for e in entries[:30]
    ]
    return StepReport(
        title, [result], table=_table(rows) if rows else None, note=f"equivalent: {gcloud}"
    )


def _frame_rows(run: Any) -> list[dict[str, Any]]:
    return [
        {
            "t_ms": round(f.t * 1000, 1),
            "kind": str(f.kind),
            "type": f.event_type,
            "user_id": f.user_id,
            "run_id": f.run_id,
            "own": run.is_own(f),
        }
        for f in run.frames
    ]


async def _agent_run(ctx: PhaseContext, user: str, template: str, text: str) -> Any:
    from ..ws_checks import observe_agent_run

    auth, err = await _connect_auth(ctx, user)
    run = await observe_agent_run(
        ctx.settings.target.ws(),
        ctx.settings.protocol,
        auth=auth,
        user_id=user,
        text=text,
        template=template,
        event_timeout_s=ctx.settings.thresholds.event_timeout_s,
        open_timeout_s=_timeouts(ctx).connect_s,
    )
    if err and not run.error:
        from dataclasses import replace

        run = replace(run, error=f"token: {err}")
    return run


def _with_query(url: str, query: Sequence[tuple[str, str]]) -> str:
    if not query:
        return url
    from urllib.parse import urlencode

    return url + ("&" if "?" in url else "?") + urlencode(list(query))


def _timeline(runs: Sequence[Any]) -> dict[str, list[dict[str, Any]]]:
    return {
        r.user_id: [
            {"t_s": f.t, "type": f.event_type or str(f.kind), "foreign": not r.is_own(f)}
            for f in r.frames
            if f.event_type or not r.is_own(f)
        ]
        for r in runs
    }


def phase_summary(ctx: PhaseContext) -> StepReport:
    """The phase's results so far, failed checks first (persisted as well)."""
    from ..results import _SEVERITY

    ordered = sorted(ctx.results, key=lambda r: (-_SEVERITY[r.status], r.id))
    ctx.persist()
    failed = [r for r in ordered if not r.ok]
    note = (
        (f"{len(failed)} check(s) failed: " + ", ".join(r.id for r in failed))
        if failed
        else f"all {len(ordered)} check(s) passed, warned or were skipped"
    )
    return StepReport(f"Phase {ctx.phase} summary", ordered, note=note)
