"""``runbook init``: probe a live service and write a commented environment file.

``runbook init --url URL [--app module:attr] [--python PY] [--ws-path P ...]
[--token-env NAME] [--name NAME] [--out PATH] [--force]`` (SPEC section 8) finds:

* the health endpoint among ``/health``, ``/healthz``, ``/ready``, ``/`` (none: ``false``);
* ``/ws/health`` and ``/ws/test`` (absent: ``false``);
* the WebSocket paths: from the ASGI app (listed in its own interpreter), the given
  ``--ws-path``s, or common candidates; each one's upgrade status;
* the subprotocol the server needs (offered, echoed) and, with ``--token-env``, how
  the token is passed (bearer header, query parameter, ``jwt.<token>`` subprotocol);
* the session dialect and the flows that work on it (``runbook_lib.dialects``):
  Socket.IO / Engine.IO, GraphQL over WebSocket (both subprotocols), JSON-RPC, a JSON
  or text ping, an echo, the seed's agent protocol, a request carrying text, chat rooms.

The file sets every inferred key (with what was seen as a comment), shows every other
key commented with its default, writes the flows that worked (``[flows.load]``,
``agent``, ``chat``, ``isolation``), and declares in ``[checks.not_applicable]`` only
what the service does not have (no credentials needed, no agent run, one event type).
A service where no path stays open gets no declarations: its checks stay on and fail
until it is fixed. ``init_main(argv) -> int``: 0 written, 1 written but no WebSocket
path stayed open (1 and nothing written when nothing answered at all), 2 usage error
(nothing written).
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

from .dialects import (
    DETECTORS,
    SOCKETIO_PATH,
    Dialect,
    Prober,
    chat_rooms,
    json_request,
    seed_agent,
    step_table,
)
from .flow_runner import run_flow
from .flows import Flow, FlowObservation
from .identity import user_agent
from .protocol import ProtocolSettings
from .settings import (
    AuthSettings,
    CloudRunSettings,
    LoggingSettings,
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
_LOAD_CHECKS = ("load.success_rate", "load.latency_p95", "load.no_server_errors")
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
        locked: WebSocket paths that refused only for want of credentials.
    """

    name: str
    keys: dict[str, dict[str, Any]] = field(default_factory=dict)
    why: dict[str, str] = field(default_factory=dict)
    flows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    not_applicable: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    upgraded: bool = False
    reachable: bool = False
    locked: list[str] = field(default_factory=list)

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
    ws_base: str, path: str, token: str, timeout_s: float, *, guessed: bool = False
) -> tuple[_Access | None, str]:
    """Find a way to open ``path``: plain, with a known subprotocol, with the token."""
    url = ws_base + path
    plain = await _connect_probe(url, (), None, timeout_s)
    if _alive(plain):
        return _Access(path, plain), "101, stayed open without credentials"
    if not plain.connected and plain.status in (None, 404):
        why = f"HTTP {plain.status}" if plain.status else plain.connect_error or "no answer"
        return None, why
    for sp in SUBPROTOCOL_CANDIDATES:
        obs = await _connect_probe(url, (sp,), None, timeout_s)
        if _alive(obs) and obs.subprotocol == sp:
            return _Access(path, obs, subprotocols=(sp,)), (
                f"{_refusal(plain, guessed)} without a subprotocol; 101 and open when "
                f"offered {sp!r}"
            )
    refused = _refusal(plain, guessed)
    if not _maybe_auth(plain):
        return None, refused
    if not token:
        return None, f"{refused} (give --token-env to try a token)"
    for mode, keys, auth in _auth_candidates(token):
        obs = await _connect_probe(url, (), auth, timeout_s)
        if _alive(obs):
            return _Access(path, obs, auth_mode=mode, auth_keys=keys, auth=auth), (
                f"{refused}; 101 and open with the token as {mode}"
                + (f" ({next(iter(keys.values()))})" if keys else "")
            )
    return None, f"{refused}; the token was refused in every mode tried"


_AUTH_CLOSES = (1008, 4001, 4003, 4401, 4403)


def _maybe_auth(obs: FlowObservation) -> bool:
    """Could this refusal be about credentials (401/403, an auth close, an error frame)?"""
    if not obs.connected:
        return obs.status in (401, 403)
    return obs.close_code in _AUTH_CLOSES or any(fr.frame.is_error for fr in obs.frames)


