"""Environment files: valid ones load, bad ones fail loudly naming key and file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from runbook_lib.exceptions import ConfigError
from runbook_lib.redaction import clear_secrets, redact, registered_secrets
from runbook_lib.settings import load_settings, resolve_environment

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


def test_unknown_keys_warn_but_load(tmp_path):
    s = load_settings(write(tmp_path, MINIMAL + "colour = 1\n[thresholds]\nhold_secs = 3\n"))
    assert any("colour" in w for w in s.warnings)
    assert any("thresholds.hold_secs" in w for w in s.warnings)


def test_secrets_come_from_named_env_vars_and_are_registered(tmp_path):
    clear_secrets()
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


def test_example_environment_files_load():
    for path in sorted(Path("environments").glob("*.toml")):
        load_settings(path, environ={})


def test_relative_repo_dir_is_relative_to_the_environment_file(tmp_path):
    (tmp_path / "envs").mkdir()
    path = write(tmp_path / "envs", MINIMAL + '[source]\nrepo_dir = ".."\n')
    s = load_settings(path)
    assert s.source.repo_dir == str(tmp_path.resolve())


def test_environment_names_are_found_from_a_subfolder(tmp_path, monkeypatch):
    """A notebook kernel runs in notebooks/: `environment = "local"` must still resolve."""
    monkeypatch.delenv("RUNBOOK_ENV_DIR", raising=False)
    (tmp_path / "environments").mkdir()
    write(tmp_path / "environments", MINIMAL, "local.toml")
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    assert resolve_environment("local") == tmp_path / "environments" / "local.toml"
