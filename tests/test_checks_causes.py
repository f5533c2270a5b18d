"""Table tests of the cause mapping: statuses and close codes to likely causes (``runbook_lib.checks.causes``)."""

from __future__ import annotations

import pytest

from runbook_lib.checks.causes import explain_close, explain_status


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (404, "not registered"),
        (403, "IAM"),
        (400, "handshake headers"),
        (426, "Upgrade"),
        (429, "max instances"),
        (500, "no ready instance"),
        (503, "readiness"),
        (502, "HTTP/2"),
        (200, "plain GET"),
        (301, "redirect"),
        (None, "no HTTP answer"),
        (599, "no ready instance"),
    ],
)
def test_explain_status(code, words) -> None:
    assert words in explain_status(code)


@pytest.mark.parametrize(
    ("code", "words"),
    [
        (1006, "request timeout"),
        (1008, "auth"),
        (1011, "server error"),
        (1003, "subprotocol"),
        (4001, "application-defined"),
        (None, "not closed"),
    ],
)
def test_explain_close(code, words) -> None:
    assert words in explain_close(code)


# Every entry of every cause table, with the words a person acts on.
_STATUS_WORDS = {
    400: "handshake headers",
    401: "credentials",
    403: "IAM",
    404: "not registered",
    405: "another method",
    426: "stripped the `Upgrade`",
    429: "max instances",
    500: "no ready instance",
    502: "HTTP/2 end-to-end",
    503: "readiness",
    504: "request timeout",
}
_CLOSE_WORDS = {
    1000: "normal close",
    1001: "going away",
    1002: "malformed frame",
    1003: "subprotocol",
    1006: "request timeout",
    1008: "authentication",
    1009: "size limit",
    1011: "server error",
    1012: "restarting",
    1013: "overloaded",
}
_HTTP_WORDS = {
    400: "malformed",
    401: "credentials",
    403: "IAM",
    404: "path not found",
    405: "another method",
    408: "timed out",
    429: "max instances",
    500: "exception",
    502: "HTTP/2",
    503: "no ready instance",
    504: "request timeout",
}


def test_every_cause_table_entry_is_tested() -> None:
    from runbook_lib.checks.causes import CLOSE_CAUSES, HTTP_CAUSES, STATUS_CAUSES

    assert set(STATUS_CAUSES) == set(_STATUS_WORDS)
    assert set(CLOSE_CAUSES) == set(_CLOSE_WORDS)
    assert set(HTTP_CAUSES) == set(_HTTP_WORDS)


@pytest.mark.parametrize(("code", "words"), sorted(_STATUS_WORDS.items()))
def test_status_cause_table(code, words) -> None:
    assert words in explain_status(code)


@pytest.mark.parametrize(("code", "words"), sorted(_CLOSE_WORDS.items()))
def test_close_cause_table(code, words) -> None:
    assert words in explain_close(code)


@pytest.mark.parametrize(("code", "words"), sorted(_HTTP_WORDS.items()))
def test_http_cause_table_never_speaks_of_websockets(code, words) -> None:
    from runbook_lib.checks.causes import explain_http_status

    text = explain_http_status(code)
    assert words in text and "websocket" not in text.lower()


def test_plain_http_404_is_path_not_found() -> None:
    """A 404 on a health or test GET is "path not found", never a WebSocket route cause."""
    from observation_builders import http

    from runbook_lib.checks import judge_health_backend
    from runbook_lib.checks.causes import http_failure

    words = http_failure(http(404, url="http://x/healthz"))
    assert "path not found" in words and "WebSocket" not in words
    r = judge_health_backend(http(404, url="http://x/healthz"))
    assert "path not found" in r.detail and "WebSocket" not in r.detail


_SRC = ("/ws", "/chat")


