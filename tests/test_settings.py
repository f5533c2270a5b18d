"""The environment file's schema (``runbook_lib.settings``): what the loaded types answer."""

from __future__ import annotations

from dataclasses import replace

import pytest

from runbook_lib.flows import Flow, FlowStep, default_flows
from runbook_lib.settings import resolve_flow
from runbook_lib.settings_load import load_settings


def test_resolve_flow_prefers_the_users_flow(tmp_path) -> None:
    env = tmp_path / "e.toml"
    env.write_text('name = "x"\n[target]\nbase_url = "http://127.0.0.1:1"\n')
    settings = load_settings(str(env))
    assert resolve_flow(settings, "agent") == default_flows(settings.protocol)["agent"]
    mine = Flow("agent", (FlowStep(send="hello"), FlowStep(expect_pattern="hi")))
    assert resolve_flow(replace(settings, flows={"agent": mine}), "agent") is mine
    # isolation runs the user's agent conversation, not the seed's, when only agent is defined
    assert resolve_flow(replace(settings, flows={"agent": mine}), "isolation").steps == mine.steps
    assert resolve_flow(replace(settings, flows={"agent": mine}), "chat").steps[0].send == (
        settings.protocol.chat_message
    )
    with pytest.raises(KeyError):
        resolve_flow(settings, "nope")
