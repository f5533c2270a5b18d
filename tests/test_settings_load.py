"""Environment files: valid ones load, bad ones fail loudly naming key and file."""

from __future__ import annotations

import math
import re
import sys
import textwrap
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from runbook_lib.exceptions import ConfigError
from runbook_lib.flows import Flow, FlowStep
from runbook_lib.protocol import ProtocolSettings
from runbook_lib.redaction import redact, registered_secrets
from runbook_lib.settings import (
    AuthSettings,
    CloudRunSettings,
    LoggingSettings,
    SourceSettings,
    TargetSettings,
    Thresholds,
    Timeouts,
)
from runbook_lib.settings_load import (
    load_settings,
    resolve_environment,
    schema_keys,
    settings_from_dict,
    validate_check_ids,
)
from runbook_lib.settings_rules import CELL_TIMEOUT_S, RANGES

MINIMAL = """
name = "staging"
[target]
base_url = "https://api.example.test"
"""


def write(tmp_path: Path, text: str, name: str = "env.toml") -> Path:
    p = tmp_path / name
    p.write_text(textwrap.dedent(text))
    return p


def test_minimal_file_loads_with_seed_defaults(tmp_path):
    s = load_settings(write(tmp_path, MINIMAL))
    assert s.name == "staging"
    assert s.target.ws_url == "wss://api.example.test"
    assert s.target.ws("/websocket") == "wss://api.example.test/websocket"
    assert s.thresholds.health_ready_s == 30
    assert s.thresholds.load_success_rate == 0.8
    assert s.thresholds.critical_events_min == 5
    assert s.thresholds.hold_s == 30
    assert not s.auto_approve
    assert not s.has("cloudrun")
    assert s.has("target")


def test_http_base_url_derives_ws_scheme(tmp_path):
    s = load_settings(write(tmp_path, MINIMAL.replace("https://", "http://")))
    assert s.target.ws_url == "ws://api.example.test"


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ('name = "x"\n[target]\nbase_url = "ftp://h"\n', "scheme must be http or https"),
        ('name = "x"\n[target]\nbase_url = "http://"\n', "has no host"),
        ('name = "x"\n[target]\nhealth_path = "/h"\n', "target.base_url is required"),
        ('name = "x"\n[thresholds]\nhold_s = "ten"\n', "thresholds.hold_s must be a number"),
        ('name = "x"\n[thresholds]\nload_connections = -1\n', "must not be negative"),
        ('name = "x"\n[auth]\nmode = "kerberos"\n', "[auth] mode"),
        ('name = "x"\n[logging]\nenabled = "yes"\n', "logging.enabled must be true or false"),
        (
            'name = "x"\n[target]\nbase_url="http://h"\nws_paths = "/ws"\nprimary_ws_path="ws"\n',
            "must start with '/'",
        ),
        ('name = "x"\ncommands = { predeploy = [ { name = "a" } ] }\n', "needs string keys"),
        ('[target]\nbase_url = "http://h"\n', "'name' is required"),
        ('name = "x"\ntarget = 3\n', "[target] must be a table"),
        ('name = "x" [oops', "not valid TOML"),
        ('name = "x"\nauto_approve = "true"\n', "'auto_approve' must be true or false"),
    ],
)
def test_bad_files_raise_config_error_naming_the_key(tmp_path, body, fragment):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_secrets_come_from_named_env_vars_and_are_registered(tmp_path):
    body = MINIMAL + '[auth]\nmode = "bearer"\ntoken_env = "MY_TOKEN"\njwt_secret_env = "MY_KEY"\n'
    s = load_settings(
        write(tmp_path, body), environ={"MY_TOKEN": "tok-abcdef-123", "MY_KEY": "key-zyxwvu-987"}
    )
    assert s.auth.token == "tok-abcdef-123"
    assert {"tok-abcdef-123", "key-zyxwvu-987"} <= registered_secrets()
    assert "tok-abcdef-123" not in repr(s)
    shown = s.redacted_dict()
    assert shown["auth"]["token"] == "[set]"
    assert "key-zyxwvu-987" not in str(shown)
    assert redact("Bearer tok-abcdef-123") == "Bearer [REDACTED]"


