"""The environment file's schema: one frozen dataclass per section, and :class:`Settings`.

One file describes one target (``environments/<name>.toml`` or any path). These types
are what every module reads; ``settings_load`` builds them from the file and validates
every key (documented key by key in ``docs/configuration.md``). Secrets never live in
the file: ``AuthSettings`` holds the values read from the environment variables the
file names, already registered for redaction by the loader.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

from .exceptions import ConfigError
from .flows import Flow, FlowStep, default_flows
from .protocol import ProtocolSettings, placeholder_names

__all__ = [
    "AuthSettings",
    "CloudRunSettings",
    "CommandSpec",
    "LoadSettings",
    "LoggingSettings",
    "Settings",
    "SourceSettings",
    "TargetSettings",
    "Thresholds",
    "Timeouts",
    "resolve_flow",
]


@dataclass(frozen=True, slots=True)
class TargetSettings:
    """``[target]``: where the service answers.

    A path set to ``false`` in the file (the service has no such endpoint) is ``None``
    here and listed in ``Settings.declared_absent``.
    """

    base_url: str = ""
    ws_url: str = ""
    ws_paths: tuple[str, ...] = ("/websocket", "/ws/test")
    primary_ws_path: str = "/websocket"
    health_path: str | None = "/health"
    ws_health_path: str | None = "/ws/health"
    ws_test_path: str | None = "/ws/test"
    ws_health_field: str = ""
    auth_url: str = ""
    auth_config_path: str | None = "/auth/config"
    auth_health_path: str | None = "/health"

    def http(self, path: str | None) -> str:
        """Absolute HTTP URL of ``path`` on the service.

        Raises:
            ConfigError: ``path`` is ``None``: the file declared the endpoint absent
                (``false``), so no check that needs it may run (the catalog skips them).
        """
        return self.base_url.rstrip("/") + "/" + _declared(path).lstrip("/")

    def ws(self, path: str | None = None) -> str:
        """Absolute WebSocket URL of ``path`` (default: the primary WS path)."""
        return self.ws_url.rstrip("/") + "/" + (path or self.primary_ws_path).lstrip("/")

    def auth(self, path: str | None) -> str:
        """Absolute URL of ``path`` on the auth service ('' when none is configured)."""
        if not self.auth_url:
            return ""
        return self.auth_url.rstrip("/") + "/" + _declared(path).lstrip("/")


def _declared(path: str | None) -> str:
    if path is None:
        raise ConfigError(
            "a check asked for an endpoint the environment file declared absent (false); "
            "its checks should have been skipped: report this as a runbook bug"
        )
    return path


@dataclass(frozen=True, slots=True)
class AuthSettings:
    """``[auth]``: how a WebSocket client authenticates.

    ``token`` and ``jwt_secret`` hold the values read from the environment
    variables named by ``token_env`` / ``jwt_secret_env`` (already registered
    as secrets); ``tokens`` those named by ``token_envs`` (one per simulated
    user); ``token_endpoint`` is a dev-only URL that issues a token for a
    user id (POST ``{"user_id": ...}`` -> ``{"token": ...}``), as the sandbox has.
    ``mode = "message"``: the token travels in a frame, where a flow writes ``{token}``.
    """

    mode: str = "none"
    subprotocol: str = "jwt.{token}"
    query_param: str = "token"
    token_env: str = ""
    token_envs: tuple[str, ...] = ()
    jwt_secret_env: str = ""
    jwt_claims: Mapping[str, Any] = field(default_factory=dict)
    ttl_s: int = 300
    token_endpoint: str = ""
    default_user: str = "runbook-user"
    token: str = field(default="", repr=False)
    jwt_secret: str = field(default="", repr=False)
    tokens: tuple[str, ...] = field(default=(), repr=False)

    @property
    def enabled(self) -> bool:
        return self.mode != "none"

    @property
    def distinct_identities(self) -> bool:
        """True when each simulated user can get its own credential (minted, issued,
        or one of several ready tokens); False for one static token."""
        return bool(self.jwt_secret or self.token_endpoint or len(self.tokens) > 1)


@dataclass(frozen=True, slots=True)
class CloudRunSettings:
    """``[cloudrun]``: the service on Cloud Run (or the sandbox emulator)."""

    project: str = ""
    region: str = ""
    service: str = ""
    api_endpoint: str = ""
    deploy_image: str = ""
    deploy_command: str = ""
    # SPEC 9: "direct" (the deploy takes all traffic) or "verify-then-shift" (no traffic,
    # verified on its tag URL, then shifted in these steps with a gate after each).
    deploy_strategy: str = "direct"
    shift_steps: tuple[int, ...] = (10, 50, 100)

    @property
    def configured(self) -> bool:
        return bool(self.project and self.region and self.service)

    @property
    def service_path(self) -> str:
        return f"projects/{self.project}/locations/{self.region}/services/{self.service}"


@dataclass(frozen=True, slots=True)
class LoggingSettings:
    """``[logging]``: Cloud Logging reads (same endpoint as Cloud Run unless set)."""

    enabled: bool = False
    api_endpoint: str = ""
    lookback_s: int = 900
    # How long a log check waits for this run's own requests to show in the request log.
    ingestion_wait_s: float = 120.0


@dataclass(frozen=True, slots=True)
class SourceSettings:
    """``[source]``: the local checkout the deploy is built from."""

    repo_dir: str = ""
    expected_branch: str = ""
    app: str = ""
    expected_ws_routes: tuple[str, ...] = ()
    python: str = ""
    import_root: str = ""


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One configured command (``[[commands.predeploy]]`` / ``[[commands.mission_critical]]``)."""

    name: str
    run: str
    timeout_s: float = 300.0
    junit: str = ""
    cwd: str = ""


