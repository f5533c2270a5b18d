"""``runbook init``: probe a live service and write a commented environment file.

``runbook init --url URL [--app module:attr] [--python PY] [--ws-path P ...]
[--token-env NAME] [--name NAME] [--out PATH] [--force]`` (SPEC section 8) finds:

* the health endpoint among ``/health``, ``/healthz``, ``/ready``, ``/`` (none: ``false``);
* ``/ws/health`` and ``/ws/test`` (absent: ``false``);
* the WebSocket paths: from the ASGI app (listed in its own interpreter), the given
  ``--ws-path``s, or common candidates; each one's upgrade status;
* the subprotocol the server needs (offered, echoed) and, with ``--token-env``, how
  the token is passed (bearer header, query parameter, ``jwt.<token>`` subprotocol);
* the frame format and a working ping: the seed's JSON ``ping``/``pong``, JSON-RPC,
  ``graphql-transport-ws`` (``connection_init`` first) or a text ``PING``/``PONG``
  line; and whether the seed's agent protocol answers.

The file sets every inferred key (with the evidence as a comment), shows every other
key commented with its default, declares in ``[checks.not_applicable]`` every check
that cannot apply with the reason, and writes a ``[flows.load]`` conversation when the
ping is not the seed's. ``init_main(argv) -> int``: 0 written, 1 written but no
WebSocket path upgraded (1 and nothing written when nothing answered at all), 2 usage
error (nothing written).
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import datetime as dt
import json
import os
import re
import sys
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from .flow_runner import run_flow
from .flows import Flow, FlowObservation, FlowStep
from .settings import (
    AuthSettings,
    CloudRunSettings,
    LoggingSettings,
    ProtocolSettings,
    SourceSettings,
    TargetSettings,
    Thresholds,
    Timeouts,
)
from .source import list_app_routes
from .tokens import ConnectAuth

__all__ = ["InitFindings", "init_main", "probe_service", "render_environment"]

HEALTH_CANDIDATES = ("/health", "/healthz", "/ready", "/")
WS_CANDIDATES = ("/ws", "/websocket", "/socket", "/rpc", "/graphql", "/chat", "/stream")
SUBPROTOCOL_CANDIDATES = ("graphql-transport-ws", "graphql-ws")
_SECTIONS: tuple[tuple[str, type], ...] = (
    ("target", TargetSettings),
    ("auth", AuthSettings),
    ("protocol", ProtocolSettings),
    ("source", SourceSettings),
    ("cloudrun", CloudRunSettings),
    ("logging", LoggingSettings),
    ("thresholds", Thresholds),
    ("timeouts", Timeouts),
)
_PRIVATE = {"auth": {"token", "jwt_secret"}}
_AGENT_CHECKS = (
    "e2e.agent_response",
    "events.critical_delivered",
    "events.order",
    "events.structure",
    "events.latency",
    "chat.flow",
    "isolation.sessions",
    "isolation.no_cross_user",
)
_AUTH_CHECKS = ("auth.config", "auth.health", "auth.ws_authenticated", "auth.rejects_invalid")


@dataclass
class InitFindings:
    """What the probe found, as environment keys with the evidence for each.

    Attributes:
        name: the environment's name.
        keys: section -> key -> value for every inferred key.
        why: ``section.key`` -> the evidence (written as the key's comment).
        flows: flow name -> steps (as TOML tables).
        not_applicable: check id -> reason.
        notes: findings for the file's header (and the terminal).
        upgraded: at least one WebSocket path answered 101.
        reachable: anything answered (HTTP or a WebSocket handshake, even a refusal).
    """

    name: str
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)
    flows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    upgraded: bool = False
    reachable: bool = False

    def set(self, section: str, key: str, value: Any, why: str = "") -> None:
        self.keys.setdefault(section, {})[key] = value
        if why:
            self.why[f"{section}.{key}"] = why


# ---------------------------------------------------------------- probing


def _ws_base(url: str) -> str:
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss"}.get(parts.scheme, parts.scheme)
    return urlunsplit((scheme, parts.netloc, "", "", "")).rstrip("/")


async def _health(
    client: httpx.AsyncClient, base: str, path: str, timeout_s: float
) -> tuple[int | None, str]:
    """Status and the start of the body of ``GET path``, within ``timeout_s`` in all.

    httpx's timeout bounds each read, so a server that drips its answer a byte at a
    time would hold it for ever; the whole request is bounded here, and only the
    start of the body is read.
    """

    async def get() -> tuple[int, bytes]:
        async with client.stream("GET", base + path) as resp:
            body = b""
            async for chunk in resp.aiter_bytes():
                body += chunk
                if len(body) >= 500:
                    break
            return resp.status_code, body

    try:
        status, body = await asyncio.wait_for(get(), timeout_s)
    except TimeoutError:
        return None, f"no complete answer within {timeout_s:g}s"
    except httpx.HTTPError as exc:
        return None, type(exc).__name__
    return status, body[:500].decode("utf-8", "replace")


def _alive(obs: FlowObservation) -> bool:
    """Connected and not refused right after the accept (auth error frame, 1008, 44xx)."""
    if not obs.connected:
        return False
    if any(f.frame.is_error for f in obs.frames):
        return False
    return obs.close_code is None or obs.close_code in (1000, 1001)


_CONNECT_ONLY = Flow("probe", ())


async def _connect_probe(
    url: str, subprotocols: Sequence[str], auth: ConnectAuth | None, timeout_s: float
) -> FlowObservation:
    return await run_flow(
        url,
        _CONNECT_ONLY,
        None,
        ProtocolSettings(),
        auth=auth,
        subprotocols=subprotocols,
        open_timeout_s=timeout_s,
        linger_s=min(0.6, timeout_s),
    )


def _auth_candidates(token: str) -> list[tuple[str, dict[str, Any], ConnectAuth]]:
    return [
        ("bearer", {}, ConnectAuth(headers=(("Authorization", f"Bearer {token}"),))),
        ("query", {"query_param": "token"}, ConnectAuth(query=(("token", token),))),
        (
            "query",
            {"query_param": "access_token"},
            ConnectAuth(query=(("access_token", token),)),
        ),
        (
            "subprotocol",
            {"subprotocol": "jwt.{token}"},
            ConnectAuth(subprotocols=(f"jwt.{token}",)),
        ),
    ]


@dataclass
class _Access:
    """How a path was opened: subprotocols offered, auth used."""

    path: str
    obs: FlowObservation
    subprotocols: tuple[str, ...] = ()
    auth_mode: str = "none"
    auth_keys: dict[str, Any] = field(default_factory=dict)
    auth: ConnectAuth | None = None


async def _open_path(
    ws_base: str, path: str, token: str, timeout_s: float
) -> tuple[_Access | None, str]:
    """Find a way to open ``path``: plain, with a known subprotocol, with the token."""
    url = ws_base + path
    plain = await _connect_probe(url, (), None, timeout_s)
    if _alive(plain):
        return _Access(path, plain), "101 without credentials"
    if not plain.connected and plain.status in (None, 404):
        why = f"HTTP {plain.status}" if plain.status else plain.connect_error or "no answer"
        return None, why
    for sp in SUBPROTOCOL_CANDIDATES:
        obs = await _connect_probe(url, (sp,), None, timeout_s)
        if _alive(obs) and obs.subprotocol == sp:
            return _Access(path, obs, subprotocols=(sp,)), f"101 only when offered {sp!r}"
    refused = (
        f"HTTP {plain.status}"
        if not plain.connected
        else f"accepted, then closed {plain.close_code or ''} "
        + ("with an error frame" if any(f.frame.is_error for f in plain.frames) else "")
    ).strip()
    if not token:
        return None, f"{refused} without credentials (give --token-env to try a token)"
    for mode, keys, auth in _auth_candidates(token):
        obs = await _connect_probe(url, (), auth, timeout_s)
        if _alive(obs):
            return _Access(path, obs, auth_mode=mode, auth_keys=keys, auth=auth), (
                f"{refused} without credentials; 101 with the token as {mode}"
                + (f" ({next(iter(keys.values()))})" if keys else "")
            )
    return None, f"{refused}; the token was refused in every mode tried"


def _load_json_ping() -> Flow:
    return Flow(
        "load", (FlowStep(send={"type": "ping"}), FlowStep(expect_event="pong", timeout_s=5))
    )


def _load_jsonrpc() -> Flow:
    return Flow(
        "load",
        (
            FlowStep(send={"jsonrpc": "2.0", "id": "{marker}", "method": "ping"}),
            FlowStep(expect={"id": "{marker}"}, timeout_s=5),
        ),
    )


def _load_graphql() -> Flow:
    return Flow(
        "load",
        (
            FlowStep(send={"type": "connection_init", "payload": {}}),
            FlowStep(expect={"type": "connection_ack"}, timeout_s=5),
            FlowStep(send={"type": "ping"}),
            FlowStep(expect={"type": "pong"}, timeout_s=5),
        ),
    )


def _text_ping(word: str) -> Flow:
    return Flow(
        "load",
        (FlowStep(send=f"{word} {{marker}}"), FlowStep(expect_pattern="{marker}", timeout_s=5)),
    )


def _quick(flow: Flow, timeout_s: float) -> Flow:
    steps = tuple(
        s if s.send is not None else dataclasses.replace(s, timeout_s=timeout_s) for s in flow.steps
    )
    return Flow(flow.name, steps)


def _step_table(step: FlowStep) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("send", "expect", "expect_pattern", "expect_event"):
        value = getattr(step, key)
        if value is not None:
            out[key] = dict(value) if isinstance(value, Mapping) else value
    if step.capture:
        out["capture"] = dict(step.capture)
    if step.timeout_s is not None:
        out["timeout_s"] = step.timeout_s
    return out


async def _dialect(acc: _Access, ws_base: str, f: InitFindings, timeout_s: float) -> bool:
    """Find the frame format and a working ping on ``acc``'s path; True when one works."""
    url = ws_base + acc.path

    async def attempt(flow: Flow, protocol: ProtocolSettings) -> FlowObservation:
        return await run_flow(
            url,
            _quick(flow, timeout_s),
            None,
            protocol,
            auth=acc.auth,
            subprotocols=acc.subprotocols,
            open_timeout_s=timeout_s,
            linger_s=0.0,
        )

    if "graphql-transport-ws" in acc.subprotocols:
        flow = _load_graphql()
        obs = await attempt(flow, ProtocolSettings())
        if obs.completed:
            f.set("protocol", "ping", {"type": "ping"}, "graphql-transport-ws ping -> pong")
            f.set("protocol", "ignore", ["connection_ack", "pong", "ka"], "protocol frames")
            f.flows["load"] = [_step_table(s) for s in flow.steps]
            f.notes.append("graphql-transport-ws: connection_init -> connection_ack, ping -> pong")
            return True
    seed = await attempt(_load_json_ping(), ProtocolSettings())
    if seed.completed:
        f.notes.append('JSON frames: {"type": "ping"} answered by a pong (the seed\'s ping)')
        agent = await run_flow(
            url,
            _quick(Flow("agent", _seed_agent_steps()), timeout_s),
            None,
            ProtocolSettings(),
            auth=acc.auth,
            subprotocols=acc.subprotocols,
            open_timeout_s=timeout_s,
            linger_s=0.3,
        )
        if agent.completed and len(set(agent.event_types)) >= 2:
            f.notes.append(
                "the seed's agent_request is answered by events "
                + ", ".join(dict.fromkeys(agent.event_types))
            )
            f.why["protocol.agent"] = "seed"
        return True
    # A service that answered JSON with plain text does not speak JSON-RPC either.
    texty = bool(seed.frames) and all(fr.frame.kind == "non_json" for fr in seed.frames)
    # Other common JSON ping shapes, the pong found under type/data.type/payload.type.
    for key in ("action", "op", "event") if not texty else ():
        ping = {key: "ping"}
        flow = Flow("load", (FlowStep(send=ping), FlowStep(expect_event="pong", timeout_s=5)))
        if (await attempt(flow, ProtocolSettings())).completed:
            f.set("protocol", "ping", ping, f"{json.dumps(ping)} is answered by a pong")
            return True
    rpc = seed if texty else await attempt(_load_jsonrpc(), ProtocolSettings())
    if rpc.completed and not texty:
        f.set("protocol", "event_type", ["method"], "JSON-RPC: notifications carry a method")
        f.set(
            "protocol",
            "ping",
            {"jsonrpc": "2.0", "id": "{marker}", "method": "ping"},
            "a JSON-RPC request is answered with the same id",
        )
        f.flows["load"] = [_step_table(s) for s in _load_jsonrpc().steps]
        reply = rpc.frames[rpc.steps[1].frame_index or 0].text if rpc.frames else ""
        f.notes.append(f"JSON-RPC 2.0: a ping request got {reply[:120]}")
        return True
    for word in ("PING", "ping"):
        proto = ProtocolSettings(format="text")
        obs = await attempt(_text_ping(word), proto)
        if obs.completed and obs.steps[1].frame_index is not None:
            reply = obs.frames[obs.steps[1].frame_index].text
            if reply.lstrip().startswith(("{", "[")):
                continue
            pattern = "^" + _escape(reply).replace(obs.marker, "{marker}") + "$"
            f.set("protocol", "format", "text", f"{word} <marker> is answered {reply[:60]!r}")
            f.set("protocol", "ping", f"{word} {{marker}}", "a text ping with the marker")
            f.set("protocol", "pong_pattern", pattern, "the reply, the marker as {marker}")
            errors = [fr.text for fr in seed.frames if fr.text.startswith("ERR")]
            if errors:
                f.set("protocol", "error_pattern", "^ERR", f"JSON got {errors[0][:60]!r}")
            return True
    f.notes.append(
        f"no ping was answered on {acc.path} (JSON ping, JSON-RPC ping, text PING): "
        "ws.roundtrip and load need a [flows.load] conversation"
    )
    return False


def _escape(text: str) -> str:
    """``text`` as a regex, escaping only metacharacters (readable in the file)."""
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", text)


def _seed_agent_steps() -> tuple[FlowStep, ...]:
    p = ProtocolSettings()
    return (FlowStep(send=p.agent_request), FlowStep(expect_event=p.critical_events[-1]))


async def probe_service(
    url: str,
    *,
    app: str = "",
    python: str = "",
    repo_dir: str = "",
    ws_paths: Sequence[str] = (),
    token: str = "",
    token_env: str = "",
    name: str = "",
    timeout_s: float = 3.0,
) -> InitFindings:
    """Probe the service at ``url`` (HTTP base) and return what the environment file says."""
    parts = urlsplit(url)
    base = urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))
    host = (parts.hostname or "service").replace(".", "-")
    f = InitFindings(
        name=name or re.sub(r"[^A-Za-z0-9_.-]", "-", f"{host}-{parts.port or ''}").strip("-")
    )
    f.set("target", "base_url", base, "given with --url")
    ws_base = _ws_base(base)

    # HTTP endpoints.
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        health = {p: await _health(client, base, p, timeout_s) for p in HEALTH_CANDIDATES}
        ws_health = await _health(client, base, "/ws/health", timeout_s)
    answered = {p: s for p, (s, _) in health.items() if s is not None}
    if not answered:
        f.notes.append(f"no HTTP answer from {base} ({health['/health'][1]})")
    ok = [p for p in HEALTH_CANDIDATES if health[p][0] == 200]
    seen = ", ".join(f"{p} {s}" for p, s in answered.items())
    if ok:
        f.set("target", "health_path", ok[0], f"GET {ok[0]} answered 200 ({seen})")
    else:
        f.set("target", "health_path", False, f"no health endpoint ({seen or 'no answer'})")
    if ws_health[0] == 200:
        f.set("target", "ws_health_path", "/ws/health", "GET /ws/health answered 200")
    else:
        f.set("target", "ws_health_path", False, f"GET /ws/health answered {ws_health[0]}")

    # WebSocket paths: the app's, the given ones, else common candidates.
    declared: list[str] = list(ws_paths)
    if app:
        routes = await asyncio.to_thread(
            list_app_routes, app, cwd=repo_dir or None, python=python, timeout_s=60.0
        )
        if routes.error:
            f.notes.append(f"could not list the app's routes: {routes.error}")
        else:
            declared.extend(p for p in routes.ws_paths if p not in declared)
            f.notes.append(
                f"{app} registers WebSocket routes: {', '.join(routes.ws_paths) or 'none'}"
            )
            if routes.ws_library_missing:
                f.notes.append(
                    f"{routes.python} has uvicorn but neither websockets nor wsproto: "
                    "uvicorn would answer 404 to every upgrade"
                )
        f.set("source", "app", app, "given with --app")
        f.set("source", "repo_dir", repo_dir or ".", "where --app was imported")
        if python:
            f.set("source", "python", python, "given with --python")
    candidates = declared or list(WS_CANDIDATES)
    accesses: list[_Access] = []
    statuses: dict[str, str] = {}
    for path in dict.fromkeys(candidates):
        if "{" in path:  # a parametrised route: cannot be probed as is
            statuses[path] = "parametrised path, not probed"
            continue
        acc, why = await _open_path(ws_base, path, token, timeout_s)
        statuses[path] = why
        if acc is not None:
            accesses.append(acc)
    for path, why in statuses.items():
        f.notes.append(f"upgrade {path}: {why}")
    kept = [p for p in declared if "{" not in p] or [a.path for a in accesses]
    f.upgraded = bool(accesses)
    f.reachable = bool(answered) or bool(accesses)
    if declared and not accesses and any("404" in statuses.get(p, "") for p in declared):
        f.notes.append(
            "every declared WebSocket route answered 404 to the upgrade: the server may have "
            "no WebSocket implementation (uvicorn without websockets/wsproto, --ws none) or a "
            "hop answers for it"
        )
    if "/ws/test" in statuses:
        test_ok = any(a.path == "/ws/test" for a in accesses)
        test_why = statuses["/ws/test"]
    else:
        test_acc, test_why = await _open_path(ws_base, "/ws/test", token, timeout_s)
        test_ok = test_acc is not None
    if test_ok:
        f.set("target", "ws_test_path", "/ws/test", f"upgrade /ws/test: {test_why}")
    else:
        f.set("target", "ws_test_path", False, f"upgrade /ws/test: {test_why}")
    if kept:
        f.set("target", "ws_paths", kept, "the app's routes" if app else "paths that upgraded")
        primary = accesses[0].path if accesses else kept[0]
        f.set("target", "primary_ws_path", primary, statuses.get(primary, ""))
    else:
        f.notes.append("no WebSocket path found: give --ws-path or --app")

    primary_acc = accesses[0] if accesses else None
    if primary_acc is not None and primary_acc.subprotocols:
        f.set(
            "protocol", "subprotocols", list(primary_acc.subprotocols), statuses[primary_acc.path]
        )
    if primary_acc is not None and primary_acc.auth_mode != "none":
        f.set("auth", "mode", primary_acc.auth_mode, statuses[primary_acc.path])
        for key, value in primary_acc.auth_keys.items():
            f.set("auth", key, value)
        if token_env:
            f.set(
                "auth",
                "token_env",
                token_env,
                "given with --token-env (the token itself is never written)",
            )
    elif primary_acc is not None:
        for cid in _AUTH_CHECKS:
            f.not_applicable[cid] = "runbook init: the upgrade succeeded without credentials"

    ping_ok = False
    if primary_acc is not None:
        ping_ok = await _dialect(primary_acc, ws_base, f, timeout_s)
        welcome = [fr.text[:80] for fr in primary_acc.obs.frames]
        if welcome:
            f.notes.append(f"frames on connect: {welcome[:3]}")
    if not ping_ok:
        for cid in (
            "ws.roundtrip",
            "load.success_rate",
            "load.latency_p95",
            "load.no_server_errors",
        ):
            f.not_applicable[cid] = (
                "runbook init found no ping the service answers; define [protocol] ping and "
                "[flows.load] to enable"
            )
    if f.why.get("protocol.agent") != "seed":
        for cid in _AGENT_CHECKS:
            f.not_applicable[cid] = (
                "runbook init: the seed's agent_request got no events; define the flow "
                "([flows.agent], [flows.chat], [flows.isolation]) to enable"
            )
    return f