def test_overrides_replace_file_values(tmp_path):
    s = load_settings(write(tmp_path, MINIMAL), overrides={"thresholds.hold_s": 2})
    assert s.thresholds.hold_s == 2.0


def test_commands_parse(tmp_path):
    body = MINIMAL + textwrap.dedent("""
        [[commands.mission_critical]]
        name = "events"
        run = "pytest -q tests/x.py"
        timeout_s = 60
        junit = "out.xml"
    """)
    s = load_settings(write(tmp_path, body))
    assert s.mission_critical[0].name == "events"
    assert s.mission_critical[0].timeout_s == 60.0


def test_resolve_by_name_and_unknown_name(tmp_path, monkeypatch):
    monkeypatch.setenv("RUNBOOK_ENV_DIR", str(tmp_path))
    write(tmp_path, MINIMAL, "staging.toml")
    assert resolve_environment("staging") == tmp_path / "staging.toml"
    with pytest.raises(ConfigError, match="Known: staging"):
        resolve_environment("prod")
    with pytest.raises(ConfigError, match="not found"):
        resolve_environment(str(tmp_path / "missing.toml"))


def test_relative_repo_dir_is_relative_to_the_environment_file(tmp_path):
    (tmp_path / "envs").mkdir()
    path = write(tmp_path / "envs", MINIMAL + '[source]\nrepo_dir = ".."\n')
    s = load_settings(path)
    assert s.source.repo_dir == str(tmp_path.resolve())


def test_environment_names_are_found_from_a_subfolder(tmp_path, monkeypatch):
    """A notebook kernel runs in notebooks/: `environment = "local"` must still resolve."""
    (tmp_path / "environments").mkdir()
    write(tmp_path / "environments", MINIMAL, "local.toml")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert resolve_environment("local") == tmp_path / "environments" / "local.toml"


# ------------------------------------------------------------------ strict configuration


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        (
            'name = "x"\n[targets]\nbase_url = "http://h"\n',
            "unknown section [targets] (did you mean [target]?)",
        ),
        (
            'name = "x"\n[thresholds]\nhold_secs = 3\n',
            "unknown key thresholds.hold_secs (did you mean thresholds.hold_s?)",
        ),
        (
            'name = "x"\n[timeouts]\nhold_s = 3\n',
            "unknown key timeouts.hold_s (did you mean thresholds.hold_s?)",
        ),
        (
            'name = "x"\nauto_aprove = true\n',
            "unknown key 'auto_aprove' (did you mean auto_approve?)",
        ),
        ('name = "x"\n[protocol]\npong_type = ["pong"]\n', "did you mean protocol.pong_types?"),
        ('name = "x"\n[auth]\ntoken = "literal-secret"\n', "unknown key auth.token"),
        (
            'name = "x"\n[commands]\npre_deploy = []\n',
            "unknown key commands.pre_deploy (did you mean predeploy?)",
        ),
        (
            'name = "x"\n[[commands.predeploy]]\nname = "a"\nrun = "true"\ntimeout = 5\n',
            "unknown key commands.predeploy[0].timeout (did you mean timeout_s?)",
        ),
        (
            'name = "x"\n[checks]\nnot_aplicable = {}\n',
            "unknown key checks.not_aplicable (did you mean not_applicable?)",
        ),
        (
            'name = "x"\n[target]\nbase_url = "http://h"\nhealth_path = ""\n',
            "target.health_path is an empty string",
        ),
        ('name = "x"\n[target]\nbase_url = ""\n', "target.base_url is an empty string"),
        (
            'name = "x"\n[target]\nbase_url = "http://h"\nauth_url = ""\n',
            "target.auth_url is an empty string",
        ),
        ('name = "x"\n[source]\nrepo_dir = ""\n', "source.repo_dir is an empty string"),
        ('name = "x"\n[auth]\ntoken_env = ""\n', "auth.token_env is an empty string"),
        (
            'name = "x"\n[target]\nbase_url = "http://h"\nws_test_path = true\n',
            "target.ws_test_path = true",
        ),
        (
            'name = "x"\n[[commands.predeploy]]\nname = "a"\nrun = "t"\ncwd = ""\n',
            "cwd must be a non-empty string",
        ),
    ],
)
def test_strict_file_names_the_key_and_the_closest_known_one(tmp_path, body, fragment):
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={})
    assert fragment in str(info.value)
    assert str(path) in str(info.value)


