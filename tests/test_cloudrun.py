"""The Cloud Run adapter against the sandbox emulator (real run_v2 client, real processes)."""

from __future__ import annotations

import asyncio
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
    cloudrun_client,
)
from runbook_lib.cloudrun_plans import (
    ServiceRef,
    TrafficTarget,
    pinned,
    plan_deploy,
    plan_split,
    plan_tag,
    plan_untag,
    split_targets,
    with_tag,
    without_tag,
)
from runbook_lib.exceptions import CloudRunError
from runbook_lib.sandbox import state as sandbox_state
from runbook_lib.settings import Settings
from runbook_lib.settings_load import load_settings, settings_from_dict


@pytest.fixture(scope="module")
def sandbox(sandbox_factory: Any) -> sandbox_state.SandboxInfo:
    return sandbox_factory()


@pytest.fixture(scope="module")
def settings(sandbox: sandbox_state.SandboxInfo) -> Settings:
    return load_settings(sandbox.env_file)


def served_by(info: sandbox_state.SandboxInfo, n: int = 6) -> set[str]:
    """Revision names reported by /health over ``n`` fresh connections through the router."""
    seen = set()
    for _ in range(n):
        with httpx.Client(
            timeout=5
        ) as client:  # one connection per client: the router splits per connection
            seen.add(client.get(f"{info.service_url}/health").json()["revision"])
    return seen


