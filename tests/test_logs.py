"""Cloud Logging reads through the real google-cloud-logging HTTP client against the sandbox."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbook_lib.cloudrun import cloudrun_client
from runbook_lib.exceptions import CloudRunError
from runbook_lib.logs import (
    LogEntry,
    LogScope,
    gcloud_logging_command,
    log_scope,
    logging_filter,
    read_logs,
    scope_for,
)
from runbook_lib.sandbox import manager
from runbook_lib.sandbox import state as sandbox_state
from runbook_lib.settings import Settings
from runbook_lib.settings_load import load_settings, settings_from_dict

WS_PATHS = ("/websocket", "/ws/test")
WS_HEADERS = {
    "Connection": "Upgrade",
    "Upgrade": "websocket",
    "Sec-WebSocket-Version": "13",
    "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
}


@pytest.fixture(scope="module")
def sandbox(sandbox_factory: Any) -> sandbox_state.SandboxInfo:
    return sandbox_factory()


@pytest.fixture(scope="module")
def settings(sandbox: sandbox_state.SandboxInfo) -> Settings:
    return load_settings(sandbox.env_file)


def test_filter_matches_the_seed_queries(settings: Settings) -> None:
    """The filter is the seed's gcloud logging read filter plus the optional restrictions."""
    since = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    flt = logging_filter(
        settings,
        since=since,
        revision="backend-00002-abc",
        min_severity="warning",
        contains=["404", "websocket"],
    )
    assert flt == (
        'resource.type="cloud_run_revision" AND resource.labels.service_name="backend" AND '
        'resource.labels.revision_name="backend-00002-abc" AND severity>=WARNING AND '
        'timestamp>="2026-01-02T03:04:05.000000Z" AND '
        '(textPayload:"404" OR jsonPayload.message:"404" OR '
        'textPayload:"websocket" OR jsonPayload.message:"websocket")'
    )
    cmd = gcloud_logging_command(settings, flt, limit=20)
    assert cmd.startswith("gcloud logging read 'resource.type=")
    assert "--project=sandbox-project --limit=20" in cmd
    with pytest.raises(CloudRunError, match="unknown log severity"):
        logging_filter(settings, min_severity="LOUD")


async def test_incident_404s_are_read_back_by_revision_and_substring(
    settings: Settings, sandbox: sandbox_state.SandboxInfo
) -> None:
    """WebSocket upgrades answered 404 by the serving revision show up in its logs."""
    since = datetime.now(UTC) - timedelta(seconds=1)
    serving = (await cloudrun_client(settings).get_service()).latest_ready_revision
    async with httpx.AsyncClient(base_url=sandbox.service_url, timeout=5) as client:
        for path in ("/websocket", "/ws/test"):
            assert (await client.get(path, headers=WS_HEADERS)).status_code == 404
        assert (await client.get("/health")).status_code == 200

    # A log line travels backend stdout -> daemon -> store after the response: poll briefly.
    for _ in range(50):
        entries = await read_logs(
            settings, since=since, revision=serving, kind="routing", ws_paths=WS_PATHS
        )
        hits = [e for e in entries if e.status == 404]
        if len(hits) >= 2:
            break
        await asyncio.sleep(0.1)
    assert entries and all(isinstance(e, LogEntry) for e in entries)
    assert {e.path for e in hits} == {"/websocket", "/ws/test"}
    assert all(e.revision == serving and e.method == "GET" for e in hits)
    assert all(e.timestamp >= since for e in entries)
    assert [e.timestamp for e in entries] == sorted(e.timestamp for e in entries)
    assert all(e.latency_s is not None and e.latency_s >= 0 for e in hits)

    warnings = await read_logs(settings, since=since, revision=serving, min_severity="WARNING")
    assert 404 in {e.status for e in warnings}
    assert {e.severity for e in warnings} <= {"WARNING", "ERROR", "CRITICAL"}
    older = (await cloudrun_client(settings).list_revisions())[-1].name
    assert await read_logs(settings, since=since, revision=older, kind="routing") == []


async def test_system_entries_and_limit(settings: Settings) -> None:
    """The emulator's own entries ("is ready") are served; limit keeps the newest."""
    since = datetime.now(UTC) - timedelta(minutes=10)
    ready = await read_logs(settings, since=since, contains=["is ready"])
    assert len(ready) == 2 and all(e.severity == "INFO" for e in ready)
    one = await read_logs(settings, since=since, limit=1)
    everything = await read_logs(settings, since=since)
    assert len(one) == 1 and one[0] == everything[-1]


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = b'{"error": {"code": 500, "message": "logging exploded", "status": "INTERNAL"}}'
        self.send_response(500)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def failing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _settings(endpoint: str, tmp: Path) -> Settings:
    return settings_from_dict(
        {
            "name": "broken",
            "cloudrun": {"project": "p", "region": "r", "service": "s", "api_endpoint": endpoint},
            "timeouts": {"cloudrun_s": 2},
        },
        source=str(tmp / "broken.toml"),
    )


