"""Protocol profiles: template rendering and frame classification."""

from __future__ import annotations

import json

import pytest

from runbook_lib.protocol import (
    FrameKind,
    first_path,
    get_path,
    has_path,
    parse_frame,
    render_message,
    render_template,
)
from runbook_lib.settings import ProtocolSettings

P = ProtocolSettings()


def test_get_path_walks_nested_mappings_and_lists() -> None:
    obj = {"data": {"type": "x", "items": [{"id": 7}]}}
    assert get_path(obj, "data.type") == "x"
    assert get_path(obj, "data.items.0.id") == 7
    assert get_path(obj, "data.missing", "d") == "d"
    assert get_path("not a dict", "a") is None
    assert has_path({"a": None}, "a") and not has_path({}, "a")


def test_first_path_tries_paths_in_order_and_skips_empty_values() -> None:
    assert first_path({"type": "", "data": {"type": "t"}}, P.event_type) == "t"
    assert first_path({"payload": {"type": 5}}, P.event_type) == "5"
    assert first_path({"type": {"nested": 1}}, ["type"]) is None


def test_table_template_substitutes_string_leaves() -> None:
    out = json.loads(render_message(P, "agent_request", text="hi", run_id="r1", thread_id="t1"))
    assert out == {
        "type": "agent_execute",
        "data": {"message": "hi", "thread_id": "t1", "run_id": "r1"},
    }


def test_string_template_keeps_json_braces() -> None:
    tpl = '{"type": "chat", "user": "{user_id}", "text": "{text}", "x": {"y": 1}}'
    out = json.loads(render_template(tpl, text="hello", user_id="u1"))
    assert out == {"type": "chat", "user": "u1", "text": "hello", "x": {"y": 1}}


def test_unknown_template_name_is_refused() -> None:
    with pytest.raises(ValueError):
        render_message(P, "nope")


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "agent_started", "user_id": "u", "run_id": "r"},
        {"data": {"type": "agent_started", "user_id": "u", "run_id": "r"}},
        {"payload": {"type": "agent_started", "user_id": "u", "run_id": "r"}},
    ],
    ids=["flat", "data", "payload"],
)
def test_event_fields_found_flat_or_nested(frame: dict) -> None:
    f = parse_frame(json.dumps(frame), P, t=1.5)
    assert (f.kind, f.event_type, f.user_id, f.run_id, f.t) == (
        FrameKind.EVENT,
        "agent_started",
        "u",
        "r",
        1.5,
    )
    assert f.is_event and not f.ignorable


@pytest.mark.parametrize("etype", ["connected", "welcome", "heartbeat", "ack", "pong"])
def test_welcome_heartbeat_ack_pong_are_ignorable(etype: str) -> None:
    f = parse_frame(json.dumps({"type": etype}), P)
    assert f.kind is FrameKind.IGNORED and f.ignorable


def test_error_untyped_nonjson_binary_are_classified() -> None:
    assert parse_frame('{"type": "error", "message": "no"}', P).is_error
    assert parse_frame('{"hello": 1}', P).kind is FrameKind.UNTYPED
    assert parse_frame("[1, 2]", P).kind is FrameKind.UNTYPED
    assert parse_frame("not json {", P).kind is FrameKind.NON_JSON
    assert parse_frame(b"\xff\x00\xfe", P).kind is FrameKind.BINARY
    b = parse_frame(b'{"type": "pong"}', P)
    assert b.kind is FrameKind.IGNORED and b.binary


def test_oversized_frame_is_not_parsed() -> None:
    big = json.dumps({"type": "agent_started", "blob": "x" * 2_000_000})
    f = parse_frame(big, P)
    assert f.kind is FrameKind.OVERSIZED and f.size > 2_000_000 and len(f.excerpt) < 300


def test_excerpt_is_redacted() -> None:
    jwt_like = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyIn0.c2lnbmF0dXJlLXZhbHVl"
    f = parse_frame(json.dumps({"type": "x", "token": jwt_like}), P)
    assert jwt_like not in f.excerpt
