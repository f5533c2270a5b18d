"""Environment files (TOML): load, validate, resolve secrets.

One file describes one target (``environments/<name>.toml`` or any path); its schema
is the dataclasses of :mod:`runbook_lib.settings`, documented key by key in
``docs/configuration.md``. The file is strict: an unknown section or key, a wrong
type, an empty string where a path or URL belongs, a number that is not finite or out
of its range (``settings_rules.RANGES``), a wait that cannot fit the notebook cell
timeout (``settings_rules.CELL_TIMEOUT_S``), a bad pattern or flow, an unknown check
id, or an environment variable the file names but the process lacks, raise
:class:`ConfigError` naming the file, the key and the closest known key. Secrets never
live in the file: only the names of environment variables that hold them, read here
and registered for redaction at once.
"""

from __future__ import annotations

import difflib
import itertools
import logging
import os
import tomllib
from collections.abc import Iterable, Mapping
from dataclasses import fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from .checks.catalog import CHECK_IDS, DYNAMIC_PREFIXES
from .exceptions import ConfigError
from .flows import FLOW_NAMES, FlowStep
from .protocol import ProtocolSettings
from .redaction import register_secret
from .settings import (
    AuthSettings,
    CloudRunSettings,
    CommandSpec,
    LoadSettings,
    LoggingSettings,
    Settings,
    SourceSettings,
    TargetSettings,
    Thresholds,
    Timeouts,
)
from .settings_rules import (
    BUILTIN_PLACEHOLDERS,
    RANGES,
    check_cell_budget,
    check_number,
    check_placeholders,
    check_regex,
    checks_table,
    closest,
    closest_name,
    parse_flows,
    resolve_source,
    validate_message_auth,
    validate_protocol,
    validate_thresholds,
)

__all__ = [
    "ABSENT_ABLE",
    "LOAD_ENGINES",
    "environments_dir",
    "load_settings",
    "resolve_environment",
    "schema_keys",
    "settings_from_dict",
    "validate_check_ids",
]

log = logging.getLogger(__name__)

AUTH_MODES = ("none", "bearer", "subprotocol", "query", "message")
# WebSocket paths probed one after another: more than this is a generated list, not a service.
MAX_WS_PATHS = 100
LOAD_ENGINES = ("local", "cloudrun-job")


# ---------------------------------------------------------------- resolution


def environments_dir() -> Path:
    """The ``environments/`` folder environment names are looked up in.

    ``RUNBOOK_ENV_DIR`` when set; else the nearest ``environments/`` in the current
    directory or one of its parents (a notebook opened in JupyterLab runs in
    ``notebooks/``); else ``./environments``.
    """
    if os.environ.get("RUNBOOK_ENV_DIR"):
        return Path(os.environ["RUNBOOK_ENV_DIR"])
    cwd = Path.cwd()
    for folder in (cwd, *cwd.parents):
        if (folder / "environments").is_dir():
            return folder / "environments"
    return cwd / "environments"


def resolve_environment(name_or_path: str) -> Path:
    """Path of an environment given by name (``environments/<name>.toml``) or by path.

    Raises:
        ConfigError: when no such file exists.
    """
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix == ".toml" or os.sep in name_or_path or "/" in name_or_path:
        if candidate.is_file():
            return candidate
        raise ConfigError(f"environment file not found: {candidate}")
    named = environments_dir() / f"{name_or_path}.toml"
    if named.is_file():
        return named
    known = sorted(p.stem for p in environments_dir().glob("*.toml"))
    raise ConfigError(
        f"unknown environment {name_or_path!r}: no {named}. Known: {', '.join(known) or 'none'}"
    )


# ---------------------------------------------------------------- loading

