"""Load engine against real loopback servers: outcomes, error kinds, bounds, honesty.

No timed performance assertions here (that is ``benchmarks/bench_load.py``'s job);
time bounds below only prove that every wait is bounded, with generous margins.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from http import HTTPStatus

import numpy as np
import pytest
from timing import T
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.http11 import Request

from runbook_lib.flows import FlowStep
from runbook_lib.load.engine import LoadPlan, LoadReport, run_load

pytestmark = pytest.mark.timeout(T(60))


@dataclass
class Behaviour:
    """What the test server does; tests tweak it before running a plan."""

    delay_s: float = 0.0
    welcome: bool = False
    reply: bool = True
    close_code: int | None = None  # close with this code on the first message
    status: int | None = None  # refuse the upgrade with this HTTP status
    seen_headers: list[dict[str, str]] = field(default_factory=list)


@pytest.fixture
async def target() -> AsyncIterator[tuple[str, Behaviour]]:
    """A websockets server on 127.0.0.1:0 answering ``ping`` with ``pong``."""
    behaviour = Behaviour()

    def process_request(conn: ServerConnection, request: Request):  # type: ignore[no-untyped-def]
        behaviour.seen_headers.append({k.lower(): v for k, v in request.headers.raw_items()})
        if behaviour.status is not None:
            return conn.respond(HTTPStatus(behaviour.status), "no route\n")
        return None

    async def handler(ws: ServerConnection) -> None:
        if behaviour.welcome:
            await ws.send(json.dumps({"type": "welcome"}))
        async for raw in ws:
            if behaviour.close_code is not None:
                await ws.close(behaviour.close_code, "test close")
                return
            if not behaviour.reply:
                continue
            if behaviour.delay_s:
                await asyncio.sleep(behaviour.delay_s)
            msg = json.loads(raw)
            if msg.get("type") == "ping":
                await ws.send(json.dumps({"data": {"type": "pong"}}))

    server: Server
    async with serve(
        handler,
        "127.0.0.1",
        0,
        process_request=process_request,
        select_subprotocol=lambda conn, offered: offered[0] if offered else None,
        compression=None,
    ) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws", behaviour


def _plan(url: str, **kw: object) -> LoadPlan:
    base: dict[str, object] = dict(
        url=url,
        sessions=10,
        messages=2,
        connect_timeout_s=T(2.0),
        message_timeout_s=T(2.0),
        deadline_s=T(20.0),
    )
    base.update(kw)
    return LoadPlan(**base)  # type: ignore[arg-type]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _consistent(report: LoadReport) -> None:
    assert report.succeeded + report.failed == report.planned
    assert sum(report.errors_by_kind.values()) == report.failed
    json.dumps(report.to_record())  # JSON-able, no raw arrays


async def test_all_sessions_succeed_and_every_sample_is_kept(target) -> None:
    url, behaviour = target
    behaviour.welcome = True  # ignored: not an answer, but the first response
    report = await run_load(_plan(url, sessions=20, messages=3, concurrency=5))
    _consistent(report)
    assert report.succeeded == 20 and report.success_rate() == 1.0
    assert report.handshake_statuses == {101: 20}
    assert report.rtt_s.shape == (60,) and report.connect_s.shape == (20,)
    assert report.first_response_s.shape == (20,)
    assert isinstance(report.rtt_s, np.ndarray) and np.all(report.rtt_s > 0)
    assert report.p50_s is not None and report.p50_s <= report.p95_s <= report.p99_s
    assert report.workers == 0 and report.peak_open <= 5
    rec = report.to_record()
    assert rec["samples"]["rtt"] == 60 and rec["success_rate"] == 1.0


async def test_headers_and_subprotocols_reach_the_target(target) -> None:
    url, behaviour = target
    plan = _plan(
        url, sessions=2, headers=(("Authorization", "Bearer t0k"),), subprotocols=("jwt.t0k",)
    )
    report = await run_load(plan)
    assert report.succeeded == 2
    seen = behaviour.seen_headers[0]
    assert seen["authorization"] == "Bearer t0k"
    assert seen["sec-websocket-protocol"] == "jwt.t0k"


async def test_worker_processes_merge_their_results(target) -> None:
    url, _ = target
    report = await run_load(_plan(url, sessions=30, messages=2, rate=200.0, workers=2))
    _consistent(report)
    assert report.workers == 2
    assert report.succeeded == 30 and report.rtt_s.size == 60
    assert report.planned_rate == 200.0 and report.achieved_rate > 0


async def test_refused_upgrade_is_classified_by_status(target) -> None:
    url, behaviour = target
    behaviour.status = 404
    report = await run_load(_plan(url, sessions=5))
    _consistent(report)
    assert report.errors_by_kind == {"handshake_404": 5}
    assert report.handshake_statuses == {404: 5}
    assert report.server_error_count() == 0
    assert report.p50_s is None and report.success_rate() == 0.0


async def test_connection_refused_is_classified() -> None:
    report = await run_load(_plan(f"ws://127.0.0.1:{_free_port()}/ws", sessions=3))
    _consistent(report)
    assert report.errors_by_kind == {"refused": 3}


async def test_silent_tcp_listener_times_out_within_the_bounds() -> None:
    """A host that accepts TCP and never answers the upgrade."""
    accepted: list[asyncio.StreamWriter] = []

    async def swallow(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        accepted.append(w)

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        t0 = time.monotonic()
        report = await run_load(
            _plan(f"ws://127.0.0.1:{port}/ws", sessions=4, connect_timeout_s=0.5, deadline_s=5.0)
        )
        assert time.monotonic() - t0 < T(5.0)
    finally:
        for w in accepted:
            w.close()
        server.close()
        await server.wait_closed()
    _consistent(report)
    assert report.errors_by_kind == {"timeout_connect": 4}


async def test_target_that_never_replies_gives_reply_timeouts(target) -> None:
    url, behaviour = target
    behaviour.reply = False
    t0 = time.monotonic()
    report = await run_load(_plan(url, sessions=3, message_timeout_s=0.5))
    assert time.monotonic() - t0 < T(5.0)
    _consistent(report)
    assert report.errors_by_kind == {"timeout_reply": 3}
    from runbook_lib.checks.monitor import judge_load

    rate = {r.id: r for r in judge_load(report, success_rate=0.8, p95_s=3.0)}["load.success_rate"]
    assert rate.status == "fail" and "no matching frame within its timeout_s" in rate.detail
    assert report.handshake_statuses == {101: 3}


async def test_server_close_is_classified_by_code(target) -> None:
    url, behaviour = target
    behaviour.close_code = 1011
    report = await run_load(_plan(url, sessions=3))
    _consistent(report)
    assert report.errors_by_kind == {"closed_1011": 3}
    assert report.server_error_count() == 3


async def test_503_upgrade_counts_as_server_error(target) -> None:
    url, behaviour = target
    behaviour.status = 503
    report = await run_load(_plan(url, sessions=2))
    assert report.errors_by_kind == {"handshake_503": 2}
    assert report.server_error_count() == 2 and report.to_record()["server_errors"] == 2


async def test_deadline_ends_held_sessions(target) -> None:
    url, _ = target
    t0 = time.monotonic()
    report = await run_load(_plan(url, sessions=3, messages=1, hold_s=30.0, deadline_s=1.0))
    assert time.monotonic() - t0 < T(6.0)
    _consistent(report)
    assert report.errors_by_kind == {"deadline": 3}
    assert report.rtt_s.size == 3  # what was measured before the deadline is kept


async def test_overload_is_marked_with_planned_vs_achieved(target) -> None:
    """Each session takes >= 40 ms and at most 4 run at once: ~100/s possible, 2000/s planned."""
    url, behaviour = target
    behaviour.delay_s = 0.04
    report = await run_load(_plan(url, sessions=60, messages=1, rate=2000.0, concurrency=4))
    _consistent(report)
    assert report.succeeded == 60
    assert report.behind_schedule and not report.trusted
    assert report.planned_rate == 2000.0 and report.achieved_rate < 1000.0
    assert report.max_arrival_lag_s > 0.1
    assert "planned" in report.schedule_reason
    assert report.to_record()["behind_schedule"] is True


async def test_delayed_target_shows_in_the_median(target) -> None:
    url, behaviour = target
    behaviour.delay_s = 0.05
    report = await run_load(_plan(url, sessions=5, messages=3, rate=20.0))
    assert report.succeeded == 5
    assert report.p50_s is not None and 0.045 <= report.p50_s <= 0.25
    assert not report.behind_schedule


async def test_empty_plan_is_no_evidence() -> None:
    report = await run_load(_plan("ws://127.0.0.1:9/ws", sessions=0))
    assert report.success_rate() == 0.0 and report.p95_s is None
    _consistent(report)


def test_plan_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="ws://"):
        LoadPlan(url="http://x", sessions=1)
    with pytest.raises(ValueError):
        LoadPlan(url="ws://x", sessions=1, rate=0)
    with pytest.raises(ValueError):
        LoadPlan(url="ws://x", sessions=1, concurrency=0)


def test_expect_steps_match_by_fields_pattern_and_type_as_flows_do() -> None:
    """A flow's expect step as the engine matches it (JSON fields; text by regex)."""
    from runbook_lib.load._worker import WorkerSpec, _Generator

    def gen(expect: FlowStep):
        spec = WorkerSpec(
            url="ws://x/",
            sessions_total=1,
            offset=0,
            stride=1,
            concurrency=None,
            rate=None,
            ramp_s=0.0,
            messages=1,
            hold_s=0.0,
            steps=(FlowStep(send="x"), expect),
            values=(("marker", "mk1"),),
            type_paths=("type",),
            ignore_types=("welcome",),
            error_types=("error",),
            headers=(),
            connect_timeout_s=1.0,
            message_timeout_s=1.0,
            deadline_s=1.0,
        )
        return _Generator(spec)

    rpc = gen(FlowStep(expect={"id": "mk1", "result": "pong"}))
    assert rpc.match(1, b'{"jsonrpc": "2.0", "id": "mk1", "result": "pong"}', None) == {}
    assert rpc.match(1, b'{"jsonrpc": "2.0", "id": "mk2", "result": "pong"}', None) is None
    assert rpc.match(1, b"PONG mk1", None) is None
    assert rpc.match(1, b'{"type": "error", "message": "no"}', None) is False
    text = gen(FlowStep(expect_pattern="^PONG mk1$"))
    assert text.match(1, b"PONG mk1", None) == {}
    assert text.match(1, b"PONG mk2", None) is None and text.match(1, b"NICK a", None) is None
    typed = gen(FlowStep(expect_event="pong"))
    assert typed.match(1, b'{"type": "pong"}', None) == {}
    assert typed.match(1, b'{"type": "welcome"}', None) is None
    anything = gen(FlowStep())
    assert anything.match(1, b'{"type": "welcome"}', None) is None
    assert anything.match(1, b'{"type": "hello"}', None) == {}