@dataclass(frozen=True, slots=True)
class Thresholds:
    """``[thresholds]``: pass/fail limits; defaults are the seed plan's numbers."""

    health_ready_s: float = 30.0
    ws_health_ready_s: float = 60.0
    http_latency_s: float = 1.0
    http_latency_samples: int = 5
    load_connections: int = 10
    load_messages: int = 1
    load_ramp_s: float = 0.0
    load_success_rate: float = 0.8
    load_p95_s: float = 3.0
    isolation_users: int = 5
    isolation_success_rate: float = 0.8
    isolation_response_s: float = 5.0
    event_timeout_s: float = 30.0
    critical_events_min: int = 5
    tests_max_s: float = 300.0
    monitor_window_s: float = 60.0
    monitor_interval_s: float = 2.0
    monitor_uptime: float = 0.999
    monitor_ws_failure_rate: float = 0.01
    monitor_avg_response_s: float = 2.0
    monitor_min_samples: int = 5
    hold_s: float = 30.0
    poll_interval_s: float = 1.0


@dataclass(frozen=True, slots=True)
class Timeouts:
    """``[timeouts]``: every network wait is bounded by one of these."""

    connect_s: float = 5.0
    read_s: float = 10.0
    cloudrun_s: float = 30.0
    operation_s: float = 300.0
    command_s: float = 300.0


@dataclass(frozen=True, slots=True)
class LoadSettings:
    """``[load]``: where phase 4's load runs (this machine, or a Cloud Run Job; issue 13)."""

    engine: str = "local"
    tasks: int = 4
    sessions_per_task: int = 0
    parallelism: int = 0
    max_retries: int = 0
    image: str = ""
    region: str = ""
    job: str = ""
    service_account: str = ""
    timeout_s: float = 300.0

    def job_name(self, service: str) -> str:
        """The job's name: ``job``, else ``<service>-runbook-load``."""
        return self.job or f"{service or 'runbook'}-runbook-load"


