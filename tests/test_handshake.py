"""The raw upgrade: the sans-I/O request builder and head parser (table tests, no socket),
and the observer against real loopback servers (TLS spoken to a plain-HTTP port)."""

from __future__ import annotations

import asyncio

import pytest

from runbook_lib.handshake import (
    Endpoint,
    endpoint_of,
    expected_accept,
    observe_handshake,
    parse_upgrade_head,
    upgrade_request,
)
from runbook_lib.http_checks import PLAIN_HTTP_HINT, observe_get

KEY = "dGhlIHNhbXBsZSBub25jZQ=="  # RFC 6455 section 1.3's example


def test_expected_accept_is_rfc_6455s_example() -> None:
    assert expected_accept(KEY) == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize(
    ("url", "endpoint"),
    [
        ("ws://h/ws", Endpoint("h", 80, False, "/ws", "h")),
        ("wss://h/ws?x=1", Endpoint("h", 443, True, "/ws?x=1", "h")),
        ("ws://h:8080", Endpoint("h", 8080, False, "/", "h:8080")),
        ("https://h:8443/a/b", Endpoint("h", 8443, True, "/a/b", "h:8443")),
    ],
)
def test_endpoint_of(url: str, endpoint: Endpoint) -> None:
    assert endpoint_of(url) == endpoint


@pytest.mark.parametrize("url", ["ftp://h/x", "ws:///nohost", "websocket"])
def test_endpoint_of_refuses_other_urls(url: str) -> None:
    with pytest.raises(ValueError, match="not a WebSocket URL"):
        endpoint_of(url)


def test_upgrade_request_carries_the_handshake_and_credentials() -> None:
    raw = upgrade_request(
        "ws://h:81/ws?token=t",
        KEY,
        subprotocols=("jwt.abc", "chat"),
        headers=(("Authorization", "Bearer x"),),
    )
    head, _, rest = raw.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    assert rest == b"" and lines[0] == "GET /ws?token=t HTTP/1.1"
    assert {
        "Host: h:81",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {KEY}",
        "Sec-WebSocket-Version: 13",
        "Sec-WebSocket-Protocol: jwt.abc, chat",
        "Authorization: Bearer x",
    } <= set(lines)
    assert b"Sec-WebSocket-Protocol" not in upgrade_request("ws://h/", KEY)


@pytest.mark.parametrize(
    ("head", "status", "accept_valid", "subprotocol"),
    [
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
            b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
            b"Sec-WebSocket-Protocol: jwt.abc\r\n\r\n",
            101,
            True,
            "jwt.abc",
        ),
        (b"HTTP/1.1 101 OK\r\nSec-WebSocket-Accept: wrong\r\n\r\n", 101, False, None),
        (b"HTTP/1.1 404 Not Found\r\ncontent-length: 9\r\n\r\n", 404, None, None),
        (b"HTTP/1.0 426\r\n\r\n", 426, None, None),
    ],
)
def test_parse_upgrade_head(head: bytes, status: int, accept_valid, subprotocol) -> None:
    parsed = parse_upgrade_head(head, KEY)
    assert (parsed.status, parsed.accept_valid, parsed.subprotocol) == (
        status,
        accept_valid,
        subprotocol,
    )


def test_parse_upgrade_head_joins_repeated_headers_and_lowercases_names() -> None:
    parsed = parse_upgrade_head(b"HTTP/1.1 403 Forbidden\r\nVia: a\r\nVIA: b\r\nnoise\r\n\r\n", KEY)
    assert parsed.reason == "Forbidden" and parsed.http_version == "1.1"
    assert parsed.headers == {"via": "a, b"}


@pytest.mark.parametrize(
    "head", [b"SSH-2.0-OpenSSH\r\n\r\n", b"\r\n\r\n", b"HTTP/1.1 20 x\r\n\r\n"]
)
def test_parse_upgrade_head_refuses_what_is_not_http(head: bytes) -> None:
    with pytest.raises(ValueError, match="not an HTTP status line"):
        parse_upgrade_head(head, KEY)


async def _plain_http(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read(1024)
    writer.write(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n")
    await writer.drain()


async def test_tls_to_a_plain_http_port_says_use_ws(raw_server) -> None:
    port = await raw_server(_plain_http)
    obs = await observe_handshake(f"wss://127.0.0.1:{port}/ws", timeout_s=5)
    assert obs.status is None and obs.error == "tls"
    assert PLAIN_HTTP_HINT in obs.error_detail


async def test_https_to_a_plain_http_port_says_use_http(raw_server) -> None:
    port = await raw_server(_plain_http)
    obs = await observe_get(f"https://127.0.0.1:{port}/health", timeout_s=5)
    assert obs.status is None and obs.error == "tls"
    assert PLAIN_HTTP_HINT in obs.error_detail