async def test_get_service_describes_the_incident_state(
    settings: Settings, sandbox: sandbox_state.SandboxInfo
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
    settings: Settings, sandbox: sandbox_state.SandboxInfo
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


def _served_by_url(url: str, n: int = 6) -> set[str]:
    seen = set()
    for _ in range(n):
        with httpx.Client(timeout=5) as client:
            seen.add(client.get(f"{url}/health").json()["revision"])
    return seen


async def test_tag_deploy_with_no_traffic_shift_in_steps_and_restore(
    settings: Settings, sandbox: sandbox_state.SandboxInfo
) -> None:
    """SPEC 9 through the real client: tag, verify on the tag URL, 10/50/100, back, untag."""
    cr = cloudrun_client(settings)
    before = await cr.get_service()
    previous = before.serving_revisions
    (old,) = previous
    oldest = (await cr.list_revisions())[-1].name

    url = await cr.tag_revision(oldest, "rollback-target")
    assert url.startswith("http://127.0.0.1:") and url != sandbox.service_url
    assert await asyncio.to_thread(_served_by_url, url) == {oldest}
    assert await asyncio.to_thread(served_by, sandbox) == {old}
    info = await cr.get_service()
    assert info.serving_revisions == previous and info.tag_urls == {"rollback-target": url}

    out = await cr.deploy("sandbox/backend:healthy", no_traffic=True, tag="candidate")
    assert out.succeeded and out.tag_url and out.tag_url != url, out
    assert out.revision.startswith("backend-") and out.revision != old
    assert out.split == previous, "a no-traffic deploy must leave the split where it was"
    assert await asyncio.to_thread(_served_by_url, out.tag_url) == {out.revision}
    assert await asyncio.to_thread(served_by, sandbox) == {old}
    info = await cr.get_service()
    assert info.latest_ready_revision == out.revision
    assert info.tagged_revisions == {"rollback-target": oldest, "candidate": out.revision}

    for pct in (10, 50, 100):
        split = {out.revision: pct, old: 100 - pct} if pct < 100 else {out.revision: 100}
        step = await cr.set_traffic_split(split)
        assert step.succeeded and step.split == split
        assert set((await cr.get_service()).tag_urls) == {"rollback-target", "candidate"}
        if pct == 50:
            assert await asyncio.to_thread(served_by, sandbox, 24) == {old, out.revision}
    assert await asyncio.to_thread(served_by, sandbox) == {out.revision}

    back = await cr.set_traffic_split(previous)
    assert back.split == previous
    assert await asyncio.to_thread(served_by, sandbox) == {old}
    # The tag URLs survived every step and still reach their revisions.
    assert await asyncio.to_thread(_served_by_url, out.tag_url, 3) == {out.revision}

    await cr.untag("candidate")
    gone = await cr.untag("rollback-target")
    assert gone.split == previous and all(not t.tag for t in gone.traffic)
    assert (await cr.get_service()).tag_urls == {}

    [listed] = await cr.list_services()
    assert listed.name == "backend" and listed.serving_revisions == previous


async def test_failing_no_traffic_deploy_leaves_traffic_alone(settings: Settings) -> None:
    """A candidate that never starts fails its operation; the split does not move."""
    cr = cloudrun_client(settings)
    previous = (await cr.get_service()).serving_revisions
    out = await cr.deploy("sandbox/backend:deploy-fails", no_traffic=True, tag="broken")
    assert out.done and not out.succeeded and "DATABASE_URL" in out.error
    info = await cr.get_service()
    assert info.serving_revisions == previous
    await cr.untag("broken")
    with pytest.raises(CloudRunError, match=r"invalid revision tag|too long"):
        await cr.tag_revision(next(iter(previous)), "Bad_Tag")
    with pytest.raises(CloudRunError, match="sum to 100"):
        await cr.set_traffic_split({next(iter(previous)): 90})


# ------------------------------------------------------------------ pure traffic arithmetic

_REF = ServiceRef("proj", "us-central1", "svc")
_SPLIT = (TrafficTarget("REVISION", "svc-a", 90), TrafficTarget("LATEST", "", 10))


@pytest.mark.parametrize(
    ("current", "revision", "tag", "expected"),
    [
        # added at 0 %, the split untouched
        (_SPLIT, "svc-old", "t", [*_SPLIT, TrafficTarget("REVISION", "svc-old", 0, "t")]),
        # rides on an untagged entry of the same revision
        (_SPLIT, "svc-a", "t", [TrafficTarget("REVISION", "svc-a", 90, "t"), _SPLIT[1]]),
        # moves: the old entry keeps its share untagged, a 0 % one disappears
        (
            [TrafficTarget("REVISION", "svc-a", 100), TrafficTarget("REVISION", "svc-b", 0, "t")],
            "svc-c",
            "t",
            [TrafficTarget("REVISION", "svc-a", 100), TrafficTarget("REVISION", "svc-c", 0, "t")],
        ),
        # status URIs are never sent back
        (
            [TrafficTarget("LATEST", "svc-a", 100, "", "http://x")],
            "svc-a",
            "t",
            [TrafficTarget("LATEST", "", 100), TrafficTarget("REVISION", "svc-a", 0, "t")],
        ),
    ],
)
def test_with_tag(current: Any, revision: str, tag: str, expected: list[TrafficTarget]) -> None:
    assert with_tag(current, revision, tag) == expected


def test_without_tag_pinned_and_split_targets() -> None:
    tagged = [TrafficTarget("REVISION", "svc-a", 100, "x"), TrafficTarget("REVISION", "b", 0, "y")]
    assert without_tag(tagged, "x") == [TrafficTarget("REVISION", "svc-a", 100), tagged[1]]
    assert without_tag(tagged, "y") == [tagged[0]]
    assert pinned(_SPLIT, "svc-b") == [
        TrafficTarget("REVISION", "svc-a", 90),
        TrafficTarget("REVISION", "svc-b", 10),
    ]
    # LATEST pinned onto a revision that already has a share: merged, not duplicated
    assert pinned(_SPLIT, "svc-a") == [TrafficTarget("REVISION", "svc-a", 100)]
    with pytest.raises(CloudRunError, match="no revision is ready"):
        pinned(_SPLIT, "")
    assert split_targets({"n": 10, "o": 90}, tagged) == [
        TrafficTarget("REVISION", "n", 10),
        TrafficTarget("REVISION", "o", 90),
        TrafficTarget("REVISION", "svc-a", 0, "x"),
        TrafficTarget("REVISION", "b", 0, "y"),
    ]
    assert split_targets({"b": 100}, tagged) == [
        TrafficTarget("REVISION", "b", 100, "y"),
        TrafficTarget("REVISION", "svc-a", 0, "x"),
    ]
    for bad in ({"a": 50}, {"a": 101, "b": -1}, {"": 100}, {"a": 50.0, "b": 50}):
        with pytest.raises(CloudRunError):
            split_targets(bad)  # type: ignore[arg-type]
    for tag in ("", "UPPER", "under_score", "-lead", "trail-", "x" * 47):
        with pytest.raises(CloudRunError, match=r"invalid revision tag|too long"):
            with_tag(_SPLIT, "svc-a", tag)


def test_plans_show_json_gcloud_and_curl() -> None:
    """Dry runs: pasteable JSON, the gcloud flags that do the same, and curl."""
    import json

    tag = plan_tag(_REF, _SPLIT, "svc-old", "verify")
    assert tag.url == (
        "https://run.googleapis.com/v2/projects/proj/locations/us-central1/services/svc"
        "?updateMask=traffic"
    )
    assert json.loads(tag.body_json)["traffic"][-1] == {
        "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION",
        "percent": 0,
        "revision": "svc-old",
        "tag": "verify",
    }
    assert tag.gcloud == (
        "gcloud run services update-traffic svc --update-tags=verify=svc-old "
        "--region=us-central1 --project=proj"
    )
    assert tag.curl.startswith("curl -sS -X PATCH 'https://run.googleapis.com/v2/")
    assert "$(gcloud auth print-access-token)" in tag.curl and "{'name'" not in tag.curl
    assert json.loads(tag.curl.split(" -d ", 1)[1].strip("'")) == tag.body
    assert tag.request == {"method": "PATCH", "url": tag.url, "body": tag.body}
    assert set(tag.to_record()) == {"what", "method", "url", "request_json", "gcloud", "curl"}

    untag = plan_untag(_REF, tag.traffic, "verify")
    assert "--remove-tags=verify" in untag.gcloud and list(untag.traffic) == list(_SPLIT)

    split = plan_split(_REF, tag.traffic, {"svc-old": 10, "svc-a": 90})
    assert "--to-revisions=svc-old=10,svc-a=90 " in split.gcloud
    assert [(t.revision, t.percent, t.tag) for t in split.traffic] == [
        ("svc-old", 10, "verify"),
        ("svc-a", 90, ""),
    ]

    deploy = plan_deploy(
        _REF,
        {"containers": [{"image": "old"}], "revision": "svc-prev", "timeout": "300s"},
        "gcr.io/p/app:2",
        no_traffic=True,
        tag="candidate",
        revision_name="svc-abcde",
        current=_SPLIT,
        latest_ready="svc-b",
    )
    assert deploy.url.endswith("?updateMask=template,traffic")
    assert deploy.body["template"] == {
        "containers": [{"image": "gcr.io/p/app:2"}],
        "revision": "svc-abcde",
        "timeout": "300s",
    }
    assert [(t["revision"], t["percent"], t.get("tag")) for t in deploy.body["traffic"]] == [
        ("svc-a", 90, None),
        ("svc-b", 10, None),
        ("svc-abcde", 0, "candidate"),
    ]
    assert deploy.gcloud == (
        "gcloud run deploy svc --image=gcr.io/p/app:2 --no-traffic --tag=candidate "
        "--revision-suffix=abcde --region=us-central1 --project=proj"
    )
    plain = plan_deploy(_REF, None, "img")
    assert plain.url.endswith("?updateMask=template") and "traffic" not in plain.body
    with pytest.raises(CloudRunError, match="needs no_traffic"):
        plan_deploy(_REF, None, "img", tag="x", revision_name="svc-x")
    sandbox_ref = ServiceRef("p", "local", "backend", "http://127.0.0.1:9")
    assert "Authorization" not in plan_untag(sandbox_ref, _SPLIT, "x").curl


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


def test_plans_module_is_pure() -> None:
    """The traffic arithmetic and request plans import no network or Google library."""
    import subprocess
    import sys

    code = (
        "import sys, runbook_lib.cloudrun_plans; "
        "print(sorted({m.split('.')[0] for m in sys.modules} & "
        "{'google', 'grpc', 'httpx', 'websockets', 'picows', 'numpy', 'requests'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
