"""Cloud Logging's filter language, the log store and the wire format (pure, no sockets)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from runbook_lib.sandbox.log_store import FilterError, LogStore, compile_filter
from runbook_lib.sandbox.wire import duration, format_time, parse_time

# ------------------------------------------------------------------ the filter language (pure)

ENTRY: dict[str, Any] = {
    "logName": "projects/p/logs/run.googleapis.com%2Frequests",
    "resource": {
        "type": "cloud_run_revision",
        "labels": {"service_name": "backend", "revision_name": "backend-00002-abc"},
    },
    "timestamp": "2026-01-01T00:00:10.000000Z",
    "severity": "WARNING",
    "textPayload": "GET /websocket 404",
    "httpRequest": {"requestMethod": "GET", "status": 404},
    "insertId": "1",
}


@pytest.mark.parametrize(
    ("flt", "expected"),
    [
        ("", True),
        ('resource.type="cloud_run_revision"', True),
        ('resource.type = "cloud_run_revision"', True),
        ('resource.labels.revision_name="backend-00001-xyz"', False),
        ('resource.labels.revision_name!="backend-00001-xyz"', True),
        ("severity>=WARNING", True),
        ("severity>=ERROR", False),
        ("severity<ERROR", True),
        ('timestamp>="2026-01-01T00:00:05Z"', True),
        ('timestamp>="2026-01-01T00:00:11Z"', False),
        ('timestamp<"2026-01-01T01:00:00+01:00"', False),
        ('textPayload:"websocket"', True),
        ('textPayload:"WEBSOCKET"', True),
        ('textPayload:"routing"', False),
        ("httpRequest.status>=400", True),
        ("httpRequest.status=404", True),
        ('textPayload=~"GET /web.*404$"', True),
        ("missing.field=1", False),
        ("NOT missing.field=1", True),
        ('-textPayload:"routing"', True),
        ('textPayload:"routing" OR textPayload:"404"', True),
        ('textPayload:"routing" AND textPayload:"404"', False),
        ('textPayload:"404" textPayload:"GET"', True),
        ('"websocket"', True),
        ("nothing-like-this", False),
        # Google's precedence: OR binds tighter than AND.
        ('textPayload:"404" OR textPayload:"x" AND severity>=ERROR', False),
        ('textPayload:"404" OR (textPayload:"x" AND severity>=ERROR)', True),
        ('NOT (severity>=ERROR OR textPayload:"x")', True),
        (
            'resource.type="cloud_run_revision" AND (textPayload:"404" OR textPayload:"websocket" '
            'OR textPayload:"routing")',
            True,
        ),
    ],
)
def test_filter_semantics(flt: str, expected: bool) -> None:
    assert compile_filter(flt)(ENTRY) is expected


@pytest.mark.parametrize(
    "flt",
    [
        'textPayload:"unterminated',
        "(severity>=ERROR",
        "severity>=ERROR)",
        "AND severity>=ERROR",
        "severity>=",
        "severity>=ERROR OR",
        "a = = b",
        "severity>=ERROR AND",
        "NOT",
    ],
)
def test_malformed_filters_are_refused(flt: str) -> None:
    with pytest.raises(FilterError):
        compile_filter(flt)


def test_parse_time_accepts_nanos_and_offsets() -> None:
    assert parse_time("2026-01-01T00:00:00.123456789Z") == datetime(
        2026, 1, 1, 0, 0, 0, 123456, tzinfo=UTC
    )
    assert parse_time("2026-01-01T01:00:00+01:00") == datetime(2026, 1, 1, tzinfo=UTC)
    with pytest.raises(ValueError):
        parse_time("yesterday")


def test_log_store_orders_and_pages() -> None:
    store = LogStore()
    for i in range(5):
        store.append(
            {
                **ENTRY,
                "insertId": None,
                "timestamp": f"2026-01-01T00:00:0{i}Z",
                "textPayload": f"line {i}",
            }
            | {"insertId": f"{i}"}
        )
    first = store.query(resource_names=["projects/p"], order_by="timestamp desc", page_size=2)
    assert [e["textPayload"] for e in first["entries"]] == ["line 4", "line 3"]
    second = store.query(
        resource_names=["projects/p"],
        order_by="timestamp desc",
        page_size=2,
        page_token=first["nextPageToken"],
    )
    assert [e["textPayload"] for e in second["entries"]] == ["line 2", "line 1"]
    assert store.query(resource_names=["projects/other"])["entries"] == []
    with pytest.raises(FilterError):
        store.query(resource_names=["projects/p"], order_by="severity")


def test_format_time_round_trips_and_durations_are_seconds() -> None:
    ts = datetime(2026, 1, 1, 12, 30, 5, 250000, tzinfo=UTC)
    assert format_time(ts) == "2026-01-01T12:30:05.250000Z"
    assert parse_time(format_time(ts)) == ts
    assert duration(300) == "300s" and duration(0.5) == "0.5s"
