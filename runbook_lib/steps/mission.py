"""Phase 4 steps: mission-critical suites, end-to-end agent response, concurrent load."""

from __future__ import annotations

from ..checks import (
    Verdict,
    judge_agent_response,
    judge_load,
    judge_tests,
    judge_tests_duration,
    step_ids,
)
from ..context import PhaseContext, StepReport
from ..identity import user_agent
from ..results import CheckResult
from .business import flow_frame_rows
from .common import (
    applies,
    connect_auth,
    report,
    step,
    table,
    token_errors,
    with_query,
)

__all__ = ["agent_response", "load_test", "test_suites"]


@step
async def test_suites(ctx: PhaseContext) -> StepReport:
    """Run the configured mission-critical suites (JUnit parsed when written)."""
    from ..commands import run_command

    results: list[CheckResult] = []
    rows, durations = [], {}
    for spec in ctx.settings.mission_critical:
        if not applies(ctx, f"tests.{spec.name}"):
            continue
        obs = await run_command(spec, cwd=spec.cwd or ctx.settings.source.repo_dir or None)
        results.append(judge_tests(obs))
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
    results.append(judge_tests_duration(durations, limit_s=ctx.settings.thresholds.tests_max_s))
    return report(results, table=table(rows))


@step
async def agent_response(ctx: PhaseContext) -> StepReport:
    """The golden path: run the agent flow; every step must complete within event_timeout_s."""
    from ..ws_checks import observe_flow

    obs = await observe_flow(ctx.settings, "agent", values={"text": "test golden path"})
    th = ctx.settings.thresholds
    return report(
        [judge_agent_response(obs, timeout_s=th.event_timeout_s)],
        table=table(flow_frame_rows(obs)),
    )


@step
async def load_test(ctx: PhaseContext) -> StepReport:
    """Open N concurrent sessions, each running the load flow whole (``[flows.load]``,
    default ping -> pong: every send, expect, pattern and capture); judge success and
    the p95 of the flow's expect steps."""
    from ..flows import flow_values, load_flow_problem, reply_timeout_s
    from ..load.engine import LoadPlan, run_load
    from ..plots import plot_load_latency
    from ..settings import resolve_flow

    th, p, to = ctx.settings.thresholds, ctx.settings.protocol, ctx.settings.timeouts
    flow = resolve_flow(ctx.settings, "load")
    problem = load_flow_problem(flow)
    if problem:
        return report(
            [
                Verdict(i, phase=ctx.phase).error(f"the load sessions cannot run: {problem}")
                for i in step_ids("load_test")
            ]
        )
    auth, err = await connect_auth(ctx)
    if err:
        return report(token_errors(ctx, step_ids("load_test"), err))
    values = flow_values(user_id=ctx.settings.auth.default_user, text="runbook load")
    json_format = p.format != "text"
    plan = LoadPlan(
        url=with_query(ctx.settings.target.ws(), auth.query),
        sessions=th.load_connections,
        messages=th.load_messages,
        ramp_s=th.load_ramp_s,
        steps=flow.steps,
        values=tuple(values.items()),
        type_paths=p.event_type if json_format else (),
        ignore_types=tuple(p.ignore) if json_format else (),
        error_types=p.error_types if json_format else (),
        error_pattern=p.error_pattern,
        token=auth.token,
        # The run's User-Agent travels in the plan, so a Cloud Run Job task marks it too.
        headers=(*auth.headers, ("User-Agent", user_agent())),
        subprotocols=tuple(dict.fromkeys((*p.subprotocols, *auth.subprotocols))),
        connect_timeout_s=to.connect_s,
        # The one reply deadline of a flow step without its own timeout_s, as in
        # ws.roundtrip and the monitoring pings.
        message_timeout_s=reply_timeout_s(ctx.settings),
        deadline_s=max(60.0, to.operation_s),
    )
    if ctx.settings.load.engine == "cloudrun-job":  # issue 13: fan out as a Cloud Run Job
        from .load_job import load_on_job

        return await load_on_job(ctx, plan)
    load = await run_load(plan)
    results = judge_load(load, success_rate=th.load_success_rate, p95_s=th.load_p95_s)
    rec = load.to_record()
    ctx.artifacts["load"] = rec
    fig = plot_load_latency(
        load.rtt_s, load.p50_s, load.p95_s, load.p99_s, threshold_s=th.load_p95_s
    )
    rows = [{"metric": k, "value": v} for k, v in rec.items() if not isinstance(v, (list, dict))]
    rows += [
        {"metric": f"step {r['step']} p95_s ({r['what'][:60]})", "value": r["p95_s"]}
        for r in rec["steps"]
    ]
    note = (
        f"In force: {th.load_connections} concurrent sessions (thresholds.load_connections), "
        f"success rate >= {th.load_success_rate:.0%}, p95 < {th.load_p95_s:g} s."
    )
    return report(
        results, table=table(rows), figure=fig, note=note, caption="Load latency: histogram and CDF"
    )
