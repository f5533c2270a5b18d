# ruff: noqa: E501 -- the catalog is a table: one check per row
"""The check catalog: the one place every check id is spelled (SPEC section 3).

Each :class:`Check` names its phase, a one-line title, its family (the module of
``runbook_lib.checks`` that judges it), the configuration it needs (dotted keys or
sections), its judge (a function of that module) and the notebook step that runs it.
Each :class:`StepInfo` names a step's phase and title. Ids built at run time
(``predeploy.<name>``, ``tests.<name>``, ``runner.phase_NN``) are declared by their
prefix in :data:`DYNAMIC_PREFIXES`.

Applicability (SPEC section 8): a check is ``skip`` when the user declared it not
applicable (``[checks.not_applicable]``), when a key it needs is declared absent
(``ws_test_path = false``) or when a section it needs is not configured.
:func:`applicability` gives the declared reasons, :func:`skip_reason` all three.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..settings import Settings

__all__ = [
    "CATALOG",
    "CHECK_IDS",
    "DYNAMIC_PREFIXES",
    "NEEDS",
    "STEPS",
    "Check",
    "StepInfo",
    "applicability",
    "is_known",
    "phase_of",
    "skip_reason",
    "step_ids",
    "steps_of",
]


@dataclass(frozen=True, slots=True)
class Check:
    """One public check.

    Attributes:
        id: the public id, e.g. ``ws.upgrade``.
        phase: the phase (1-7) that runs it.
        title: what it proves, in one line.
        family: the module of ``runbook_lib.checks`` holding its judge.
        needs: configuration it needs, as dotted keys or sections (see :data:`NEEDS`).
        judge: the judge's function name in that module.
        step: the ``runbook_lib.steps`` function that observes and records it.
    """

    id: str
    phase: int
    title: str
    family: str
    needs: tuple[str, ...]
    judge: str
    step: str


@dataclass(frozen=True, slots=True)
class StepInfo:
    """One notebook step (``rb.steps.<name>``).

    Attributes:
        name: the step function's name.
        phase: the phase whose notebook calls it.
        title: the heading of its report (also names its figure file).
        dynamic: the id prefix of checks built from the settings ('' for none).
    """

    name: str
    phase: int
    title: str
    dynamic: str = ""


# Prefixes of ids built at run time (one per configured command, one per phase).
DYNAMIC_PREFIXES = ("predeploy.", "tests.", "runner.phase_")

_T = ("target",)

# fmt: off
_CHECKS = (
    # phase 1: deployment status
    Check("status.revision_identified", 1, "a revision serves traffic", "service", ("cloudrun",), "judge_service_status", "service_status"),
    Check("status.traffic_on_latest", 1, "the latest ready revision serves 100 % (traffic statuses)", "service", ("cloudrun",), "judge_service_status", "service_status"),
    Check("status.revisions_listed", 1, "the service lists its revisions", "service", ("cloudrun",), "judge_service_status", "service_status"),
    Check("source.git_clean", 1, "the checkout has no uncommitted changes", "source", ("source.repo_dir",), "judge_git_clean", "source_status"),
    Check("source.git_branch", 1, "the checkout is on the expected branch", "source", ("source.repo_dir", "source.expected_branch"), "judge_git_branch", "source_status"),
    Check("source.ws_routes_present", 1, "the ASGI app registers the WebSocket routes", "source", ("source.repo_dir", "source.app"), "judge_ws_routes_present", "source_status"),
    Check("status.url_reachable", 1, "the service URL answers HTTP below 500", "http", (*_T, "target.health_path"), "judge_url_reachable", "health_and_routes"),
    Check("health.backend", 1, "the health endpoint answers 200", "http", (*_T, "target.health_path"), "judge_health_backend", "health_and_routes"),
    Check("ws.routes_probe", 1, "every WebSocket path upgrades (names the incident signature)", "ws", (*_T, "target.ws_paths"), "judge_ws_routes_probe", "health_and_routes"),
    Check("cloudrun.ws_preflight", 1, "service settings suit WebSockets (warnings)", "service", ("cloudrun",), "judge_ws_preflight", "ws_preflight"),
    # phase 2: deploy
    Check("deploy.executed", 2, "the deploy request was accepted", "service", ("cloudrun", "cloudrun.deploy"), "judge_deploy", "deploy"),
    Check("deploy.operation_succeeded", 2, "the deploy operation succeeded and the revision is ready", "service", ("cloudrun", "cloudrun.deploy"), "judge_deploy", "deploy"),
    Check("deploy.tag_verified", 2, "before any traffic, the new revision answers on its tag URL (verify-then-shift)", "service", ("cloudrun", "cloudrun.deploy", "cloudrun.verify_then_shift"), "judge_target_verified", "deploy"),
    Check("deploy.latest_serving", 2, "the deployed revision serves 100 %", "service", ("cloudrun", "cloudrun.deploy"), "judge_latest_serving", "deploy"),
    Check("health.ready_within", 2, "/health answers 200 within health_ready_s", "http", (*_T, "cloudrun.deploy", "target.health_path"), "judge_ready_within", "warmup"),
    Check("ws.health_ready_within", 2, "the WebSocket health answers 200 within ws_health_ready_s", "http", (*_T, "cloudrun.deploy", "target.ws_health_path"), "judge_ready_within", "warmup"),
    Check("health.no_5xx_during_warmup", 2, "no 5xx while warming up", "http", (*_T, "cloudrun.deploy"), "judge_no_5xx_during_warmup", "warmup"),
    Check("deploy.logs_clean", 2, "the new revision logged no errors", "monitor", ("logging",), "judge_log_entries", "deploy_logs"),
    # phase 3: endpoint validation
    Check("ws.upgrade", 3, "every WebSocket path answers 101 with a valid accept", "ws", (*_T, "target.ws_paths"), "judge_ws_upgrade", "ws_upgrade"),
    Check("ws.health", 3, "the WebSocket health endpoint answers 200 (with ws_health_field when set)", "http", (*_T, "target.ws_health_path"), "judge_ws_health", "http_endpoints"),
    Check("ws.test_endpoint", 3, "the WebSocket test route answers", "http", (*_T, "target.ws_test_path"), "judge_ws_test_endpoint", "http_endpoints"),
    Check("http.latency", 3, "HTTP answers faster than http_latency_s", "http", (*_T, "target.health_path"), "judge_http_latency", "http_endpoints"),
    Check("ws.roundtrip", 3, "a ping is answered with a pong", "ws", _T, "judge_ws_roundtrip", "ws_roundtrip"),
    Check("logs.no_routing_errors", 3, "no 404 on WebSocket paths or routing error in the logs", "monitor", ("logging",), "judge_log_entries", "routing_logs"),
    # phase 4: mission-critical
    Check("tests.duration", 4, "the mission-critical suites finish within tests_max_s", "commands", ("commands.mission_critical",), "judge_tests_duration", "test_suites"),
    Check("e2e.agent_response", 4, "the agent's final event arrives within event_timeout_s", "agent", (*_T, "flows.agent"), "judge_agent_response", "agent_response"),
    Check("load.success_rate", 4, "enough concurrent sessions succeed", "monitor", (*_T, "flows.load"), "judge_load", "load_test"),
    Check("load.latency_p95", 4, "p95 of the load flow's expect steps under load stays below load_p95_s", "monitor", (*_T, "flows.load"), "judge_load", "load_test"),
    Check("load.no_server_errors", 4, "no 5xx upgrade and no server-side close under load", "monitor", (*_T, "flows.load"), "judge_load", "load_test"),
    # phase 5: business value
    Check("auth.config", 5, "the auth service's config endpoint answers 200 JSON", "http", ("target.auth_url", "target.auth_config_path"), "judge_auth_config", "auth_checks"),
    Check("auth.health", 5, "the auth service's health endpoint answers 200", "http", ("target.auth_url", "target.auth_health_path"), "judge_auth_health", "auth_checks"),
    Check("auth.ws_authenticated", 5, "a valid token opens a working socket", "ws", ("auth", *_T), "judge_auth_ws_authenticated", "auth_checks"),
    Check("auth.rejects_invalid", 5, "missing, malformed, wrongly signed and expired tokens are refused", "ws", ("auth", *_T), "judge_auth_rejects_invalid", "auth_checks"),
    Check("chat.flow", 5, "a chat message gets agent events back", "agent", (*_T, "flows.chat"), "judge_chat_flow", "chat_flow"),
    Check("isolation.sessions", 5, "concurrent users each get their response in time", "agent", (*_T, "flows.isolation"), "judge_isolation_sessions", "isolation"),
    Check("isolation.no_cross_user", 5, "no session receives another user's events", "agent", (*_T, "flows.isolation"), "judge_isolation_no_cross_user", "isolation"),
    Check("events.critical_delivered", 5, "the critical events arrive", "agent", (*_T, "flows.agent"), "judge_critical_delivered", "event_delivery"),
    Check("events.order", 5, "events arrive in the protocol's order", "agent", (*_T, "flows.agent"), "judge_events_order", "event_delivery"),
    Check("events.structure", 5, "every event carries its required fields", "agent", (*_T, "flows.agent"), "judge_events_structure", "event_delivery"),
    Check("events.latency", 5, "every event arrives within event_timeout_s", "agent", (*_T, "flows.agent"), "judge_events_latency", "event_delivery"),
    # phase 6: rollback
    Check("rollback.target_identified", 6, "the rollback target is chosen by evidence (SPEC 9), or refused", "service", ("cloudrun",), "judge_rollback_target", "rollback_target"),
    Check("rollback.target_verified", 6, "the target answers on its tag URL before traffic moves", "service", ("cloudrun",), "judge_target_verified", "rollback_traffic"),
    Check("rollback.traffic_moved", 6, "100 % of traffic moved to the target", "service", ("cloudrun",), "judge_traffic_moved", "rollback_traffic"),
    Check("rollback.health", 6, "/health answers 200 after the rollback", "http", (*_T, "target.health_path"), "judge_health_backend", "rollback_verify"),
    Check("rollback.smoke", 6, "a WebSocket round trip works after the rollback", "ws", _T, "judge_ws_roundtrip", "rollback_verify"),
    # phase 7: monitoring
    Check("monitor.uptime", 7, "health samples answer 2xx often enough", "monitor", (*_T, "target.health_path"), "judge_monitor_uptime", "monitor"),
    Check("monitor.ws_failure_rate", 7, "few WebSocket samples fail", "monitor", _T, "judge_monitor_ws_failure_rate", "monitor"),
    Check("monitor.avg_response", 7, "mean health latency stays below monitor_avg_response_s", "monitor", (*_T, "target.health_path"), "judge_monitor_avg_response", "monitor"),
    Check("monitor.ws_404", 7, "no WebSocket handshake answers 404", "monitor", _T, "judge_monitor_ws_404", "monitor"),
    Check("monitor.hold", 7, "a socket held for hold_s ends cleanly", "monitor", _T, "judge_monitor_hold", "hold"),
    Check("monitor.log_errors", 7, "no errors in the service's logs", "monitor", ("logging",), "judge_log_entries", "log_errors"),
)
# fmt: on

CATALOG: dict[str, Check] = {c.id: c for c in _CHECKS}
CHECK_IDS: frozenset[str] = frozenset(CATALOG)

_STEPS = (
    StepInfo("service_status", 1, "Cloud Run service status"),
    StepInfo("source_status", 1, "Local source"),
    StepInfo("health_and_routes", 1, "Health and WebSocket route probe"),
    StepInfo("ws_preflight", 1, "Cloud Run WebSocket preflight"),
    StepInfo("predeploy", 2, "Pre-deployment commands", dynamic="predeploy."),
    StepInfo("deploy", 2, "Deploy"),
    StepInfo("warmup", 2, "Warm-up after deploy"),
    StepInfo("deploy_logs", 2, "Deployment logs"),
    StepInfo("ws_upgrade", 3, "WebSocket upgrade on every path"),
    StepInfo("http_endpoints", 3, "HTTP endpoints and latency"),
    StepInfo("ws_roundtrip", 3, "WebSocket round trip"),
    StepInfo("routing_logs", 3, "Routing errors in the logs"),
    StepInfo("test_suites", 4, "Mission-critical test suites", dynamic="tests."),
    StepInfo("agent_response", 4, "End-to-end agent response"),
    StepInfo("load_test", 4, "Concurrent load"),
    StepInfo("auth_checks", 5, "Authentication"),
    StepInfo("chat_flow", 5, "Chat message flow"),
    StepInfo("isolation", 5, "Multi-user isolation"),
    StepInfo("event_delivery", 5, "Critical event delivery"),
    StepInfo("rollback_target", 6, "Rollback target"),
    StepInfo("rollback_traffic", 6, "Rollback: verify the target, then move traffic"),
    StepInfo("rollback_verify", 6, "Rollback verification"),
    StepInfo("monitor", 7, "Monitoring window"),
    StepInfo("hold", 7, "Long-lived socket"),
    StepInfo("log_errors", 7, "Errors in the logs"),
)
STEPS: dict[str, StepInfo] = {s.name: s for s in _STEPS}


def _flag(getter: Callable[[Settings], object]) -> Callable[[Settings], bool]:
    return lambda s: bool(getter(s))


# Need -> (configured?, the skip reason when it is not). A need missing here (a path
# with a default, a flow with the seed's default) is always configured: only declaring
# it absent turns its checks off.
NEEDS: dict[str, tuple[Callable[[Settings], bool], str]] = {
    "target": (_flag(lambda s: s.target.base_url), "skip: [target] base_url is not configured"),
    "target.auth_url": (
        _flag(lambda s: s.target.auth_url),
        "skip: [target] auth_url is not configured",
    ),
    "auth": (_flag(lambda s: s.auth.enabled), "skip: [auth] mode is none"),
    "cloudrun": (
        _flag(lambda s: s.cloudrun.configured),
        "skip: [cloudrun] project, region and service are not configured",
    ),
    "cloudrun.deploy": (
        _flag(lambda s: s.cloudrun.deploy_image or s.cloudrun.deploy_command),
        "skip: no [cloudrun] deploy_image or deploy_command configured",
    ),
    "cloudrun.verify_then_shift": (
        _flag(lambda s: getattr(s.cloudrun, "deploy_strategy", "direct") == "verify-then-shift"),
        'skip: [cloudrun] deploy_strategy is "direct": the deploy takes all traffic at once',
    ),
    "logging": (
        _flag(lambda s: s.logging.enabled and s.cloudrun.configured),
        "skip: [logging] enabled is false or [cloudrun] is not configured",
    ),
    "source.repo_dir": (
        _flag(lambda s: s.has("source") and s.source.repo_dir),
        "skip: [source] repo_dir is not configured",
    ),
    "source.expected_branch": (
        _flag(lambda s: s.source.expected_branch),
        "skip: [source] expected_branch is not configured",
    ),
    "source.app": (_flag(lambda s: s.source.app), "skip: [source] app is not configured"),
    "commands.mission_critical": (
        _flag(lambda s: s.mission_critical),
        "skip: no [[commands.mission_critical]] configured",
    ),
}


def is_known(check_id: str) -> bool:
    """True for a catalog id or an id with a dynamic prefix."""
    return check_id in CATALOG or check_id.startswith(DYNAMIC_PREFIXES)


def phase_of(check_id: str) -> int:
    """The phase of ``check_id`` (dynamic ids: the phase of the step that builds them).

    Raises:
        KeyError: the id is not in the catalog (a typo in a judge or a step).
    """
    if check_id in CATALOG:
        return CATALOG[check_id].phase
    for step in _STEPS:
        if step.dynamic and check_id.startswith(step.dynamic):
            return step.phase
    if check_id.startswith("runner.phase_"):
        return int(check_id.removeprefix("runner.phase_"))
    raise KeyError(f"{check_id!r} is not a catalog check id")


def steps_of(phase: int) -> tuple[StepInfo, ...]:
    """The steps phase ``phase`` runs, in the order its notebook calls them.

    The one phase -> steps table: the notebooks' cells, the in-process engine and the
    tests all follow it (``phase_summary`` closes every phase and is not listed).
    """
    return tuple(s for s in _STEPS if s.phase == phase)


def step_ids(step: str) -> tuple[str, ...]:
    """The catalog ids a step records, in catalog order."""
    return tuple(c.id for c in _CHECKS if c.step == step)


def _declared_absent(key: str, settings: Settings) -> bool:
    # "target" is absent when any key under it is meant; a dotted need by its own key.
    return key in settings.declared_absent


def applicability(check_id: str, settings: Settings) -> str | None:
    """Why ``check_id`` does not apply to this service, as the environment file declares.

    Returns:
        the user's reason from ``[checks.not_applicable]``; else ``"<key> = false:
        declared absent by the environment file"`` for the first needed key declared
        absent; else None (the check applies, or is merely not configured).
    """
    reason = settings.not_applicable.get(check_id)
    if reason is not None:
        return reason
    if check_id == "isolation.no_cross_user" and settings.protocol.shared_room:
        return (
            "[protocol] shared_room = true: users share a room, another user's frames are expected"
        )
    check = CATALOG.get(check_id)
    for key in check.needs if check else ():
        if _declared_absent(key, settings):
            return f"{key} = false: declared absent by the environment file"
    return None


def skip_reason(check_id: str, settings: Settings) -> str | None:
    """Why ``check_id`` is ``skip`` before anything is observed (None: run it).

    The declared reasons of :func:`applicability` first, then the first need whose
    section is not configured.
    """
    declared = applicability(check_id, settings)
    if declared is not None:
        return declared
    check = CATALOG.get(check_id)
    for key in check.needs if check else ():
        rule = NEEDS.get(key)
        if rule is not None and not rule[0](settings):
            return rule[1]
    return None
