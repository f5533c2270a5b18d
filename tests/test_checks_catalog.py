"""The check catalog (``runbook_lib.checks.catalog``): the one list of ids, tied to SPEC,
to the judges, to the steps and to the sandbox profiles; applicability (SPEC section 8)."""

from __future__ import annotations

import ast
import importlib
import inspect
import subprocess
import sys
from dataclasses import fields, replace
from pathlib import Path

import pytest

from runbook_lib.checks import STEPS, Verdict, applicability, skip_reason, step_ids
from runbook_lib.checks.catalog import (
    CATALOG,
    CHECK_IDS,
    DYNAMIC_PREFIXES,
    NEEDS,
    is_known,
    phase_of,
)
from runbook_lib.results import Status
from runbook_lib.settings import Settings, TargetSettings
from runbook_lib.settings_load import load_settings

TESTS = Path(__file__).parent

# SPEC section 3 ("Check catalog (public ids)"), copied here on purpose: CI runs on a clean
# clone without the shared SPEC. Dynamic ids (predeploy.<name>, tests.<name>) are prefixes.
SPEC_IDS = {
    # phase 1
    "status.revision_identified", "status.traffic_on_latest", "status.url_reachable",
    "status.revisions_listed", "source.git_clean", "source.git_branch",
    "source.ws_routes_present", "health.backend", "ws.routes_probe", "cloudrun.ws_preflight",
    # phase 2
    "deploy.executed", "deploy.operation_succeeded", "deploy.latest_serving",
    "deploy.logs_clean", "health.ready_within", "ws.health_ready_within",
    "health.no_5xx_during_warmup",
    "deploy.tag_verified",  # SPEC 9: verify-then-shift validates the new revision on its tag URL
    # phase 3
    "ws.upgrade", "ws.health", "ws.test_endpoint", "ws.roundtrip", "http.latency",
    "logs.no_routing_errors",
    # phase 4
    "tests.duration", "e2e.agent_response", "load.success_rate", "load.latency_p95",
    "load.no_server_errors",
    # phase 5
    "auth.config", "auth.health", "auth.ws_authenticated", "auth.rejects_invalid", "chat.flow",
    "isolation.sessions", "isolation.no_cross_user", "events.critical_delivered",
    "events.order", "events.structure", "events.latency",
    # phase 6
    "rollback.target_identified", "rollback.traffic_moved", "rollback.health", "rollback.smoke",
    "rollback.target_verified",  # SPEC 9: the target probed on its tag URL before traffic moves
    # phase 7
    "monitor.uptime", "monitor.ws_failure_rate", "monitor.avg_response", "monitor.ws_404",
    "monitor.hold", "monitor.log_errors",
}  # fmt: skip
SPEC_PHASE_OF_PREFIX = {"status": 1, "source": 1, "cloudrun": 1, "deploy": 2, "rollback": 6}

FAMILIES = ("http", "ws", "agent", "monitor", "service", "source", "commands")
# Judges of ids built at run time (predeploy.<name>, tests.<name>), not catalog rows.
DYNAMIC_JUDGES = {"judge_command", "judge_predeploy", "judge_tests"}


def test_catalog_ids_are_spec_section_3() -> None:
    assert CHECK_IDS == SPEC_IDS
    assert DYNAMIC_PREFIXES == ("predeploy.", "tests.", "runner.phase_")


def test_phases_agree_with_the_spec_sections() -> None:
    for check in CATALOG.values():
        family = check.id.split(".")[0]
        if family in SPEC_PHASE_OF_PREFIX:
            assert check.phase == SPEC_PHASE_OF_PREFIX[family], check.id
        assert STEPS[check.step].phase == check.phase, check.id


def test_every_expected_failure_of_every_profile_is_a_catalog_id() -> None:
    from runbook_lib.sandbox.profiles import EXPECTED_FAILURES

    for profile, ids in EXPECTED_FAILURES.items():
        unknown = {i for i in ids if not is_known(i)}
        assert unknown == set(), profile
        assert {i for i in ids if not i.startswith(DYNAMIC_PREFIXES)} <= CHECK_IDS


@pytest.mark.parametrize("check_id", sorted(SPEC_IDS))
def test_every_judge_resolves_and_names_its_id(check_id: str) -> None:
    check = CATALOG[check_id]
    assert check.family in FAMILIES
    module = importlib.import_module(f"runbook_lib.checks.{check.family}")
    judge = getattr(module, check.judge)
    assert check.judge in module.__all__ and callable(judge)
    # The judge's docstring names the ids it produces: one hop from id to code.
    assert check_id in (judge.__doc__ or ""), check_id


def test_every_family_judge_is_in_the_catalog_and_has_a_table_test() -> None:
    in_catalog = {c.judge for c in CATALOG.values()}
    for family in FAMILIES:
        module = importlib.import_module(f"runbook_lib.checks.{family}")
        judges = {n for n in module.__all__ if n.startswith("judge_")}
        assert judges - in_catalog <= DYNAMIC_JUDGES, family
        text = (TESTS / f"test_checks_{family}.py").read_text(encoding="utf-8")
        untested = sorted(j for j in judges if f"{j}(" not in text)
        assert untested == [], family


