"""Protocol profiles: template rendering and frame classification."""

from __future__ import annotations

import json

import pytest

from runbook_lib.protocol import (
    FrameKind,
    ProtocolSettings,
    compile_pattern,
    first_path,
    get_path,
    has_path,
    parse_frame,
    pattern_error,
    render_message,
    render_pattern,
    render_template,
    render_values,
)

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


# ---------------------------------------------------------------- text format (SPEC 8)

TEXT = ProtocolSettings(
    format="text",
    ping="PING {marker}",
    pong_pattern="^PONG {marker}$",
    error_pattern="^ERR ",
    event_patterns={
        "said": r"^\[(?P<room>[^\]]+)\] {user_id}: (?P<body>.*)$",
        "joined": r"^JOINED (?P<room>\S+)$",
    },
)


@pytest.mark.parametrize(
    ("message", "values", "kind", "etype", "fields"),
    [
        ("PONG mk1", {"marker": "mk1"}, FrameKind.IGNORED, "pong", {}),
        ("PONG other", {"marker": "mk1"}, FrameKind.UNTYPED, None, {}),
        ("PONG other", {}, FrameKind.IGNORED, "pong", {"marker": "other"}),
        ("ERR unknown command", {}, FrameKind.ERROR, "error", {}),
        (
            "[r-1] alice: hi there",
            {},
            FrameKind.EVENT,
            "said",
            {"room": "r-1", "user_id": "alice", "body": "hi there"},
        ),
        ("JOINED r-1", {}, FrameKind.EVENT, "joined", {"room": "r-1"}),
        ("something else", {}, FrameKind.UNTYPED, None, {}),
        ('{"type": "agent_started"}', {}, FrameKind.UNTYPED, None, {}),
        (b"JOINED r-2", {}, FrameKind.EVENT, "joined", {"room": "r-2"}),
        (b"\xff\xfe\x00", {}, FrameKind.BINARY, None, {}),
    ],
    ids=[
        "pong-own-marker",
        "pong-other-marker-not-ours",
        "pong-marker-captured",
        "error",
        "event-with-user",
        "event",
        "unmatched",
        "json-in-text-mode-is-text",
        "binary-utf8",
        "binary-garbage",
    ],
)
def test_text_frames_are_classified_by_patterns(
    message: str | bytes, values: dict, kind: FrameKind, etype: str | None, fields: dict
) -> None:
    f = parse_frame(message, TEXT, values=values)
    assert (f.kind, f.event_type, dict(f.fields)) == (kind, etype, fields)


def test_text_pattern_fills_ids_and_marker() -> None:
    f = parse_frame("[r-1] bob: x", TEXT, values={"user_id": "bob"})
    assert f.user_id == "bob" and f.kind is FrameKind.EVENT
    g = parse_frame("[r-1] eve: x", TEXT, values={"user_id": "bob"})
    assert g.kind is FrameKind.UNTYPED  # another user's line does not match our pattern
    p = parse_frame("PONG mk7", TEXT, values={"marker": "mk7"})
    assert p.marker == "mk7" and p.ignorable


def test_invalid_text_pattern_never_raises() -> None:
    bad = ProtocolSettings(format="text", event_patterns={"x": "([unclosed"})
    assert parse_frame("([unclosed", bad).kind is FrameKind.UNTYPED
    assert pattern_error("([unclosed") and not pattern_error("^ok {marker}$")


def test_huge_text_frame_in_text_mode_is_oversized() -> None:
    f = parse_frame("PONG " + "x" * 2_000_000, TEXT)
    assert f.kind is FrameKind.OVERSIZED


@pytest.mark.parametrize(
    ("template", "values", "expected"),
    [
        ("PING {marker}", {"marker": "mk1"}, "PING mk1"),
        ("SAY {room} {text}", {"room": "r", "text": "hi"}, "SAY r hi"),
        ("keep {unknown} and {marker}", {}, "keep {unknown} and "),
        ({"id": "{sub}", "n": 1, "l": ["{marker}"]}, {"sub": "s1", "marker": "m"}, None),
    ],
)
def test_render_values_substitutes_placeholders_and_captures(
    template: object, values: dict, expected: str | None
) -> None:
    out = render_values(template, values)
    if expected is None:
        assert json.loads(out) == {"id": "s1", "n": 1, "l": ["m"]}
    else:
        assert out == expected


def test_render_pattern_escapes_values_and_captures_unknowns() -> None:
    assert render_pattern("^a {marker}$", {"marker": "x.y"}) == r"^a x\.y$"
    rx = compile_pattern("{user_id} said {user_id}")
    assert rx is not None and rx.search("bob said bob") and not rx.search("bob said eve")


def test_render_template_knows_marker() -> None:
    assert render_template({"m": "{marker}"}, marker="mk") == '{"m":"mk"}'