def _refusal(obs: FlowObservation, guessed: bool) -> str:
    """What the refusal was, in words that do not over-claim its cause."""
    if not obs.connected:
        st = obs.status
        if st is None:
            return obs.connect_error or "no answer"
        if st == 403:
            return (
                "HTTP 403 (Starlette answers 403 to an unknown WebSocket path; or a refusal "
                "without credentials)"
                if guessed
                else "HTTP 403 without credentials"
            )
        if st == 401:
            return "HTTP 401 without credentials"
        if st >= 500:
            return f"HTTP {st} (a server error, not an auth refusal)"
        return f"HTTP {st}"
    code = obs.close_code
    what = "101, then closed" + (f" {code}" if code else "")
    if obs.close_reason:
        what += f" ({obs.close_reason[:60]})"
    if any(fr.frame.is_error for fr in obs.frames):
        what += " after an error frame"
    if code in (4400, 4406, 1002, 1003):
        return what + " (a protocol or subprotocol refusal)"
    if code in _AUTH_CLOSES or any(fr.frame.is_error for fr in obs.frames):
        return what + " without credentials"
    return what


async def _probe_dialect(acc: _Access, ws_base: str, f: InitFindings, timeout_s: float) -> bool:
    """Find the session protocol on ``acc``'s path and write its keys and flows."""
    pr = Prober(
        ws_base + acc.path,
        acc.obs,
        auth=acc.auth,
        subprotocols=acc.subprotocols,
        timeout_s=timeout_s,
    )
    for detect in DETECTORS:
        d = await detect(pr)
        if d is not None:
            break
    else:
        f.notes.append(
            f"no conversation was answered on {acc.path} (Socket.IO, GraphQL, JSON-RPC, JSON "
            "ping, echo, text PING): write [protocol] ping and [flows.load] for it (the "
            "monitoring hold also sends [protocol] ping: make it a frame the service accepts)"
        )
        return False
    f.why["protocol.dialect"] = d.name
    if d.name != "json" or d.load.steps[0].send != {"type": "ping"}:
        f.flows["load"] = [step_table(s) for s in d.load.steps]
    _apply_dialect(f, d, acc.path)
    if d.name == "json" and (seed := await seed_agent(pr)):
        f.notes.append(seed)
        f.why["protocol.agent"] = "seed"
        return True
    if d.name == "json" and d.agent is None:
        ping = d.load.steps[0].send
        request = await json_request(pr, next(iter(ping)) if isinstance(ping, Mapping) else "type")
        if request is not None:
            _apply_dialect(f, request, acc.path)
    if d.agent is None and "agent" not in f.flows:
        chat = await chat_rooms(pr, d)
        if chat is not None:
            f.flows["chat"] = f.flows["isolation"] = [step_table(s) for s in chat.steps]
            f.notes.append(
                f"chat rooms: {_toml(chat.steps[-4].send)} then "
                f"{_toml(chat.steps[-2].send)} came back to the sender"
            )
    return True


def _apply_dialect(f: InitFindings, d: Dialect, path: str) -> None:
    """``d``'s protocol keys, its agent flow and its note into the findings."""
    for key, value in d.protocol.items():
        f.set("protocol", key, value, f"{d.name}: seen on {path}")
    if "critical_events" in d.protocol:
        n = len(d.protocol["critical_events"])
        f.set("thresholds", "critical_events_min", n, "every event type the flow saw")
    if d.agent is not None:
        f.flows["agent"] = [step_table(s) for s in d.agent.steps]
    f.notes.append(d.note)


async def _probe_health(f: InitFindings, base: str, timeout_s: float) -> bool:
    """Health candidates and ``/ws/health``; True when anything answered HTTP."""
    async with httpx.AsyncClient(
        timeout=timeout_s, follow_redirects=False, headers={"User-Agent": user_agent()}
    ) as client:
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
    return bool(answered)


