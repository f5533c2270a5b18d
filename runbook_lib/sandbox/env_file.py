"""The environment file of a running sandbox (``environments/local.toml``).

:func:`environment_toml` renders the complete file for a :class:`SandboxInfo`: every
key the runbook reads, pointing at the sandbox's emulator, router and auth service.
No secret is written: tokens come from the auth service's dev-token endpoint.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import sys
from pathlib import Path

from .state import SandboxInfo, checkout_root

__all__ = [
    "DEFAULT_ENV_FILE",
    "default_env_file",
    "environment_toml",
    "write_env_file",
]


DEFAULT_ENV_FILE = Path("environments/local.toml")  # under the checkout in fact


def default_env_file() -> Path:
    # RUNBOOK_ENV_DIR when set (as load_settings), else the checkout's environments/.
    if os.environ.get("RUNBOOK_ENV_DIR"):
        return Path(os.environ["RUNBOOK_ENV_DIR"]) / "local.toml"
    return checkout_root() / "environments" / "local.toml"


def _repo_root() -> str:
    """The checkout this package runs from: the sandbox's "local source" (fixed code)."""
    here = Path(__file__).resolve().parents[2]
    return str(here if (here / "pyproject.toml").is_file() else Path.cwd())


def environment_toml(info: SandboxInfo) -> str:
    """The complete environment file (SPEC section 4) for a running sandbox; no secrets."""
    app_line = ""
    with contextlib.suppress(Exception):
        import importlib

        if hasattr(importlib.import_module("runbook_lib.sandbox.backend"), "app"):
            app_line = 'app = "runbook_lib.sandbox.backend:app"\n'
    py = shlex.quote(sys.executable)
    junit_local = Path(info.state_dir) / "junit-predeploy.xml"
    junit_remote = Path(info.state_dir) / "junit-mission-critical.xml"
    remote_cmd = (
        f"{py} -m runbook_lib.sandbox.suite --base-url {info.service_url} "
        f"--auth-url {info.auth_url} --junit {junit_remote}"
    )
    return f'''# Written by `runbook sandbox up` at {info.started_at}; rewritten on every `up`.
# The embedded sandbox: every URL is on 127.0.0.1 and changes with each start.
# No secret lives here: WebSocket tokens come from the auth service's dev-token endpoint.
name = "local"
sandbox = true
auto_approve = true

[target]
base_url = "{info.service_url}"
ws_paths = ["/websocket", "/ws/test"]
primary_ws_path = "/websocket"
health_path = "/health"
ws_health_path = "/ws/health"
ws_health_field = "connections.active"
ws_test_path = "/ws/test"
auth_url = "{info.auth_url}"
auth_config_path = "/auth/config"
auth_health_path = "/health"

[auth]
mode = "subprotocol"
subprotocol = "jwt.{{token}}"
token_endpoint = "{info.auth_url}/auth/dev-token"
ttl_s = 300

[cloudrun]
project = "{info.project}"
region = "{info.region}"
service = "{info.service}"
api_endpoint = "{info.emulator_url}"
deploy_image = "{info.deploy_image}"

[logging]
enabled = true
lookback_s = 900

[source]
repo_dir = "{_repo_root()}"
{app_line}expected_ws_routes = ["/websocket", "/ws/test"]

# The sandbox's own mission-critical suite (runbook_lib/sandbox/suite.py), as the seed
# runs tests/mission_critical/*: against the fixed code before the deploy, and against
# the service after it.
[[commands.predeploy]]
name = "local_agent_events_suite"
run = "{py} -m runbook_lib.sandbox.suite --local --junit {junit_local}"
timeout_s = 60
junit = "{junit_local}"

[[commands.mission_critical]]
name = "websocket_agent_events"
run = "{remote_cmd}"
timeout_s = 60
junit = "{junit_remote}"

[thresholds]
# Short windows so a full sandbox run takes a couple of minutes.
health_ready_s = 30
ws_health_ready_s = 60
event_timeout_s = 10
tests_max_s = 120
monitor_window_s = 8
monitor_interval_s = 1
hold_s = 4
poll_interval_s = 0.5

[timeouts]
connect_s = 3
read_s = 10
cloudrun_s = 15
operation_s = 60
command_s = 120
'''


def write_env_file(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)