_SECTIONS: dict[str, type] = {
    "target": TargetSettings,
    "auth": AuthSettings,
    "protocol": ProtocolSettings,
    "cloudrun": CloudRunSettings,
    "logging": LoggingSettings,
    "source": SourceSettings,
    "thresholds": Thresholds,
    "timeouts": Timeouts,
    "load": LoadSettings,
}
# Tables of the file besides the dataclass sections.
_TABLES = ("commands", "checks", "flows")
_TOP_KEYS = ("name", "auto_approve", "sandbox", *_SECTIONS, *_TABLES)
_PRIVATE = {"auth": {"token", "jwt_secret", "tokens"}}
_THRESHOLD_KEYS = tuple(f.name for f in fields(Thresholds))
_COMMAND_LISTS = ("predeploy", "mission_critical")
_COMMAND_KEYS = ("name", "run", "timeout_s", "junit", "cwd")
# [target] paths that accept ``false``: the service has no such endpoint.
ABSENT_ABLE = (
    "health_path",
    "ws_health_path",
    "ws_test_path",
    "auth_config_path",
    "auth_health_path",
)
# Keys whose value is a path, a URL or a name: an empty string is an error (it would
# silently mean "the root" or "nothing"), never a default.
_NON_EMPTY = {
    "target": ("base_url", "ws_url", "primary_ws_path", "auth_url", *ABSENT_ABLE),
    "auth": ("token_env", "jwt_secret_env", "token_endpoint", "subprotocol", "query_param"),
    "source": ("repo_dir", "app", "python", "import_root"),
    "protocol": ("pong_pattern", "error_pattern"),
    "load": ("image", "region", "job", "service_account"),
}


def schema_keys() -> list[str]:
    """Every key an environment file may hold, dotted (``target.health_path``); list and
    step keys as ``commands.<list>[].name`` and ``flows.<name>.steps[].send``."""
    keys = ["name", "auto_approve", "sandbox"]
    for section, cls in _SECTIONS.items():
        private = _PRIVATE.get(section, set())
        keys += [f"{section}.{f.name}" for f in fields(cls) if f.name not in private]
    keys += [f"commands.{lst}" for lst in _COMMAND_LISTS]
    keys += [f"commands.<list>[].{k}" for k in _COMMAND_KEYS]
    keys += ["checks.not_applicable", "flows.<name>.steps"]
    keys += [f"flows.<name>.steps[].{f.name}" for f in fields(FlowStep)]
    return keys


def _suggest(name: str, section: str | None = None) -> str:
    """`` (did you mean [target]?)`` / `` (did you mean thresholds.hold_s?)`` or ''."""
    if section is None:
        match = closest_name(name, _TOP_KEYS)
        if match:
            shown = f"[{match}]" if match in _SECTIONS or match in _TABLES else match
            return f" (did you mean {shown}?)"
    elif section in _SECTIONS:
        private = _PRIVATE.get(section, set())
        own = [f.name for f in fields(_SECTIONS[section]) if f.name not in private]
        match = closest_name(name, own)
        if match:
            return f" (did you mean {section}.{match}?)"
    # A key written in the wrong section (hold_s under [timeouts]) or at the top level.
    leaves = {k.rsplit(".", 1)[-1]: k for k in schema_keys() if "." in k and "<" not in k}
    match = closest_name(name, leaves, cutoff=0.8)
    return f" (did you mean {leaves[match]}?)" if match else ""


def load_settings(
    name_or_path: str | os.PathLike[str],
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Settings:
    """Load and validate an environment file.

    Args:
        name_or_path: environment name (``environments/<name>.toml``) or a path.
        environ: where secret environment variables are read (default ``os.environ``).
        overrides: dotted keys replacing file values, e.g. ``{"thresholds.hold_s": 5}``.

    Returns:
        The validated :class:`Settings`; ``warnings`` lists what is allowed but doubtful.

    Raises:
        ConfigError: unreadable file, bad TOML, unknown section or key, wrong type, empty
            path or URL, number out of range, wait longer than a cell, bad pattern or flow,
            unset environment variable. The message names the file and the key.
    """
    path = resolve_environment(os.fspath(name_or_path))
    src = str(path)
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"not valid TOML: {exc}", src) from exc
    except RecursionError as exc:  # tomllib recurses once per level of nested tables
        raise ConfigError(
            "not valid TOML for the runbook: tables or arrays are nested too deeply "
            "(no environment key is more than a few levels deep)",
            src,
        ) from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read: {exc}", src) from exc
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value, src)
    return settings_from_dict(raw, source=src, environ=environ)


