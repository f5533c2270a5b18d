"""The checks: one catalog of ids and the pure judges, one module per family.

Family (module) -> id prefixes:

- ``catalog``: every id, its phase, title, needs, judge and step; applicability.
- ``causes``: status and close causes, shared wording, the :class:`Verdict` builder.
- ``http``: ``health.*``, ``status.url_reachable``, ``http.latency``, ``ws.health``,
  ``ws.test_endpoint``, ``ws.health_ready_within``, ``auth.config``, ``auth.health``,
  ``rollback.health``.
- ``ws``: ``ws.routes_probe``, ``ws.upgrade``, ``ws.roundtrip``, ``auth.ws_authenticated``,
  ``auth.rejects_invalid``, ``rollback.smoke``.
- ``agent``: ``e2e.agent_response``, ``chat.flow``, ``events.*``, ``isolation.*``.
- ``monitor``: ``monitor.*``, ``load.*``, ``deploy.logs_clean``, ``logs.no_routing_errors``.
- ``service``: ``status.*`` (Cloud Run), ``cloudrun.ws_preflight``, ``deploy.*``,
  ``rollback.target_identified``, ``rollback.target_verified``, ``rollback.traffic_moved``
  (and the rollback-target rule of SPEC 9).
- ``source``: ``source.*``.
- ``commands``: ``predeploy.<name>``, ``tests.<name>``, ``tests.duration``.

Judges take observations (:mod:`runbook_lib.observations`) and thresholds and return
:class:`~runbook_lib.results.CheckResult` s: no I/O, no clock, no network library
imported (a test checks it). Missing evidence is ``fail`` or ``error``, never ``pass``.

This door presents what the steps use: every judge, the catalog's step lookups
(``STEPS``, ``step_ids``, ``applicability``, ``skip_reason``), :class:`Verdict`, and the
rollback rule and shift gate. Everything else (the catalog table, the cause wording) is
imported from the module that owns it (``checks.catalog``, ``checks.causes``, ...).
"""

from __future__ import annotations

from .agent import (
    judge_agent_response,
    judge_chat_flow,
    judge_critical_delivered,
    judge_events_latency,
    judge_events_order,
    judge_events_structure,
    judge_isolation_no_cross_user,
    judge_isolation_sessions,
)
from .catalog import (
    STEPS,
    applicability,
    skip_reason,
    step_ids,
)
from .causes import Verdict
from .commands import (
    judge_command,
    judge_predeploy,
    judge_tests,
    judge_tests_duration,
)
from .http import (
    judge_auth_config,
    judge_auth_health,
    judge_health_backend,
    judge_http_latency,
    judge_no_5xx_during_warmup,
    judge_ready_within,
    judge_url_reachable,
    judge_ws_health,
    judge_ws_test_endpoint,
)
from .monitor import (
    judge_load,
    judge_log_entries,
    judge_monitor_avg_response,
    judge_monitor_hold,
    judge_monitor_uptime,
    judge_monitor_ws_404,
    judge_monitor_ws_failure_rate,
)
from .service import (
    ShiftRecord,
    choose_rollback_target,
    gate_outcome,
    judge_deploy,
    judge_latest_serving,
    judge_rollback_target,
    judge_service_status,
    judge_target_verified,
    judge_traffic_moved,
    judge_ws_preflight,
)
from .source import (
    judge_git_branch,
    judge_git_clean,
    judge_ws_routes_present,
)
from .ws import (
    judge_auth_rejects_invalid,
    judge_auth_ws_authenticated,
    judge_ws_roundtrip,
    judge_ws_routes_probe,
    judge_ws_upgrade,
)

__all__ = [
    "STEPS",
    "ShiftRecord",
    "Verdict",
    "applicability",
    "choose_rollback_target",
    "gate_outcome",
    "judge_agent_response",
    "judge_auth_config",
    "judge_auth_health",
    "judge_auth_rejects_invalid",
    "judge_auth_ws_authenticated",
    "judge_chat_flow",
    "judge_command",
    "judge_critical_delivered",
    "judge_deploy",
    "judge_events_latency",
    "judge_events_order",
    "judge_events_structure",
    "judge_git_branch",
    "judge_git_clean",
    "judge_health_backend",
    "judge_http_latency",
    "judge_isolation_no_cross_user",
    "judge_isolation_sessions",
    "judge_latest_serving",
    "judge_load",
    "judge_log_entries",
    "judge_monitor_avg_response",
    "judge_monitor_hold",
    "judge_monitor_uptime",
    "judge_monitor_ws_404",
    "judge_monitor_ws_failure_rate",
    "judge_no_5xx_during_warmup",
    "judge_predeploy",
    "judge_ready_within",
    "judge_rollback_target",
    "judge_service_status",
    "judge_target_verified",
    "judge_tests",
    "judge_tests_duration",
    "judge_traffic_moved",
    "judge_url_reachable",
    "judge_ws_health",
    "judge_ws_preflight",
    "judge_ws_roundtrip",
    "judge_ws_routes_present",
    "judge_ws_routes_probe",
    "judge_ws_test_endpoint",
    "judge_ws_upgrade",
    "skip_reason",
    "step_ids",
]
