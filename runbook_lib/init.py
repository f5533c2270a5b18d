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


async def _health(client: httpx.AsyncClient, base: str, path: str) -> tuple[int | None, str]:
    try:
        resp = await client.get(base + path)
    except httpx.HTTPError as exc:
        return None, type(exc).__name__
    return resp.status_code, resp.text[:500]


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


SOCKETIO_PATH = "/socket.io/?EIO=4&transport=websocket"
# Frames a session sends on connect that the service's own protocol answers (or, for
# Engine.IO's client heartbeat, silently accepts): the hold sends [protocol] ping.
_OPEN = re.compile(r"^0\{")


def _flow(name: str, *steps: FlowStep) -> Flow:
    return Flow(name, steps)


def _send(value: Any) -> FlowStep:
    return FlowStep(send=value)


def _expect(*, timeout_s: float = 5, **kw: Any) -> FlowStep:
    return FlowStep(timeout_s=timeout_s, **kw)


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


def _reply(obs: FlowObservation, step: int = -1) -> str:
    """The text of the frame that answered expect step ``step`` ('' when none did)."""
    idx = obs.steps[step].frame_index if obs.steps else None
    return obs.frames[idx].text if idx is not None and idx < len(obs.frames) else ""


@dataclass
class _Dialect:
    """One session protocol: how to recognise it and the flows that work on it."""

    name: str
    load: Flow
    agent: Flow | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    note: str = ""


class _Prober:
    """Runs short flows on one opened path (its subprotocols and auth)."""

    def __init__(self, acc: _Access, ws_base: str, timeout_s: float) -> None:
        self.acc, self.url, self.timeout_s = acc, ws_base + acc.path, timeout_s

    async def run(self, flow: Flow, protocol: ProtocolSettings | None = None) -> FlowObservation:
        return await run_flow(
            self.url,
            _quick(flow, self.timeout_s),
            None,
            protocol or ProtocolSettings(),
            auth=self.acc.auth,
            subprotocols=self.acc.subprotocols,
            open_timeout_s=self.timeout_s,
            linger_s=0.2,
        )


async def _socketio(pr: _Prober) -> _Dialect | None:
    """Engine.IO v4 open packet ``0{...}``, then ``40`` connects the default namespace."""
    if not any(_OPEN.match(fr.text) for fr in pr.acc.obs.frames):
        return None
    text = ProtocolSettings(format="text")
    load = _flow(
        "load", _expect(expect_pattern=r"^0\{"), _send("40"), _expect(expect_pattern="^40")
    )
    obs = await pr.run(load, text)
    if not obs.completed:
        return None
    return _Dialect(
        "socketio",
        load,
        protocol={"format": "text", "ping": "3", "pong_pattern": "^40"},
        note=f"Socket.IO: Engine.IO open packet {pr.acc.obs.frames[0].text[:60]!r}, "
        f"'40' (namespace connect) answered {_reply(obs)[:40]!r}; the hold sends '3' "
        "(Engine.IO's client heartbeat: any other frame makes the server's decoder drop "
        "the socket)",
    )