def settings_from_dict(
    raw: Mapping[str, Any], *, source: str = "<dict>", environ: Mapping[str, str] | None = None
) -> Settings:
    """Validate an already-parsed environment mapping (see :func:`load_settings`)."""
    env = os.environ if environ is None else environ
    warnings: list[str] = []
    for key, value in raw.items():
        if key not in _TOP_KEYS:
            shown = f"section [{key}]" if isinstance(value, Mapping) else f"key {key!r}"
            raise ConfigError(f"unknown {shown}{_suggest(key)}", source)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ConfigError("'name' is required and must be a non-empty string", source)
    if not all(c.isalnum() or c in "-_." for c in name):
        raise ConfigError(f"'name' = {name!r} may only hold letters, digits, '-', '_', '.'", source)

    parts: dict[str, Any] = {}
    absent: set[str] = set()
    for section, cls in _SECTIONS.items():
        table = raw.get(section, {})
        if not isinstance(table, Mapping):
            raise ConfigError(f"[{section}] must be a table", source)
        parts[section] = _build(cls, section, table, source, absent)

    target: TargetSettings = parts["target"]
    if "target" in raw:
        target = _validate_target(target, source)
    parts["target"] = target

    auth: AuthSettings = parts["auth"]
    if auth.mode not in AUTH_MODES:
        raise ConfigError(f"[auth] mode = {auth.mode!r}: expected one of {AUTH_MODES}", source)
    check_placeholders("auth.subprotocol", auth.subprotocol, ("token",), source)
    if auth.mode == "subprotocol" and "{token}" not in auth.subprotocol:
        raise ConfigError(
            f"auth.subprotocol = {auth.subprotocol!r} has no {{token}}: with mode = "
            '"subprotocol" the token would never be sent (e.g. "jwt.{token}")',
            source,
        )
    token = _env_value("auth.token_env", auth.token_env, env, source)
    secret = _env_value("auth.jwt_secret_env", auth.jwt_secret_env, env, source)
    tokens = tuple(_env_value("auth.token_envs", var, env, source) for var in auth.token_envs)
    for value in (token, secret, *tokens):
        register_secret(value)
    if len(set(tokens)) < len(tokens):
        raise ConfigError(
            "auth.token_envs: two of its variables hold the same token, so two simulated "
            "users would be one user to the server; give one token per user",
            source,
        )
    if auth.token_endpoint:
        _check_url("auth.token_endpoint", auth.token_endpoint, ("http", "https"), source)
    parts["auth"] = replace(auth, token=token or (tokens[0] if tokens else ""), jwt_secret=secret,
                            tokens=tokens)  # fmt: skip

    not_applicable = checks_table(raw.get("checks", {}), source)
    protocol = validate_protocol(
        parts["protocol"], raw.get("protocol", {}), source, warnings, not_applicable
    )
    cr: CloudRunSettings = parts["cloudrun"]
    if cr.deploy_strategy == "verify-then-shift" and cr.deploy_command and not cr.deploy_image:
        raise ConfigError(
            'cloudrun.deploy_strategy = "verify-then-shift" needs cloudrun.deploy_image: a '
            "deploy_command cannot deploy with no traffic and a tag",
            source,
        )
    parts["source"] = resolve_source(parts["source"], source)
    validate_thresholds(parts["thresholds"], protocol, source, warnings)
    _validate_load(parts["load"], parts["cloudrun"], source)

    commands = raw.get("commands", {})
    if not isinstance(commands, Mapping):
        raise ConfigError("[commands] must be a table", source)
    for key in commands:
        if key not in _COMMAND_LISTS:
            raise ConfigError(
                f"unknown key commands.{key}{closest(key, _COMMAND_LISTS)}; "
                "use [[commands.predeploy]] or [[commands.mission_critical]]",
                source,
            )
    predeploy = _commands(commands.get("predeploy", []), "predeploy", source)
    mission = _commands(commands.get("mission_critical", []), "mission_critical", source)

    flows = parse_flows(raw.get("flows", {}), fmt=protocol.format, source=source)
    validate_message_auth(parts["auth"], flows, source)
    iso_users = parts["thresholds"].isolation_users
    if len(parts["auth"].tokens) > 1 and not (auth.jwt_secret_env or auth.token_endpoint):
        if iso_users > len(parts["auth"].tokens):
            raise ConfigError(
                f"thresholds.isolation_users = {iso_users} but auth.token_envs names "
                f"{len(parts['auth'].tokens)} tokens: each simulated user needs its own; set "
                f"isolation_users = {len(parts['auth'].tokens)} or name more token variables",
                source,
            )
    for flow_name in flows:
        if flow_name not in FLOW_NAMES:
            warnings.append(
                f"flow {flow_name!r} is not run by any check (checks run the flows "
                f"{', '.join(FLOW_NAMES)}){closest(flow_name, FLOW_NAMES)}"
            )

    for key, val in (
        ("auto_approve", raw.get("auto_approve", False)),
        ("sandbox", raw.get("sandbox", False)),
    ):
        if not isinstance(val, bool):
            raise ConfigError(f"'{key}' must be true or false, got {val!r}", source)

    for w in warnings:
        log.warning("%s: %s", source, w)
    present = frozenset(k for k in raw if k in _SECTIONS or k in _TABLES)
    settings = Settings(
        name=name,
        path=source,
        target=parts["target"],
        auth=parts["auth"],
        protocol=protocol,
        cloudrun=parts["cloudrun"],
        logging=parts["logging"],
        source=parts["source"],
        predeploy=predeploy,
        mission_critical=mission,
        thresholds=parts["thresholds"],
        timeouts=parts["timeouts"],
        auto_approve=bool(raw.get("auto_approve", False)),
        sandbox=bool(raw.get("sandbox", False)),
        present=present,
        warnings=tuple(warnings),
        flows=flows,
        not_applicable=not_applicable,
        declared_absent=frozenset(absent),
        load=parts["load"],
    )
    check_cell_budget(settings, source)
    validate_check_ids(settings, CHECK_IDS, DYNAMIC_PREFIXES)
    return settings


