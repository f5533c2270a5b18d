"""Phase 4 steps: mission-critical suites, end-to-end agent response, concurrent load."""

from __future__ import annotations

from ..context import PhaseContext, StepReport
from ..results import Status
from ._common import (
    _TARGET_MISSING,
    _agent_run,
    _connect_auth,
    _frame_rows,
    _no_target,
    _result,
    _skip_all,
    _step,
    _table,
    _timeouts,
    _with_query,
)

__all__ = ["agent_response", "load_test", "test_suites"]


def _tests_ids(ctx: PhaseContext) -> list[str]:
    return [f"tests.{c.name}" for c in ctx.settings.mission_critical] + ["tests.duration"]


@_step("Mission-critical test suites", _tests_ids)
async def test_suites(ctx: PhaseContext) -> StepReport:
    """Run the configured mission-critical suites (JUnit parsed when written)."""
    from ..commands import judge_tests, run_command
    from ..evaluate import judge_tests_duration

    title = "Mission-critical test suites"
    if not ctx.settings.mission_critical:
        return StepReport(
            title,
            _skip_all(
                ctx, ("tests.duration",), "skip: no [[commands.mission_critical]] configured"
            ),
        )
    results, rows, durations = [], [], {}
    for spec in ctx.settings.mission_critical:
        obs = await run_command(spec, cwd=spec.cwd or ctx.settings.source.repo_dir or None)
        results.append(judge_tests(obs, phase=ctx.phase))
        durations[spec.name] = obs.duration_s
        j = obs.junit
        rows.append(
            {
                "suite": spec.name,
                "exit_code": obs.exit_code,
                "duration_s": round(obs.duration_s, 2),
                "tests": j.tests if j else None,
                "failures": j.failures if j else None,
                "errors": j.errors if j else None,
                "timed_out": obs.timed_out,
            }
        )
    results.append(
        judge_tests_duration(
            durations, limit_s=ctx.settings.thresholds.tests_max_s, phase=ctx.phase
        )
    )
    return StepReport(title, results, table=_table(rows))


@_step("End-to-end agent response", ("e2e.agent_response",))
async def agent_response(ctx: PhaseContext) -> StepReport:
    """The golden path: send an agent request and wait for the agent's final event."""
    from ..evaluate import judge_agent_response

    title = "End-to-end agent response"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, ("e2e.agent_response",), _TARGET_MISSING))
    run = await _agent_run(ctx, ctx.settings.auth.default_user, "agent_request", "test golden path")
    th = ctx.settings.thresholds
    return StepReport(
        title,
        [judge_agent_response(run, timeout_s=th.event_timeout_s, phase=ctx.phase)],
        table=_table(_frame_rows(run)),
    )


_LOAD_IDS = ("load.success_rate", "load.latency_p95", "load.no_server_errors")


@_step("Concurrent load", _LOAD_IDS)
async def load_test(ctx: PhaseContext) -> StepReport:
    """Open N concurrent sessions (connect, ping round trips, close) and judge success and p95."""
    from ..evaluate import judge_load
    from ..load import LoadPlan, run_load
    from ..plots import plot_load_latency
    from ..protocol import render_message

    title = "Concurrent load"
    if _no_target(ctx):
        return StepReport(title, _skip_all(ctx, _LOAD_IDS, _TARGET_MISSING))
    th, p = ctx.settings.thresholds, ctx.settings.protocol
    auth, err = await _connect_auth(ctx)
    if err:
        return StepReport(
            title,
            [_result(ctx, i, Status.ERROR, f"could not obtain a token: {err}") for i in _LOAD_IDS],
        )
    url = _with_query(ctx.settings.target.ws(), auth.query)
    plan = LoadPlan(
        url=url,
        sessions=th.load_connections,
        messages=th.load_messages,
        ramp_s=th.load_ramp_s,
        message=render_message(p, "ping"),
        reply_types=p.pong_types,
        type_paths=p.event_type,
        ignore_types=tuple(t for t in p.ignore if t not in p.pong_types),
        headers=auth.headers,
        subprotocols=auth.subprotocols,
        connect_timeout_s=_timeouts(ctx).connect_s,
        message_timeout_s=_timeouts(ctx).read_s,
        deadline_s=max(60.0, _timeouts(ctx).operation_s),
    )
    report = await run_load(plan)
    results = judge_load(
        report, success_rate=th.load_success_rate, p95_s=th.load_p95_s, phase=ctx.phase
    )
    ctx.artifacts["load"] = report.to_record()
    fig = plot_load_latency(
        report.rtt_s, report.p50_s, report.p95_s, report.p99_s, threshold_s=th.load_p95_s
    )
    rec = report.to_record()
    rows = [{"metric": k, "value": v} for k, v in rec.items() if not isinstance(v, (list, dict))]
    return StepReport(title, results, table=_table(rows), figure=fig)
