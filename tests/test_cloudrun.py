"""The Cloud Run adapter against the sandbox emulator (real run_v2 client, real processes)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest

from runbook_lib.cloudrun import (
    OperationOutcome,
    RevisionInfo,
    ServiceInfo,
    TrafficTarget,
    cloudrun_client,
)
from runbook_lib.exceptions import CloudRunError
from runbook_lib.sandbox import manager
from runbook_lib.settings import Settings, load_settings, settings_from_dict


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Iterator[manager.SandboxInfo]:
    root = tmp_path_factory.mktemp("sandbox-cloudrun")
    info = manager.up(state_dir=root / "state", env_file=root / "local.toml")
    try:
        yield info
    finally:
        manager.down(root / "state")


@pytest.fixture(scope="module")
def settings(sandbox: manager.SandboxInfo) -> Settings:
    return load_settings(sandbox.env_file)


def served_by(info: manager.SandboxInfo, n: int = 6) -> set[str]:
    """Revision names reported by /health over ``n`` fresh connections through the router."""
    seen = set()
    for _ in range(n):
        with httpx.Client(
            timeout=5
        ) as client:  # one connection per client: the router splits per connection
            seen.add(client.get(f"{info.service_url}/health").json()["revision"])
    return seen


async def test_get_service_describes_the_incident_state(
    settings: Settings, sandbox: manager.SandboxInfo
) -> None:
    """The service serves the ws-routes-missing revision at LATEST 100% on the router URL."""
    info = await cloudrun_client(settings).get_service()
    assert isinstance(info, ServiceInfo)
    assert info.name == "backend" and info.uri == sandbox.service_url
    assert info.image == "sandbox/backend:ws-routes-missing"
    assert info.traffic == (TrafficTarget("LATEST", "", 100),)
    assert info.serving_revisions == {info.latest_ready_revision: 100}
    assert info.latest_created_revision == info.latest_ready_revision
    assert info.timeout_s == 3600.0 and info.concurrency == 80 and not info.use_http2
    assert info.ready and info.ingress == "INGRESS_TRAFFIC_ALL"


async def test_list_revisions_newest_first_with_serving_share(settings: Settings) -> None:
    """At start: the serving revision (100%), then an older healthy one (rollback target)."""
    revs = await cloudrun_client(settings).list_revisions()
    assert [type(r) for r in revs] == [RevisionInfo, RevisionInfo]
    assert revs[0].image.endswith(":ws-routes-missing") and revs[0].percent == 100
    assert revs[1].image.endswith(":healthy") and revs[1].percent == 0
    assert all(r.ready for r in revs)
    assert revs[0].create_time is not None and revs[1].create_time is not None
    assert revs[0].create_time > revs[1].create_time
    assert len(await cloudrun_client(settings).list_revisions(limit=1)) == 1


def test_dry_run_requests_and_gcloud_commands(settings: Settings) -> None:
    """Dry runs show the PATCH body and the equivalent gcloud command."""
    cr = cloudrun_client(settings)
    req = cr.deploy_request("sandbox/backend:healthy")
    assert req["method"] == "PATCH" and req["url"].endswith("?updateMask=template")
    assert req["body"]["template"]["containers"][0]["image"] == "sandbox/backend:healthy"
    assert cr.gcloud_deploy_command("sandbox/backend:healthy") == (
        "gcloud run deploy backend --image=sandbox/backend:healthy "
        "--region=local --project=sandbox-project"
    )
    targets = [TrafficTarget("REVISION", "backend-00001-abc", 100)]
    assert cr.traffic_request(targets)["body"]["traffic"] == [
        {
            "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION",
            "percent": 100,
            "revision": "backend-00001-abc",
        }
    ]
    assert "--to-revisions=backend-00001-abc=100" in cr.gcloud_traffic_command(targets)
    assert "--to-latest" in cr.gcloud_traffic_command([TrafficTarget("LATEST", "", 100)])


async def test_deploy_pin_and_failed_deploy(
    settings: Settings, sandbox: manager.SandboxInfo
) -> None:
    """Deploy serves the new revision; a pin survives a deploy; a failing image keeps the old."""
    cr = cloudrun_client(settings)
    before = await cr.list_revisions()
    oldest = before[-1].name

    out = await cr.deploy("sandbox/backend:healthy")
    assert isinstance(out, OperationOutcome)
    assert out.done and out.succeeded and not out.error, out
    assert out.revision not in {r.name for r in before}
    assert served_by(sandbox) == {out.revision}
    info = await cr.get_service()
    assert info.serving_revisions == {out.revision: 100}

    pin = await cr.set_traffic([TrafficTarget("REVISION", oldest, 100)])
    assert pin.succeeded and pin.revision == oldest
    assert served_by(sandbox) == {oldest}

    later = await cr.deploy("sandbox/backend:slow-responses")
    assert later.succeeded, later
    info = await cr.get_service()
    assert info.latest_ready_revision == later.revision
    assert info.serving_revisions == {oldest: 100}, "a pinned split must stay pinned"
    assert served_by(sandbox) == {oldest}

    failed = await cr.deploy("sandbox/backend:deploy-fails")
    assert failed.done and not failed.succeeded
    assert "not ready" in failed.error and "DATABASE_URL" in failed.error
    info = await cr.get_service()
    assert info.latest_created_revision == failed.revision != info.latest_ready_revision
    assert not info.ready and "not ready" in info.ready_message
    assert served_by(sandbox) == {oldest}
    revs = {r.name: r for r in await cr.list_revisions()}
    assert (
        not revs[failed.revision].ready
        and "exited with code 1" in revs[failed.revision].ready_message
    )

    back = await cr.set_traffic([TrafficTarget("LATEST", "", 100)])
    assert back.succeeded and back.revision == later.revision
    assert served_by(sandbox, 3) == {later.revision}


async def test_traffic_to_unknown_revision_is_refused(settings: Settings) -> None:
    """The emulator answers 400 like Google; the adapter names the problem."""
    cr = cloudrun_client(settings)
    with pytest.raises(CloudRunError, match=r"400.*does not exist"):
        await cr.set_traffic([TrafficTarget("REVISION", "backend-09999-zzz", 100)])
    with pytest.raises(CloudRunError, match="sum to 100"):
        await cr.set_traffic([TrafficTarget("LATEST", "", 50)])


# ------------------------------------------------------------------ failures


class _Handler(BaseHTTPRequestHandler):
    mode = "500"

    def _answer(self) -> None:
        if self.mode == "500":
            body = b'{"error": {"code": 500, "message": "backend exploded", "status": "INTERNAL"}}'
            self.send_response(500)
        elif self.mode == "garbage":
            body = b"<html>this is not json"
            self.send_response(200)
        else:  # slow
            time.sleep(4)
            body = b"{}"
            self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PATCH = _answer

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def bad_server() -> Iterator[tuple[ThreadingHTTPServer, type[_Handler]]]:
    handler = type("H", (_Handler,), {})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, handler
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def _settings(endpoint: str, tmp: Path, timeout: float = 2.0) -> Settings:
    return settings_from_dict(
        {
            "name": "broken",
            "cloudrun": {"project": "p", "region": "r", "service": "s", "api_endpoint": endpoint},
            "timeouts": {"cloudrun_s": timeout, "operation_s": 5},
        },
        source=str(tmp / "broken.toml"),
    )


@pytest.mark.parametrize(
    ("mode", "pattern"),
    [
        ("500", r"HTTP 500.*backend exploded"),
        ("garbage", r"not a valid API response"),
        ("slow", r"did not answer within 2s"),
    ],
)
async def test_api_failures_raise_cloudrun_error(
    bad_server: Any, tmp_path: Path, mode: str, pattern: str
) -> None:
    """500, malformed JSON and a hung endpoint each give CloudRunError within the timeout."""
    server, handler = bad_server
    handler.mode = mode
    cr = cloudrun_client(_settings(f"http://127.0.0.1:{server.server_address[1]}", tmp_path))
    started = time.monotonic()
    with pytest.raises(CloudRunError, match=pattern) as info:
        await cr.get_service()
    assert info.value.__cause__ is not None
    assert time.monotonic() - started < 10


async def test_unreachable_endpoint_raises_cloudrun_error(tmp_path: Path) -> None:
    """A refused connection names the endpoint and the likely fix."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cr = cloudrun_client(_settings(f"http://127.0.0.1:{port}", tmp_path))
    with pytest.raises(CloudRunError, match=r"cannot connect to http://127\.0\.0\.1:\d+"):
        await cr.deploy("sandbox/backend:healthy")


def test_missing_cloudrun_section_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(CloudRunError, match=r"\[cloudrun\] needs project, region and service"):
        cloudrun_client(settings_from_dict({"name": "x"}, source=str(tmp_path / "x.toml")))


def test_staging_example_environment_loads(tmp_path: Path) -> None:
    """The committed real-GCP example is a valid, secret-free environment file."""
    path = Path(__file__).resolve().parents[1] / "environments" / "staging.example.toml"
    settings = load_settings(path, environ={"STAGING_WS_TOKEN": ""})  # named vars must be set
    assert settings.warnings == () and not settings.auto_approve
    assert settings.cloudrun.configured and settings.cloudrun.api_endpoint == ""
    assert settings.auth.token_env and not settings.auth.token
    cr = cloudrun_client(settings)
    assert "--region=us-central1 --project=my-staging-project" in cr.gcloud_deploy_command("img")