def validate_check_ids(
    settings: Settings, known_ids: Iterable[str], prefixes: Iterable[str] = ()
) -> None:
    """Every ``[checks] not_applicable`` id is a known check id (or starts with a prefix
    such as ``"tests."`` for per-command checks).

    Raises:
        ConfigError: naming the unknown id and the closest known one.
    """
    known = sorted(set(known_ids))
    pre = tuple(prefixes)
    for cid in settings.not_applicable:
        if cid in known or (pre and cid.startswith(pre)):
            continue
        raise ConfigError(
            f"checks.not_applicable: unknown check id {cid!r}{closest(cid, known)}", settings.path
        )


def _env_value(key: str, var: str, env: Mapping[str, str], source: str) -> str:
    """The value of the environment variable named by ``key`` ('' when no name is set)."""
    if not var:
        return ""
    if var not in env:
        near = difflib.get_close_matches(var, list(env), n=1, cutoff=0.8)
        also = f" (a variable named {near[0]} is set)" if near else ""
        raise ConfigError(
            f"{key} = {var!r}: the environment variable {var} is not set in this process{also}; "
            f"export it before the run, or remove {key}",
            source,
        )
    return env[var]


def _validate_load(load: LoadSettings, cloudrun: CloudRunSettings, source: str) -> None:
    if load.engine not in LOAD_ENGINES:
        raise ConfigError(
            f"load.engine = {load.engine!r}: expected one of {LOAD_ENGINES}"
            f"{closest(load.engine, LOAD_ENGINES)}",
            source,
        )
    if load.engine != "cloudrun-job":
        return
    if not (cloudrun.project and (load.region or cloudrun.region)):
        raise ConfigError(
            'load.engine = "cloudrun-job" needs cloudrun.project and a region '
            "(load.region or cloudrun.region) to create the job in",
            source,
        )
    if not load.image.strip():
        raise ConfigError(
            'load.engine = "cloudrun-job" needs load.image: the load worker\'s container '
            "image (see docs/load.md)",
            source,
        )
    if load.parallelism > load.tasks:
        raise ConfigError(
            f"load.parallelism = {load.parallelism} is more than load.tasks = {load.tasks}",
            source,
        )