async def test_failures_raise_cloudrun_error(failing_server: str, tmp_path: Path) -> None:
    """A 500 and a refused connection both become CloudRunError naming the endpoint."""
    since = datetime.now(UTC)
    with pytest.raises(CloudRunError, match=r"HTTP 500 .*logging exploded"):
        await read_logs(_settings(failing_server, tmp_path), since=since)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(CloudRunError, match="cannot connect"):
        await read_logs(_settings(f"http://127.0.0.1:{port}", tmp_path), since=since)


# ------------------------------------------------------------------ evidence scope

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
T1 = datetime(2026, 1, 1, 12, 5, tzinfo=UTC)


@pytest.mark.parametrize(
    ("kwargs", "revision", "since", "basis"),
    [
        # a run folder: the revision phase 2 deployed, since its deploy started
        ({"deployed_revision": "new", "deploy_started_at": T0}, "new", T0, "deploy"),
        # ISO strings as artifacts carry them; naive means UTC
        (
            {"deployed_revision": "new", "deploy_started_at": "2026-01-01T12:00:00"},
            "new",
            T0,
            "deploy",
        ),
        (
            {"deployed_revision": "new", "deploy_started_at": "2026-01-01T12:00:00Z"},
            "new",
            T0,
            "deploy",
        ),
        # interactive: the one serving revision, since the phase opened
        ({"serving": {"new": 100, "old": 0}, "phase_opened_at": T1}, "new", T1, "phase"),
        # a revision named explicitly that is not the deployed one: the phase start, not the deploy's
        (
            {
                "revision": "old",
                "deployed_revision": "new",
                "deploy_started_at": T0,
                "phase_opened_at": T1,
            },
            "old",
            T1,
            "phase",
        ),
        # the deploy's start wins over the phase's when both are known for the deployed revision
        (
            {"deployed_revision": "new", "deploy_started_at": T0, "phase_opened_at": T1},
            "new",
            T0,
            "deploy",
        ),
        ({"revision": "r", "phase_opened_at": T1, "serving": {"a": 50, "b": 50}}, "r", T1, "phase"),
    ],
)
def test_log_scope_rules(
    kwargs: dict[str, Any], revision: str, since: datetime, basis: str
) -> None:
    scope = log_scope(**kwargs)
    assert (scope.revision, scope.since) == (revision, since)
    assert basis in scope.basis and revision in scope.describe()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (
            {"serving": {"a": 50, "b": 50}, "phase_opened_at": T1},
            r"traffic is split \(a 50 %, b 50 %\)",
        ),
        ({"phase_opened_at": T1}, "no revision under test"),
        ({"serving": {"a": 0}, "phase_opened_at": T1}, "no revision under test"),
        ({"revision": "a"}, "no start time"),
        ({"revision": "a", "phase_opened_at": "yesterday"}, "not an ISO 8601 time"),
    ],
)
def test_log_scope_refuses_what_it_cannot_name(kwargs: dict[str, Any], pattern: str) -> None:
    with pytest.raises(CloudRunError, match=pattern):
        log_scope(**kwargs)


def test_scope_admits_only_its_revision_from_its_start(settings: Settings) -> None:
    scope = LogScope("new", T1, "since this phase opened")
    entry = LogEntry(T1, "WARNING", "new", "GET /websocket 404", 404, "GET", "/websocket", 0.01)
    assert scope.admits(entry)
    assert not scope.admits(LogEntry(**{**_fields(entry), "revision": "old"}))
    assert not scope.admits(LogEntry(**{**_fields(entry), "timestamp": T0}))
    flt = logging_filter(settings, scope=scope, contains=["404"])
    assert 'resource.labels.revision_name="new"' in flt
    assert 'timestamp>="2026-01-01T12:05:00.000000Z"' in flt
    with pytest.raises(CloudRunError, match="contradicts"):
        logging_filter(settings, scope=scope, revision="old")


def _fields(entry: LogEntry) -> dict[str, Any]:
    return {f: getattr(entry, f) for f in LogEntry.__slots__}


async def _wait_for(settings: Settings, n: int, **query: Any) -> list[LogEntry]:
    # A log line travels backend stdout -> daemon -> store after the response: poll briefly.
    for _ in range(60):
        hits = [e for e in await read_logs(settings, **query) if e.status == 404]
        if len(hits) >= n:
            return hits
        await asyncio.sleep(0.1)
    raise AssertionError(f"expected {n} 404 entries for {query}")


