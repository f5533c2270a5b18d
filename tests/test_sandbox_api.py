"""The emulator refuses what Cloud Run refuses, through the real google-cloud-run client.

Each rule is Google's documented behaviour (see docs/cloud-run.md): a tag too long with
the service name, a stale etag, a tag on a revision that is not ready, validateOnly,
an unchanged template, revisions in no promised order, and 403s for denied permissions.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from google.api_core import exceptions as gexc
from google.cloud import run_v2
from google.protobuf import field_mask_pb2

from tests.emulator_server import FAILING_IMAGE, add_revisions, served_emulator

LONG_SERVICE = "payments-websocket-gateway-europe"  # 33 characters


def _target(revision: str, percent: int, tag: str = "") -> run_v2.TrafficTarget:
    return run_v2.TrafficTarget(
        type_=run_v2.TrafficTargetAllocationType.TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION,
        revision=revision,
        percent=percent,
        tag=tag,
    )


async def _update(client: Any, svc: Any, mask: str, **kwargs: Any) -> Any:
    def call() -> Any:
        op = client.update_service(
            request=run_v2.UpdateServiceRequest(
                service=svc, update_mask=field_mask_pb2.FieldMask(paths=[mask]), **kwargs
            ),
            timeout=5,
        )
        return op.result(timeout=10)

    return await asyncio.to_thread(call)


async def _get(client: Any, name: str) -> Any:
    return await asyncio.to_thread(client.get_service, name=name, timeout=5)


async def test_tag_plus_service_name_over_46_characters_is_refused_with_googles_words() -> None:
    async with served_emulator(LONG_SERVICE) as s:
        client = s.client()
        svc = await _get(client, s.service.full_name)
        serving = s.service.latest_ready
        svc.traffic = [_target(serving, 100), _target(serving, 0, "runbook-verify")]
        with pytest.raises(gexc.BadRequest) as info:
            await _update(client, svc, "traffic")
        assert (
            f"traffic tag 'runbook-verify' and service name '{LONG_SERVICE}' together are too "
            "long. Combined traffic tag and service name cannot exceed 46 characters."
        ) in str(info.value.message)
        svc.traffic = [_target(serving, 100, "rbv")]  # 3 + 33 fits
        done = await _update(client, svc, "traffic")
        assert [t.tag for t in done.traffic] == ["rbv"]


async def test_write_with_a_stale_etag_is_409_aborted_and_changes_nothing() -> None:
    async with served_emulator() as s:
        client = s.client()
        stale = await _get(client, s.service.full_name)
        fresh = await _get(client, s.service.full_name)
        serving = s.service.latest_ready
        fresh.traffic = [_target(serving, 100, "ci")]
        await _update(client, fresh, "traffic")  # someone else writes in between
        stale.traffic = [_target(serving, 100)]
        with pytest.raises(gexc.Conflict) as info:
            await _update(client, stale, "traffic")
        assert info.value.response.json()["error"]["status"] == "ABORTED"
        assert [t.get("tag") for t in s.service.traffic] == ["ci"]  # not overwritten


async def test_traffic_or_tag_on_a_revision_that_is_not_ready_is_refused() -> None:
    async with served_emulator() as s:
        client = s.client()
        svc = await _get(client, s.service.full_name)
        serving = s.service.latest_ready
        svc.template.containers[0].image = FAILING_IMAGE
        svc.template.revision = "backend-broken"
        svc.traffic = [_target(serving, 100)]
        with pytest.raises(gexc.GoogleAPICallError):
            await _update(client, svc, "template")  # the rollout fails
        svc = await _get(client, s.service.full_name)
        for traffic in (
            [_target(serving, 100), _target("backend-broken", 0, "try")],
            [_target(serving, 50), _target("backend-broken", 50)],
        ):
            svc.traffic = traffic
            with pytest.raises(
                gexc.BadRequest, match="'backend-broken' is not ready and cannot serve traffic"
            ):
                await _update(client, svc, "traffic")


async def test_validate_only_checks_like_update_and_commits_nothing() -> None:
    async with served_emulator(LONG_SERVICE) as s:
        client = s.client()
        svc = await _get(client, s.service.full_name)
        serving = s.service.latest_ready
        before = (s.service.generation, dict(s.service.revisions), list(s.service.traffic))
        svc.traffic = [_target(serving, 100, "runbook-verify")]
        with pytest.raises(gexc.BadRequest, match="together are too long"):
            await _update(client, svc, "traffic", validate_only=True)
        svc.traffic = [_target(serving, 100, "rbv")]
        svc.template.containers[0].image = "sandbox/backend:cross-user-leak"
        would = await _update(client, svc, "template", validate_only=True)
        assert would.template.containers[0].image == "sandbox/backend:cross-user-leak"
        assert (s.service.generation, dict(s.service.revisions), s.service.traffic) == before


async def test_unchanged_template_makes_no_revision_a_new_revision_name_does() -> None:
    async with served_emulator() as s:
        client = s.client()
        svc = await _get(client, s.service.full_name)
        svc.template.revision = ""
        await _update(client, svc, "template")
        assert len(s.service.revisions) == 1  # same template: Cloud Run makes none
        svc = await _get(client, s.service.full_name)
        svc.template.revision = "backend-again"
        done = await _update(client, svc, "template")
        assert done.latest_ready_revision.endswith("/backend-again")
        assert len(s.service.revisions) == 2


async def test_revisions_list_pages_in_no_creation_order() -> None:
    async with served_emulator() as s:
        add_revisions(s.service, [f"backend-{i:05d}-old" for i in range(60)], image="x:healthy")
        client = s.client()
        _, revisions = (
            client,
            run_v2.RevisionsClient(
                transport="rest",
                client_options=client._client_options,  # type: ignore[attr-defined]
                credentials=client._transport._credentials,  # type: ignore[attr-defined]
            ),
        )

        def read() -> tuple[list[str], int]:
            pager = revisions.list_revisions(
                request=run_v2.ListRevisionsRequest(parent=s.service.full_name, page_size=25),
                timeout=5,
            )
            pages = list(pager.pages)
            return [r.name.rsplit("/", 1)[-1] for p in pages for r in p.revisions], len(pages)

        names, pages = await asyncio.to_thread(read)
        assert pages == 3 and len(names) == len(set(names)) == 61
        by_time = sorted(
            s.service.revisions, key=lambda n: s.service.revisions[n].create_time, reverse=True
        )
        assert names != by_time  # newest first is not promised, and not given
        assert (await asyncio.to_thread(read))[0] == names  # but stable across reads


@pytest.mark.parametrize(
    ("permission", "call", "words"),
    [
        (
            "run.services.get",
            "get",
            "Permission 'run.services.get' denied on resource "
            "'projects/p/locations/r/services/backend' (or resource may not exist).",
        ),
        ("run.revisions.list", "list", "Permission 'run.revisions.list' denied on resource"),
        ("run.services.update", "traffic", "Permission 'run.services.update' denied"),
        (
            "iam.serviceAccounts.actAs",
            "deploy",
            "Permission 'iam.serviceaccounts.actAs' denied on service account "
            "sandbox@sandbox-project.iam.gserviceaccount.com (or it may not exist).",
        ),
    ],
)
async def test_denied_permission_is_403_permission_denied_as_google_words_it(
    permission: str, call: str, words: str
) -> None:
    async with served_emulator(deny=[permission]) as s:
        client = s.client()
        with pytest.raises(gexc.Forbidden) as info:
            if call == "get":
                await _get(client, s.service.full_name)
            elif call == "list":
                revisions = run_v2.RevisionsClient(
                    transport="rest",
                    client_options=client._client_options,  # type: ignore[attr-defined]
                    credentials=client._transport._credentials,  # type: ignore[attr-defined]
                )
                await asyncio.to_thread(
                    lambda: list(revisions.list_revisions(parent=s.service.full_name, timeout=5))
                )
            else:
                svc = await _get(client, s.service.full_name)
                if call == "deploy":
                    svc.template.revision = "backend-next"
                    await _update(client, svc, "template")
                else:
                    svc.traffic = [_target(s.service.latest_ready, 100, "x")]
                    await _update(client, svc, "traffic")
        assert words in str(info.value.message)
        assert info.value.response.json()["error"]["status"] == "PERMISSION_DENIED"


async def test_act_as_is_needed_for_a_deploy_only_not_for_traffic() -> None:
    async with served_emulator(deny=["iam.serviceAccounts.actAs"]) as s:
        client = s.client()
        svc = await _get(client, s.service.full_name)
        svc.traffic = [_target(s.service.latest_ready, 100, "ok")]
        await _update(client, svc, "traffic")
        assert s.service.tag_uris.keys() == {"ok"}


async def test_denied_log_reads_are_403_through_the_logging_client() -> None:
    from google.api_core.client_options import ClientOptions
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import logging as glogging

    async with served_emulator(deny=["logging.logEntries.list"]) as s:
        client = glogging.Client(
            project="p",
            credentials=AnonymousCredentials(),
            client_options=ClientOptions(api_endpoint=s.endpoint),
            _use_grpc=False,
        )
        with pytest.raises(gexc.Forbidden, match=r"'logging\.logEntries\.list' denied"):
            await asyncio.to_thread(lambda: list(client.list_entries(max_results=1)))


@pytest.mark.slow
def test_sandbox_up_deny_answers_403_until_down(tmp_path: Any, capsys: Any) -> None:
    import httpx

    from runbook_lib.sandbox import manager
    from runbook_lib.sandbox.cli import sandbox_main

    state, env = str(tmp_path / "state"), str(tmp_path / "local.toml")
    deny = ["--deny", "run.services.update", "--deny", "logging.logEntries.list"]
    assert sandbox_main(["up", *deny, "--state-dir", state, "--env-file", env]) == 0
    try:
        info = manager.status(state)
        assert info is not None
        url = f"{info.emulator_url}/v2/projects/{info.project}/locations/{info.region}/services/{info.service}"
        assert httpx.get(url, timeout=10).status_code == 200  # reads are allowed
        answer = httpx.patch(f"{url}?updateMask=traffic", json={"traffic": []}, timeout=10)
        assert answer.status_code == 403
        assert answer.json()["error"]["status"] == "PERMISSION_DENIED"
        assert "Permission 'run.services.update' denied" in answer.json()["error"]["message"]
        # A running sandbox that denies something else is not silently reused.
        other = ["up", "--deny", "run.revisions.list", "--state-dir", state, "--env-file", env]
        assert sandbox_main(other) == 2
        assert "denies logging.logEntries.list, run.services.update" in capsys.readouterr().err
    finally:
        sandbox_main(["down", "--state-dir", state])


async def test_writing_a_job_needs_act_as_on_its_service_account() -> None:
    async with served_emulator(deny=["iam.serviceAccounts.actAs"]) as s:
        client = s.client()
        jobs = run_v2.JobsClient(
            transport="rest",
            client_options=client._client_options,  # type: ignore[attr-defined]
            credentials=client._transport._credentials,  # type: ignore[attr-defined]
        )
        job = run_v2.Job(template=run_v2.ExecutionTemplate(task_count=1))
        with pytest.raises(gexc.Forbidden, match=r"'iam\.serviceaccounts\.actAs' denied"):
            await asyncio.to_thread(
                jobs.create_job, parent="projects/p/locations/r", job=job, job_id="j", timeout=5
            )