def test_false_declares_an_endpoint_absent(tmp_path):
    body = MINIMAL + "ws_test_path = false\nws_health_path = false\nauth_health_path = false\n"
    s = load_settings(write(tmp_path, body))
    assert s.target.ws_test_path is None and s.target.ws_health_path is None
    assert s.target.health_path == "/health"
    assert s.declared_absent == {
        "target.ws_test_path",
        "target.ws_health_path",
        "target.auth_health_path",
    }
    assert s.redacted_dict()["declared_absent"] == sorted(s.declared_absent)
    assert load_settings(write(tmp_path, MINIMAL, "b.toml")).declared_absent == frozenset()


def test_named_but_unset_environment_variable_is_an_error(tmp_path):
    body = MINIMAL + '[auth]\nmode = "bearer"\ntoken_env = "RB_TOKEN_X"\n'
    path = write(tmp_path, body)
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={"RB_TOKEN": "abcdefgh"})
    msg = str(info.value)
    assert "auth.token_env = 'RB_TOKEN_X'" in msg and "not set" in msg and str(path) in msg
    assert "RB_TOKEN is set" in msg  # the near miss is named (never its value)
    assert "abcdefgh" not in msg
    body2 = MINIMAL + '[auth]\nmode = "bearer"\njwt_secret_env = "RB_KEY"\n'
    with pytest.raises(ConfigError, match=r"auth\.jwt_secret_env"):
        load_settings(write(tmp_path, body2, "k.toml"), environ={})
    s = load_settings(path, environ={"RB_TOKEN_X": "tok-123456789"})
    assert s.auth.token == "tok-123456789"


def test_checks_not_applicable(tmp_path):
    body = MINIMAL + textwrap.dedent("""
        [checks.not_applicable]
        "events.order" = "one event per request, nothing to order"
        "ws.test_endpoint" = "no such route"
    """)
    s = load_settings(write(tmp_path, body))
    assert s.not_applicable == {
        "events.order": "one event per request, nothing to order",
        "ws.test_endpoint": "no such route",
    }
    assert s.redacted_dict()["checks"]["not_applicable"]["ws.test_endpoint"] == "no such route"
    validate_check_ids(s, ["events.order", "ws.test_endpoint", "ws.health"])
    with pytest.raises(
        ConfigError,
        match=r"unknown check id 'ws.test_endpoint' \(did you mean ws.test_endpoint_x\?\)",
    ):
        validate_check_ids(s, ["events.order", "ws.test_endpoint_x"])
    validate_check_ids(s, ["events.order"], prefixes=("ws.",))


def test_events_order_warning_is_silent_once_declared_not_applicable(tmp_path):
    """One event type: warn that events.order cannot judge, unless the user declared it."""
    one = (
        MINIMAL + '[protocol]\ncritical_events = ["done"]\n[thresholds]\ncritical_events_min = 1\n'
    )
    assert any("events.order" in w for w in load_settings(write(tmp_path, one)).warnings)
    declared = one + '[checks.not_applicable]\n"events.order" = "one event per request"\n'
    s = load_settings(write(tmp_path, declared, "d.toml"))
    assert not any("events.order" in w for w in s.warnings)


def test_not_applicable_ids_are_checked_against_the_catalog_at_load(tmp_path):
    """A typo'd check id is exit 2 naming the closest catalog id, not a silent no-op."""
    path = write(tmp_path, MINIMAL + '[checks.not_applicable]\n"events.ordr" = "x"\n')
    with pytest.raises(
        ConfigError, match=r"unknown check id 'events.ordr' \(did you mean events.order\?\)"
    ):
        load_settings(path)
    dynamic = write(tmp_path, MINIMAL + '[checks.not_applicable]\n"tests.smoke" = "x"\n', "d.toml")
    assert load_settings(dynamic).not_applicable == {"tests.smoke": "x"}


@pytest.mark.parametrize(
    ("table", "fragment"),
    [
        ('"events" = "x"', "is not a check id"),
        ('"events.order" = ""', "needs a non-empty reason"),
        ('"events.order" = 1', "needs a non-empty reason"),
    ],
)
def test_bad_not_applicable_entries(tmp_path, table, fragment):
    path = write(tmp_path, MINIMAL + f"[checks.not_applicable]\n{table}\n")
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_settings(path)


