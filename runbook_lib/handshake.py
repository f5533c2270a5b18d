"""The raw WebSocket upgrade: a sans-I/O request builder and head parser, and the observer.

:func:`upgrade_request` and :func:`parse_upgrade_head` are pure (bytes in, bytes or a
value out) and table-tested without sockets, as websockets' ``http11`` is;
:func:`observe_handshake` only moves those bytes over an asyncio stream, bounded by
one deadline. The observer speaks raw HTTP/1.1 so that the status, headers and body of
a *refused* upgrade are kept: that is the evidence the incident needs.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import re
import ssl
import struct
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlsplit

from .http_checks import error_kind, exc_text
from .identity import user_agent
from .observations import HandshakeObservation
from .redaction import redact, redact_excerpt
from .tokens import ConnectAuth

__all__ = [
    "WS_GUID",
    "Endpoint",
    "UpgradeHead",
    "endpoint_of",
    "expected_accept",
    "observe_handshake",
    "observe_handshakes",
    "parse_upgrade_head",
    "upgrade_request",
    "with_subprotocols",
]

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_BODY_EXCERPT = 500
_HEAD_LIMIT = 64 * 1024
_STATUS_LINE = re.compile(rb"^HTTP/(\d\.\d|\d) (\d{3})(?: (.*))?$")


def expected_accept(key: str) -> str:
    """The ``Sec-WebSocket-Accept`` a server must answer to ``Sec-WebSocket-Key`` ``key``."""
    digest = hashlib.sha1((key + WS_GUID).encode()).digest()
    return base64.b64encode(digest).decode()


# ---------------------------------------------------------------- sans-I/O


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where an upgrade goes: host, port, TLS, the request target and the Host header."""

    host: str
    port: int
    secure: bool
    resource: str
    host_header: str