async def _app_paths(
    f: InitFindings, app: str, python: str, repo_dir: str, ws_paths: Sequence[str]
) -> list[str]:
    """The given paths, then the app's WebSocket routes (an Engine.IO path with its query)."""
    declared: list[str] = list(ws_paths)
    if not app:
        return declared
    routes = await asyncio.to_thread(
        list_app_routes, app, cwd=repo_dir or None, python=python, timeout_s=60.0
    )
    if routes.error:
        f.notes.append(f"could not list the app's routes: {routes.error}")
    else:
        found = [
            SOCKETIO_PATH if r.name in ("socketio", "engineio") else r.path
            for r in routes.routes
            if r.kind == "websocket"
        ]
        declared.extend(p for p in found if p not in declared)
        f.notes.append(f"{app} registers WebSocket routes: {', '.join(found) or 'none'}")
        if routes.unlisted:
            f.notes.append(f"routes not listable: {'; '.join(routes.unlisted)[:200]}")
        if routes.ws_library_missing:
            f.notes.append(
                f"{routes.python} has uvicorn but neither websockets nor wsproto: "
                "uvicorn would refuse every upgrade"
            )
    f.set("source", "app", app, "given with --app")
    f.set("source", "repo_dir", repo_dir or ".", "where --app was imported")
    if python:
        f.set("source", "python", python, "given with --python")
    return declared


async def _probe_paths(
    f: InitFindings, ws_base: str, declared: list[str], token: str, timeout_s: float, app: str
) -> tuple[list[_Access], dict[str, str]]:
    """Open every declared (else candidate) path; set ws_paths, primary, ws_test_path."""
    candidates = declared or [*WS_CANDIDATES, SOCKETIO_PATH]
    accesses: list[_Access] = []
    statuses: dict[str, str] = {}
    for path in dict.fromkeys(candidates):
        if "{" in path:  # a parametrised route: cannot be probed as is
            statuses[path] = "parametrised path, not probed"
            continue
        acc, why = await _open_path(ws_base, path, token, timeout_s, guessed=not declared)
        statuses[path] = why
        if acc is not None:
            accesses.append(acc)
    for path, why in statuses.items():
        f.notes.append(f"upgrade {path}: {why}")
    if declared and not accesses and any("404" in statuses.get(p, "") for p in declared):
        f.notes.append(
            "every declared WebSocket route answered 404 to the upgrade: the server may have "
            "no WebSocket implementation (uvicorn without websockets/wsproto, --ws none) or a "
            "hop answers for it"
        )
    test_ok, test_why = await _ws_test(ws_base, accesses, timeout_s)
    f.set("target", "ws_test_path", "/ws/test" if test_ok else False, test_why)
    locked = [p for p, why in statuses.items() if "without credentials" in why]
    kept = [p for p in declared if "{" not in p] or [a.path for a in accesses] or locked
    f.locked = locked
    if kept:
        f.set(
            "target",
            "ws_paths",
            kept,
            "the app's routes"
            if app
            else "paths that upgraded"
            if accesses
            else "paths that want credentials"
            if locked and not declared
            else "given with --ws-path",
        )
        primary = accesses[0].path if accesses else kept[0]
        f.set("target", "primary_ws_path", primary, statuses.get(primary, ""))
    else:
        f.notes.append("no WebSocket path found: give --ws-path or --app")
    return accesses, statuses


async def _ws_test(ws_base: str, accesses: list[_Access], timeout_s: float) -> tuple[bool, str]:
    """``ws.test_endpoint`` passes on a GET 200 or a 101 at ``/ws/test``: probe both."""
    if any(a.path == "/ws/test" for a in accesses):
        return True, "upgrade /ws/test: 101"
    http_base = "http" + ws_base[2:]
    async with httpx.AsyncClient(
        timeout=timeout_s, follow_redirects=False, headers={"User-Agent": user_agent()}
    ) as client:
        status, _ = await _health(client, http_base, "/ws/test", timeout_s)
    if status == 200:
        return True, "GET /ws/test answered 200"
    obs = await _connect_probe(ws_base + "/ws/test", (), None, timeout_s)
    if obs.connected:
        return True, "upgrade /ws/test answered 101"
    return False, f"GET /ws/test answered {status}; upgrade: {_refusal(obs, True)}"


def _apply_access(
    f: InitFindings, acc: _Access, statuses: Mapping[str, str], token_env: str
) -> None:
    """The subprotocol and auth the primary path needed."""
    if acc.subprotocols:
        f.set("protocol", "subprotocols", list(acc.subprotocols), statuses[acc.path])
    if acc.auth_mode == "none":
        for cid in _AUTH_CHECKS:
            f.not_applicable[cid] = (
                f"runbook init: {acc.path} upgraded and stayed open with no credentials"
            )
        return
    f.set("auth", "mode", acc.auth_mode, statuses[acc.path])
    for key, value in acc.auth_keys.items():
        f.set("auth", key, value)
    if token_env:
        f.set("auth", "token_env", token_env, "given with --token-env (never the token itself)")
        f.not_applicable["isolation.no_cross_user"] = (
            f"runbook init: every simulated user shares the one token in {token_env}, so they "
            "are one user to the service; give token_envs or jwt_secret_env to test isolation"
        )