# ------------------------------------------------------------------ [protocol] (SPEC 8)


def test_protocol_text_format_and_patterns(tmp_path):
    body = MINIMAL + textwrap.dedent("""
        [protocol]
        format = "text"
        subprotocols = ["chat.v1"]
        ping = "ping {marker}"
        pong_pattern = "^pong {marker}$"
        error_pattern = "^ERR (?P<reason>.*)$"
        event_patterns = { agent_started = "^started (?P<run_id>\\\\S+)", agent_completed = "^done" }
        shared_room = true
        critical_events = ["agent_started", "agent_completed"]

        [thresholds]
        critical_events_min = 2
    """)
    s = load_settings(write(tmp_path, body))
    p = s.protocol
    assert p.format == "text" and p.subprotocols == ("chat.v1",) and p.shared_room is True
    assert p.ping == "ping {marker}" and p.pong_pattern == "^pong {marker}$"
    assert set(p.event_patterns) == {"agent_started", "agent_completed"}
    assert s.warnings == ()


@pytest.mark.parametrize(
    ("protocol", "fragment"),
    [
        ('format = "xml"', "protocol.format = 'xml'"),
        ('pong_pattern = "^pong ("', "protocol.pong_pattern"),
        ('error_pattern = "[a-"', "protocol.error_pattern"),
        (
            'event_patterns = { agent_started = "(unclosed" }',
            "protocol.event_patterns.agent_started",
        ),
        ('format = "text"\nping = { type = "ping" }', "format = 'text'"),
        ('subprotocols = ["a b"]', "not a valid subprotocol token"),
        ('ping = { type = "ping", id = "{nonce}" }', "undefined placeholder {nonce}"),
        ('pong_pattern = ""', "protocol.pong_pattern is an empty string"),
        ("critical_events = []", "critical_events_min = 5"),
        ('critical_events = ["a", "a"]', "twice"),
        ("shared_room = 1", "protocol.shared_room must be true or false"),
    ],
)
def test_bad_protocol_keys(tmp_path, protocol, fragment):
    path = write(tmp_path, MINIMAL + f"[protocol]\n{protocol}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert fragment in str(info.value) and str(path) in str(info.value)


def test_events_order_with_fewer_than_two_types_is_a_warning(tmp_path):
    body = (
        MINIMAL + '[protocol]\ncritical_events = ["reply"]\n[thresholds]\ncritical_events_min = 1\n'
    )
    s = load_settings(write(tmp_path, body))
    assert any("events.order needs at least two" in w for w in s.warnings)
    empty = MINIMAL + "[protocol]\ncritical_events = []\n[thresholds]\ncritical_events_min = 0\n"
    s = load_settings(write(tmp_path, empty, "e.toml"))
    assert any("critical_events is empty" in w for w in s.warnings)


# ------------------------------------------------------------------ [flows] (SPEC 8)

SPEC_FLOW = """
[[flows.agent.steps]]
send = { op = "subscribe", topic = "t-{marker}", id = "{run_id}" }
[[flows.agent.steps]]
expect = { "ack.id" = "{run_id}" }
timeout_s = 5
[[flows.agent.steps]]
send = { op = "publish", topic = "t-{marker}", data = "{marker}" }
[[flows.agent.steps]]
expect_pattern = "{marker}"
capture = { msg_id = "id" }
timeout_s = 10
[[flows.agent.steps]]
send = { op = "get", id = "{msg_id}" }
[[flows.agent.steps]]
expect_event = "agent_completed"
"""


def test_spec_flow_parses_into_the_flow_model(tmp_path):
    s = load_settings(write(tmp_path, MINIMAL + SPEC_FLOW))
    flow = s.flows["agent"]
    assert isinstance(flow, Flow) and flow.name == "agent" and len(flow.steps) == 6
    assert [st.kind for st in flow.steps] == ["send", "expect", "send", "expect", "send", "expect"]
    assert flow.steps[0].send == {"op": "subscribe", "topic": "t-{marker}", "id": "{run_id}"}
    assert flow.steps[1].expect == {"ack.id": "{run_id}"} and flow.steps[1].timeout_s == 5.0
    assert flow.steps[3].expect_pattern == "{marker}" and flow.steps[3].capture == {"msg_id": "id"}
    assert flow.steps[5].expect_event == "agent_completed" and flow.steps[5].timeout_s is None
    assert all(isinstance(st, FlowStep) for st in flow.steps)
    assert s.redacted_dict()["flows"]["agent"][3]["capture"] == {"msg_id": "id"}
    assert load_settings(write(tmp_path, MINIMAL, "n.toml")).flows == {}


@pytest.mark.parametrize(
    ("steps", "fragment"),
    [
        (
            '[[flows.chat.steps]]\nsend = "hi"\nexpect_pattern = "x"\n',
            "flows.chat.steps[0] must have exactly one of",
        ),
        ("[[flows.chat.steps]]\ntimeout_s = 3\n", "found none"),
        ('[[flows.chat.steps]]\nsend = "hi"\nwait = 3\n', "unknown key flows.chat.steps[0].wait"),
        (
            '[[flows.chat.steps]]\nsend = "hi {nonce}"\n',
            "undefined placeholder {nonce} (flow 'chat', step 0)",
        ),
        (
            '[[flows.chat.steps]]\nsend = "a"\n[[flows.chat.steps]]\n'
            'expect_pattern = "{msg_id}"\ncapture = { msg_id = "id" }\n',
            "flows.chat.steps[1].expect_pattern: undefined placeholder {msg_id} "
            "(flow 'chat', step 1)",
        ),
        (
            '[[flows.chat.steps]]\nsend = "a"\n[[flows.chat.steps]]\nexpect_pattern = "("\n',
            "not a valid regular expression",
        ),
        (
            '[[flows.chat.steps]]\nsend = "a"\ncapture = { x = "id" }\n',
            "capture and timeout_s belong to expect steps",
        ),
        (
            '[[flows.chat.steps]]\nsend = "a"\n[[flows.chat.steps]]\nexpect_event = "e"\ntimeout_s = inf\n',
            "flows.chat.steps[1].timeout_s",
        ),
        (
            '[[flows.chat.steps]]\nsend = "a"\n[[flows.chat.steps]]\nexpect_event = "e"\ntimeout_s = 0\n',
            "outside the allowed range",
        ),
        (
            '[[flows.chat.steps]]\nsend = "a"\n[[flows.chat.steps]]\nexpect_event = "e"\ntimeout_s = -2\n',
            "must not be negative",
        ),
        (
            '[[flows.chat.steps]]\nsend = "a"\n[[flows.chat.steps]]\nexpect = {}\n',
            "dotted path -> value",
        ),
        ('[[flows.chat.steps]]\nexpect_event = "e"\n', "at least one send step"),
        ("[flows.chat]\nsteps = []\n", "non-empty array"),
        (
            '[flows.chat]\nstep = [{ send = "a" }]\n',
            "unknown key flows.chat.step (did you mean steps?)",
        ),
        (
            '[[flows.chat.steps]]\nsend = "a"\n[[flows.chat.steps]]\nexpect_pattern = "x"\n'
            'capture = { marker = "id" }\n',
            "hide the built-in",
        ),
    ],
)
def test_bad_flows_name_flow_step_and_key(tmp_path, steps, fragment):
    path = write(tmp_path, MINIMAL + steps)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert fragment in str(info.value), str(info.value)


def test_text_format_flows_send_strings_and_match_patterns(tmp_path):
    good = (
        MINIMAL
        + '[protocol]\nformat = "text"\n[[flows.chat.steps]]\nsend = "say {marker}"\n'
        + '[[flows.chat.steps]]\nexpect_pattern = "^echo {marker}$"\n'
    )
    assert load_settings(write(tmp_path, good)).flows["chat"].steps[0].send == "say {marker}"
    for step, fragment in (
        ('send = { a = "b" }', "format = 'text' sends strings"),
        ('send = "x"\n[[flows.chat.steps]]\nexpect = { a = "b" }', "uses expect_pattern"),
    ):
        body = MINIMAL + f'[protocol]\nformat = "text"\n[[flows.chat.steps]]\n{step}\n'
        with pytest.raises(ConfigError, match=re.escape(fragment)):
            load_settings(write(tmp_path, body, "t.toml"))


def test_unused_flow_name_is_a_warning(tmp_path):
    s = load_settings(write(tmp_path, MINIMAL + '[[flows.agnet.steps]]\nsend = "x"\n'))
    assert any("flow 'agnet' is not run by any check" in w and "agent" in w for w in s.warnings)


# ------------------------------------------------------------------ [source] python / import_root


def test_source_python_and_import_root_resolve_like_repo_dir(tmp_path):
    (tmp_path / "envs").mkdir()
    (tmp_path / "app" / "src").mkdir(parents=True)
    venv_bin = tmp_path / "app" / ".venv" / "bin"
    venv_bin.mkdir(parents=True)
    (venv_bin / "python").symlink_to(sys.executable)
    body = (
        MINIMAL
        + '[source]\nrepo_dir = "../app"\npython = "../app/.venv/bin/python"\nimport_root = "src"\n'
    )
    s = load_settings(write(tmp_path / "envs", body))
    assert s.source.repo_dir == str((tmp_path / "app").resolve())
    assert Path(s.source.python) == (tmp_path / "envs" / "../app/.venv/bin/python").absolute()
    assert s.source.import_root == str((tmp_path / "app" / "src").resolve())
    bare = MINIMAL + f'[source]\npython = "{Path(sys.executable).name}"\n'
    assert Path(load_settings(write(tmp_path, bare, "bare.toml")).source.python).is_file()


@pytest.mark.parametrize(
    ("source", "fragment"),
    [
        ('python = "nowhere/python"', "source.python = 'nowhere/python': no such interpreter"),
        ('python = "./data.txt"', "is not executable"),
        ('import_root = "missing"', "source.import_root = 'missing'"),
    ],
)
def test_bad_source_interpreter_or_import_root(tmp_path, source, fragment):
    (tmp_path / "data.txt").write_text("x")
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        load_settings(write(tmp_path, MINIMAL + f'[source]\nrepo_dir = "."\n{source}\n'))


# ------------------------------------------------------------------ numbers (issue 11)

NUMERIC = sorted(
    k for k in RANGES if k.split(".")[0] in ("thresholds", "timeouts", "auth", "logging")
)


def _bad_values(key: str) -> list[tuple[str, Any]]:
    rng = RANGES[key]
    out: list[tuple[str, Any]] = [
        ("inf", math.inf),
        ("-inf", -math.inf),
        ("nan", math.nan),
        ("negative", -1),
        ("huge", rng.hi * 1000 + 1),
    ]
    if rng.lo_open or rng.lo >= 1:
        out.append(("zero", 0))
    if rng.integer:
        out.append(("fraction", 2.5))
    return out


MATRIX = [(k, label, v) for k in NUMERIC for label, v in _bad_values(k)]


def _toml_number(v: Any) -> str:
    if isinstance(v, float) and math.isnan(v):
        return "nan"
    if isinstance(v, float) and math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return repr(v)


@pytest.mark.parametrize(
    ("key", "label", "value"), MATRIX, ids=[f"{k}-{lbl}" for k, lbl, _ in MATRIX]
)
def test_numeric_matrix_is_rejected_at_load_naming_the_key(tmp_path, key, label, value):
    section, name = key.split(".")
    path = write(tmp_path, MINIMAL + f"[{section}]\n{name} = {_toml_number(value)}\n")
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert key in str(info.value) and str(path) in str(info.value)
    # The same value through --param (JSON NaN / Infinity) is rejected the same way.
    with pytest.raises(ConfigError, match=re.escape(key)):
        load_settings(write(tmp_path, MINIMAL, "p.toml"), overrides={key: value})


@pytest.mark.parametrize("key", NUMERIC)
def test_every_numeric_key_accepts_its_default_and_its_bounds(tmp_path, key):
    section, name = key.split(".")
    rng = RANGES[key]
    low = rng.lo if not rng.lo_open else rng.lo + (1 if rng.integer else 0.5)
    for value in (low, rng.hi if rng.hi <= 100 else low):
        path = write(tmp_path, MINIMAL + f"[{section}]\n{name} = {value!r}\n")
        try:
            load_settings(path)
        except ConfigError as exc:  # a cross-field rule may refuse a bound: it names the key
            assert "critical_events" in str(exc) or "monitor" in str(exc), exc


def test_every_numeric_key_has_a_range_and_every_range_a_key():
    numeric = {
        f"{section}.{f.name}"
        for section, cls in (
            ("auth", AuthSettings),
            ("logging", LoggingSettings),
            ("thresholds", Thresholds),
            ("timeouts", Timeouts),
            ("protocol", ProtocolSettings),
            ("target", TargetSettings),
            ("cloudrun", CloudRunSettings),
            ("source", SourceSettings),
        )
        for f in fields(cls)
        if type(getattr(cls(), f.name)) in (int, float)
    }
    assert numeric == set(NUMERIC)
    assert {"commands.timeout_s", "flows.timeout_s"} <= set(RANGES)
    for key in NUMERIC:  # the unit is in the name of every duration
        assert not RANGES[key].lo_open or key.endswith("_s"), key


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ("[thresholds]\nmonitor_window_s = 60000\n", "milliseconds"),
        ("[thresholds]\nhold_s = 30000\n", "milliseconds"),
        ("[timeouts]\nconnect_s = 0\n", "0 would make every wait fail"),
        ("[timeouts]\nread_s = 0\n", "timeouts.read_s"),
        (
            "[thresholds]\nmonitor_window_s = 590\n",
            "thresholds.monitor_window_s: the monitoring window (phase 7) may take 625 s, "
            "more than the notebook cell timeout (600 s",
        ),
        ("[thresholds]\nhold_s = 595\n", "thresholds.hold_s: the long-lived socket"),
        (
            "[thresholds]\nws_health_ready_s = 598\n",
            "thresholds.ws_health_ready_s: the warm-up poll",
        ),
        ("[timeouts]\noperation_s = 590\n", "timeouts.operation_s: the deploy"),
        ("[timeouts]\noperation_s = 900\n", "notebook cell timeout (600 s)"),
        (
            '[[commands.predeploy]]\nname = "a"\nrun = "t"\ntimeout_s = 400\n'
            '[[commands.predeploy]]\nname = "b"\nrun = "t"\ntimeout_s = 300\n',
            "commands.predeploy: the predeploy commands",
        ),
        (
            '[[commands.mission_critical]]\nname = "a"\nrun = "t"\ntimeout_s = nan\n',
            "commands.mission_critical[0].timeout_s",
        ),
        (
            "[thresholds]\nmonitor_interval_s = 30\nmonitor_window_s = 10\n",
            "the window holds no sample",
        ),
        ("[thresholds]\nisolation_users = 1\n", "thresholds.isolation_users"),
    ],
)
def test_waits_that_cannot_fit_a_cell_or_make_no_sense(tmp_path, body, fragment):
    path = write(tmp_path, MINIMAL + body)
    with pytest.raises(ConfigError) as info:
        load_settings(path)
    assert fragment in str(info.value), str(info.value)


