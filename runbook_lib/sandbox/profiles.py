"""Sandbox backend profiles: the faults a sandbox revision can carry.

A revision's profile is chosen by its container image tag
(``sandbox/backend:<profile>``), exactly as a real Cloud Run revision's
behaviour is fixed by the image it was deployed from. The knobs below tune the
time-based faults and are read from the backend process's environment, so the
daemon (or a test) can shorten them without a code change.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_DELAY_S",
    "DEFAULT_IDLE_CLOSE_S",
    "DEFAULT_WARMUP_S",
    "EXPECTED_FAILURES",
    "IMAGE_PREFIX",
    "PROFILES",
    "ROUTER_STRIPS_UPGRADE",
    "ProfileKnobs",
    "image_for_profile",
    "profile_from_image",
    "run_fast",
]

IMAGE_PREFIX = "sandbox/backend:"

PROFILES: dict[str, str] = {
    "healthy": "Everything works: WS routes registered, auth enforced, five events in order.",
    "ws-routes-missing": (
        "The WebSocket router was not included: WS upgrades, /ws/health and /ws/test "
        "answer 404 while /health is 200 (the incident)."
    ),
    "proxy-strips-upgrade": (
        "The app is healthy but the front end strips the hop-by-hop Upgrade/Connection "
        "headers, so the backend sees a plain GET and the handshake fails."
    ),
    "slow-warmup": (
        "Every endpoint answers 503 {'status': 'starting'} for SANDBOX_WARMUP_S seconds "
        "after start (WS handshakes refused with 503)."
    ),
    "drop-events": "Agent runs never emit tool_completed.",
    "reorder-events": "Agent runs emit tool_executing before agent_thinking.",
    "cross-user-leak": "Agent events are broadcast to every open socket, other users included.",
    "auth-bypass": "Any token (or none) is accepted; the user id comes from the unverified token.",
    "idle-close": (
        "SANDBOX_IDLE_CLOSE_S after accept the server drops the TCP connection without "
        "a close frame (the client sees 1006)."
    ),
    "slow-responses": "SANDBOX_DELAY_S is added before every HTTP response and WebSocket reply.",
    "deploy-fails": "The container exits with code 1 at startup and never listens.",
}

# Profiles whose fault lives in the front end (the router), not in the app.
ROUTER_STRIPS_UPGRADE: set[str] = {"proxy-strips-upgrade"}

DEFAULT_WARMUP_S = 6.0
DEFAULT_IDLE_CLOSE_S = 3.0
DEFAULT_DELAY_S = 1.5


def profile_from_image(image: str) -> str:
    """Return the profile named by a sandbox image reference.

    Args:
        image: ``sandbox/backend:<profile>`` (a registry host prefix such as
            ``localhost/sandbox/backend:healthy`` is tolerated).

    Raises:
        ValueError: the image is not a sandbox backend image or names an unknown profile.
    """
    ref = image.strip()
    repo, sep, tag = ref.rpartition(":")
    if not sep or not (repo == "sandbox/backend" or repo.endswith("/sandbox/backend")):
        raise ValueError(
            f"not a sandbox backend image: {image!r}; expected '{IMAGE_PREFIX}<profile>' "
            f"with profile one of {sorted(PROFILES)}"
        )
    if tag not in PROFILES:
        raise ValueError(
            f"unknown sandbox profile {tag!r} in image {image!r}; "
            f"known profiles: {sorted(PROFILES)}"
        )
    return tag


def image_for_profile(profile: str) -> str:
    """Return the image reference that selects ``profile`` (inverse of :func:`profile_from_image`).

    Raises:
        ValueError: unknown profile.
    """
    if profile not in PROFILES:
        raise ValueError(f"unknown sandbox profile {profile!r}; known profiles: {sorted(PROFILES)}")
    return f"{IMAGE_PREFIX}{profile}"


def _float_env(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError as exc:
        raise ValueError(f"{name} must be a number of seconds, got {raw!r}") from exc
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {raw!r}")
    return value


@dataclass(frozen=True, slots=True)
class ProfileKnobs:
    """Timing knobs of the time-based profiles (seconds)."""

    warmup_s: float = DEFAULT_WARMUP_S
    idle_close_s: float = DEFAULT_IDLE_CLOSE_S
    delay_s: float = DEFAULT_DELAY_S

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ProfileKnobs:
        """Read ``SANDBOX_WARMUP_S``, ``SANDBOX_IDLE_CLOSE_S``, ``SANDBOX_DELAY_S``.

        Raises:
            ValueError: a knob is set but not a non-negative number.
        """
        env = os.environ if env is None else env
        return cls(
            warmup_s=_float_env(env, "SANDBOX_WARMUP_S", DEFAULT_WARMUP_S),
            idle_close_s=_float_env(env, "SANDBOX_IDLE_CLOSE_S", DEFAULT_IDLE_CLOSE_S),
            delay_s=_float_env(env, "SANDBOX_DELAY_S", DEFAULT_DELAY_S),
        )


def run_fast(coro: Any) -> Any:
    """``asyncio.run`` on uvloop when it is installed.

    The sandbox's servers run on uvloop as production uvicorn does: on the stdlib loop,
    keep-alive HTTP answers through these servers took ~40 ms each on loopback
    (measured: 44 ms vs 1 ms), which would put a fake floor under every latency the
    runbook reports.
    """
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop comes with uvicorn[standard]
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


# Which checks of SPEC section 3 each profile makes fail (status fail or error) when it is
# deployed and phases 1-5 and 7 run against it with the knobs of the fault-matrix test
# (tests/test_fault_matrix.py asserts these sets exactly; docs/sandbox.md explains them).
_NO_SOCKET = frozenset(
    {
        # Every check that needs an open WebSocket fails when the upgrade is refused:
        # missing evidence is a failure, never a skip.
        "ws.routes_probe", "ws.upgrade", "ws.roundtrip", "e2e.agent_response",
        "load.success_rate", "load.latency_p95", "load.no_server_errors",
        "auth.ws_authenticated", "auth.rejects_invalid", "chat.flow",
        "isolation.sessions", "isolation.no_cross_user", "events.critical_delivered",
        "events.order", "events.structure", "events.latency", "monitor.ws_404",
        "monitor.ws_failure_rate", "monitor.hold", "logs.no_routing_errors",
        "tests.websocket_agent_events",
    }
)  # fmt: skip

EXPECTED_FAILURES: dict[str, frozenset[str]] = {
    "healthy": frozenset(),
    # The incident: no WS routes, so /ws/health and GET /ws/test are gone too; the request
    # log's 404s on WebSocket paths fail the log checks (whatever uvicorn itself prints).
    "ws-routes-missing": _NO_SOCKET
    | {"ws.health", "ws.test_endpoint", "ws.health_ready_within", "monitor.log_errors"},
    # The app is fine (ws.health passes: what tells it apart from the incident); the hop
    # turns every upgrade into a plain GET, which the request log shows as 404s on
    # /websocket.
    "proxy-strips-upgrade": _NO_SOCKET | {"monitor.log_errors"},
    # 503s while warming up: Cloud Run logs a 5xx request at ERROR, and every log check
    # reading the revision since its deploy sees them.
    "slow-warmup": frozenset(
        {
            "health.no_5xx_during_warmup",
            "deploy.logs_clean",
            "logs.no_routing_errors",
            "monitor.log_errors",
        }
    ),
    "drop-events": frozenset(
        {"events.critical_delivered", "events.order", "tests.websocket_agent_events"}
    ),
    "reorder-events": frozenset({"events.order", "tests.websocket_agent_events"}),
    "cross-user-leak": frozenset({"isolation.no_cross_user"}),
    "auth-bypass": frozenset({"auth.rejects_invalid", "tests.websocket_agent_events"}),
    "idle-close": frozenset({"monitor.hold"}),
    "slow-responses": frozenset({"http.latency"}),
    # The revision never starts: the deploy gate fails and validation does not run.
    "deploy-fails": frozenset(
        {"deploy.operation_succeeded", "deploy.latest_serving", "deploy.logs_clean"}
    ),
}