@pytest.mark.parametrize(
    ("status", "path", "evidence", "server", "cause", "words", "absent"),
    [
        # uvicorn without a WebSocket library, seen by the walker or in the logs
        (
            404,
            "/ws",
            {"ws_library_missing": True},
            "",
            "no_ws_implementation",
            "install websockets",
            "deploy the revision",
        ),
        (
            404,
            "/ws",
            {"log_lines": ("WARNING: No supported WebSocket library detected.",)},
            "",
            "no_ws_implementation",
            "logs say",
            "deploy the revision",
        ),
        (
            404,
            "/ws",
            {"log_lines": ("INFO: GET / 200",)},
            "",
            "route_unknown",
            "Configure [source] app",
            "",
        ),
        # the route is in the source and nothing would deploy other code: not a redeploy
        (
            404,
            "/ws",
            {"source_routes": _SRC},
            "",
            "no_ws_implementation",
            "will not help",
            "deploy the revision",
        ),
        # the route is in the source and a deploy would change the code: the seed's incident
        (
            404,
            "/ws",
            {"source_routes": _SRC, "deploy_changes_code": True},
            "",
            "route_not_deployed",
            "deploy the revision built from this source",
            "",
        ),
        # the route is not in the source
        (
            404,
            "/gone",
            {"source_routes": _SRC},
            "",
            "route_not_in_source",
            "does not register /gone",
            "install websockets",
        ),
        # a hop answers: the 404's Server header is not the service's
        (
            404,
            "/ws",
            {"source_routes": _SRC, "health_server": "uvicorn"},
            "nginx",
            "hop_answers",
            "a hop in front",
            "",
        ),
        (
            404,
            "/ws",
            {"source_routes": _SRC, "health_server": "uvicorn"},
            "uvicorn",
            "no_ws_implementation",
            "install websockets",
            "",
        ),
        # Starlette answers 403 to an upgrade on an unknown path
        (
            403,
            "/gone",
            {"source_routes": _SRC},
            "",
            "route_not_in_source",
            "answer 403 to an upgrade on an unknown path",
            "",
        ),
        (403, "/ws", {"source_routes": _SRC}, "", "caller_refused", "refusal of the caller", ""),
        (
            403,
            "/ws",
            {"source_routes": _SRC, "credentials": True},
            "",
            "caller_refused",
            "credentials",
            "",
        ),
        # no credentials at all: a 403 on a route the source has is a route the app does not serve
        (
            403,
            "/ws",
            {"source_routes": _SRC, "credentials": False},
            "",
            "route_not_served",
            "does not have this route",
            "token",
        ),
        (403, "/ws", {}, "", "status", "IAM", ""),
        # no evidence: both readings, and how to tell them apart
        (404, "/ws", {}, "", "route_unknown", "not registered", ""),
        # other statuses keep the table's cause
        (426, "/ws", {"source_routes": _SRC}, "", "status", "Upgrade", ""),
    ],
)
def test_diagnose_refusal_uses_all_the_evidence(
    status, path, evidence, server, cause, words, absent
) -> None:
    from runbook_lib.checks.causes import WsEvidence, diagnose_refusal

    key, text = diagnose_refusal(status, path, WsEvidence(**evidence), server=server)
    assert key == cause and words in text, text
    if absent:
        assert absent not in text


@pytest.mark.parametrize("status", [404, 500, 403, 503])
@pytest.mark.parametrize(
    "evidence",
    [
        {"ws_library_missing": True},
        {"log_lines": ("WARNING: Unsupported upgrade request.",)},
    ],
)
def test_missing_websocket_library_is_named_for_any_refusal_status(status, evidence) -> None:
    """uvicorn answers 404, a Socket.IO stack 500, a framework fallback 403: with the
    source check or the logs saying the library is missing, the cause is the same."""
    from runbook_lib.checks.causes import WsEvidence, diagnose_refusal

    key, text = diagnose_refusal(status, "/ws", WsEvidence(source_routes=_SRC, **evidence))
    assert key == "no_ws_implementation" and "install websockets" in text


