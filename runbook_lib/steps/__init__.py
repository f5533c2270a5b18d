"""One function per notebook step: observe, judge, record, display.

Each step takes the notebook's :class:`PhaseContext`, gathers evidence with the
I/O modules (``http_checks``, ``ws_checks``, ``cloudrun``, ``logs``, ``load``,
``commands``, ``source``), judges it with the pure functions of ``runbook_lib.checks``,
records the results in the context (persisted to the run folder) and returns a
:class:`StepReport` that Jupyter displays. Steps hold no judging logic of their
own beyond choosing what to observe. The :func:`~runbook_lib.steps.common.step`
decorator reads each step's title and check ids from the catalog, skips checks
whose configuration is absent or declared not applicable, and turns an unexpected
exception inside a step into ``error`` results, never a crashed notebook.
"""

from __future__ import annotations

from .business import auth_checks, chat_flow, event_delivery, isolation
from .common import phase_summary
from .deployment import deploy, deploy_logs, predeploy, warmup
from .mission import agent_response, load_test, test_suites
from .monitoring import hold, log_errors, monitor
from .rollback import rollback_target, rollback_traffic, rollback_verify
from .status import health_and_routes, service_status, source_status, ws_preflight
from .validation import http_endpoints, routing_logs, ws_roundtrip, ws_upgrade

__all__ = [
    "agent_response",
    "auth_checks",
    "chat_flow",
    "deploy",
    "deploy_logs",
    "event_delivery",
    "health_and_routes",
    "hold",
    "http_endpoints",
    "isolation",
    "load_test",
    "log_errors",
    "monitor",
    "phase_summary",
    "predeploy",
    "rollback_target",
    "rollback_traffic",
    "rollback_verify",
    "routing_logs",
    "service_status",
    "source_status",
    "test_suites",
    "warmup",
    "ws_preflight",
    "ws_roundtrip",
    "ws_upgrade",
]
