"""Session dialects ``runbook init`` recognises on a WebSocket that opened.

Each detector runs short, bounded flows through a :class:`Prober` and returns a
:class:`Dialect` (the flows that worked and the ``[protocol]`` keys they need) or
``None``: Socket.IO / Engine.IO (the ``0{...}`` open packet, ``40`` namespace connect),
GraphQL over WebSocket (``graphql-transport-ws``, ``graphql-ws``), JSON-RPC 2.0 (an
echo of the request is not a response), a JSON ping, an echo, a text ``PING`` line;
then, on the dialect found, a request carrying text (:func:`json_request`) or chat rooms
(:func:`chat_rooms`): join a room named with the marker, say a line, see it come back.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .flow_runner import run_flow
from .flows import Flow, FlowObservation, FlowStep
from .protocol import ProtocolSettings
from .tokens import ConnectAuth

__all__ = [
    "DETECTORS",
    "SOCKETIO_PATH",
    "Dialect",
    "Prober",
    "chat_rooms",
    "json_request",
    "seed_agent",
    "step_table",
]

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


def step_table(step: FlowStep) -> dict[str, Any]:
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
class Dialect:
    """One session protocol: how to recognise it and the flows that work on it."""

    name: str
    load: Flow
    agent: Flow | None = None
    protocol: dict[str, Any] = field(default_factory=dict)
    note: str = ""


class Prober:
    """Runs short flows on one path that opened (with its subprotocols and auth)."""

    def __init__(
        self,
        url: str,
        opened: FlowObservation,
        *,
        auth: ConnectAuth | None = None,
        subprotocols: Sequence[str] = (),
        timeout_s: float = 3.0,
    ) -> None:
        self.url, self.opened, self.auth = url, opened, auth
        self.subprotocols, self.timeout_s = tuple(subprotocols), timeout_s

    async def run(self, flow: Flow, protocol: ProtocolSettings | None = None) -> FlowObservation:
        return await run_flow(
            self.url,
            _quick(flow, self.timeout_s),
            None,
            protocol or ProtocolSettings(),
            auth=self.auth,
            subprotocols=self.subprotocols,
            open_timeout_s=self.timeout_s,
            linger_s=0.2,
        )


async def _socketio(pr: Prober) -> Dialect | None:
    """Engine.IO v4 open packet ``0{...}``, then ``40`` connects the default namespace."""
    if not any(_OPEN.match(fr.text) for fr in pr.opened.frames):
        return None
    text = ProtocolSettings(format="text")
    load = _flow(
        "load", _expect(expect_pattern=r"^0\{"), _send("40"), _expect(expect_pattern="^40")
    )
    obs = await pr.run(load, text)
    if not obs.completed:
        return None
    return Dialect(
        "socketio",
        load,
        protocol={"format": "text", "ping": "3", "pong_pattern": "^40"},
        note=f"Socket.IO: Engine.IO open packet {pr.opened.frames[0].text[:60]!r}, "
        f"'40' (namespace connect) answered {_reply(obs)[:40]!r}; the hold sends '3' "
        "(Engine.IO's client heartbeat: any other frame makes the server's decoder drop "
        "the socket)",
    )


async def _graphql(pr: Prober) -> Dialect | None:
    sp = pr.subprotocols
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
    d = Dialect(name, load, protocol={"ping": ping})
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


async def _jsonrpc(pr: Prober) -> Dialect | None:
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
    d = Dialect(
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


async def _json_ping(pr: Prober) -> Dialect | None:
    """The seed's ``{"type": "ping"}`` (or ``action``/``op``/``event``) answered by a pong."""
    for key in ("type", "action", "op", "event"):
        ping = {key: "ping"}
        load = _flow("load", _send(ping), _expect(expect_event="pong"))
        obs = await pr.run(load)
        if obs.completed:
            proto = {} if key == "type" else {"ping": ping}
            return Dialect("json", load, protocol=proto, note=f"{json.dumps(ping)} -> a pong")
        if obs.stop_reason == "closed" or any(fr.frame.kind == "non_json" for fr in obs.frames):
            return None  # a text protocol, or a decoder that drops what it cannot read
    return None


async def _echo(pr: Prober) -> Dialect | None:
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
            return Dialect(
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


async def json_request(pr: Prober, key: str) -> Dialect | None:
    """A request carrying text (``{key: "echo"|"message", "text"}``) answered by a
    typed frame that carries it back: an agent flow attributed by the marker."""
    for verb in ("echo", "message"):
        request = {key: verb, "text": "hello {marker}"}
        flow = _flow("agent", _send(request), _expect(expect_pattern="hello {marker}"))
        obs = await pr.run(flow)
        fields = _fields_seen(obs, ("type", "event")) if obs.completed else {}
        if not fields:
            continue
        kind = next(iter(fields))
        return Dialect(
            "json",
            flow,
            agent=flow,
            protocol={
                "critical_events": [kind],
                "required_fields": {kind: fields[kind]},
                "agent_request": request,
                "chat_message": request,
            },
            note=f"{json.dumps(request)} is answered by a {kind!r} frame carrying the text",
        )
    return None


def _same_json(a: str, b: str) -> bool:
    try:
        return bool(json.loads(a) == json.loads(b))
    except ValueError:
        return False


async def _text_ping(pr: Prober) -> Dialect | None:
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
        return Dialect(
            "text",
            load,
            protocol=protocol,
            note=f"text frames: {word} <marker> is answered {reply[:60]!r}",
        )
    return None


DETECTORS = (_socketio, _graphql, _jsonrpc, _json_ping, _echo, _text_ping)
_SAY_VERBS = ("say", "message", "send", "chat")


def _chat_shapes(d: Dialect) -> list[tuple[Any, list[Any]]]:
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


async def chat_rooms(pr: Prober, d: Dialect) -> Flow | None:
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


async def seed_agent(pr: Prober) -> str:
    """The seed's ``agent_request`` answered by two or more event types: a note, else ''."""
    p = ProtocolSettings()
    agent = _flow("agent", _send(p.agent_request), _expect(expect_event=p.critical_events[-1]))
    obs = await pr.run(agent)
    if obs.completed and len(set(obs.event_types)) >= 2:
        return "the seed's agent_request is answered by events " + ", ".join(
            dict.fromkeys(obs.event_types)
        )
    return ""


def _escape(text: str) -> str:
    """``text`` as a regex, escaping only metacharacters (readable in the file)."""
    return re.sub(r"([.^$*+?{}\[\]\\|()])", r"\\\1", text)