async def _graphql(pr: _Prober) -> _Dialect | None:
    sp = pr.acc.subprotocols
    if "graphql-transport-ws" in sp:
        init = (_send({"type": "connection_init", "payload": {}}),)
        ack = _expect(expect={"type": "connection_ack"})
        load = _flow("load", *init, ack, _send({"type": "ping"}), _expect(expect={"type": "pong"}))
        query = {"id": "{run_id}", "type": "subscribe", "payload": {"query": "{ __typename }"}}
        nxt = _expect(expect={"type": "next", "id": "{run_id}"})
        done = _expect(expect={"type": "complete", "id": "{run_id}"})
        agent = _flow("agent", *init, ack, _send(query), nxt, done)
        ping: Any = {"type": "ping"}
        name = "graphql-transport-ws"
    elif "graphql-ws" in sp:
        init = (_send({"type": "connection_init", "payload": {}}),)
        ack = _expect(expect={"type": "connection_ack"})
        load = _flow("load", *init, ack)
        query = {"id": "{run_id}", "type": "start", "payload": {"query": "{ __typename }"}}
        nxt = _expect(expect={"type": "data", "id": "{run_id}"})
        done = _expect(expect={"type": "complete", "id": "{run_id}"})
        agent = _flow("agent", *init, ack, _send(query), nxt, done)
        ping = {"type": "connection_init", "payload": {}}
        name = "graphql-ws"
    else:
        return None
    if not (await pr.run(load)).completed:
        return None
    d = _Dialect(name, load, protocol={"ping": ping})
    obs = await pr.run(agent)
    d.note = f"{name}: connection_init -> connection_ack"
    if obs.completed:
        d.agent = agent
        d.protocol.update(
            event_type=["type"],
            run_id=["id"],
            critical_events=[agent.steps[3].expect["type"], "complete"],  # type: ignore[index]
            ignore=["connection_ack", "pong", "ka"],
            required_fields=_fields_seen(obs, ("type",)),
        )
        d.note += "; the operation '{ __typename }' answered data then complete"
    else:
        d.note += f"; '{{ __typename }}' was not answered ({obs.stop_detail[:100]})"
    return d


async def _jsonrpc(pr: _Prober) -> _Dialect | None:
    """A JSON-RPC 2.0 request answered by a response with the same id (an echo of the
    request is not an answer: it has no ``result`` or ``error``)."""
    load = _flow(
        "load",
        _send({"jsonrpc": "2.0", "id": "{marker}", "method": "ping"}),
        _expect(expect={"id": "{marker}"}),
    )
    obs = await pr.run(load)
    try:
        reply = json.loads(_reply(obs)) if obs.completed else {}
    except ValueError:
        reply = {}
    if not isinstance(reply, dict) or not ({"result", "error"} & set(reply)):
        return None
    d = _Dialect(
        "jsonrpc",
        load,
        protocol={"ping": load.steps[0].send, "event_type": ["method"]},
        note=f"JSON-RPC 2.0: a ping request got {_reply(obs)[:100]}",
    )
    sub = {"jsonrpc": "2.0", "id": 1, "method": "subscribe", "params": {"topic": "t-{marker}"}}
    pub = {
        "jsonrpc": "2.0",
        "id": 2,
        "method": "publish",
        "params": {"topic": "t-{marker}", "data": "{marker}"},
    }
    agent = _flow(
        "agent",
        _send(sub),
        _expect(expect={"id": 1}, capture={"sub": "result"}),
        _send(pub),
        _expect(expect={"params.data": "{marker}"}),
    )
    got = await pr.run(agent)
    if got.completed:
        note = json.loads(_reply(got)) if _reply(got).startswith("{") else {}
        method = str(note.get("method") or "message")
        d.agent = dataclasses.replace(
            agent,
            steps=(*agent.steps[:3], _expect(expect={"method": method, "params.data": "{marker}"})),
        )
        d.protocol.update(critical_events=[method], required_fields=_fields_seen(got, ("method",)))
        d.note += f"; subscribe -> publish -> {method!r} notification works"
    return d


async def _json_ping(pr: _Prober) -> _Dialect | None:
    """The seed's ``{"type": "ping"}`` (or ``action``/``op``/``event``) answered by a pong."""
    for key in ("type", "action", "op", "event"):
        ping = {key: "ping"}
        load = _flow("load", _send(ping), _expect(expect_event="pong"))
        obs = await pr.run(load)
        if obs.completed:
            proto = {} if key == "type" else {"ping": ping}
            return _Dialect("json", load, protocol=proto, note=f"{json.dumps(ping)} -> a pong")
        if obs.stop_reason == "closed" or any(fr.frame.kind == "non_json" for fr in obs.frames):
            return None  # a text protocol, or a decoder that drops what it cannot read
    return None