_EVENT_CHECKS = _AGENT_CHECKS[1:5]


def _declare_gaps(f: InitFindings, primary: _Access | None, ping_ok: bool) -> None:
    """Checks that cannot apply to what was seen: only for what the service is, never for
    what it failed to do (a broken service keeps every check, so they fail until fixed)."""
    if primary is None:
        f.notes.append(
            "every WebSocket path that answered refused without credentials: give "
            "--token-env NAME (a variable holding a token) to probe the conversation; "
            "nothing is declared not applicable until then"
            if f.locked
            else "the service is broken or unreachable over WebSocket: no path stayed open, "
            "so its conversation could not be probed; the checks stay on (they fail until "
            "it is fixed). Run runbook init again once a path upgrades"
        )
        return
    if not ping_ok:
        # The socket stays open but speaks nothing init knows: these checks need the
        # user's conversation, not a fix.
        reason = (
            f"runbook init: {primary.path} stays open but answered none of the conversations "
            "init knows; write [protocol] ping and [flows.load] (and [flows.agent]) to enable"
        )
        for cid in ("ws.roundtrip", *_LOAD_CHECKS, *_AGENT_CHECKS):
            f.not_applicable[cid] = reason
        return
    dialect = f.why.get("protocol.dialect", "") or "this protocol"
    if "chat" in f.flows:
        why = f"a chat room over {dialect}: no agent run; [flows.chat] carries the conversation"
        _declare(f, ("e2e.agent_response", *_EVENT_CHECKS), why)
    elif "agent" in f.flows or f.why.get("protocol.agent") == "seed":
        _declare_events(f, dialect)
    else:
        why = (
            f"{dialect}'s conversations are the app's own (not the seed's agent_request); "
            "write [flows.agent] or [flows.chat] to enable"
        )
        _declare(f, _AGENT_CHECKS, why)


def _declare(f: InitFindings, ids: Sequence[str], why: str) -> None:
    for cid in ids:
        f.not_applicable[cid] = f"runbook init: {why}"


def _declare_events(f: InitFindings, dialect: str) -> None:
    """An agent flow runs: declare only the event checks its frames cannot feed."""
    protocol = f.keys.get("protocol", {})
    if "agent" in f.flows and "chat_message" not in protocol:
        _declare(f, ("chat.flow",), f"{dialect}: no chat conversation; the agent flow covers it")
    if dialect == "echo":
        _declare(f, _EVENT_CHECKS, "an echo sends back what it gets, no typed events")
    elif len(protocol.get("critical_events", ("", ""))) < 2:
        _declare(f, ("events.order",), f"{dialect}: one event type, nothing to order")


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
    answered = await _probe_health(f, base, timeout_s)
    declared = await _app_paths(f, app, python, repo_dir, ws_paths)
    accesses, statuses = await _probe_paths(f, ws_base, declared, token, timeout_s, app)
    f.upgraded = bool(accesses)
    f.reachable = answered or bool(accesses) or any("HTTP" in s for s in statuses.values())
    primary = accesses[0] if accesses else None
    ping_ok = False
    if primary is not None:
        _apply_access(f, primary, statuses, token_env)
        ping_ok = await _probe_dialect(primary, ws_base, f, timeout_s)
        welcome = [fr.text[:80] for fr in primary.obs.frames]
        if welcome:
            f.notes.append(f"frames on connect: {welcome[:3]}")
    _declare_gaps(f, primary, ping_ok)
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
        "#   runbook run --env THIS_FILE --phases 1,3,4,5,7",
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
    if not {"agent", "chat"} & set(f.flows):
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
    p.add_argument(
        "--name", default="", help="environment name (default: --out's file name, else the URL)"
    )
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
            name=args.name or (Path(args.out).stem if args.out else ""),
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
    print(f"wrote {out}" + ("" if findings.upgraded else " (no WebSocket path stayed open)"))
    return 0 if findings.upgraded else 1
