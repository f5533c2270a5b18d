"""Sandbox profiles: the image tag -> profile mapping and the timing knobs."""

from __future__ import annotations

import pytest

from runbook_lib.sandbox.profiles import (
    PROFILES,
    ROUTER_STRIPS_UPGRADE,
    ProfileKnobs,
    image_for_profile,
    profile_from_image,
)

EXPECTED = {
    "healthy",
    "ws-routes-missing",
    "proxy-strips-upgrade",
    "slow-warmup",
    "drop-events",
    "reorder-events",
    "cross-user-leak",
    "auth-bypass",
    "idle-close",
    "slow-responses",
    "deploy-fails",
}


def test_exactly_the_spec_profiles_each_described() -> None:
    """PROFILES holds exactly the SPEC's eleven profiles, each with a one-line description."""
    assert set(PROFILES) == EXPECTED
    for description in PROFILES.values():
        assert description.strip()
        assert "\n" not in description
    assert ROUTER_STRIPS_UPGRADE == {"proxy-strips-upgrade"}


@pytest.mark.parametrize("profile", sorted(EXPECTED))
def test_image_round_trip(profile: str) -> None:
    """sandbox/backend:<profile> names that profile, and image_for_profile inverts it."""
    assert profile_from_image(f"sandbox/backend:{profile}") == profile
    assert profile_from_image(image_for_profile(profile)) == profile


def test_registry_prefix_tolerated() -> None:
    """A registry host in front of the repository still names the profile."""
    assert profile_from_image("localhost:5000/sandbox/backend:healthy") == "healthy"


@pytest.mark.parametrize(
    "image",
    [
        "sandbox/backend:nope",
        "sandbox/backend",
        "gcr.io/project/api:latest",
        "sandbox/frontend:healthy",
        "",
    ],
)
def test_unknown_images_raise_clear_value_error(image: str) -> None:
    """Unknown images and profiles raise ValueError naming the known profiles."""
    with pytest.raises(ValueError, match="healthy"):
        profile_from_image(image)


def test_knobs_defaults_and_overrides() -> None:
    """Knobs default to 6 / 3 / 1.5 s and are overridden by SANDBOX_* variables."""
    assert ProfileKnobs.from_env({}) == ProfileKnobs(6.0, 3.0, 1.5)
    knobs = ProfileKnobs.from_env(
        {"SANDBOX_WARMUP_S": "2", "SANDBOX_IDLE_CLOSE_S": "0.5", "SANDBOX_DELAY_S": ""}
    )
    assert knobs == ProfileKnobs(warmup_s=2.0, idle_close_s=0.5, delay_s=1.5)


@pytest.mark.parametrize("value", ["soon", "-1"])
def test_bad_knob_is_an_error(value: str) -> None:
    """A knob that is not a non-negative number fails loudly."""
    with pytest.raises(ValueError, match="SANDBOX_DELAY_S"):
        ProfileKnobs.from_env({"SANDBOX_DELAY_S": value})