@pytest.mark.parametrize(
    ("kw", "cause", "words", "absent"),
    [
        # dropped at once after the accept, nothing sent: the handler fails
        (
            {"lifetime_s": 0.02, "close_code": 1006},
            "handler_failed",
            "handler fails right after accepting",
            "--timeout",
        ),
        (
            {"lifetime_s": 0.0, "close_code": 1011},
            "handler_failed",
            "read the service's logs",
            "--timeout",
        ),
        # a quiet socket dropped right after the runbook's own frame: protocol mismatch
        (
            {"lifetime_s": 2.05, "close_code": 1006, "sent_at_s": 2.0, "sent": '{"type": "ping"}'},
            "protocol_mismatch",
            '\'{"type": "ping"}\'',
            "--timeout",
        ),
        # the same ping went through before: not what the service cannot read
        (
            {
                "lifetime_s": 3.05,
                "close_code": 1006,
                "sent_at_s": 3.0,
                "sent": "ping",
                "sent_before": True,
            },
            "abrupt",
            "request timeout",
            "protocol mismatch",
        ),
        # both at once: either reading, the frame named, never a timeout
        (
            {"lifetime_s": 0.03, "close_code": None, "sent_at_s": 0.01, "sent": "hello"},
            "handler_failed",
            "'hello'",
            "--timeout",
        ),
        # near the configured request timeout: the request timeout
        (
            {"lifetime_s": 299.5, "close_code": 1006, "request_timeout_s": 300},
            "request_timeout",
            "raise `--timeout`",
            "",
        ),
        # long-lived, far from the request timeout: not blamed on it
        (
            {"lifetime_s": 20.0, "close_code": 1006, "request_timeout_s": 300},
            "abrupt",
            "well before the request timeout (300s)",
            "raise `--timeout`",
        ),
        # a close code that explains itself keeps its meaning
        ({"lifetime_s": 0.01, "close_code": 1008}, "close", "authentication", ""),
        ({"lifetime_s": 0.01, "close_code": 4406}, "close", "application-defined", ""),
    ],
)
def test_diagnose_drop_by_timing(kw, cause, words, absent) -> None:
    from runbook_lib.checks.causes import diagnose_drop

    key, text = diagnose_drop(**kw)
    assert key == cause and words in text, text
    if absent:
        assert absent not in text


def test_downstream_check_says_the_run_cause_not_the_generic_status_text() -> None:
    """One cause per run: a check that failed on the same refusal with the generic text
    says the cause the route probe diagnosed."""
    from runbook_lib.checks.causes import (
        STATUS_CAUSES,
        RunCause,
        Verdict,
        carry_cause,
        connect_failure_words,
        run_cause,
    )
    from runbook_lib.observations import ConnectOutcome

    generic = Verdict("events.order").fail(
        "agent flow: " + connect_failure_words(ConnectOutcome(False, status=404))
    )
    assert STATUS_CAUSES[404] in generic.detail
    probe = Verdict("ws.routes_probe").fail(
        "x",
        data={
            "cause": "no_ws_implementation",
            "cause_words": "install websockets",
            "probes": [{"path": "/ws", "status": 404}],
        },
    )
    cause = run_cause(probe)
    assert cause == RunCause("no_ws_implementation", 404, "install websockets")
    carried = carry_cause(generic, cause)
    assert "install websockets" in carried.detail
    assert "deploy the revision that has them" not in carried.detail
    assert carried.data["cause"] == "no_ws_implementation"
    # passing checks and other statuses are left alone
    ok = Verdict("ws.upgrade").ok("fine")
    assert carry_cause(ok, cause) is ok
    other = Verdict("ws.upgrade").fail("upgrade refused with HTTP 502: " + STATUS_CAUSES[502])
    assert carry_cause(other, cause) is other
    # a cause the generic text already agrees with is not carried
    assert run_cause(Verdict("ws.routes_probe").fail("x", data={"cause": "status"})) is None
