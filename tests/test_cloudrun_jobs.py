"""The load fanned out as a Cloud Run Job (issue 13): settings, job body, the merged
result as the judges' view, and phase 4 end to end against the sandbox's Jobs emulator
(real run_v2 and logging clients, real emulator, real task processes)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import httpx
import numpy as np
import psutil
import pytest

from runbook_lib.checks import judge_load
from runbook_lib.context import open_phase
from runbook_lib.exceptions import ConfigError
from runbook_lib.load.engine import LoadPlan
from runbook_lib.load.histogram import LatencyHistogram
from runbook_lib.load.jobs import (
    job_body,
    job_path,
    read_task_results,
    run_overrides,
    total_sessions,
)
from runbook_lib.load.task import merge_results
from runbook_lib.redaction import clear_secrets
from runbook_lib.sandbox import manager
from runbook_lib.settings import Settings
from runbook_lib.settings_load import load_settings, settings_from_dict

BASE = {
    "name": "t",
    "target": {"base_url": "http://127.0.0.1:9"},
    "cloudrun": {"project": "p", "region": "r", "service": "svc"},
}


def _settings(**load):
    return settings_from_dict({**BASE, "load": load})


# ---------------------------------------------------------------- settings and job body


def test_local_engine_is_the_default():
    s = settings_from_dict(BASE)
    assert s.load.engine == "local"
    assert s.load.job_name("svc") == "svc-runbook-load"


@pytest.mark.parametrize(
    ("load", "words"),
    [
        ({"engine": "k8s"}, "load.engine"),
        ({"engine": "cloudrun-job"}, "load.image"),
        ({"engine": "cloudrun-job", "image": "i", "tasks": 2, "parallelism": 3}, "parallelism"),
        ({"tasks": 0}, "load.tasks"),
        ({"timeout_s": 10_000}, "load.timeout_s"),
        ({"image": ""}, "load.image"),
    ],
)
def test_bad_load_settings_are_config_errors(load, words):
    with pytest.raises(ConfigError, match=words.replace(".", r"\.")):
        _settings(**load)


def test_total_sessions_is_tasks_times_sessions_per_task_else_load_connections():
    assert total_sessions(_settings(engine="cloudrun-job", image="i", tasks=3)) == 10
    s = _settings(engine="cloudrun-job", image="i", tasks=3, sessions_per_task=7)
    assert total_sessions(s) == 21


def test_job_body_carries_the_plan_without_the_token():
    s = _settings(engine="cloudrun-job", image="img", tasks=4, max_retries=1, timeout_s=60)
    token = "eyJ-secret-token-value"
    plan = LoadPlan(
        url=f"ws://h/ws?token={token}",
        sessions=8,
        headers=(("Authorization", f"Bearer {token}"),),
        subprotocols=(f"jwt.{token}",),
    )
    body = job_body(s, plan, "run1", token)
    env = {e["name"]: e["value"] for e in body["template"]["template"]["containers"][0]["env"]}
    assert token not in env["RUNBOOK_LOAD_PLAN"]
    assert json.loads(env["RUNBOOK_LOAD_PLAN"])["headers"] == [["Authorization", "Bearer {token}"]]
    # The job (kept between runs, readable with run.jobs.get) never holds the token: the
    # execution's overrides carry it.
    assert "RUNBOOK_LOAD_TOKEN" not in env and token not in json.dumps(body)
    (override,) = run_overrides(token)["containerOverrides"]
    assert override["env"] == [{"name": "RUNBOOK_LOAD_TOKEN", "value": token}]
    assert run_overrides("") == {}
    assert body["template"]["taskCount"] == 4
    assert body["template"]["template"]["maxRetries"] == 1
    assert body["template"]["template"]["timeout"] == "60s"
    assert job_path(s) == "projects/p/locations/r/jobs/svc-runbook-load"


def test_a_flow_plan_reaches_the_task_whole_and_its_message_token_only_as_a_variable():
    """``[auth] mode = "message"``: the flow holds ``{token}``, the plan JSON never the
    token; the task gets the steps back and the token from RUNBOOK_LOAD_TOKEN."""
    from runbook_lib.flows import FlowStep
    from runbook_lib.load.task import _plan_from_env

    s = _settings(engine="cloudrun-job", image="img", tasks=2)
    token = "eyJ-message-token-value"
    steps = (
        FlowStep(send={"type": "connection_init", "payload": {"token": "{token}"}}),
        FlowStep(expect={"type": "connection_ack"}, timeout_s=3.0),
        FlowStep(send={"type": "subscribe", "id": "{marker}"}),
        FlowStep(expect_pattern="{marker}", capture={"n": "n"}),
    )
    plan = LoadPlan(url="ws://h/graphql", sessions=8, steps=steps, token=token)
    body = job_body(s, plan, "run1", token)
    env = {e["name"]: e["value"] for e in body["template"]["template"]["containers"][0]["env"]}
    assert token not in env["RUNBOOK_LOAD_PLAN"] and "RUNBOOK_LOAD_TOKEN" not in env
    # The execution's overrides carry the token, never the job.
    (override,) = run_overrides(token)["containerOverrides"][0]["env"]
    assert override == {"name": "RUNBOOK_LOAD_TOKEN", "value": token}
    task_plan, part, _ = _plan_from_env(
        {
            **env,
            "RUNBOOK_LOAD_TOKEN": token,
            "CLOUD_RUN_TASK_INDEX": "1",
            "CLOUD_RUN_TASK_COUNT": "2",
        }
    )
    assert task_plan.steps == steps and task_plan.token == token and part.sessions == 4


# ---------------------------------------------------------------- merged result as a view


def _line(i: int, rtts: list[float], **kw):
    h = LatencyHistogram()
    h.extend(rtts)
    return {
        "task_index": i,
        "planned": len(rtts),
        "attempted": len(rtts),
        "succeeded": len(rtts),
        "failed": 0,
        "handshake_statuses": {"101": len(rtts)},  # as a task's result line carries them
        "rtt_histogram": h.to_dict(),
        "connect_histogram": LatencyHistogram().to_dict(),
        **kw,
    }


def test_judges_read_the_merged_result_like_a_local_report():
    rng = np.random.default_rng(7)
    parts = [list(rng.lognormal(-5 + i, 0.5, 500)) for i in range(4)]
    merged = merge_results([_line(i, p) for i, p in enumerate(parts)], 4)
    pooled = np.concatenate(parts)
    want = float(np.percentile(pooled, 95, method="inverted_cdf"))
    assert merged.p95_s == pytest.approx(want, rel=0.01)
    by_id = {r.id: r for r in judge_load(merged, success_rate=0.8, p95_s=10.0)}
    assert by_id["load.success_rate"].status == "pass"
    assert by_id["load.latency_p95"].status == "pass"
    assert by_id["load.no_server_errors"].status == "pass"
    bad = merge_results(
        [_line(0, [0.01], errors_by_kind={"handshake_503": 3}, planned=4, failed=3)], 1
    )
    assert bad.server_error_count() == 3
    by_id = {r.id: r for r in judge_load(bad, success_rate=0.8, p95_s=10.0)}
    assert by_id["load.no_server_errors"].status == "fail"


# ---------------------------------------------------------------- end to end (sandbox)

KNOBS: dict[str, str] = {}


@pytest.fixture(scope="module")
def sandbox(sandbox_factory):
    return sandbox_factory("healthy", KNOBS)


def _job_overrides(**extra):
    return {
        "load.engine": "cloudrun-job",
        "load.image": "sandbox/load-worker:dev",
        "load.tasks": 4,
        "load.timeout_s": 120,
        "thresholds.load_connections": 120,
        "thresholds.load_messages": 5,
        **extra,
    }


def _load_step(run_phase, sandbox, run_dir: Path, overrides) -> tuple[Settings, dict, list[dict]]:
    """Phase 4's load step alone on the in-process engine: (settings, record, results)."""
    record = run_phase(4, sandbox.env_file, run_dir, overrides=overrides, only=("load_test",))
    return load_settings(sandbox.env_file, overrides=overrides), record, record["checks"]