def _build(cls: type, section: str, table: Mapping[str, Any], source: str, absent: set[str]) -> Any:
    defaults = cls()
    known = {f.name: f for f in fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in table.items():
        dotted = f"{section}.{key}"
        if key not in known or key in _PRIVATE.get(section, ()):
            raise ConfigError(f"unknown key {dotted}{_suggest(key, section)}", source)
        if section == "target" and key in ABSENT_ABLE and isinstance(value, bool):
            if value:
                raise ConfigError(
                    f"{dotted} = true: give a path starting with '/', or false when the "
                    "service has no such endpoint",
                    source,
                )
            kwargs[key] = None
            absent.add(dotted)
            continue
        if dotted in RANGES:
            kwargs[key] = type(getattr(defaults, key))(check_number(dotted, value, source))
            continue
        kwargs[key] = _coerce(section, key, value, getattr(defaults, key), source)
        if key in _NON_EMPTY.get(section, ()) and isinstance(kwargs[key], str):
            if not kwargs[key].strip():
                raise ConfigError(
                    f"{dotted} is an empty string: give a value, or leave the key out"
                    + (" (false declares the endpoint absent)" if key in ABSENT_ABLE else ""),
                    source,
                )
    return cls(**kwargs)


def _coerce(section: str, key: str, value: Any, default: Any, source: str) -> Any:
    where = f"{section}.{key}"
    if section == "cloudrun" and key in _CLOUDRUN_RULES:
        return _CLOUDRUN_RULES[key](value, source)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}", source)
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(f"{where} must be a string, got {value!r}", source)
        return value
    if isinstance(default, tuple):
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            raise ConfigError(f"{where} must be a list of non-empty strings, got {value!r}", source)
        return tuple(value)
    if key in ("ping", "agent_request", "chat_message"):
        if not isinstance(value, (str, Mapping)) or not value:
            raise ConfigError(f"{where} must be a non-empty string or a table template", source)
        return value
    if isinstance(default, Mapping) and not isinstance(value, Mapping):
        raise ConfigError(f"{where} must be a table, got {value!r}", source)
    if key == "required_fields":
        out: dict[str, tuple[str, ...]] = {}
        for etype, paths in value.items():
            if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
                raise ConfigError(f"{where}.{etype} must be a list of field paths", source)
            out[str(etype)] = tuple(paths)
        return out
    if key == "event_patterns":
        for etype, pattern in value.items():
            check_regex(f"{where}.{etype}", pattern, source)
            check_placeholders(f"{where}.{etype}", pattern, BUILTIN_PLACEHOLDERS, source)
        return {str(k): v for k, v in value.items()}
    return value


def _deploy_strategy(value: Any, source: str) -> str:
    strategies = ("direct", "verify-then-shift")
    if value not in strategies:
        raise ConfigError(
            f"cloudrun.deploy_strategy = {value!r}: expected one of {strategies}"
            f"{closest(str(value), strategies)}",
            source,
        )
    return str(value)


def _shift_steps(value: Any, source: str) -> tuple[int, ...]:
    ok = (
        isinstance(value, list)
        and value
        and all(isinstance(p, int) and not isinstance(p, bool) and 0 < p <= 100 for p in value)
        and all(b > a for a, b in itertools.pairwise(value))
        and value[-1] == 100
    )
    if not ok:
        raise ConfigError(
            f"cloudrun.shift_steps = {value!r}: give increasing whole percentages in 1..100 "
            "ending at 100, e.g. [10, 50, 100]",
            source,
        )
    return tuple(value)


