"""The Cloud Run Admin API v2 / Cloud Logging emulator: filters, JSON shapes, real clients."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import logging as glogging
from google.cloud import run_v2

from runbook_lib.sandbox import manager
from runbook_lib.sandbox import state as sandbox_state
from runbook_lib.sandbox.emulator import CloudRunEmulator
from runbook_lib.sandbox.resources import RevisionState


class _NoRuntime:
    async def start(self, revision: Any, sink: Any) -> int:
        raise AssertionError("not used")

    async def stop(self, revision: Any) -> None:
        pass


def test_pick_honours_the_split_and_skips_crashed_revisions() -> None:
    """Weighted split per connection; a crashed revision leaves the split; none ready -> None."""
    emu = CloudRunEmulator(_NoRuntime(), project="p", region="r")
    svc = emu.create_service("backend", {})
    now = datetime.now(UTC)
    for i, name in enumerate(("a", "b"), start=1):
        svc.revisions[name] = RevisionState(
            name=name,
            service=svc,
            image="sandbox/backend:healthy",
            profile="healthy",
            template={},
            generation=i,
            create_time=now,
            ready=True,
            port=1000 + i,
        )
    svc.latest_ready = "b"
    svc.traffic = [
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION", "revision": "a", "percent": 25},
        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 75},
    ]
    picks = [emu.pick(svc) for _ in range(400)]
    counts = {n: sum(1 for p in picks if p is not None and p.name == n) for n in "ab"}
    assert counts["a"] + counts["b"] == 400
    assert 40 <= counts["a"] <= 160  # expected 100; wide margin, it is random
    emu.revision_exited(svc.revisions["b"], -9)
    assert {emu.pick(svc).name for _ in range(50)} == {"a"}  # type: ignore[union-attr]
    assert "signal 9" in svc.revisions["b"].message
    emu.revision_exited(svc.revisions["a"], 1)
    assert emu.pick(svc) is None
    assert emu.service_json(svc)["terminalCondition"]["state"] == "CONDITION_FAILED"


_SCRIPTS = {
    # never prints the listening line
    "slow-warmup": "import time; time.sleep(60)",
    # logs an error and exits, as a crashing container does
    "deploy-fails": "import json; print(json.dumps({'severity': 'ERROR', "
    "'message': 'boom: missing DATABASE_URL'})); raise SystemExit(3)",
    # listens, serves a moment, then dies
    "healthy": "import json, time; print(json.dumps({'event': 'listening', 'port': 9}), "
    "flush=True); time.sleep(0.3); print('Traceback (most recent call last):', flush=True); "
    "raise SystemExit(4)",
}


@pytest.mark.slow  # starts revision processes
async def test_supervisor_bounds_start_reports_failures_and_crashes() -> None:
    """Silent process -> start timeout; early exit -> its error; a later exit -> not ready."""
    import sys

    from runbook_lib.sandbox.daemon import Supervisor

    sup = Supervisor(
        "secret", start_timeout_s=1.0,
        command=lambda rev: [sys.executable, "-c", _SCRIPTS[rev.profile]],
    )  # fmt: skip
    emu = CloudRunEmulator(sup, project="p", region="r")
    svc = emu.create_service("backend", {})
    try:
        silent = await emu.deploy(svc, "sandbox/backend:slow-warmup")
        assert silent.error and "did not listen within 1s" in silent.error["message"]
        assert not psutil_alive(svc.revisions[svc.latest_created].pid)

        failed = await emu.deploy(svc, "sandbox/backend:deploy-fails")
        assert failed.error is not None
        assert "exited with code 3" in failed.error["message"]
        assert "missing DATABASE_URL" in failed.error["message"]
        assert svc.latest_ready == ""

        ok = await emu.deploy(svc, "sandbox/backend:healthy")
        assert ok.error is None and svc.latest_ready == svc.latest_created
        rev = svc.revisions[svc.latest_ready]
        assert rev.ready is True and rev.port == 9
        for _ in range(100):
            if rev.ready is False:
                break
            await asyncio.sleep(0.05)
        assert rev.ready is False and rev.message == "Container called exit(4)."
        entries = emu.logs.query(resource_names=["projects/p"], page_size=1000)["entries"]
        texts = [(e["severity"], e.get("textPayload", "")) for e in entries]
        # Cloud Run gives a plain text line no severity, whatever it says.
        assert ("DEFAULT", "Traceback (most recent call last):") in texts
        assert any(t.startswith("Container failed to start") for _, t in texts)
    finally:
        await sup.stop_all()


def psutil_alive(pid: int) -> bool:
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


# ------------------------------------------------------------------ the emulator over HTTP


@pytest.fixture(scope="module")
def sandbox(sandbox_factory: Any) -> sandbox_state.SandboxInfo:
    return sandbox_factory()


def _service_name(info: sandbox_state.SandboxInfo) -> str:
    return f"projects/{info.project}/locations/{info.region}/services/{info.service}"


def _clients(info: sandbox_state.SandboxInfo) -> tuple[Any, Any]:
    opts = ClientOptions(api_endpoint=info.emulator_url)
    creds = AnonymousCredentials()
    return (
        run_v2.ServicesClient(transport="rest", client_options=opts, credentials=creds),
        run_v2.RevisionsClient(transport="rest", client_options=opts, credentials=creds),
    )


def test_service_json_is_shaped_like_google(sandbox: sandbox_state.SandboxInfo) -> None:
    """camelCase fields, int64 as strings, durations as "300s", traffic statuses resolved."""
    body = httpx.get(f"{sandbox.emulator_url}/v2/{_service_name(sandbox)}", timeout=5).json()
    for key in (
        "uri",
        "latestReadyRevision",
        "latestCreatedRevision",
        "traffic",
        "trafficStatuses",
        "template",
        "ingress",
        "conditions",
        "terminalCondition",
        "generation",
        "observedGeneration",
        "reconciling",
        "etag",
        "createTime",
        "updateTime",
    ):
        assert key in body, key
    assert body["uri"] == sandbox.service_url
    assert body["generation"] == body["observedGeneration"] == "2"
    assert body["traffic"] == [{"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100}]
    assert body["trafficStatuses"][0]["revision"] == body["latestReadyRevision"].rsplit("/")[-1]
    tmpl = body["template"]
    assert tmpl["timeout"] == "3600s" and tmpl["maxInstanceRequestConcurrency"] == 80
    assert tmpl["containers"][0]["ports"][0]["name"] == "http1"
    assert body["terminalCondition"]["state"] == "CONDITION_SUCCEEDED"
    assert body["createTime"].endswith("Z")


def test_unknown_resources_answer_404_like_google(sandbox: sandbox_state.SandboxInfo) -> None:
    services, revisions = _clients(sandbox)
    with pytest.raises(gexc.NotFound):
        services.get_service(
            name=f"projects/{sandbox.project}/locations/local/services/nope", timeout=5
        )
    with pytest.raises(gexc.NotFound):
        revisions.get_revision(
            name=f"{_service_name(sandbox)}/revisions/backend-09999-zzz", timeout=5
        )
    resp = httpx.get(f"{sandbox.emulator_url}/v2/projects/x/locations/y/operations/z", timeout=5)
    assert resp.status_code == 404 and resp.json()["error"]["status"] == "NOT_FOUND"


def test_real_client_pages_revisions_and_reads_one(sandbox: sandbox_state.SandboxInfo) -> None:
    """The pager follows nextPageToken; get_revision returns the Ready condition and labels."""
    _, revisions = _clients(sandbox)
    pager = revisions.list_revisions(
        request=run_v2.ListRevisionsRequest(parent=_service_name(sandbox), page_size=1),
        timeout=5,
    )
    names = [r.name.rsplit("/", 1)[-1] for r in pager]
    # Two pages of one; revisions.list promises no order, so none is asserted.
    assert len(names) == 2 and len(set(names)) == 2
    assert sorted(n[:14] for n in names) == ["backend-00001-", "backend-00002-"]
    first = next(n for n in names if n.startswith("backend-00001-"))
    rev = revisions.get_revision(name=f"{_service_name(sandbox)}/revisions/{first}", timeout=5)
    assert rev.service == _service_name(sandbox)
    assert rev.labels["sandbox-profile"] == "healthy"
    ready = next(c for c in rev.conditions if c.type_ == "Ready")
    assert ready.state == run_v2.Condition.State.CONDITION_SUCCEEDED


def test_real_client_update_polls_the_operation(sandbox: sandbox_state.SandboxInfo) -> None:
    """PATCH returns an LRO; operation.result() polls GET operations/* until the rollout ends."""
    services, _ = _clients(sandbox)
    svc = services.get_service(name=_service_name(sandbox), timeout=5)
    svc.template.containers[0].image = "sandbox/backend:healthy"
    op = services.update_service(service=svc, timeout=5)
    result = op.result(timeout=60)
    assert result.latest_ready_revision == result.latest_created_revision
    assert result.latest_ready_revision.endswith(op.metadata.latest_created_revision[-17:])
    assert [t.percent for t in result.traffic_statuses] == [100]
    # An unchanged template creates no revision and completes at once.
    again = services.update_service(service=result, timeout=5).result(timeout=10)
    assert again.latest_created_revision == result.latest_created_revision


async def test_websocket_through_router_reaches_latest_revision(
    sandbox: sandbox_state.SandboxInfo,
) -> None:
    """After the healthy deploy, a dev token from the auth service opens a socket via the router."""
    import json

    from websockets.asyncio.client import connect

    async with httpx.AsyncClient(timeout=5) as client:
        token = (
            await client.post(f"{sandbox.auth_url}/auth/dev-token", json={"user_id": "u1"})
        ).json()["token"]
        svc = (await client.get(f"{sandbox.emulator_url}/v2/{_service_name(sandbox)}")).json()
    latest = svc["latestReadyRevision"].rsplit("/", 1)[-1]
    ws_url = sandbox.service_url.replace("http://", "ws://") + "/websocket"
    async with connect(ws_url, subprotocols=[f"jwt.{token}"], open_timeout=5) as ws:  # type: ignore[list-item]
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert hello["user_id"] == "u1" and hello["revision"] == latest


async def test_router_strips_upgrade_for_that_profile(sandbox: sandbox_state.SandboxInfo) -> None:
    """A proxy-strips-upgrade revision is fronted by a hop that drops Upgrade: no 101."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import InvalidStatus

    services, _ = _clients(sandbox)
    svc = services.get_service(name=_service_name(sandbox), timeout=5)
    svc.template.containers[0].image = "sandbox/backend:proxy-strips-upgrade"
    await asyncio.to_thread(lambda: services.update_service(service=svc, timeout=5).result(60))
    async with httpx.AsyncClient(timeout=5) as client:
        health = (await client.get(f"{sandbox.service_url}/health")).json()
    assert health["profile"] == "proxy-strips-upgrade"
    ws_url = sandbox.service_url.replace("http://", "ws://") + "/websocket"
    with pytest.raises(InvalidStatus) as refused:
        async with connect(ws_url, open_timeout=5):
            pass
    assert refused.value.response.status_code != 101


def _update(services: Any, svc: Any, *paths: str, wait_s: float = 60) -> Any:
    from google.protobuf import field_mask_pb2

    request = run_v2.UpdateServiceRequest(
        service=svc, update_mask=field_mask_pb2.FieldMask(paths=list(paths))
    )
    return services.update_service(request=request, timeout=5).result(timeout=wait_s)


def _target(revision: str, percent: int, tag: str = "") -> Any:
    kind = run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION
    return run_v2.TrafficTarget(type_=kind, revision=revision, percent=percent, tag=tag)


def _revisions_served(url: str, n: int = 6) -> set[str]:
    seen = set()
    for _ in range(n):  # one connection per request: the router picks per connection
        with httpx.Client(timeout=5) as client:
            seen.add(client.get(f"{url}/health").json()["revision"])
    return seen


async def test_revision_tags_have_their_own_urls_for_http_and_websocket(
    sandbox: sandbox_state.SandboxInfo,
) -> None:
    """A 0% tagged traffic entry gives the revision a URL (trafficStatuses.uri) reaching only it.

    Also: services.list answers, a deploy whose traffic stays pinned leaves the new revision
    at 0% (reachable on its tag), and dropping a tag closes its URL.
    """
    import json

    from websockets.asyncio.client import connect

    services, revisions = _clients(sandbox)
    svc = await asyncio.to_thread(services.get_service, name=_service_name(sandbox), timeout=5)
    serving = svc.latest_ready_revision.rsplit("/", 1)[-1]  # proxy-strips-upgrade by now
    oldest = min(revisions.list_revisions(parent=svc.name), key=lambda r: r.create_time)
    healthy = oldest.name.rsplit("/", 1)[-1]  # the first revision, healthy
    svc.traffic = [_target(serving, 100), _target(healthy, 0, "green")]
    result = await asyncio.to_thread(_update, services, svc, "traffic")
    green = next(t for t in result.traffic_statuses if t.tag == "green")
    assert green.revision == healthy and green.percent == 0
    assert green.uri.startswith("http://127.0.0.1:") and green.uri != sandbox.service_url
    assert await asyncio.to_thread(_revisions_served, green.uri) == {healthy}
    assert await asyncio.to_thread(_revisions_served, sandbox.service_url) == {serving}
    async with httpx.AsyncClient(timeout=5) as client:
        token = (
            await client.post(f"{sandbox.auth_url}/auth/dev-token", json={"user_id": "u7"})
        ).json()["token"]
    ws_url = green.uri.replace("http://", "ws://") + "/websocket"
    async with connect(ws_url, subprotocols=[f"jwt.{token}"], open_timeout=5) as ws:  # type: ignore[list-item]
        hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert hello["revision"] == healthy and hello["user_id"] == "u7"

    listed = await asyncio.to_thread(
        lambda: list(
            services.list_services(
                parent=f"projects/{sandbox.project}/locations/{sandbox.region}", timeout=5
            )
        )
    )
    assert [s.name for s in listed] == [_service_name(sandbox)]
    assert {t.tag: t.uri for t in listed[0].traffic_statuses if t.tag} == {"green": green.uri}

    # Deploy with no traffic: a named new revision, the split pinned, the new one tagged.
    svc = await asyncio.to_thread(services.get_service, name=_service_name(sandbox), timeout=5)
    new = "backend-00042-new"
    svc.template.containers[0].image = "sandbox/backend:healthy"
    svc.template.revision = new
    svc.traffic = [_target(serving, 100), _target(healthy, 0, "green"), _target(new, 0, "blue")]
    result = await asyncio.to_thread(_update, services, svc, "template", "traffic")
    assert result.latest_created_revision.endswith("/" + new)
    statuses = {t.revision: (t.percent, t.tag) for t in result.traffic_statuses}
    assert statuses == {serving: (100, ""), healthy: (0, "green"), new: (0, "blue")}
    blue = next(t.uri for t in result.traffic_statuses if t.tag == "blue")
    assert await asyncio.to_thread(_revisions_served, blue) == {new}
    assert await asyncio.to_thread(_revisions_served, sandbox.service_url) == {serving}
    # Writing again from the read before that update is a stale etag: 409 ABORTED.
    svc.template.containers[0].image = "sandbox/backend:slow-responses"
    with pytest.raises(gexc.Conflict, match="etag"):
        await asyncio.to_thread(_update, services, svc, "template", "traffic")
    # The same name again with another image is refused (409), as Cloud Run does.
    svc = await asyncio.to_thread(services.get_service, name=_service_name(sandbox), timeout=5)
    svc.template.containers[0].image = "sandbox/backend:slow-responses"
    svc.template.revision = new
    with pytest.raises(gexc.Conflict, match="already exists"):
        await asyncio.to_thread(_update, services, svc, "template", "traffic")

    # Dropping the tags closes their URLs; the split goes back to LATEST.
    svc = await asyncio.to_thread(services.get_service, name=_service_name(sandbox), timeout=5)
    svc.traffic = [
        run_v2.TrafficTarget(
            type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST,
            percent=100,
        )
    ]
    result = await asyncio.to_thread(_update, services, svc, "traffic")
    assert [t.tag for t in result.traffic_statuses] == [""]
    for url in (green.uri, blue):
        deadline = time.monotonic() + 5
        while True:
            try:
                async with httpx.AsyncClient(timeout=2) as client:
                    await client.get(f"{url}/health")
            except httpx.TransportError:
                break
            assert time.monotonic() < deadline, f"{url} still answers after its tag was dropped"
            await asyncio.sleep(0.1)


def test_bad_tags_are_refused(sandbox: sandbox_state.SandboxInfo) -> None:
    """Tags must be DNS-label-like and unique, as they become part of a host name."""
    services, _ = _clients(sandbox)
    svc = services.get_service(name=_service_name(sandbox), timeout=5)
    serving = svc.latest_ready_revision.rsplit("/", 1)[-1]
    for traffic, why in (
        ([_target(serving, 100, "Not_OK")], "is invalid"),
        ([_target(serving, 100, "x"), _target(serving, 0, "x")], "more than one"),
    ):
        svc.traffic = traffic
        with pytest.raises(gexc.BadRequest, match=why):
            _update(services, svc, "traffic")


def test_invalid_update_is_a_400(sandbox: sandbox_state.SandboxInfo) -> None:
    services, _ = _clients(sandbox)
    svc = services.get_service(name=_service_name(sandbox), timeout=5)
    svc.template.containers[0].image = "nginx:latest"
    with pytest.raises(gexc.BadRequest, match="not a sandbox backend image"):
        services.update_service(service=svc, timeout=5)


def test_logging_client_reads_entries_and_rejects_bad_filters(
    sandbox: sandbox_state.SandboxInfo,
) -> None:
    client = glogging.Client(
        project=sandbox.project,
        credentials=AnonymousCredentials(),
        _use_grpc=False,
        client_options={"api_endpoint": sandbox.emulator_url},
    )
    since = (datetime.now(UTC) - timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    entries = list(
        client.list_entries(
            filter_=f'resource.type="cloud_run_revision" AND timestamp>="{since}" '
            'AND textPayload:"is ready"',
            order_by=glogging.DESCENDING,
            page_size=1,
            max_results=5,
        )
    )
    assert len(entries) >= 2
    assert entries[0].timestamp >= entries[1].timestamp
    assert entries[0].resource.type == "cloud_run_revision"
    assert entries[0].resource.labels["service_name"] == "backend"
    with pytest.raises(gexc.BadRequest, match="Invalid filter"):
        list(client.list_entries(filter_='severity>=ERROR AND (textPayload:"x"'))


def test_crashed_revision_is_not_ready_and_router_answers_503(
    sandbox: sandbox_state.SandboxInfo,
) -> None:
    """Killing the serving process marks it not ready; the router answers 503, never hangs."""
    state = httpx.get(f"{sandbox.emulator_url}/sandbox/state", timeout=5).json()
    serving = next(r for r in state["services"][0]["revisions"] if r["percent"] == 100)
    os.kill(serving["pid"], signal.SIGKILL)
    services, revisions = _clients(sandbox)
    deadline = time.monotonic() + 20
    while True:
        rev = revisions.get_revision(
            name=f"{_service_name(sandbox)}/revisions/{serving['name']}", timeout=5
        )
        ready = next(c for c in rev.conditions if c.type_ == "Ready")
        if ready.state == run_v2.Condition.State.CONDITION_FAILED:
            break
        assert time.monotonic() < deadline, "the crash was never noticed"
        time.sleep(0.1)
    assert "signal 9" in ready.message
    started = time.monotonic()
    resp = httpx.get(f"{sandbox.service_url}/health", timeout=10)
    assert resp.status_code == 503
    assert time.monotonic() - started < 5
    svc = services.get_service(name=_service_name(sandbox), timeout=5)
    assert svc.terminal_condition.state == run_v2.Condition.State.CONDITION_FAILED
    info = manager.status(sandbox.state_dir)
    assert info is not None
    assert [r.ready for r in info.revisions if r.name == serving["name"]] == [False]
