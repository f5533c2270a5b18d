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