# ------------------------------------------------------------------ whole flows


@dataclass
class PubSub:
    """What the pub/sub test server saw and how it misbehaves."""

    topics: list[str] = field(default_factory=list)
    notify: bool = True
    error_on_publish: bool = False


@pytest.fixture
async def pubsub() -> AsyncIterator[tuple[str, PubSub]]:
    """A JSON pub/sub server: subscribe -> ack (with a subscription id), publish ->
    notification to every subscriber of the topic."""
    state = PubSub()
    subscribers: dict[str, list[tuple[ServerConnection, str]]] = {}
    counter = iter(range(1_000_000))

    async def handler(ws: ServerConnection) -> None:
        async for raw in ws:
            msg = json.loads(raw)
            if msg.get("op") == "subscribe":
                sub = f"sub-{next(counter)}"
                state.topics.append(msg["topic"])
                subscribers.setdefault(msg["topic"], []).append((ws, sub))
                await ws.send(json.dumps({"type": "ack", "id": msg.get("id"), "sub": sub}))
            elif msg.get("op") == "publish":
                if state.error_on_publish:
                    await ws.send(json.dumps({"type": "error", "message": "publish refused"}))
                    continue
                if not state.notify:
                    continue
                for peer, sub in subscribers.get(msg["topic"], []):
                    note = {"type": "notification", "sub": sub, "data": msg.get("data")}
                    with contextlib.suppress(Exception):
                        await peer.send(json.dumps(note))

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        port = server.sockets[0].getsockname()[1]
        yield f"ws://127.0.0.1:{port}/", state


