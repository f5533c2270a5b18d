"""Flow engine (pure): rendering, matching, capturing, default flows."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from runbook_lib.flows import (
    Flow,
    FlowFrame,
    FlowObservation,
    FlowStep,
    StepOutcome,
    default_flows,
    describe_step,
    flow_values,
    is_foreign,
    match_step,
    new_marker,
    render_step,
)
from runbook_lib.protocol import ProtocolSettings, parse_frame

P = ProtocolSettings()
TEXT = ProtocolSettings(
    format="text",
    ping="PING {marker}",
    pong_pattern="^PONG {marker}$",
    error_pattern="^ERR ",
    event_patterns={"said": r"^\[{room}\] (?P<user_id>\S+): "},
)
V = {"user_id": "u1", "run_id": "r1", "marker": "mk1", "sub": "s-9", "text": "hi"}


def test_render_step_renders_tables_as_json_and_strings_as_text() -> None:
    table = FlowStep(send={"op": "publish", "topic": "t-{marker}", "id": "{sub}", "n": 2})
    assert json.loads(render_step(table, V)) == {
        "op": "publish",
        "topic": "t-mk1",
        "id": "s-9",
        "n": 2,
    }
    assert render_step(FlowStep(send="SAY r-{marker} {text}"), V) == "SAY r-mk1 hi"
    with pytest.raises(ValueError):
        render_step(FlowStep(expect={"a": 1}), V)


def _json(obj: object, protocol: ProtocolSettings = P):
    text = json.dumps(obj)
    return parse_frame(text, protocol), text


@pytest.mark.parametrize(
    ("step", "frame", "expected"),
    [
        (FlowStep(expect={"ack.id": "{run_id}"}), {"ack": {"id": "r1"}}, {}),
        (FlowStep(expect={"ack.id": "{run_id}"}), {"ack": {"id": "r2"}}, None),
        (FlowStep(expect={"id": "1"}), {"id": 1}, {}),
        (FlowStep(expect={"ok": True}), {"ok": True}, {}),
        (FlowStep(expect={"ok": True}), {"ok": "yes"}, None),
        (FlowStep(expect={"missing": "x"}), {"other": 1}, None),
        (FlowStep(expect_pattern="t-{marker}"), {"topic": "t-mk1"}, {}),
        (FlowStep(expect_pattern="t-{marker}"), {"topic": "t-mk2"}, None),
        (
            FlowStep(expect_pattern=r'"result": "(?P<subid>[^"]+)"'),
            {"result": "sub-7"},
            {"subid": "sub-7"},
        ),
        (FlowStep(expect_event="agent_completed"), {"type": "agent_completed"}, {}),
        (FlowStep(expect_event="agent_completed"), {"payload": {"type": "agent_completed"}}, {}),
        (FlowStep(expect_event="agent_completed"), {"type": "agent_started"}, None),
        (FlowStep(expect_event="*"), {"type": "agent_started"}, {}),
        (FlowStep(expect_event="*"), {"type": "welcome"}, None),
        (
            FlowStep(expect={"jsonrpc": "2.0"}, capture={"sub": "result"}),
            {"jsonrpc": "2.0", "result": "abc"},
            {"sub": "abc"},
        ),
        (
            FlowStep(expect={"jsonrpc": "2.0"}, capture={"sub": "result"}),
            {"jsonrpc": "2.0", "method": "message"},
            None,
        ),
        (FlowStep(send="x"), {"type": "x"}, None),
    ],
)
def test_match_step_on_json_frames(step: FlowStep, frame: object, expected: dict | None) -> None:
    parsed, text = _json(frame)
    assert match_step(step, parsed, text, V) == expected


@pytest.mark.parametrize(
    ("step", "message", "expected"),
    [
        (FlowStep(expect_pattern="^PONG {marker}$"), "PONG mk1", {}),
        (FlowStep(expect_pattern="^PONG {marker}$"), "PONG mk2", None),
        (FlowStep(expect_pattern=r"^\[{room}\] "), "[lobby] u1: hi", {"room": "lobby"}),
        (
            FlowStep(expect_pattern=r"^\[(?P<r>\S+)\]", capture={"room2": "r"}),
            "[a] x",
            {"r": "a", "room2": "a"},
        ),
        (FlowStep(expect_event="said"), "[a] u1: hello", {}),
        (FlowStep(expect={"a": "b"}), '{"a": "b"}', None),  # text format never has JSON fields
        (FlowStep(expect_pattern="(unclosed"), "(unclosed", None),
    ],
)
def test_match_step_on_text_frames(step: FlowStep, message: str, expected: dict | None) -> None:
    assert match_step(step, parse_frame(message, TEXT, values=V), message, V) == expected


def test_is_foreign_by_user_run_and_marker() -> None:
    mine, _ = _json({"type": "e", "user_id": "u1", "run_id": "r1"})
    theirs, _ = _json({"type": "e", "user_id": "u2", "run_id": "r2"})
    assert not is_foreign(theirs, "", V, [])  # ids not echoed yet: cannot tell
    assert is_foreign(theirs, "", V, [mine])
    assert not is_foreign(mine, "", V, [mine])
    assert is_foreign(mine, "... mk2 ...", V, [], other_markers=["mk1", "mk2"])
    assert not is_foreign(mine, "... mk1 ...", V, [], other_markers=["mk1"])
    pong = parse_frame("PONG mkX", TEXT)  # marker captured from the frame
    assert pong.marker == "mkX" and is_foreign(pong, "PONG mkX", V)


def test_flow_values_are_fresh_per_user() -> None:
    a, b = flow_values(user_id="a"), flow_values(user_id="b", extra={"room": "r"})
    assert a["marker"] != b["marker"] and a["run_id"] != b["run_id"] and b["room"] == "r"
    assert new_marker().startswith("mk") and new_marker() != new_marker()


def test_default_flows_reproduce_the_seed() -> None:
    flows = default_flows(P, event_timeout_s=12)
    agent = flows["agent"]
    assert agent.steps[0].send == P.agent_request
    assert agent.steps[1].expect_event == "agent_completed" and agent.steps[1].timeout_s == 12
    assert flows["chat"].steps[0].send == P.chat_message
    assert flows["isolation"].steps == agent.steps
    assert flows["load"].steps[0].send == P.ping and flows["load"].steps[1].expect_event == "pong"
    text = default_flows(TEXT)["load"]
    assert text.steps[1].expect_pattern == "^PONG {marker}$"
    none = default_flows(replace(P, critical_events=()))
    assert none["agent"].steps[1].expect_event == "*"


def test_describe_step_and_observation_summary() -> None:
    assert describe_step(FlowStep(send={"a": 1})).startswith("send ")
    assert "pattern" in describe_step(FlowStep(expect_pattern="x"))
    frame, _ = _json({"type": "agent_completed"})
    obs = FlowObservation(
        url="ws://x/ws",
        flow="agent",
        user_id="u1",
        marker="mk1",
        connected=True,
        frames=(FlowFrame(frame, "{}", step=1),),
        steps=(
            StepOutcome(0, "send", "sent", started_s=0.1),
            StepOutcome(1, "expect", "matched", started_s=0.1, duration_s=0.4, frame_index=0),
        ),
    )
    assert obs.completed and obs.response_s == pytest.approx(0.4)
    assert obs.event_types == ("agent_completed",) and obs.to_records()[0]["user"] == "u1"
    stopped = replace(
        obs,
        steps=(
            obs.steps[0],
            StepOutcome(1, "expect", "timeout", "expect event x", detail="no frame within 1s"),
        ),
        stopped_at=1,
        stop_reason="timeout",
    )
    assert not stopped.completed and stopped.response_s is None
    assert "step 2 (expect event x): no frame within 1s" in stopped.stop_detail


# ---------------------------------------------------------------- the load engine's view


def test_load_matcher_matches_like_match_step_with_per_session_values() -> None:
    """The load engine's compiled expect step: fields, patterns, captures; the values
    that differ per session (marker, captures) are taken from that session."""
    from runbook_lib.flows import LoadMatcher, load_session_names

    steps = (
        FlowStep(send={"id": "{marker}", "method": "ping"}),
        FlowStep(expect={"id": "{marker}", "result": "pong"}, capture={"srv": "server"}),
        FlowStep(expect_pattern="^PONG {marker} from {srv}$"),
    )
    session = load_session_names(steps)
    assert session == {"marker", "token", "srv"}
    rpc = LoadMatcher(steps[1], {"user_id": "u"}, session, 5.0)
    assert not rpc.cacheable and rpc.timeout_s == 5.0
    one = {"marker": "mk1s0"}
    frame = {"id": "mk1s0", "result": "pong", "server": "a"}
    assert rpc.match(json.dumps(frame), frame, None, one, frozenset()) == {"srv": "a"}
    assert rpc.match("{}", {**frame, "id": "mk1s1"}, None, one, frozenset()) is None
    text = LoadMatcher(steps[2], {}, session, 5.0)
    assert text.match("PONG mk1s0 from a", None, None, {**one, "srv": "a"}, frozenset()) == {}
    assert text.match("PONG mk1s1 from a", None, None, {**one, "srv": "a"}, frozenset()) is None


def test_load_flow_problem_names_a_flow_the_engine_cannot_time() -> None:
    from runbook_lib.flows import load_flow_problem

    assert load_flow_problem(default_flows(ProtocolSettings())["load"]) == ""
    graphql = Flow(
        "load",
        (
            FlowStep(send={"type": "connection_init"}),
            FlowStep(expect={"type": "connection_ack"}),
            FlowStep(send={"type": "subscribe", "id": "1"}),
            FlowStep(expect={"type": "next", "id": "1"}),
        ),
    )
    assert load_flow_problem(graphql) == ""
    assert "expects nothing" in load_flow_problem(Flow("load", (FlowStep(send="x"),)))
    assert "[flows.load]" in load_flow_problem(Flow("load", (FlowStep(expect_event="x"),)))