@pytest.mark.slow  # starts a process
def test_judge_tests_import_only_pure_modules() -> None:
    """The table tests import the checks, the observations and pure modules: no network."""
    allowed = {
        "runbook_lib.checks",
        "runbook_lib.flows",  # pure: the flow model and the record of a run
        "runbook_lib.observations",
        "runbook_lib.results",
        "runbook_lib.protocol",
        "runbook_lib.settings",
        "runbook_lib.settings_load",  # reads a file, no network
    }
    for family in (*FAMILIES, "causes", "catalog"):
        path = TESTS / f"test_checks_{family}.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("runbook_lib"):
                module = node.module or ""
                # A judge's own module (runbook_lib.checks.<family>) is as pure as the wing.
                pure = module.startswith("runbook_lib.checks.")
                assert pure or module in allowed | {"runbook_lib.sandbox.profiles"}, (
                    path,
                    node.module,
                )
    code = (
        "import sys; sys.path.insert(0, {tests!r}); import observation_builders, "
        "runbook_lib.checks, runbook_lib.observations; "
        "print(sorted({{m.split('.')[0] for m in sys.modules}} & {bad!r}))"
    ).format(tests=str(TESTS), bad={"websockets", "httpx", "google", "picows", "numpy"})
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.slow  # starts a process
def test_import_checks_imports_no_network_library() -> None:
    code = (
        "import sys, runbook_lib.checks; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'websockets', 'httpx', 'google', 'picows', 'numpy'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_steps_table_matches_the_step_functions() -> None:
    import runbook_lib.steps as steps

    assert set(STEPS) == set(steps.__all__) - {"phase_summary"}
    for name, info in STEPS.items():
        fn = getattr(steps, name)
        assert fn.__name__ == name
        assert callable(fn.check_ids) if info.dynamic else fn.check_ids == step_ids(name)
        assert step_ids(name) or info.dynamic, name
    assert {c.step for c in CATALOG.values()} <= set(STEPS)


def test_needs_name_known_rules_or_settings_keys() -> None:
    target_keys = {f"target.{f.name}" for f in fields(TargetSettings)}
    flows = {"flows.agent", "flows.chat", "flows.load", "flows.isolation"}
    for check in CATALOG.values():
        for need in check.needs:
            assert need in NEEDS or need in target_keys or need in flows, (check.id, need)


def test_phase_of_and_verdict() -> None:
    assert phase_of("ws.upgrade") == 3
    assert phase_of("predeploy.lint") == 2 and phase_of("tests.unit") == 4
    assert phase_of("runner.phase_05") == 5
    with pytest.raises(KeyError, match="not a catalog check id"):
        phase_of("ws.upgrades")
    r = Verdict("monitor.hold", threshold="clean close").fail("cut", observed=3.0)
    assert (r.id, r.phase, r.status, r.threshold, r.observed) == (
        "monitor.hold",
        7,
        Status.FAIL,
        "clean close",
        3.0,
    )
    assert Verdict("ws.upgrade").ok("fine", threshold=101).threshold == 101
    assert Verdict("rollback.smoke", phase=6).skip("dry-run").status is Status.SKIP


# ---------------------------------------------------------------- applicability


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    env = tmp_path / "t.toml"
    env.write_text('name = "t"\n[target]\nbase_url = "http://127.0.0.1:9"\n', encoding="utf-8")
    return load_settings(env)


ONE = "one event per request"
ABSENT = "target.ws_test_path = false: declared absent by the environment file"


@pytest.mark.parametrize(
    ("check_id", "not_applicable", "absent", "declared", "skip"),
    [
        ("ws.roundtrip", {}, set(), None, None),
        ("events.order", {"events.order": ONE}, set(), ONE, ONE),
        ("ws.test_endpoint", {}, {"target.ws_test_path"}, ABSENT, "target.ws_test_path = false"),
        ("ws.health", {}, {"target.ws_test_path"}, None, None),
        ("tests.unit", {"tests.unit": "flaky upstream"}, set(), "flaky upstream", "flaky upstream"),
        ("auth.ws_authenticated", {}, set(), None, "skip: [auth] mode is none"),
        ("status.revision_identified", {}, set(), None, "[cloudrun] project, region and service"),
        ("monitor.log_errors", {}, set(), None, "[logging] enabled is false"),
        ("source.git_branch", {}, set(), None, "[source] repo_dir is not configured"),
        ("tests.duration", {}, set(), None, "no [[commands.mission_critical]] configured"),
        # Issue 9: no deploy configured, nothing to warm up (it used to poll for 60 s).
        ("ws.health_ready_within", {}, set(), None, "no [cloudrun] deploy_image or deploy_command"),
        ("health.ready_within", {}, set(), None, "no [cloudrun] deploy_image or deploy_command"),
        ("health.no_5xx_during_warmup", {}, set(), None, "no [cloudrun] deploy_image"),
    ],
)  # fmt: skip
def test_applicability_and_skip_reason(
    settings: Settings, check_id, not_applicable, absent, declared, skip
) -> None:
    s = replace(settings, not_applicable=not_applicable, declared_absent=frozenset(absent))
    assert applicability(check_id, s) == declared
    reason = skip_reason(check_id, s)
    assert (reason is None) if skip is None else (skip in (reason or ""))


def test_not_configured_target_skips_with_the_section_named(settings: Settings) -> None:
    s = replace(settings, target=replace(settings.target, base_url=""))
    assert skip_reason("ws.upgrade", s) == "skip: [target] base_url is not configured"
    assert inspect.isfunction(applicability)
