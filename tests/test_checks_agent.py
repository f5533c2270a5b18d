"""Table tests of the agent-run checks: events and isolation (``runbook_lib.checks.agent``)."""

from __future__ import annotations

import pytest
from observation_builders import (
    CRIT,
    P,
    ev,
    run_of,
)

from runbook_lib.checks import (
    judge_agent_response,
    judge_chat_flow,
    judge_critical_delivered,
    judge_events_latency,
    judge_events_order,
    judge_events_structure,
    judge_isolation_no_cross_user,
    judge_isolation_sessions,
)
from runbook_lib.checks.agent import order_violation
from runbook_lib.observations import ConnectOutcome
from runbook_lib.protocol import Frame, FrameKind
from runbook_lib.results import Status

S, T, E, C, D = CRIT


def test_agent_response() -> None:
    assert judge_agent_response(run_of(), timeout_s=30).status is Status.PASS
    r = judge_agent_response(run_of(gap=10), timeout_s=30)
    assert r.status is Status.FAIL and "only after" in r.detail
    r = judge_agent_response(run_of(CRIT[:2], ended="timeout"), timeout_s=30)
    assert (
        r.status is Status.FAIL
        and "stopped at step 2" in r.detail
        and "events before the stop: agent_started" in r.detail
    )
    r = judge_agent_response(run_of((), ended="timeout"), timeout_s=30)
    assert r.status is Status.FAIL and "events before the stop" not in r.detail
    refused = run_of(connect=ConnectOutcome(False, status=404, error="http_status"))
    r = judge_agent_response(refused, timeout_s=30)
    assert r.status is Status.FAIL and "404" in r.detail


def test_chat_flow() -> None:
    assert judge_chat_flow(run_of()).status is Status.PASS
    err = Frame(t=0.1, size=5, kind=FrameKind.ERROR, event_type="error", excerpt="denied")
    r = judge_chat_flow(run_of(frames=[err], ended="error_frame"))
    assert r.status is Status.FAIL and "error frame" in r.detail
    assert judge_chat_flow(run_of((), ended="timeout")).status is Status.FAIL


@pytest.mark.parametrize(
    ("types", "minimum", "status"),
    [
        (CRIT, 5, Status.PASS),
        (CRIT[:1] + CRIT[-1:], 5, Status.FAIL),
        (CRIT[:1] + CRIT[-1:], 2, Status.PASS),
        ((), 1, Status.FAIL),
    ],
)
def test_critical_delivered(types, minimum, status) -> None:
    r = judge_critical_delivered(run_of(types), critical=CRIT, minimum=minimum)
    assert r.status is status


@pytest.mark.parametrize(
    ("types", "ok"),
    [
        ((S, T, E, C, D), True),
        ((S, T, D), True),
        ((S, T, E, C, E, C, D), True),
        ((S, E, T, C, D), False),
        ((T, S, E, C, D), False),
        ((S, T, E, D), False),
        ((S, T, E, C), False),
        ((S, T, E, C, D, E), False),
        ((S,), False),
    ],
)
def test_order_violation(types, ok) -> None:
    assert (order_violation(types, CRIT) is None) is ok


def test_events_order_judge() -> None:
    assert judge_events_order(run_of(), critical=CRIT).status is Status.PASS
    r = judge_events_order(run_of((S, E, T, C, D)), critical=CRIT)
    assert r.status is Status.FAIL and "expected agent_thinking" in r.detail
    assert judge_events_order(run_of(()), critical=CRIT).status is Status.FAIL


def test_events_structure() -> None:
    assert judge_events_structure(run_of(), required_fields=P.required_fields).status is Status.PASS
    bare = [
        Frame(
            t=0.1,
            size=5,
            kind=FrameKind.EVENT,
            event_type=S,
            user_id="u1",
            data={"type": S, "user_id": "u1"},
        )
    ]
    r = judge_events_structure(run_of(frames=bare), required_fields=P.required_fields)
    assert r.status is Status.FAIL and "run_id" in r.detail and "agent_name" in r.detail
    nested = [
        Frame(
            t=0.1,
            size=5,
            kind=FrameKind.EVENT,
            event_type=S,
            user_id="u1",
            data={
                "type": S,
                "data": {"user_id": "u1", "run_id": "r", "timestamp": 1, "agent_name": "a"},
            },
        )
    ]
    assert (
        judge_events_structure(run_of(frames=nested), required_fields=P.required_fields).status
        is Status.PASS
    )
    assert (
        judge_events_structure(run_of(()), required_fields=P.required_fields).status is Status.FAIL
    )