def test_the_runner_uses_the_same_cell_timeout():
    from runbook_lib.runner import RunOptions

    assert RunOptions().cell_timeout_s == CELL_TIMEOUT_S


def test_few_monitor_samples_is_a_warning(tmp_path):
    body = MINIMAL + "[thresholds]\nmonitor_window_s = 2\nmonitor_interval_s = 0.5\n"
    s = load_settings(write(tmp_path, body))
    assert any("4 sample(s)" in w for w in s.warnings)


# ------------------------------------------------------------------ committed and generated files

REPO = Path(__file__).resolve().parents[1]


def test_committed_example_files_load():
    examples = sorted((REPO / "environments").glob("*.toml"))
    assert REPO / "environments" / "staging.example.toml" in examples
    for path in examples:
        s = load_settings(path, environ={"STAGING_WS_TOKEN": "example-token-value"})
        assert s.name and s.warnings == (), (path, s.warnings)
        if s.auth.token_env:
            assert s.auth.token == "example-token-value"
    with pytest.raises(ConfigError, match="STAGING_WS_TOKEN is not set"):
        load_settings(REPO / "environments" / "staging.example.toml", environ={})


def test_generated_sandbox_environment_loads(tmp_path):
    from runbook_lib.sandbox.env_file import environment_toml
    from runbook_lib.sandbox.state import SandboxInfo

    info = SandboxInfo(
        state_dir=str(tmp_path),
        env_file=str(tmp_path / "local.toml"),
        pid=1,
        pgid=1,
        service_url="http://127.0.0.1:40001",
        emulator_url="http://127.0.0.1:40002",
        auth_url="http://127.0.0.1:40003",
        project="sandbox-project",
        region="local",
        service="backend",
        serving="sandbox/backend:ws-routes-missing",
        deploy_image="sandbox/backend:healthy",
        started_at="2026-01-01T00:00:00Z",
    )
    path = tmp_path / "local.toml"
    path.write_text(environment_toml(info), encoding="utf-8")
    s = load_settings(path, environ={})
    assert s.sandbox and s.auto_approve and s.warnings == ()
    assert s.target.base_url == "http://127.0.0.1:40001" and s.declared_absent == frozenset()