async def test_scoped_logs_never_count_earlier_probes_of_another_revision(
    settings: Settings, sandbox: sandbox_state.SandboxInfo
) -> None:
    """Phase 1's 404 probes of the incident revision are not evidence against the fix."""
    from runbook_lib.checks import judge_log_entries

    cr = cloudrun_client(settings)
    ws_paths = WS_PATHS
    routing: dict[str, Any] = {"kind": "routing", "ws_paths": ws_paths}
    started = datetime.now(UTC) - timedelta(seconds=1)
    old = (await cr.get_service()).latest_ready_revision
    async with httpx.AsyncClient(base_url=sandbox.service_url, timeout=5) as client:
        for path in ws_paths:  # phase 1: the incident's signature
            assert (await client.get(path, headers=WS_HEADERS)).status_code == 404
    await _wait_for(settings, 2, scope=log_scope(revision=old, phase_opened_at=started))

    deploy_started = datetime.now(UTC)
    out = await cr.deploy("sandbox/backend:healthy")
    assert out.succeeded, out
    async with httpx.AsyncClient(base_url=sandbox.service_url, timeout=5) as client:
        assert (await client.get("/health")).json()["revision"] == out.revision

    def judge(entries: list[LogEntry]) -> str:
        return str(
            judge_log_entries(
                entries,
                check_id="logs.no_routing_errors",
                what="x",
                ws_paths=ws_paths,
                own_requests=1,
            ).status
        )

    # The old way (15 minutes of every revision) blames the fix for phase 1's probes.
    legacy = await read_logs(settings, since=datetime.now(UTC) - timedelta(seconds=900), **routing)
    assert judge(legacy) == "fail" and {e.revision for e in legacy if e.status == 404} == {old}
    # A run folder: the deployed revision since its deploy started.
    by_deploy = log_scope(deployed_revision=out.revision, deploy_started_at=deploy_started)
    entries = await read_logs(settings, scope=by_deploy, **routing)
    assert judge(entries) == "pass" and all(e.revision == out.revision for e in entries)

    # The new revision was probed before this phase opened (a 404 of its own) ...
    async with httpx.AsyncClient(base_url=sandbox.service_url, timeout=5) as client:
        assert (await client.get("/websocket")).status_code == 404
    await _wait_for(settings, 1, scope=by_deploy, **routing)
    await asyncio.sleep(0.05)
    phase_opened = datetime.now(UTC)
    # ... interactively (no run folder) the serving revision since the phase opened.
    interactive = await scope_for(settings, phase_opened_at=phase_opened.isoformat())
    assert interactive.revision == out.revision and interactive.since == phase_opened
    assert judge(await read_logs(settings, scope=interactive, **routing)) == "pass"
    # Not vacuous: the same query over the deploy's span does see that probe.
    assert judge(await read_logs(settings, scope=by_deploy, **routing)) == "fail"


@pytest.mark.slow
async def test_sandbox_logs_read_through_the_real_client_have_cloud_runs_shape(
    settings: Settings, sandbox: manager.SandboxInfo
) -> None:
    """Request log: httpRequest only, a WebSocket's 101 written at close with its whole
    duration as latency; the app's JSON lines are jsonPayload with a message."""
    import websockets
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import logging as glogging

    from runbook_lib.identity import user_agent
    from runbook_lib.sandbox.auth_service import mint_token

    cr = cloudrun_client(settings)
    if "healthy" not in (await cr.get_service()).latest_ready_revision:
        out = await cr.deploy("sandbox/backend:healthy")
        assert out.succeeded, out
    since = datetime.now(UTC)
    serving = (await cr.get_service()).latest_ready_revision
    token = mint_token(sandbox.jwt_secret, "shape")
    ua = user_agent("shape-test")
    url = f"{settings.target.ws()}?token={token}"
    async with websockets.connect(url, user_agent_header=ua, open_timeout=5) as ws:
        await asyncio.sleep(1.0)
        await ws.send('{"type": "ping"}')
        await asyncio.wait_for(ws.recv(), 5)
    client = glogging.Client(
        project=settings.cloudrun.project,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": settings.cloudrun.api_endpoint},
        _use_grpc=False,
    )
    own = (
        f'logName="projects/{settings.cloudrun.project}/logs/run.googleapis.com%2Frequests" '
        f'AND resource.labels.revision_name="{serving}" AND httpRequest.userAgent:"(run shape-test)"'
    )
    for _ in range(50):
        entries = list(client.list_entries(filter_=own))
        if entries:
            break
        await asyncio.sleep(0.1)
    assert len(entries) == 1, entries
    entry = entries[0]
    assert entry.payload is None  # no textPayload, no jsonPayload
    http = entry.http_request
    assert http["status"] == 101 and http["requestMethod"] == "GET"
    assert http["requestUrl"].startswith("/websocket?token=[REDACTED]") and token not in str(http)
    assert http["userAgent"] == ua and http["protocol"] and http["remoteIp"]
    assert float(http["latency"].rstrip("s")) >= 1.0  # the whole connection
    assert entry.severity == "INFO" and entry.timestamp >= since - timedelta(seconds=1)
    app = list(
        client.list_entries(
            filter_=f'logName:"run.googleapis.com%2Fstdout" AND resource.labels.revision_name='
            f'"{serving}" AND jsonPayload.message:"websocket"'
        )
    )
    assert app and all(isinstance(e.payload, dict) and "message" in e.payload for e in app)