_CLOUDRUN_RULES = {"deploy_strategy": _deploy_strategy, "shift_steps": _shift_steps}


def _validate_target(t: TargetSettings, source: str) -> TargetSettings:
    if not t.base_url:
        raise ConfigError("target.base_url is required when [target] is present", source)
    _check_url("target.base_url", t.base_url, ("http", "https"), source)
    ws_url = t.ws_url
    if ws_url:
        _check_url("target.ws_url", ws_url, ("ws", "wss"), source)
    else:
        parts = urlsplit(t.base_url)
        scheme = "wss" if parts.scheme == "https" else "ws"
        ws_url = urlunsplit((scheme, parts.netloc, parts.path, "", ""))
    if t.auth_url:
        _check_url("target.auth_url", t.auth_url, ("http", "https"), source)
    for key in ("primary_ws_path", *ABSENT_ABLE):
        value = getattr(t, key)
        if value and not value.startswith("/"):
            raise ConfigError(f"target.{key} = {value!r} must start with '/'", source)
    if len(t.ws_paths) > MAX_WS_PATHS:
        raise ConfigError(
            f"target.ws_paths has {len(t.ws_paths)} entries; at most {MAX_WS_PATHS} (each one "
            "is probed in turn, every probe bounded by [timeouts])",
            source,
        )
    for p in t.ws_paths:
        if not p.startswith("/"):
            raise ConfigError(f"target.ws_paths entry {p!r} must start with '/'", source)
    paths = t.ws_paths or (t.primary_ws_path,)
    return replace(t, ws_url=ws_url, ws_paths=paths)


def _check_url(key: str, url: str, schemes: tuple[str, ...], source: str) -> None:
    parts = urlsplit(url)
    if parts.scheme not in schemes:
        raise ConfigError(
            f"{key} = {url!r}: scheme must be {' or '.join(schemes)}, not {parts.scheme!r}", source
        )
    if not parts.hostname:
        raise ConfigError(f"{key} = {url!r} has no host", source)
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError(f"{key} = {url!r}: {exc}", source) from exc


def _commands(value: Any, key: str, source: str) -> tuple[CommandSpec, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"commands.{key} must be an array of tables", source)
    out: list[CommandSpec] = []
    seen: set[str] = set()
    for i, item in enumerate(value):
        where = f"commands.{key}[{i}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{where} must be a table with name and run", source)
        for k in item:
            if k not in _COMMAND_KEYS:
                raise ConfigError(f"unknown key {where}.{k}{closest(k, _COMMAND_KEYS)}", source)
        name, run = item.get("name"), item.get("run")
        if not isinstance(name, str) or not name or not isinstance(run, str) or not run:
            raise ConfigError(f"{where} needs string keys 'name' and 'run'", source)
        if name in seen:
            raise ConfigError(f"{where}: duplicate name {name!r}", source)
        seen.add(name)
        timeout = check_number(
            "commands.timeout_s", item.get("timeout_s", 300.0), source, f"{where}.timeout_s"
        )
        for extra in ("junit", "cwd"):
            if extra in item and (not isinstance(item[extra], str) or not item[extra].strip()):
                raise ConfigError(f"{where}.{extra} must be a non-empty string (a path)", source)
        out.append(
            CommandSpec(
                name=name,
                run=run,
                timeout_s=float(timeout),
                junit=item.get("junit", ""),
                cwd=item.get("cwd", ""),
            )
        )
    return tuple(out)


def _set_dotted(raw: dict[str, Any], dotted: str, value: Any, source: str) -> None:
    keys = dotted.split(".")
    node = raw
    for k in keys[:-1]:
        node = node.setdefault(k, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted!r}: {k!r} is not a table", source)
    node[keys[-1]] = value