def test_schema_keys_cover_every_section():
    keys = schema_keys()
    assert "target.health_path" in keys and "protocol.event_patterns" in keys
    assert "checks.not_applicable" in keys and "flows.<name>.steps[].expect_pattern" in keys
    assert "auth.token" not in keys and "auth.jwt_secret" not in keys
    assert "cloudrun.deploy_strategy" in keys and "cloudrun.shift_steps" in keys


@pytest.mark.parametrize(
    ("table", "words"),
    [
        ({"deploy_strategy": "canary"}, "cloudrun.deploy_strategy = 'canary': expected one of"),
        ({"shift_steps": [50, 10, 100]}, "cloudrun.shift_steps = [50, 10, 100]: give increasing"),
        ({"shift_steps": [10, 50]}, "ending at 100"),
        ({"shift_steps": [0, 100]}, "1..100"),
        ({"shift_steps": [True, 100]}, "whole percentages"),
        (
            {"deploy_strategy": "verify-then-shift", "deploy_command": "./deploy.sh"},
            "needs cloudrun.deploy_image",
        ),
    ],
)
def test_deploy_strategy_and_shift_steps_are_validated(table, words):
    """SPEC 9's [cloudrun] keys: a bad strategy or step list stops the run at load (exit 2)."""
    with pytest.raises(ConfigError, match=re.escape(words)):
        settings_from_dict({"name": "x", "cloudrun": table})