# ---------------------------------------------------------------- writing


_BARE = re.compile(r"^[A-Za-z0-9_-]+$")


def _key(k: str) -> str:
    return k if _BARE.match(k) else json.dumps(k)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{ " + ", ".join(f"{_key(str(k))} = {_toml(v)}" for k, v in value.items()) + " }"
    if isinstance(value, (list, tuple, set, frozenset)):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return json.dumps(str(value))


def _defaults(cls: type) -> dict[str, Any]:
    inst = cls()
    return {fl.name: getattr(inst, fl.name) for fl in dataclasses.fields(inst)}


def render_environment(f: InitFindings, *, command: str = "runbook init") -> str:
    """The commented environment file for ``f`` (valid TOML; checked before return)."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# Written by `{command}` on {now}.",
        "# Keys that are set were inferred from the live service (the evidence is the comment",
        "# after them); commented keys show their defaults. Review, then run:",
        "#   runbook run --env THIS_FILE --phases 1,3,5,7",
        "#",
        "# What the probe saw:",
        *(f"#   - {n}" for n in f.notes),
        "",
        f"name = {_toml(f.name)}",
        "",
    ]
    for section, cls in _SECTIONS:
        chosen = f.keys.get(section, {})
        header = f"[{section}]" if chosen else f"# [{section}]"
        lines.append(header)
        for key, default in _defaults(cls).items():
            if key in _PRIVATE.get(section, ()):
                continue
            if default is None and key not in chosen:
                lines.append(f"# {_key(key)} =")
            elif key in chosen:
                why = f.why.get(f"{section}.{key}", "")
                lines.append(f"{_key(key)} = {_toml(chosen[key])}" + (f"  # {why}" if why else ""))
            else:
                lines.append(f"# {_key(key)} = {_toml(default)}")
        lines.append("")
    lines.append("[checks.not_applicable]" if f.not_applicable else "# [checks.not_applicable]")
    lines.append("# check id -> why it cannot apply here (the check is skip with this reason)")
    for cid, reason in f.not_applicable.items():
        lines.append(f"{_toml(cid)} = {_toml(reason)}")
    lines.append("")
    for name, steps in f.flows.items():
        lines.append(f"# The {name} flow: what one session sends and expects.")
        for step in steps:
            lines.append(f"[[flows.{name}.steps]]")
            lines.extend(f"{_key(k)} = {_toml(v)}" for k, v in step.items())
        lines.append("")
    if "agent" not in f.flows:
        lines += [
            "# An agent/chat/isolation flow (example: edit to your service's conversation;",
            "# {marker} is unique per simulated user, captures are usable as {name}):",
            "# [[flows.agent.steps]]",
            '# send = { op = "subscribe", topic = "t-{marker}", id = "{run_id}" }',
            "# [[flows.agent.steps]]",
            '# expect = { "ack.id" = "{run_id}" }',
            "# timeout_s = 5",
            "",
        ]
    text = "\n".join(lines)
    tomllib.loads(text)  # never write a file that does not parse
    return text


# ---------------------------------------------------------------- CLI


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="runbook init",
        description="Probe a live WebSocket service and write a commented environment file.",
    )
    p.add_argument("--url", required=True, help="the service's base URL (http:// or https://)")
    p.add_argument(
        "--app", default="", help="the ASGI app as module:attr (lists its WebSocket routes)"
    )
    p.add_argument("--python", default="", help="the app's interpreter (default: this one)")
    p.add_argument("--repo-dir", default="", help="where --app is importable from (default: .)")
    p.add_argument("--ws-path", action="append", default=[], help="a WebSocket path (repeatable)")
    p.add_argument("--token-env", default="", help="environment variable holding a token to try")
    p.add_argument("--name", default="", help="environment name (default: from the URL)")
    p.add_argument("--out", default="", help="file to write (default: NAME.toml here)")
    p.add_argument("--force", action="store_true", help="overwrite --out if it exists")
    p.add_argument("--timeout", type=float, default=3.0, help="seconds per probe (default 3)")
    return p


def init_main(argv: Sequence[str] | None = None) -> int:
    """``runbook init``: 0 written, 1 written but no WebSocket path upgraded, 2 usage error."""
    try:
        args = _parser().parse_args(list(argv) if argv is not None else None)
    except SystemExit as exc:
        return 0 if exc.code == 0 else 2
    parts = urlsplit(args.url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        print(
            f"runbook init: --url {args.url!r} must be an http:// or https:// URL", file=sys.stderr
        )
        return 2
    if args.timeout <= 0:
        print("runbook init: --timeout must be positive", file=sys.stderr)
        return 2
    token = ""
    if args.token_env:
        token = os.environ.get(args.token_env, "")
        if not token:
            print(
                f"runbook init: --token-env {args.token_env} is not set in this environment",
                file=sys.stderr,
            )
            return 2
        from .redaction import register_secret

        register_secret(token)
    findings = asyncio.run(
        probe_service(
            args.url,
            app=args.app,
            python=args.python,
            repo_dir=os.path.abspath(args.repo_dir or "."),
            ws_paths=args.ws_path,
            token=token,
            token_env=args.token_env,
            name=args.name,
            timeout_s=args.timeout,
        )
    )
    if not findings.reachable:
        for note in findings.notes:
            print(f"  {note}", file=sys.stderr)
        print(f"runbook init: nothing answered at {args.url}; no file written", file=sys.stderr)
        return 1
    out = Path(args.out or f"{findings.name}.toml")
    if out.exists() and not args.force:
        print(f"runbook init: {out} exists (use --force to overwrite)", file=sys.stderr)
        return 2
    command = "runbook init " + " ".join(a for a in (argv or sys.argv[1:]) if a != token)
    text = render_environment(findings, command=command.strip())
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    for note in findings.notes:
        print(f"  {note}")
    print(f"wrote {out}" + ("" if findings.upgraded else " (no WebSocket path upgraded)"))
    return 0 if findings.upgraded else 1