async def _echo(pr: _Prober) -> _Dialect | None:
    """Every frame comes back as sent: an echo (text or JSON)."""
    for fmt, probe in (("json", {"probe": "{marker}"}), ("text", "hello {marker}")):
        load = _flow("load", _send(probe), _expect(expect_pattern="{marker}"))
        proto = ProtocolSettings(format=fmt)
        obs = await pr.run(load, proto)
        sent = json.dumps(probe).replace("{marker}", obs.marker) if fmt == "json" else ""
        reply = _reply(obs)
        same = reply == str(probe).replace("{marker}", obs.marker) or (
            fmt == "json" and _same_json(reply, sent)
        )
        if obs.completed and same:
            text_ping = "ping {marker}" if fmt == "text" else {"type": "ping", "id": "{marker}"}
            ping_flow = _flow("load", _send(text_ping), _expect(expect_pattern="{marker}"))
            agent = _flow(
                "agent",
                _send(text_ping if fmt == "text" else {"text": "{text} {marker}"}),
                _expect(expect_pattern="{marker}"),
            )
            protocol: dict[str, Any] = {"ping": text_ping}
            if fmt == "text":
                protocol.update(format="text", pong_pattern="^ping {marker}$")
            return _Dialect(
                "echo",
                ping_flow,
                agent=agent,
                protocol=protocol,
                note=f"an echo: {reply[:60]!r} came back exactly as sent ({fmt} frames)",
            )
    return None


def _fields_seen(obs: FlowObservation, type_paths: Sequence[str]) -> dict[str, list[str]]:
    """Event type -> the top-level fields its frames carried (for ``events.structure``)."""
    out: dict[str, list[str]] = {}
    for fr in obs.frames:
        try:
            body = json.loads(fr.text)
        except ValueError:
            continue
        if not isinstance(body, dict):
            continue
        kind = next((str(body[p]) for p in type_paths if p in body), "")
        if kind and kind not in out:
            out[kind] = sorted(str(k) for k in body)
    return out


async def _json_request(pr: _Prober, f: InitFindings, key: str) -> Flow | None:
    """A request carrying text (``{key: "echo"|"message", "text"}``) answered by a
    typed frame that carries it back: an agent flow attributed by the marker."""
    for verb in ("echo", "message"):
        flow = _flow(
            "agent",
            _send({key: verb, "text": "hello {marker}"}),
            _expect(expect_pattern="hello {marker}"),
        )
        obs = await pr.run(flow)
        if not obs.completed:
            continue
        fields = _fields_seen(obs, ("type", "event"))
        if not fields:
            continue
        kind = next(iter(fields))
        f.set("protocol", "critical_events", [kind], f"{verb} is answered by a {kind!r} frame")
        f.set("protocol", "required_fields", {kind: fields[kind]}, "the fields it carried")
        f.set("thresholds", "critical_events_min", 1, "one event type per request")
        f.set("protocol", "agent_request", flow.steps[0].send, "a request carrying the marker")
        f.set("protocol", "chat_message", flow.steps[0].send, "the same request")
        f.notes.append(f"{json.dumps(flow.steps[0].send)} is answered by a {kind!r} frame")
        return flow
    return None


def _same_json(a: str, b: str) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


async def _text_ping(pr: _Prober) -> _Dialect | None:
    """A text ``PING``/``ping`` line answered by a line carrying the marker."""
    for word in ("PING", "ping"):
        load = _flow("load", _send(f"{word} {{marker}}"), _expect(expect_pattern="{marker}"))
        proto = ProtocolSettings(format="text")
        obs = await pr.run(load, proto)
        reply = _reply(obs)
        if not obs.completed or reply.lstrip().startswith(("{", "[")):
            continue
        pattern = "^" + _escape(reply).replace(obs.marker, "{marker}") + "$"
        protocol: dict[str, Any] = {
            "format": "text",
            "ping": f"{word} {{marker}}",
            "pong_pattern": pattern,
        }
        bad = await pr.run(_flow("load", _send("{marker}?"), _expect(expect_pattern=".")), proto)
        err = _reply(bad)
        if err and obs.marker not in err:
            protocol["error_pattern"] = "^" + _escape(err.split(" ")[0])
        return _Dialect(
            "text",
            load,
            protocol=protocol,
            note=f"text frames: {word} <marker> is answered {reply[:60]!r}",
        )
    return None