def test_deploy_strategy_defaults_to_direct():
    s = settings_from_dict({"name": "x"})
    assert (s.cloudrun.deploy_strategy, s.cloudrun.shift_steps) == ("direct", (10, 50, 100))
    shifted = settings_from_dict(
        {
            "name": "x",
            "cloudrun": {"deploy_strategy": "verify-then-shift", "shift_steps": [25, 100]},
        }
    )
    assert shifted.cloudrun.shift_steps == (25, 100)


# ------------------------------------------------------------------ docs/configuration.md

_DOC_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|([^|]*)\|([^|]*)\|([^|]*)\|([^|]*)\|\s*$")
_RANGE_OF = {
    "commands.<list>[].timeout_s": "commands.timeout_s",
    "flows.<name>.steps[].timeout_s": "flows.timeout_s",
}


def _documented() -> dict[str, tuple[str, str]]:
    rows: dict[str, tuple[str, str]] = {}
    for line in (REPO / "docs" / "configuration.md").read_text(encoding="utf-8").splitlines():
        m = _DOC_ROW.match(line)
        if m:
            key, typ, _default, rng, _checks = (g.strip() for g in m.groups())
            assert key not in rows, f"{key} documented twice"
            rows[key] = (typ, rng)
    return rows


def test_every_schema_key_is_documented_and_every_documented_key_exists():
    documented = _documented()
    schema = set(schema_keys())
    assert sorted(schema - set(documented)) == [], "keys missing from docs/configuration.md"
    assert sorted(set(documented) - schema) == [], "documented keys the schema does not have"


def test_documented_ranges_are_the_enforced_ranges():
    for key, (typ, rng) in _documented().items():
        enforced = RANGES.get(_RANGE_OF.get(key, key))
        if enforced is None:
            assert rng == "", (key, rng)
        else:
            assert rng == enforced.text(), (key, rng, enforced.text())
            assert typ, key


def test_documented_cell_timeout_is_the_constant():
    text = (REPO / "docs" / "configuration.md").read_text(encoding="utf-8")
    assert f"CELL_TIMEOUT_S = {CELL_TIMEOUT_S:g}" in text