def test_events_latency() -> None:
    r = judge_events_latency(run_of(), timeout_s=30)
    assert r.status is Status.PASS and r.data["max_gap_s"] == pytest.approx(0.1)
    assert judge_events_latency(run_of(gap=10), timeout_s=30).status is Status.FAIL
    assert judge_events_latency(run_of(()), timeout_s=30).status is Status.FAIL


def test_isolation_sessions() -> None:
    good = [run_of(user=f"u{i}", run=f"r{i}") for i in range(5)]
    assert judge_isolation_sessions(good, success_rate=0.8, response_s=5).status is Status.PASS
    slow = [*good[:3], run_of(user="u8", gap=6), run_of((), user="u9", ended="timeout")]
    r = judge_isolation_sessions(slow, success_rate=0.8, response_s=5)
    assert r.status is Status.FAIL and r.observed == 0.6
    assert judge_isolation_sessions([], success_rate=0.8, response_s=5).status is Status.ERROR


def test_no_cross_user_flags_foreign_user_and_run() -> None:
    a = run_of(user="a", run="ra")
    b = run_of(
        user="b",
        run="rb",
        frames=[
            *(f.frame for f in run_of(user="b", run="rb").frames),
            ev(S, 0.2, user="a", run="ra"),
        ],
    )
    c = run_of(
        user="c",
        run="rc",
        frames=[
            *(f.frame for f in run_of(user="c", run="rc").frames),
            ev(S, 0.3, user=None, run="ra"),
        ],
    )
    r = judge_isolation_no_cross_user([a, b, c])
    assert r.status is Status.FAIL and r.observed == 2 and "leak" in r.detail
    assert set(r.data["leaks"]) == {"b", "c"}
    ok = [a, run_of(user="b", run="rb")]
    assert judge_isolation_no_cross_user(ok).status is Status.PASS
    lonely = [a, run_of((), user="b", ended="connect_failed")]
    assert judge_isolation_no_cross_user(lonely).status is Status.ERROR


def test_own_events_ignore_leaked_frames() -> None:
    b = run_of(user="b", run="rb", frames=[ev(S, 0.1, "b", "rb"), ev(S, 0.2, "a", "ra")])
    assert len(b.events) == 1


# ---------------------------------------------------------------- no evidence, no pass


def _fobs(
    user: str,
    frames: list[tuple[str, dict]] = (),  # type: ignore[assignment]
    *,
    marker: str = "",
    run: str = "",
    completed: bool = True,
    others: tuple[str, ...] = (),
):
    """A FlowObservation of a 2-step flow (send, expect) built from (text, fields) frames."""
    from runbook_lib.flows import FlowFrame, FlowObservation, StepOutcome

    ffs = []
    for i, (text, kw) in enumerate(frames):
        fr = Frame(t=0.1 + i * 0.01, size=len(text), kind=kw.pop("kind", FrameKind.EVENT), **kw)
        attributed = bool(fr.user_id or fr.run_id or fr.marker) or any(
            m and m in text for m in (marker, *others)
        )
        foreign = any(m and m != marker and m in text for m in others)
        ffs.append(FlowFrame(fr, text, foreign=foreign, attributed=attributed))
    steps = (
        StepOutcome(0, "send", "sent", "send x", 0.05, 0.0),
        StepOutcome(1, "expect", "matched" if completed else "timeout", "expect y", 0.05, 0.1, 5),
    )
    return FlowObservation(
        url="ws://x/ws",
        flow="isolation",
        user_id=user,
        marker=marker,
        run_id=run,
        connected=True,
        status=101,
        frames=tuple(ffs),
        steps=steps,
        stopped_at=None if completed else 1,
        stop_reason="" if completed else "timeout",
    )


def test_no_cross_user_never_passes_without_attributable_frames() -> None:
    # Before: frames without any user id, run id or marker gave a pass.
    anon = [Frame(t=0.1, size=9, kind=FrameKind.EVENT, event_type=S)]
    a = run_of(frames=anon, user="a", run="ra")
    b = run_of(frames=anon, user="b", run="rb")
    r = judge_isolation_no_cross_user([a, b])
    assert r.status is Status.ERROR and "{marker}" in r.detail and "user_id" in r.detail
    # The flow version: sessions whose frames carry no id and no marker.
    flows = [_fobs(u, [("hello", {"event_type": "said"})], marker=f"mk{u}") for u in "ab"]
    r = judge_isolation_no_cross_user(flows)
    assert r.status is Status.ERROR and "{marker}" in r.detail


