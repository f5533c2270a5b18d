"""Phases 4 and 5 against the corpus: five real services, each with its environment sketch.

For every service of ``tests/corpus`` the steps of phases 4 and 5 run through a
:class:`~runbook_lib.context.PhaseContext` (as the notebooks call them) with the sketch
from ``tests/corpus/README.md``, unedited: no false alarm (no ``fail``/``error``), and
every check either passes on evidence (checked per check below), or is ``skip``
(declared not applicable, or its configuration is absent). Injected faults are caught
by the right check with the right words.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from corpus.conftest import SKETCH_ENVIRON
from corpus.serve import Running, serve_corpus

from runbook_lib import steps
from runbook_lib.context import open_phase
from runbook_lib.results import CheckResult

# socketio_chat joins once the load engine runs whole flows (its load flow has three steps).
SERVICES = ("jsonrpc_pubsub", "text_chat", "graphql_ws", "agent_stream", "no_health", "crash_chat")
PLAN = {
    4: ("test_suites", "agent_response", "load_test"),
    5: ("auth_checks", "chat_flow", "isolation", "event_delivery"),
}
FAST = {"thresholds.event_timeout_s": 3, "thresholds.load_connections": 6}


def _flow_done(r: CheckResult) -> bool:
    return r.data["frames"] > 0 and all(
        s["outcome"] in ("sent", "matched") for s in r.data["steps"]
    )


# What a pass must rest on, per check: a pass without it would be a pass without evidence.
EVIDENCE: dict[str, Callable[[CheckResult], bool]] = {
    "e2e.agent_response": _flow_done,
    "chat.flow": _flow_done,
    "load.success_rate": lambda r: r.observed > 0,
    "load.latency_p95": lambda r: r.observed is not None,
    "load.no_server_errors": lambda r: True,  # given load.success_rate > 0 (asserted below)
    "auth.ws_authenticated": lambda r: (
        "answered per the load flow" in r.detail or "accepted" in r.detail
    ),
    "isolation.sessions": lambda r: r.observed > 0,
    "isolation.no_cross_user": lambda r: (
        int(r.detail.split()[0]) > 0 and "none carrying another user's id" in r.detail
    ),
    "events.critical_delivered": lambda r: r.observed >= 1,
    "events.order": lambda r: len(r.observed) >= 2,
    "events.structure": lambda r: r.observed >= 1,
    "events.latency": lambda r: r.observed is not None and len(r.data["times"]) >= 1,
}


@pytest.fixture
async def service() -> AsyncIterator[Callable[..., Any]]:
    async with contextlib.AsyncExitStack() as stack:

        async def start(name: str, *faults: str) -> Running:
            return await stack.enter_async_context(serve_corpus(name, faults))

        yield start


@pytest.fixture(autouse=True)
def _tokens(monkeypatch: pytest.MonkeyPatch) -> None:
    for k, v in SKETCH_ENVIRON.items():
        monkeypatch.setenv(k, v)


async def _run(
    tmp_path, svc: Running, overrides: dict[str, Any] | None = None, env: str | None = None
) -> dict[str, CheckResult]:
    path = tmp_path / f"{svc.name}.toml"
    path.write_text(env if env is not None else svc.env(), encoding="utf-8")
    out: dict[str, CheckResult] = {}
    for phase, names in PLAN.items():
        ctx = open_phase(phase, environment=str(path), overrides=dict(overrides or {}))
        for name in names:
            report = await getattr(steps, name)(ctx)
            out.update({r.id: r for r in report.results})
    return out


def _bad(results: dict[str, CheckResult]) -> dict[str, str]:
    return {i: r.detail for i, r in results.items() if r.status in ("fail", "error")}


@pytest.mark.parametrize("name", SERVICES)
async def test_healthy_service_no_false_alarm_and_no_pass_without_evidence(
    service, tmp_path, name: str
) -> None:
    svc = await service(name)
    results = await _run(tmp_path, svc, FAST)
    assert not _bad(results), _bad(results)
    passed = {i: r for i, r in results.items() if r.status == "pass"}
    unknown = set(passed) - set(EVIDENCE)
    assert not unknown, f"passes with no evidence rule: {unknown}"
    for i, r in passed.items():
        assert EVIDENCE[i](r), (i, r.observed, r.detail)
    if "load.no_server_errors" in passed:
        assert results["load.success_rate"].status == "pass"
    # Every conversation check ran on evidence or was skipped for a stated reason.
    for i, r in results.items():
        if r.status == "skip":
            assert r.detail, i
    # The flows really ran: each service has its agent or chat conversation judged.
    assert {"isolation.sessions", "isolation.no_cross_user"} <= set(passed)
    assert "e2e.agent_response" in passed or "chat.flow" in passed
    if name == "text_chat":  # a text protocol: a 101 and text answers per the load flow
        assert passed["auth.ws_authenticated"].observed == "accepted"


@pytest.mark.parametrize(
    ("name", "words"),
    [
        ("jsonrpc_pubsub", "marker"),
        ("text_chat", "user id"),
        ("agent_stream", "run id"),
        ("crash_chat", "user id"),
    ],
)
async def test_leak_is_caught_by_isolation_no_cross_user(
    service, tmp_path, name: str, words: str
) -> None:
    svc = await service(name, "leak")
    results = await _run(tmp_path, svc, FAST)
    r = results["isolation.no_cross_user"]
    assert r.status == "fail", r.detail
    assert f"carrying another user's {words}" in r.detail and "leak" in r.detail
    assert r.data["leaks"]


@pytest.mark.slow  # waits on real timeouts
async def test_jsonrpc_drop_fails_the_agent_flow_and_the_events(service, tmp_path) -> None:
    svc = await service("jsonrpc_pubsub", "drop")
    results = await _run(tmp_path, svc, FAST)
    r = results["e2e.agent_response"]
    assert r.status == "fail" and "agent flow stopped at step 4" in r.detail, r.detail
    assert "no matching frame within 5s" in r.detail
    assert results["events.critical_delivered"].status == "fail"
    assert results["isolation.sessions"].status == "fail"
    # Nothing else is blamed: load (ping) and the other checks still pass.
    assert set(_bad(results)) == {
        "e2e.agent_response",
        "isolation.sessions",
        "isolation.no_cross_user",
        "events.critical_delivered",
        "events.structure",
        "events.latency",
    }, _bad(results)


@pytest.mark.slow  # waits on real timeouts
async def test_text_chat_drop_fails_chat_flow(service, tmp_path) -> None:
    svc = await service("text_chat", "drop")
    results = await _run(tmp_path, svc, FAST)
    r = results["chat.flow"]
    assert r.status == "fail" and "chat flow stopped at step 5" in r.detail, r.detail
    assert results["isolation.sessions"].status == "fail"
    assert results["auth.ws_authenticated"].status == "pass"


async def test_crash_after_accept_fails_every_conversation_at_once(service, tmp_path) -> None:
    """The handler dies right after the accept: every session is cut within moments,
    long before any request timeout; nothing conversational passes."""
    svc = await service("crash_chat", "crash")
    results = await _run(tmp_path, svc, FAST)
    for i in ("chat.flow", "isolation.sessions", "load.success_rate"):
        assert results[i].status == "fail", (i, results[i].detail)
    passed = {r.id for r in results.values() if r.status == "pass"}
    assert not passed & {"chat.flow", "isolation.sessions", "isolation.no_cross_user"}


@pytest.mark.slow  # waits on real timeouts
async def test_agent_stream_drop_fails_agent_response_and_events(service, tmp_path) -> None:
    svc = await service("agent_stream", "drop")
    results = await _run(tmp_path, svc, FAST)
    r = results["e2e.agent_response"]
    assert r.status == "fail" and "expect event run_finished" in r.detail, r.detail
    assert "run_started" in r.detail  # the events that did arrive are named
    delivered = results["events.critical_delivered"]
    assert delivered.status == "fail" and "run_finished" in delivered.detail
    order = results["events.order"]
    assert order.status == "fail" and "run_finished never arrived" in order.detail
    assert "out of order" not in order.detail  # a missing event is missing


@pytest.mark.slow  # waits on real timeouts
async def test_graphql_drop_next_fails_the_agent_flow(service, tmp_path) -> None:
    svc = await service("graphql_ws", "drop_next")
    results = await _run(tmp_path, svc, FAST)
    r = results["e2e.agent_response"]
    assert r.status == "fail" and "step 4" in r.detail, r.detail
    assert results["events.critical_delivered"].status == "fail"


@pytest.mark.parametrize("name", SERVICES)
async def test_ws_library_missing_every_conversation_fails_with_the_404(
    service, tmp_path, name: str
) -> None:
    svc = await service(name, "ws_missing")
    results = await _run(tmp_path, svc, FAST)
    for i in ("isolation.sessions", "load.success_rate"):
        assert results[i].status == "fail", (i, results[i].detail)
    # No session connected: isolation was not tested, which is an error, never a fail.
    iso = results["isolation.no_cross_user"]
    assert iso.status == "error" and "0 of" in iso.detail, iso.detail
    assert "HTTP 404" in results["isolation.sessions"].detail
    talk = "chat.flow" if name in ("text_chat", "crash_chat") else "e2e.agent_response"
    assert results[talk].status == "fail" and "HTTP 404" in results[talk].detail
    # No session was upgraded: "no server error" has no evidence and is an error too.
    assert results["load.no_server_errors"].status == "error"
    passed = {r.id for r in results.values() if r.status == "pass"}
    assert not passed, passed


async def test_graphql_load_sessions_run_connection_init_then_ping_whole(service, tmp_path) -> None:
    """A two-round-trip load flow (connection_init -> ack -> ping -> pong) runs whole in
    every load session; both expect steps are timed."""
    svc = await service("graphql_ws")
    env = svc.env().replace(
        '[[flows.load.steps]]\nsend = { type = "ping" }',
        '[[flows.load.steps]]\nsend = { type = "connection_init", payload = {} }\n'
        '[[flows.load.steps]]\nexpect = { type = "connection_ack" }\n'
        '[[flows.load.steps]]\nsend = { type = "ping" }',
    )
    assert env != svc.env()
    results = await _run(tmp_path, svc, FAST, env=env)
    for i in ("load.success_rate", "load.latency_p95", "load.no_server_errors"):
        assert results[i].status == "pass", results[i].detail


async def test_shared_room_declared_skips_no_cross_user(service, tmp_path) -> None:
    svc = await service("text_chat", "leak")
    env = svc.env().replace('format = "text"', 'format = "text"\nshared_room = true')
    results = await _run(tmp_path, svc, FAST, env=env)
    r = results["isolation.no_cross_user"]
    assert r.status == "skip" and "shared_room" in r.detail