def _pubsub_steps(notify_timeout_s: float | None = None) -> tuple[FlowStep, ...]:
    return (
        FlowStep(send={"op": "subscribe", "topic": "t-{marker}", "id": "{run_id}"}),
        FlowStep(expect={"type": "ack", "id": "{run_id}"}, capture={"sub": "sub"}),
        FlowStep(send={"op": "publish", "topic": "t-{marker}", "data": "hello {marker}"}),
        FlowStep(
            expect={"sub": "{sub}"}, expect_pattern="hello {marker}", timeout_s=notify_timeout_s
        ),
    )


async def test_load_sessions_run_a_whole_pubsub_flow_with_captures(pubsub) -> None:
    """subscribe -> ack (captured id) -> publish -> notification, per session, own topic."""
    url, state = pubsub
    values = (("run_id", "run-1"), ("marker", "mkload"))
    report = await run_load(
        _plan(url, sessions=12, messages=1, steps=_pubsub_steps(), values=values)
    )
    _consistent(report)
    assert report.succeeded == 12, report.errors_by_kind
    assert len(set(state.topics)) == 12  # one marker per session: no shared topic
    assert sorted(set(report.rtt_step.tolist())) == [1, 3]  # the flow's two expect steps
    rec = report.to_record()
    assert [r["step"] for r in rec["steps"]] == [2, 4]
    assert all(r["samples"] == 12 and r["p95_s"] > 0 for r in rec["steps"])
    assert report.p95_s is not None and report.rtt_s.size == 24
    from runbook_lib.checks.monitor import judge_load

    p95 = {r.id: r for r in judge_load(report, success_rate=0.8, p95_s=3.0)}["load.latency_p95"]
    assert p95.status == "pass" and "per step: step 2 p95" in p95.detail and "step 4" in p95.detail