def test_no_cross_user_flows_by_marker_and_ids() -> None:
    ma, mb = "mkaaaaaaaaaaaa", "mkbbbbbbbbbbbb"
    a = _fobs("a", [(f"echo {ma}", {"event_type": "echoed"})], marker=ma, others=(ma, mb))
    b = _fobs("b", [(f"echo {mb}", {"event_type": "echoed"})], marker=mb, others=(ma, mb))
    ok = judge_isolation_no_cross_user([a, b])
    assert ok.status is Status.PASS and ok.detail.startswith("2 frame(s)")
    leaky = _fobs(
        "b",
        [(f"echo {mb}", {"event_type": "echoed"}), (f"echo {ma}", {"event_type": "echoed"})],
        marker=mb,
        others=(ma, mb),
    )
    r = judge_isolation_no_cross_user([a, leaky])
    assert r.status is Status.FAIL and "another user's marker" in r.detail
    # Another user's run id (no marker anywhere) is a leak too.
    c = _fobs("c", [("x", {"event_type": "t", "run_id": "rc"})], run="rc")
    d = _fobs(
        "d",
        [("x", {"event_type": "t", "run_id": "rd"}), ("y", {"event_type": "t", "run_id": "rc"})],
        run="rd",
    )
    r = judge_isolation_no_cross_user([c, d])
    assert r.status is Status.FAIL and "another user's run id" in r.detail
    # One active session proves nothing.
    lonely = judge_isolation_no_cross_user([a, _fobs("e", [], completed=False)])
    assert lonely.status is Status.FAIL and "at least two" in lonely.detail


def test_events_order_needs_two_configured_types() -> None:
    # Before: fewer than five configured types always passed.
    one = judge_events_order(run_of(("echoed",)), critical=("echoed",))
    assert one.status is Status.ERROR and "at least two" in one.detail
    assert "not_applicable" in one.detail
    three = ("run_started", "token", "run_finished")
    good = run_of(("run_started", "token", "token", "run_finished"))
    assert judge_events_order(good, critical=three).status is Status.PASS
    bad = run_of(("token", "run_started", "run_finished"))
    r = judge_events_order(bad, critical=three)
    assert r.status is Status.FAIL and "expected run_started" in r.detail
    back = run_of(("run_started", "run_finished", "token"))
    assert judge_events_order(back, critical=three).status is Status.FAIL
    short = run_of(("run_started", "token"))
    r = judge_events_order(short, critical=three)
    assert (
        r.status is Status.FAIL
        and "run_finished never arrived" in r.detail
        and "out of order" not in r.detail
    )


def test_critical_delivered_is_judged_on_evidence() -> None:
    # Before: a minimum of 0 passed with no event at all.
    r = judge_critical_delivered(run_of(()), critical=CRIT, minimum=0)
    assert r.status is Status.FAIL
    r = judge_critical_delivered(run_of(()), critical=(), minimum=5)
    assert r.status is Status.ERROR and "critical_events" in r.detail
    # A minimum above the configured count asks for all of them, not the impossible.
    r = judge_critical_delivered(run_of(("a", "b")), critical=("a", "b"), minimum=5)
    assert r.status is Status.PASS and r.threshold == 2


def test_events_structure_needs_configured_fields() -> None:
    r = judge_events_structure(run_of(), required_fields={})
    assert r.status is Status.ERROR and "required_fields" in r.detail


def test_flow_judges_pass_only_on_a_completed_flow() -> None:
    done = _fobs("a", [("x", {"event_type": "t"})])
    assert judge_agent_response(done, timeout_s=30).status is Status.PASS
    assert judge_chat_flow(done).status is Status.PASS
    stopped = _fobs("a", [("x", {"event_type": "t"})], completed=False)
    r = judge_agent_response(stopped, timeout_s=30)
    assert r.status is Status.FAIL and "isolation flow stopped at step 2" in r.detail
    assert "events before the stop: t" in r.detail
    assert judge_chat_flow(stopped).status is Status.FAIL
    # The event judges read the flow's own frames, t since the first send.
    lat = judge_events_latency(done, timeout_s=30)
    assert lat.status is Status.PASS and lat.data["times"] == [0.05]