def _emulator_url(settings: Settings) -> str:
    return settings.cloudrun.api_endpoint.rstrip("/")


def _task_pids(daemon_pid: int) -> list[int]:
    """Load task processes started by this sandbox's daemon (not other tests')."""
    try:
        kids = psutil.Process(daemon_pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    out = []
    for p in kids:
        try:
            if "runbook_lib.load.task" in " ".join(p.cmdline()):
                out.append(p.pid)
        except psutil.Error:
            continue
    return out


async def _api(method: str, url: str, **kw) -> httpx.Response:
    async with httpx.AsyncClient(timeout=10) as client:
        return await client.request(method, url, **kw)


@pytest.mark.e2e
async def test_phase4_on_a_job_matches_a_local_run(sandbox, run_phase, tmp_path, monkeypatch):
    """4 tasks: counts equal a local run of the same schedule; the merged percentiles are
    the pooled raw samples' within the histogram's 1 % bound."""
    monkeypatch.setenv("RUNBOOK_LOAD_RAW_SAMPLES", "1")
    settings, record, results = _load_step(run_phase, sandbox, tmp_path / "job", _job_overrides())
    rec = record["artifacts"]["load"]
    assert rec["task_count"] == 4 and rec["missing"] == [] and rec["problems"] == []
    assert {r["status"] for r in results} == {"pass"}, [r["detail"] for r in results]
    assert record["figures"], "the load step saved no figure"

    records = await read_task_results(settings, rec["job"], rec["run_id"])
    assert sorted(r["task_index"] for r in records) == [0, 1, 2, 3]
    assert sorted(r["planned"] for r in records) == [30, 30, 30, 30]
    pooled = np.concatenate([np.asarray(r["rtt_raw"]) for r in records])
    assert pooled.size == rec["rtt_samples"] == 120 * 5
    for q, key in ((50, "p50_s"), (95, "p95_s"), (99, "p99_s")):
        want = float(np.percentile(pooled, q, method="inverted_cdf"))
        assert math.isclose(rec[key], want, rel_tol=0.01), (key, rec[key], want)

    _, local_record, local_results = _load_step(
        run_phase,
        sandbox,
        tmp_path / "local",
        {k: v for k, v in _job_overrides().items() if k.startswith("thresholds.")},
    )
    lrec = local_record["artifacts"]["load"]
    # Counts are compared exactly; latencies of two runs differ by chance, so both are
    # judged against the same limit instead of against each other.
    for key in ("planned", "succeeded", "failed"):
        assert rec[key] == lrec[key], key
    assert rec["success_rate"] == lrec["success_rate"] == 1.0
    assert {r["status"] for r in local_results} == {"pass"}


@pytest.mark.e2e
@pytest.mark.slow
async def test_the_load_token_is_never_on_the_job_and_leaves_with_the_execution(
    sandbox, run_phase, tmp_path
):
    """With auth on, the tasks get the token from the execution's overrides (the emulator
    resolves them as Cloud Run does), the job never holds it, the execution is deleted."""
    settings, record, results = _load_step(
        run_phase, sandbox, tmp_path, _job_overrides(**{"load.tasks": 2})
    )
    rec = record["artifacts"]["load"]
    assert settings.auth.enabled and rec["problems"] == [], rec["problems"]
    assert {r["status"] for r in results} == {"pass"}, [r["detail"] for r in results]
    assert rec["token_note"] == ""
    base = _emulator_url(settings)
    job = (await _api("GET", f"{base}/v2/{rec['job']}")).json()
    names = [e["name"] for e in job["template"]["template"]["containers"][0]["env"]]
    assert "RUNBOOK_LOAD_TOKEN" not in names
    assert (await _api("GET", f"{base}/v2/{rec['execution']}")).status_code == 404


@pytest.mark.e2e
async def test_a_killed_task_makes_load_an_error_not_a_pass(sandbox, run_phase, tmp_path):
    ctx0 = open_phase(4, environment=str(sandbox.env_file), run_dir=None, approve=True)
    r = await _api(
        "POST",
        f"{_emulator_url(ctx0.settings)}/sandbox/jobs:killTask",
        json={"task_index": 2},
        timeout=10,
    )
    assert r.status_code == 200
    _, record, results = _load_step(run_phase, sandbox, tmp_path, _job_overrides())
    assert {r["status"] for r in results} == {"error"}
    for res in results:
        assert "task 2" in res["detail"]
    assert record["artifacts"]["load"]["missing"] == [2]


@pytest.mark.e2e
async def test_a_retried_task_counts_its_new_attempt(sandbox, run_phase, tmp_path):
    """maxRetries honoured: the killed first attempt is retried, and the run is complete."""
    ctx0 = open_phase(4, environment=str(sandbox.env_file), run_dir=None, approve=True)
    url = _emulator_url(ctx0.settings)
    await _api("POST", f"{url}/sandbox/jobs:killTask", json={"task_index": 1}, timeout=10)
    _, record, results = _load_step(
        run_phase, sandbox, tmp_path, _job_overrides(**{"load.max_retries": 1})
    )
    assert {r["status"] for r in results} == {"pass"}, [r["detail"] for r in results]
    # The execution held the token and is deleted once read: its counts are in the record.
    # Without the retry, the killed task 1 would be missing and load would be an error.
    assert record["artifacts"]["load"]["succeeded_tasks"] == 4


@pytest.mark.e2e
async def test_a_task_over_its_timeout_is_killed_and_the_result_is_error(
    sandbox, run_phase, tmp_path
):
    _, record, results = _load_step(
        run_phase,
        sandbox,
        tmp_path,
        _job_overrides(**{"load.timeout_s": 1, "thresholds.load_ramp_s": 8}),
    )
    assert {r["status"] for r in results} == {"error"}
    assert "timeout" in results[0]["detail"]
    # The execution held the token and is deleted once read: its counts are in the record.
    assert record["artifacts"]["load"]["failed_tasks"] == 4
    here = _task_pids(sandbox.pid)
    assert not here, "task processes outlived their timeout"


def test_task_figure_draws_tasks_merged_and_names_the_missing():
    from runbook_lib.plots import plot_load_tasks

    h = LatencyHistogram()
    h.extend([0.001, 0.002, 0.004])
    fig = plot_load_tasks({0: h.to_dict(), 1: h.to_dict()}, h.to_dict(), missing=[2])
    ax = fig.axes[0]
    assert "MISSING/FAILED: 2" in ax.get_title()
    assert len(ax.get_lines()) >= 3
    empty = plot_load_tasks({}, LatencyHistogram().to_dict(), missing=[0, 1])
    assert "no successful round trip" in empty.axes[0].texts[0].get_text()


# ---------------------------------------------------------------- emulator edges


@pytest.mark.e2e
async def test_emulator_refuses_bad_job_requests_like_the_api(sandbox):
    ctx = open_phase(4, environment=str(sandbox.env_file), run_dir=None, approve=True)
    base = f"{_emulator_url(ctx.settings)}/v2/projects/{ctx.settings.cloudrun.project}/locations/x"
    good = {"template": {"taskCount": 1, "template": {"containers": [{"image": "i"}]}}}
    assert (await _api("GET", f"{base}/jobs/nope")).status_code == 404
    r = await _api("POST", f"{base}/jobs?jobId=edge", json={"template": {}})
    assert r.status_code == 400 and "containers" in r.json()["error"]["message"]
    r = await _api("POST", f"{base}/jobs?jobId=Bad_Id", json=good)
    assert r.status_code == 400
    assert (await _api("POST", f"{base}/jobs?jobId=edge", json=good)).json()["done"] is True
    assert (await _api("POST", f"{base}/jobs?jobId=edge", json=good)).status_code == 409
    assert (await _api("POST", f"{base}/jobs/nope:run", json={})).status_code == 404
    assert (
        await _api("POST", f"{_emulator_url(ctx.settings)}/sandbox/jobs:killTask", json={})
    ).status_code == 400


@pytest.mark.e2e
def test_stopping_the_sandbox_kills_running_tasks(tmp_path):
    """No orphan: tasks still running when the sandbox goes down die with it."""
    from runbook_lib.load.jobs import _Jobs

    state = tmp_path / "sb"
    state.mkdir()
    info = manager.up(serving="healthy", state_dir=state, env_file=state / "local.toml", env=KNOBS)
    try:
        ctx = open_phase(
            4,
            environment=str(state / "local.toml"),
            run_dir=None,
            approve=True,
            overrides=_job_overrides(**{"thresholds.load_ramp_s": 60}),
        )
        plan = LoadPlan(url=ctx.settings.target.ws(), sessions=8, ramp_s=60)
        api = _Jobs(ctx.settings)
        name = job_path(ctx.settings)
        parent, _, job_id = name.rpartition("/jobs/")
        body = job_body(ctx.settings, plan, "orphan-test")
        from google.cloud import run_v2

        job = run_v2.Job.from_json(json.dumps(body))
        api.jobs.create_job(parent=parent, job=job, job_id=job_id).result(timeout=30)
        op = api.jobs.run_job(name=name)
        execution = op.metadata.name
        import time

        until = time.monotonic() + 20
        while time.monotonic() < until:
            ex = api.executions.get_execution(name=execution)
            if ex.running_count == 4:
                break
            time.sleep(0.2)
        assert ex.running_count == 4
        pids = _task_pids(info.pid)
        assert len(pids) >= 4
    finally:
        manager.down(state)
        clear_secrets()
    procs = []
    for pid in pids:
        try:
            procs.append(psutil.Process(pid))
        except psutil.NoSuchProcess:
            continue
    _, alive = psutil.wait_procs(procs, 10)
    assert not alive, f"task processes outlived the sandbox: {[p.pid for p in alive]}"


def test_a_job_that_cannot_finish_within_a_cell_is_a_config_error():
    with pytest.raises(ConfigError, match=r"load\.timeout_s"):
        _settings(engine="cloudrun-job", image="i", timeout_s=300, max_retries=1)


# ---------------------------------------------------------------- JobRunner (no sandbox)

_PROBE = (
    "import json, os, sys, time; t0 = time.time(); time.sleep(0.4); "
    "k = sorted(n for n in os.environ if n.startswith(('CLOUD_RUN_', 'EXTRA'))); "
    "print(json.dumps({'env': {n: os.environ[n] for n in k}, 't0': t0, 't1': time.time()})); "
    "print('plain text line'); "
    "sys.exit(3 if os.environ.get('CLOUD_RUN_TASK_INDEX') == '2' "
    "and os.environ.get('CLOUD_RUN_TASK_ATTEMPT') == '0' else 0)"
)


@pytest.mark.slow  # starts task processes
async def test_runner_sets_cloud_run_env_honours_parallelism_and_retries_and_logs_lines():
    import asyncio
    import sys

    from runbook_lib.sandbox.jobs import JobRunner
    from runbook_lib.sandbox.log_store import LogStore

    logs = LogStore()
    runner = JobRunner(project="p", region="r", logs=logs, command=[sys.executable, "-c", _PROBE])
    tmpl = {
        "taskCount": 4,
        "parallelism": 2,
        "template": {
            "containers": [{"image": "i", "env": [{"name": "EXTRA", "value": "x"}]}],
            "maxRetries": 1,
            "timeout": "30s",
        },
    }
    op = runner.create_job("projects/p/locations/r", "probe", {"template": tmpl})
    op = runner.run_job(op.target)
    ex = op.target
    try:
        for _ in range(600):  # bounded: 60 s
            if ex.done:
                break
            await asyncio.sleep(0.1)
    finally:
        await runner.aclose()
    assert [t.state for t in ex.tasks] == ["SUCCEEDED"] * 4
    assert ex.tasks[2].retried == 1  # exit 3 on attempt 0, retried once
    lines = [
        e
        for e in logs.query(filter_text='resource.type="cloud_run_job"', page_size=1000)["entries"]
        if "jsonPayload" in e
    ]
    assert len(lines) == 5  # 4 tasks + the failed attempt
    for e in lines:
        env = e["jsonPayload"]["env"]
        assert env["CLOUD_RUN_JOB"] == "probe" and env["CLOUD_RUN_TASK_COUNT"] == "4"
        assert env["CLOUD_RUN_EXECUTION"] == ex.name and env["EXTRA"] == "x"
        assert e["resource"]["labels"]["task_index"] == env["CLOUD_RUN_TASK_INDEX"]
        assert e["labels"]["run.googleapis.com/execution_name"] == ex.name
    spans = sorted((e["jsonPayload"]["t0"], e["jsonPayload"]["t1"]) for e in lines)
    most = max(sum(1 for a, b in spans if a <= t < b) for t, _ in spans)
    assert most == 2, f"parallelism 2 was not honoured: {most} tasks overlapped"
    texts = logs.query(filter_text='textPayload:"plain text line"', page_size=100)["entries"]
    assert len(texts) == 5


@pytest.mark.e2e
def test_cancelling_an_execution_kills_its_tasks(sandbox):
    """What the runbook does when it stops waiting: executions.cancel ends the load."""
    import time

    from google.cloud import run_v2

    from runbook_lib.load.jobs import _Jobs

    ctx = open_phase(
        4,
        environment=str(sandbox.env_file),
        run_dir=None,
        approve=True,
        overrides=_job_overrides(),
    )
    api = _Jobs(ctx.settings)
    name = job_path(ctx.settings).replace("-runbook-load", "-cancel-probe")
    parent, _, job_id = name.rpartition("/jobs/")
    plan = LoadPlan(url=ctx.settings.target.ws(), sessions=8, ramp_s=60)
    job = run_v2.Job.from_json(json.dumps(job_body(ctx.settings, plan, "cancel-probe")))
    api.jobs.create_job(parent=parent, job=job, job_id=job_id).result(timeout=30)
    execution = api.jobs.run_job(name=name).metadata.name
    until = time.monotonic() + 20
    while api.executions.get_execution(name=execution).running_count < 4:
        assert time.monotonic() < until, "tasks never started"
        time.sleep(0.2)
    assert len(_task_pids(sandbox.pid)) >= 4
    api.executions.cancel_execution(name=execution)
    until = time.monotonic() + 20
    while not (ex := api.executions.get_execution(name=execution)).completion_time:
        assert time.monotonic() < until, "the cancelled execution never completed"
        time.sleep(0.2)
    assert ex.cancelled_count == 4 and ex.succeeded_count == 0
    assert _task_pids(sandbox.pid) == []


def test_a_misconfigured_task_names_itself_so_the_merge_reports_its_error(capsys):
    from runbook_lib.load.task import main

    code = main({"CLOUD_RUN_TASK_INDEX": "3", "CLOUD_RUN_TASK_COUNT": "4"})
    assert code == 2
    line = json.loads(capsys.readouterr().out.strip())
    assert line["task_index"] == 3 and "RUNBOOK_LOAD_PLAN" in line["error"]
    merged = merge_results([line], 4)
    assert 3 in merged.task_errors and not merged.complete