def endpoint_of(url: str) -> Endpoint:
    """Split a ``ws``/``wss`` (or ``http``/``https``) URL into what a connect needs.

    Raises:
        ValueError: not a WebSocket URL (other scheme, or no host).
    """
    parts = urlsplit(url)
    secure = parts.scheme in ("wss", "https")
    if parts.scheme not in ("ws", "wss", "http", "https") or not parts.hostname:
        raise ValueError(f"not a WebSocket URL: {url!r}")
    host = parts.hostname
    return Endpoint(
        host=host,
        port=parts.port or (443 if secure else 80),
        secure=secure,
        resource=(parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
        host_header=host if parts.port is None else f"{host}:{parts.port}",
    )


def upgrade_request(
    url: str,
    key: str,
    *,
    subprotocols: Sequence[str] = (),
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """The HTTP/1.1 upgrade request for ``url`` with ``Sec-WebSocket-Key`` ``key``.

    Raises:
        ValueError: not a WebSocket URL.
    """
    ep = endpoint_of(url)
    lines = [
        f"GET {ep.resource} HTTP/1.1",
        f"Host: {ep.host_header}",
        "Upgrade: websocket",
        "Connection: Upgrade",
        f"Sec-WebSocket-Key: {key}",
        "Sec-WebSocket-Version: 13",
        f"User-Agent: {user_agent()}",
    ]
    if subprotocols:
        lines.append("Sec-WebSocket-Protocol: " + ", ".join(subprotocols))
    lines += [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass(frozen=True, slots=True)
class UpgradeHead:
    """The parsed response head of an upgrade.

    Attributes:
        status: the HTTP status.
        reason: the reason phrase.
        http_version: e.g. ``1.1``.
        headers: lowercase names; repeated headers joined with ``, ``.
        accept_valid: ``Sec-WebSocket-Accept`` matches the key (None unless 101).
        subprotocol: the subprotocol the server selected (None when none).
    """

    status: int
    reason: str
    http_version: str
    headers: Mapping[str, str] = field(default_factory=dict)
    accept_valid: bool | None = None
    subprotocol: str | None = None


def parse_upgrade_head(head: bytes, key: str) -> UpgradeHead:
    """Parse a response head (status line and headers, up to the blank line).

    Raises:
        ValueError: the first line is not an HTTP status line.
    """
    status_line, *header_lines = head.removesuffix(b"\r\n\r\n").split(b"\r\n")
    m = _STATUS_LINE.match(status_line)
    if not m:
        raise ValueError(f"not an HTTP status line: {redact_excerpt(repr(status_line), 80)}")
    headers: dict[str, str] = {}
    for raw in header_lines:
        name, sep, value = raw.decode("latin-1").partition(":")
        if not sep:
            continue
        name, value = name.strip().lower(), value.strip()
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    status = int(m.group(2))
    return UpgradeHead(
        status=status,
        reason=(m.group(3) or b"").decode("latin-1"),
        http_version=m.group(1).decode(),
        headers=headers,
        accept_valid=(
            headers.get("sec-websocket-accept") == expected_accept(key) if status == 101 else None
        ),
        subprotocol=headers.get("sec-websocket-protocol"),
    )


def _close_frame(code: int = 1000) -> bytes:
    # A masked client close frame (RFC 6455 5.3: client frames must be masked).
    payload = struct.pack("!H", code)
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([0x88, 0x80 | len(payload)]) + mask + masked


# ---------------------------------------------------------------- I/O


def with_subprotocols(auth: ConnectAuth | None, subprotocols: Sequence[str]) -> ConnectAuth:
    """``auth`` offering ``subprotocols`` (``[protocol] subprotocols``) before its own: a
    server that requires one (``graphql-transport-ws``) refuses an upgrade without it."""
    creds = auth or ConnectAuth()
    extra = tuple(p for p in subprotocols if p not in creds.subprotocols)
    if not extra:
        return creds
    return replace(creds, subprotocols=(*extra, *creds.subprotocols))


async def observe_handshake(
    url: str,
    *,
    timeout_s: float = 5.0,
    auth: ConnectAuth | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> HandshakeObservation:
    """Send one WebSocket upgrade request over a raw socket and observe the answer.

    Args:
        url: ``ws://`` or ``wss://`` URL (``http(s)://`` accepted too).
        timeout_s: bound on the whole exchange (connect, request, response head, body).
        auth: credentials to send (headers, subprotocols, query).
        ssl_context: TLS context for ``wss`` (default: the system's).
    """
    creds = auth or ConnectAuth()
    start = time.perf_counter()
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s

    def left() -> float:
        return max(0.01, deadline - loop.time())

    def failed(kind: str, detail: str, **kw: Any) -> HandshakeObservation:
        return HandshakeObservation(
            url=url,
            latency_s=time.perf_counter() - start,
            error=kind,
            error_detail=redact(detail),
            **kw,
        )

    key = base64.b64encode(os.urandom(16)).decode()
    try:
        ep = endpoint_of(creds.url(url))
        request = upgrade_request(
            creds.url(url), key, subprotocols=creds.subprotocols, headers=creds.headers
        )
    except ValueError:
        return failed("other", f"not a WebSocket URL: {url!r}")
    ctx = (ssl_context or ssl.create_default_context()) if ep.secure else None
    writer: asyncio.StreamWriter | None = None
    try:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    ep.host,
                    ep.port,
                    ssl=ctx,
                    server_hostname=ep.host if ctx else None,
                    limit=_HEAD_LIMIT,
                ),
                left(),
            )
            assert writer is not None
            writer.write(request)
            await asyncio.wait_for(writer.drain(), left())
            raw_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), left())
        except asyncio.IncompleteReadError as exc:
            if exc.partial and not exc.partial.startswith(b"HTTP/"):
                return failed(
                    "protocol", f"not an HTTP answer: {redact_excerpt(repr(exc.partial), 80)}"
                )
            return failed(
                "closed",
                "connection closed before a complete response head "
                f"({len(exc.partial)} bytes received)",
            )
        except asyncio.LimitOverrunError:
            return failed("protocol", f"response head larger than {_HEAD_LIMIT} bytes")
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            return failed(error_kind(exc), exc_text(exc, timeout_s))
        latency = time.perf_counter() - start
        try:
            head = parse_upgrade_head(raw_head, key)
        except ValueError as exc:
            return failed("protocol", str(exc))
        body = b""
        if head.status == 101:
            with contextlib.suppress(OSError, RuntimeError):
                writer.write(_close_frame())  # polite close; the probe does not use the socket
        else:
            body = await _read_body(reader, head.headers, min(left(), 2.0))
        return HandshakeObservation(
            url=url,
            status=head.status,
            reason=head.reason,
            http_version=head.http_version,
            headers={k: redact(v) for k, v in head.headers.items()},
            body_excerpt=redact_excerpt(body.decode("utf-8", "replace"), _BODY_EXCERPT),
            accept_valid=head.accept_valid,
            subprotocol=redact(head.subprotocol) if head.subprotocol else None,
            latency_s=latency,
        )
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError, asyncio.CancelledError):
                await asyncio.wait_for(writer.wait_closed(), 1.0)


async def observe_handshakes(
    urls: Sequence[str],
    *,
    timeout_s: float = 5.0,
    auth: ConnectAuth | None = None,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[HandshakeObservation, ...]:
    """:func:`observe_handshake` for every URL, concurrently, in the order given."""
    return tuple(
        await asyncio.gather(
            *(
                observe_handshake(u, timeout_s=timeout_s, auth=auth, ssl_context=ssl_context)
                for u in urls
            )
        )
    )


async def _read_body(
    reader: asyncio.StreamReader, headers: Mapping[str, str], wait_s: float
) -> bytes:
    """Best-effort body excerpt of a refused upgrade (bounded in size and time)."""
    try:
        length = int(headers.get("content-length", "-1"))
    except ValueError:
        length = -1
    try:
        if length == 0:
            return b""
        if length > 0:
            return await asyncio.wait_for(reader.readexactly(min(length, 4096)), wait_s)
        return await asyncio.wait_for(reader.read(4096), wait_s)
    except asyncio.IncompleteReadError as exc:
        return exc.partial
    except (OSError, TimeoutError):
        return b""