@dataclass(frozen=True, slots=True)
class Settings:
    """A validated environment file."""

    name: str
    path: str
    target: TargetSettings
    auth: AuthSettings
    protocol: ProtocolSettings
    cloudrun: CloudRunSettings
    logging: LoggingSettings
    source: SourceSettings
    predeploy: tuple[CommandSpec, ...]
    mission_critical: tuple[CommandSpec, ...]
    thresholds: Thresholds
    timeouts: Timeouts
    auto_approve: bool = False
    sandbox: bool = False
    present: frozenset[str] = frozenset()
    warnings: tuple[str, ...] = ()
    # SPEC section 8: user-defined flows, checks declared not applicable (id -> reason),
    # and keys declared absent with ``false`` (dotted, e.g. "target.ws_test_path").
    flows: Mapping[str, Flow] = field(default_factory=dict)
    not_applicable: Mapping[str, str] = field(default_factory=dict)
    declared_absent: frozenset[str] = frozenset()
    load: LoadSettings = field(default_factory=LoadSettings)

    def has(self, section: str) -> bool:
        """True when ``[section]`` was present in the file."""
        return section in self.present

    def redacted_dict(self) -> dict[str, Any]:
        """The settings as a dict with no secret value in it (for manifests and displays)."""
        out: dict[str, Any] = {"name": self.name, "path": self.path}
        for part in (
            "target",
            "auth",
            "protocol",
            "cloudrun",
            "logging",
            "source",
            "thresholds",
            "timeouts",
            "load",
        ):
            obj = getattr(self, part)
            out[part] = {f.name: _plain(getattr(obj, f.name)) for f in fields(obj)}
        out["auth"]["token"] = "[set]" if self.auth.token else ""
        out["auth"]["jwt_secret"] = "[set]" if self.auth.jwt_secret else ""
        out["commands"] = {
            "predeploy": [_cmd(c) for c in self.predeploy],
            "mission_critical": [_cmd(c) for c in self.mission_critical],
        }
        out["auto_approve"] = self.auto_approve
        out["checks"] = {"not_applicable": dict(self.not_applicable)}
        out["declared_absent"] = sorted(self.declared_absent)
        out["flows"] = {
            name: [
                {k: _plain(getattr(step, k)) for k in _STEP_FIELDS if getattr(step, k)}
                for step in flow.steps
            ]
            for name, flow in self.flows.items()
        }
        return out


_STEP_FIELDS = tuple(f.name for f in fields(FlowStep))


def _cmd(c: CommandSpec) -> dict[str, Any]:
    return {"name": c.name, "run": c.run, "timeout_s": c.timeout_s, "junit": c.junit, "cwd": c.cwd}


def _plain(v: Any) -> Any:
    if isinstance(v, Mapping):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, tuple):
        return [_plain(x) for x in v]
    return v


# ---------------------------------------------------------------- flows

# A flow the user did not define falls back to another flow the user did define before
# the seed's default: an isolation test of a service whose agent conversation is
# configured must run that conversation, not the seed's.
_FALLBACK = {"isolation": ("agent",)}


def resolve_flow(settings: Settings, name: str) -> Flow:
    """The user's ``[flows.NAME]`` when defined, else the seed's default.

    ``isolation`` not defined but ``agent`` defined: the user's agent flow (renamed);
    ``auth`` not defined: the ``load`` flow (keeping its name). With ``[auth] mode = "message"`` a flow
    that does not send ``{token}`` itself runs after the ``auth`` flow's steps, so
    every session logs in first.

    Raises:
        KeyError: neither the user nor the defaults define ``name``.
    """
    flow = _own_flow(settings, name)
    if name == "auth" or getattr(settings.auth, "mode", "none") != "message":
        return flow
    if any(s.send is not None and "token" in placeholder_names(s.send) for s in flow.steps):
        return flow
    return Flow(name, _own_flow(settings, "auth").steps + flow.steps)


def _own_flow(settings: Settings, name: str) -> Flow:
    user = settings.flows.get(name)
    if user is not None:
        return user
    if name == "auth":
        # No conversation of its own: the auth checks probe with the load flow (the
        # user's, or the seed's ping), named as such in what they report.
        return _own_flow(settings, "load")
    for other in _FALLBACK.get(name, ()):
        if other in settings.flows:
            return Flow(name, settings.flows[other].steps)
    return default_flows(settings.protocol)[name]