_DETECTORS = (_socketio, _graphql, _jsonrpc, _json_ping, _echo, _text_ping)
_SAY_VERBS = ("say", "message", "send", "chat")


def _chat_shapes(d: _Dialect) -> list[tuple[Any, list[Any]]]:
    """The conventional join-a-room and say-in-a-room frames for ``d``'s framing."""
    room, text, user = "r-{marker}", "hello {marker}", "{user_id}"
    if d.name == "socketio":
        join: Any = '42["join",{"room":"r-{marker}"}]'
        says: list[Any] = [
            f'42["{v}",{{"room":"r-{{marker}}","user":"{{user_id}}","text":"hello {{marker}}"}}]'
            for v in _SAY_VERBS
        ]
        return [(join, says)]
    if d.name == "text":
        return [("JOIN " + room, [f"{v.upper()} {room} {text}" for v in _SAY_VERBS])]
    if d.name == "json":
        ping = d.load.steps[0].send
        key = next(iter(ping)) if isinstance(ping, Mapping) else "type"
        return [
            (
                {key: "join", "room": room, "user": user},
                [{key: v, "room": room, "user": user, "text": text} for v in _SAY_VERBS],
            )
        ]
    return []


async def _chat_rooms(pr: _Prober, d: _Dialect) -> Flow | None:
    """Join a room named with the marker, say a line carrying it, and see it come back:
    a chat flow that also attributes every frame to its user (for isolation)."""
    proto = ProtocolSettings(format="text" if d.name in ("socketio", "text") else "json")
    opening = d.load.steps[:3] if d.name == "socketio" else ()
    for join, says in _chat_shapes(d):
        joined = (*opening, _send(join), _expect(expect_pattern="r-{marker}"))
        if not (await pr.run(Flow("chat", joined), proto)).completed:
            continue
        for say in says:
            flow = Flow("chat", (*joined, _send(say), _expect(expect_pattern="hello {marker}")))
            if (await pr.run(flow, proto)).completed:
                return flow
    return None


async def _probe_dialect(acc: _Access, ws_base: str, f: InitFindings, timeout_s: float) -> bool:
    """Find the session protocol on ``acc``'s path and write its keys and flows."""
    pr = _Prober(acc, ws_base, timeout_s)
    for detect in _DETECTORS:
        d = await detect(pr)
        if d is None:
            continue
        for key, value in d.protocol.items():
            f.set("protocol", key, value, f"{d.name}: seen on {acc.path}")
        if "critical_events" in d.protocol:
            n = len(d.protocol["critical_events"])
            f.set("thresholds", "critical_events_min", n, "every event type the flow saw")
        if d.name not in ("json",) or d.load.steps[0].send != {"type": "ping"}:
            f.flows["load"] = [_step_table(s) for s in d.load.steps]
        if d.agent is not None:
            f.flows["agent"] = [_step_table(s) for s in d.agent.steps]
        f.why["protocol.dialect"] = d.name
        f.notes.append(d.note)
        if d.name == "json":
            await _seed_agent(pr, f)
        if d.name == "json" and f.why.get("protocol.agent") != "seed":
            ping = d.load.steps[0].send
            key = next(iter(ping)) if isinstance(ping, Mapping) else "type"
            request = await _json_request(pr, f, key)
            if request is not None:
                f.flows["agent"] = [_step_table(s) for s in request.steps]
        if "agent" not in f.flows and f.why.get("protocol.agent") != "seed":
            chat = await _chat_rooms(pr, d)
            if chat is not None:
                steps = [_step_table(s) for s in chat.steps]
                f.flows["chat"] = steps
                f.flows["isolation"] = steps
                f.notes.append(
                    f"chat rooms: {_toml(chat.steps[-4].send)} then "
                    f"{_toml(chat.steps[-2].send)} came back to the sender"
                )
        return True
    f.notes.append(
        f"no conversation was answered on {acc.path} (Socket.IO, GraphQL, JSON-RPC, JSON "
        "ping, echo, text PING): write [protocol] ping and [flows.load] for it (the "
        "monitoring hold also sends [protocol] ping: make it a frame the service accepts)"
    )
    return False


