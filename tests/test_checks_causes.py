"""Table tests of the cause mapping: statuses and close codes to likely causes (``runbook_lib.checks.causes``)."""

from __future__ import annotations

import pytest

from runbook_lib.checks import (
    explain_close,
    explain_status,
)


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
    from runbook_lib.checks import CLOSE_CAUSES, HTTP_CAUSES, STATUS_CAUSES

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
    from runbook_lib.checks import explain_http_status

    text = explain_http_status(code)
    assert words in text and "websocket" not in text.lower()


def test_plain_http_404_is_path_not_found() -> None:
    """A 404 on a health or test GET is "path not found", never a WebSocket route cause."""
    from observation_builders import http

    from runbook_lib.checks import http_failure, judge_health_backend

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
    from runbook_lib.checks import WsEvidence, diagnose_refusal

    key, text = diagnose_refusal(status, path, WsEvidence(**evidence), server=server)
    assert key == cause and words in text, text
    if absent:
        assert absent not in text
