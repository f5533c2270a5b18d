"""The runbook's Cloud Run adapter against an emulator as strict as Cloud Run.

What each emulator rule exposed, fixed: the verify tag fits beside a long service name,
every revision is read and sorted by createTime, traffic writes carry the etag and are
re-planned once on a conflict, a redeploy of the same image tag makes a revision, dry
runs are checked with validateOnly, 403s name the role, and a split read mid-rollout
is not trusted.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import pytest

from runbook_lib.cloudrun import GoogleCloudRun, RequestPlan, cloudrun_client
from runbook_lib.exceptions import CloudRunError
from runbook_lib.steps.verification import VERIFY_TAG, verify_tag
from tests.emulator_server import FAILING_IMAGE, add_revisions, served_emulator

LONG_SERVICE = "payments-websocket-gateway-europe"  # 33 characters: runbook-verify is too long


def test_verify_tag_falls_back_to_a_short_tag_beside_a_long_service_name() -> None:
    assert verify_tag("backend") == VERIFY_TAG
    assert verify_tag(LONG_SERVICE) == "rbv"
    assert verify_tag("x" * 44) == VERIFY_TAG  # nothing fits: the plan says why


async def test_a_33_character_service_still_verifies_then_shifts_and_rolls_back(
    tmp_path: Path,
) -> None:
    async with served_emulator(LONG_SERVICE) as s:
        cr = cloudrun_client(s.settings(tmp_path))
        old = s.service.latest_ready
        tag = verify_tag(LONG_SERVICE)
        out = await cr.deploy("sandbox/backend:cross-user-leak", no_traffic=True, tag=tag)
        assert out.succeeded and out.tag_url and out.split == {old: 100}
        moved = await cr.set_traffic_split({out.revision: 10, old: 90})
        assert moved.split == {out.revision: 10, old: 90}
        await cr.untag(tag)
        # The rollback: tag the previous revision, verify, move, untag.
        assert await cr.tag_revision(old, tag)
        back = await cr.set_traffic_split({old: 100})
        assert back.split == {old: 100}
        await cr.untag(tag)
        assert (await cr.get_service()).tag_urls == {}


async def test_a_tag_that_cannot_fit_is_refused_before_any_request(tmp_path: Path) -> None:
    name = "x" * 44
    async with served_emulator(name) as s:
        cr = cloudrun_client(s.settings(tmp_path))
        generation = s.service.generation
        with pytest.raises(CloudRunError, match="too long for the service"):
            await cr.tag_revision(s.service.latest_ready, verify_tag(name))
        assert s.service.generation == generation


async def test_more_than_50_revisions_in_random_order_still_find_the_previous_one(
    tmp_path: Path,
) -> None:
    async with served_emulator() as s:
        names = add_revisions(
            s.service, [f"backend-{i:05d}-x" for i in range(1, 121)], image="x:healthy"
        )
        shuffled = dict(random.Random(7).sample(list(s.service.revisions.items()), 121))
        s.service.revisions = shuffled
        newest = s.service.latest_ready  # deployed by served_emulator: created last
        revs = await cloudrun_client(s.settings(tmp_path)).list_revisions()
        assert len(revs) == 121
        assert [r.name for r in revs[:3]] == [newest, names[-1], names[-2]]
        assert revs[-1].name == names[0]
        assert [r.name for r in await cloudrun_client(s.settings(tmp_path)).list_revisions(2)] == [
            newest,
            names[-1],
        ]


class _RacedCloudRun(GoogleCloudRun):
    """Another writer (a CI deploy) tags a revision between the first plan and its PATCH."""

    def __init__(self, *args: Any, race: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.race = race
        self.plans = 0

    async def split_plan(self, split: Any) -> RequestPlan:
        plan = await super().split_plan(split)
        self.plans += 1
        if self.plans == 1:
            self.race()
        return plan


async def test_a_concurrent_write_between_read_and_patch_is_replanned_not_overwritten(
    tmp_path: Path,
) -> None:
    async with served_emulator() as s:
        (older,) = add_revisions(s.service, ["backend-older"], image="x:healthy")
        serving = s.service.latest_ready

        def ci_tags_a_revision() -> None:
            s.emulator.update_service(
                s.service,
                {
                    "traffic": [
                        {"type": "TRAFFIC_TARGET_ALLOCATION_TYPE_LATEST", "percent": 100},
                        {
                            "type": "TRAFFIC_TARGET_ALLOCATION_TYPE_REVISION",
                            "revision": serving,
                            "percent": 0,
                            "tag": "ci-preview",
                        },
                    ]
                },
                ["traffic"],
            )

        cr = _RacedCloudRun(s.settings(tmp_path), race=ci_tags_a_revision)
        out = await cr.set_traffic_split({older: 50, serving: 50})
        assert cr.plans == 2  # the 409 made it read and plan again
        assert out.split == {older: 50, serving: 50}
        assert (await cr.get_service()).tagged_revisions == {"ci-preview": serving}


async def test_every_traffic_write_carries_the_etag_it_was_planned_from(tmp_path: Path) -> None:
    async with served_emulator() as s:
        cr = cloudrun_client(s.settings(tmp_path))
        info = await cr.get_service()
        plans = [
            await cr.split_plan({s.service.latest_ready: 100}),  # type: ignore[attr-defined]
            await cr.tag_plan(s.service.latest_ready, "t"),  # type: ignore[attr-defined]
            await cr.untag_plan("t"),  # type: ignore[attr-defined]
            await cr.deploy_plan("sandbox/backend:healthy"),  # type: ignore[attr-defined]
        ]
        assert info.etag and {p.body["etag"] for p in plans} == {info.etag}


async def test_redeploying_the_same_image_tag_makes_a_new_revision(tmp_path: Path) -> None:
    async with served_emulator() as s:
        cr = cloudrun_client(s.settings(tmp_path))
        before = s.service.latest_ready
        out = await cr.deploy("sandbox/backend:healthy")  # the image already serving
        assert out.succeeded and out.revision != before
        assert (await cr.get_service()).serving_revisions == {out.revision: 100}


async def test_after_a_failed_tagged_deploy_the_verify_tag_is_removed(tmp_path: Path) -> None:
    from runbook_lib.context import PhaseContext
    from runbook_lib.steps.deployment import _untag

    async with served_emulator() as s:
        settings = s.settings(tmp_path)
        cr = cloudrun_client(settings)
        ctx = PhaseContext(phase=2, settings=settings, run_dir=tmp_path / "run", approve=True)
        out = await cr.deploy(FAILING_IMAGE, no_traffic=True, tag=VERIFY_TAG)
        assert not out.succeeded
        assert (await cr.get_service()).tagged_revisions == {VERIFY_TAG: out.revision}
        # Cloud Run refuses every write that repeats a tag on the failed revision ...
        with pytest.raises(CloudRunError, match="not ready and cannot serve traffic"):
            await cr.set_traffic_split({s.service.latest_ready: 100})
        await _untag(ctx, cr, VERIFY_TAG)  # ... so the deploy step always removes it
        assert (await cr.get_service()).tagged_revisions == {}
        await cr.set_traffic_split({s.service.latest_ready: 100})


async def test_dry_run_validation_shows_what_the_api_answered_and_commits_nothing(
    tmp_path: Path,
) -> None:
    async with served_emulator() as s:
        cr = cloudrun_client(s.settings(tmp_path))
        generation = s.service.generation
        ok = await cr.validate(await cr.deploy_plan("sandbox/backend:cross-user-leak"))  # type: ignore[attr-defined]
        assert ok.startswith("validateOnly: accepted")
        bad = await cr.validate(await cr.split_plan({"backend-nope": 100}))  # type: ignore[attr-defined]
        assert (
            bad.startswith("validateOnly: refused: ")
            and "HTTP 400" in bad
            and "backend-nope" in bad
        )
        assert s.service.generation == generation and len(s.service.revisions) == 1


@pytest.mark.parametrize(
    ("permission", "call", "role"),
    [
        ("run.services.get", "get", "roles/run.viewer"),
        ("run.revisions.list", "list", "roles/run.viewer"),
        ("run.services.update", "tag", "roles/run.developer"),
        ("iam.serviceAccounts.actAs", "deploy", "roles/iam.serviceAccountUser"),
    ],
)
async def test_a_denied_permission_names_the_role_to_grant(
    tmp_path: Path, permission: str, call: str, role: str
) -> None:
    async with served_emulator(deny=[permission]) as s:
        cr = cloudrun_client(s.settings(tmp_path))
        with pytest.raises(CloudRunError) as info:
            if call == "get":
                await cr.get_service()
            elif call == "list":
                await cr.list_revisions()
            elif call == "tag":
                await cr.tag_revision(s.service.latest_ready, "t")
            else:
                await cr.deploy("sandbox/backend:healthy")
        assert "HTTP 403" in str(info.value) and role in str(info.value)
        assert permission.lower() in str(info.value).lower()


async def test_a_split_read_mid_rollout_is_not_trusted_until_it_settles(tmp_path: Path) -> None:
    async with served_emulator() as s:
        cr = cloudrun_client(s.settings(tmp_path))
        s.service.reconciling = True
        s.service.generation += 1
        with pytest.raises(CloudRunError, match=r"still reconciling after 0\.3s"):
            await cr.settled_service(wait_s=0.3)
        s.service.reconciling = False
        s.service.observed_generation = s.service.generation
        assert (await cr.settled_service(wait_s=0.3)).settled


def test_a_deploy_plan_sends_back_no_system_annotations() -> None:
    from runbook_lib.cloudrun import ServiceRef, plan_deploy

    template = {
        "annotations": {"run.googleapis.com/client-name": "gcloud", "team": "payments"},
        "containers": [{"image": "old"}],
    }
    plan = plan_deploy(ServiceRef("p", "r", "s"), template, "new", revision_name="s-abcde")
    assert plan.body["template"]["annotations"] == {"team": "payments"}
    assert plan.body["template"]["revision"] == "s-abcde"