async def _seed_agent(pr: _Prober, f: InitFindings) -> None:
    p = ProtocolSettings()
    agent = _flow("agent", _send(p.agent_request), _expect(expect_event=p.critical_events[-1]))
    obs = await pr.run(agent)
    if obs.completed and len(set(obs.event_types)) >= 2:
        f.notes.append(
            "the seed's agent_request is answered by events "
            + ", ".join(dict.fromkeys(obs.event_types))
        )
        f.why["protocol.agent"] = "seed"


def _escape(text: str) -> str:
    """``text`` as a regex, escaping only metacharacters (readable in the file)."""
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", text)


async def _probe_health(f: InitFindings, base: str, timeout_s: float) -> bool:
    """Health candidates and ``/ws/health``; True when anything answered HTTP."""
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        health = {p: await _health(client, base, p) for p in HEALTH_CANDIDATES}
        ws_health = await _health(client, base, "/ws/health")
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
    async with httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client:
        status, _ = await _health(client, http_base, "/ws/test")
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


def _declare_gaps(f: InitFindings, primary: _Access | None, ping_ok: bool) -> None:
    """Checks that cannot apply to what was seen: only for what the service is, never for
    what it failed to do (a broken service keeps every check, so they fail until fixed)."""
    if primary is None:
        if f.locked:
            f.notes.append(
                "every WebSocket path that answered refused without credentials: give "
                "--token-env NAME (a variable holding a token) to probe the conversation; "
                "nothing is declared not applicable until then"
            )
            return
        f.notes.append(
            "the service is broken or unreachable over WebSocket: no path stayed open, so its "
            "conversation could not be probed; the checks stay on (they fail until it is fixed). "
            "Run runbook init again once a path upgrades"
        )
        return
    if not ping_ok:
        # The socket stays open but speaks nothing init knows: these checks need the
        # user's conversation, not a fix.
        reason = (
            f"runbook init: {primary.path} stays open but answered none of the conversations "
            "init knows; write [protocol] ping and [flows.load] (and [flows.agent]) to enable"
        )
        for cid in (
            "ws.roundtrip",
            "load.success_rate",
            "load.latency_p95",
            "load.no_server_errors",
            *_AGENT_CHECKS,
        ):
            f.not_applicable[cid] = reason
        return
    dialect = f.why.get("protocol.dialect", "")
    if "chat" in f.flows:
        for cid in _AGENT_CHECKS[:5]:
            f.not_applicable[cid] = (
                f"runbook init: a chat room over {dialect}: no agent run; [flows.chat] and "
                "[flows.isolation] carry the conversation"
            )
        return
    if "agent" in f.flows or f.why.get("protocol.agent") == "seed":
        if "agent" in f.flows and "chat_message" not in f.keys.get("protocol", {}):
            f.not_applicable.setdefault(
                "chat.flow",
                f"runbook init: {dialect}: no chat conversation seen; the agent flow covers it",
            )
        if dialect == "echo":
            for cid in (
                "events.critical_delivered",
                "events.order",
                "events.structure",
                "events.latency",
            ):
                f.not_applicable[cid] = (
                    "runbook init: an echo sends back what it gets, no typed events"
                )
        elif (
            "critical_events" in f.keys.get("protocol", {})
            and len(f.keys["protocol"]["critical_events"]) < 2
        ):
            f.not_applicable["events.order"] = (
                f"runbook init: {dialect}: one event type, nothing to order"
            )
        return
    for cid in _AGENT_CHECKS:
        f.not_applicable[cid] = (
            f"runbook init: {dialect or 'this protocol'}'s conversations are the app's own "
            "(not the seed's agent_request); write [flows.agent] or [flows.chat] to enable"
        )


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
    print(f"wrote {out}" + ("" if findings.upgraded else " (no WebSocket path stayed open)"))
    return 0 if findings.upgraded else 1