async def test_a_flow_step_waits_only_its_own_timeout(pubsub) -> None:
    """No notification: the session fails as timeout_reply after the step's timeout_s."""
    url, state = pubsub
    state.notify = False
    started = time.monotonic()
    plan = _plan(url, sessions=3, messages=1, steps=_pubsub_steps(0.3), message_timeout_s=T(30))
    report = await run_load(plan)
    assert report.errors_by_kind == {"timeout_reply": 3}
    from runbook_lib.checks.monitor import judge_load

    rate = {r.id: r for r in judge_load(report, success_rate=0.8, p95_s=3.0)}["load.success_rate"]
    assert rate.status == "fail" and "no matching frame within its timeout_s" in rate.detail
    assert time.monotonic() - started < T(10)  # 0.3 s step bound, not the 30 s default
    assert report.rtt_step.tolist() == [1, 1, 1]  # the acks were answered and timed


async def test_an_error_frame_is_an_answer_not_a_timeout(pubsub) -> None:
    url, state = pubsub
    state.error_on_publish = True
    report = await run_load(_plan(url, sessions=4, messages=1, steps=_pubsub_steps(T(20))))
    assert report.errors_by_kind == {"error_frame": 4}
    assert report.duration_s < T(5)


@pytest.fixture
async def text_room() -> AsyncIterator[str]:
    """A plain-text room server: ``JOIN r`` -> ``JOINED r as guestN``, ``SAY r text`` ->
    ``[r] guestN: text`` to everyone in the room."""
    rooms: dict[str, set[ServerConnection]] = {}
    guests = iter(range(1, 1_000_000))

    async def handler(ws: ServerConnection) -> None:
        nick = f"guest{next(guests)}"
        async for raw in ws:
            verb, room, *rest = str(raw).split(" ", 2)
            if verb == "JOIN":
                rooms.setdefault(room, set()).add(ws)
                await ws.send(f"JOINED {room} as {nick}")
            elif verb == "SAY":
                for peer in list(rooms.get(room, ())):
                    with contextlib.suppress(Exception):
                        await peer.send(f"[{room}] {nick}: {rest[0] if rest else ''}")
            else:
                await ws.send(f"ERR unknown {verb}")

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/"


async def test_a_text_flow_captures_by_named_group_and_matches_its_own_lines(text_room) -> None:
    """Text frames: a named group captures the nick, later steps use it; an error line
    (error_pattern) instead of the awaited one is error_frame."""
    steps = (
        FlowStep(send="JOIN r-{marker}"),
        FlowStep(expect_pattern="^JOINED r-{marker} as (?P<nick>\\S+)$"),
        FlowStep(send="SAY r-{marker} hello {marker}"),
        FlowStep(expect_pattern="^\\[r-{marker}\\] {nick}: hello {marker}$"),
        FlowStep(send="SAY r-{marker} bye {marker}"),
        FlowStep(expect_pattern="bye {marker}"),  # a literal: a substring test per session
        FlowStep(send="SAY r-{marker} again"),
        FlowStep(expect_pattern=": again$"),
        FlowStep(send="SAY r-{marker} by {nick}"),
        FlowStep(expect_pattern="^\\S+ {nick}: by "),  # the capture alone makes it per session
    )
    plan = _plan(text_room, sessions=8, messages=2, steps=steps, type_paths=(), error_types=())
    report = await run_load(plan)
    _consistent(report)
    assert report.succeeded == 8, report.errors_by_kind
    assert sorted(set(report.rtt_step.tolist())) == [1, 3, 5, 7, 9] and report.rtt_s.size == 80
    from runbook_lib.flows import load_session_names

    assert "nick" in load_session_names(steps)
    bad = (FlowStep(send="PART r-{marker}"), FlowStep(expect_pattern="^PARTED"))
    report = await run_load(
        _plan(text_room, sessions=3, steps=bad, type_paths=(), error_pattern="^ERR ")
    )
    assert report.errors_by_kind == {"error_frame": 3}
