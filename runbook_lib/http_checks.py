"""HTTP observers: one GET, latency samples, poll-until-ready, a verbose capture.

Observers do I/O and return frozen observations; they never raise for a target
failure (refused, timeout, TLS, protocol): the failure is the ``error`` field.
The HTTP client is injected (``httpx.AsyncClient(transport=...)`` in tests);
when none is passed one is created for the call with ``trust_env=False`` so a
stray proxy variable cannot reroute a runbook probe.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx

from .identity import user_agent
from .observations import HttpObservation, ReadinessTimeline, TimelinePoint
from .redaction import REDACTED, redact, redact_excerpt, redact_obj

__all__ = [
    "DEFAULT_HEADERS",
    "PLAIN_HTTP_HINT",
    "VerboseCapture",
    "capture_verbose",
    "error_kind",
    "exc_text",
    "observe_get",
    "poll_until_ready",
    "sample_latency",
]

log = logging.getLogger(__name__)

# Response headers worth keeping in the record: they explain routing and caching.
DEFAULT_HEADERS = (
    "content-type",
    "server",
    "via",
    "x-cloud-trace-context",
    "x-served-by",
    "x-revision",
    "retry-after",
    "upgrade",
    "connection",
)
_SENSITIVE = (
    "authorization",
    "cookie",
    "set-cookie",
    "proxy-authorization",
    "sec-websocket-protocol",
)
_TEXT_EXCERPT = 500


# What TLS spoken to a plain-HTTP port looks like (OpenSSL's wording).
_PLAIN_HTTP_SIGNS = ("WRONG_VERSION_NUMBER", "wrong version number", "record layer failure")
PLAIN_HTTP_HINT = "the server speaks plain HTTP here: use http:// / ws://"


def exc_text(exc: BaseException, timeout_s: float | None = None) -> str:
    """``Type: message``; a timeout raised without a message says what it means instead,
    and TLS spoken to a plain-HTTP server says to use ``http://``/``ws://``."""
    text = str(exc).strip()
    if _speaks_plain_http(exc):
        return f"{type(exc).__name__}: {PLAIN_HTTP_HINT} ({text or 'TLS handshake failed'})"
    if text:
        return f"{type(exc).__name__}: {text}"
    if error_kind(exc) == "timeout":
        within = f" within {timeout_s:g}s" if timeout_s else " in time"
        return f"{type(exc).__name__}: no answer{within}"
    return type(exc).__name__


def _speaks_plain_http(exc: BaseException) -> bool:
    seen: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in seen:
        seen.append(cur)
        if any(sign in str(cur) for sign in _PLAIN_HTTP_SIGNS):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def error_kind(exc: BaseException) -> str:
    """Classify a connection failure: refused, timeout, tls, dns, closed, protocol or other."""
    if isinstance(exc, (httpx.TimeoutException, asyncio.TimeoutError, TimeoutError)):
        return "timeout"
    chain: list[BaseException] = []
    cur: BaseException | None = exc
    while cur is not None and cur not in chain:
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, ssl.SSLError | ssl.CertificateError):
            return "tls"
        if isinstance(e, ConnectionRefusedError):
            return "refused"
        if isinstance(e, socket.gaierror):
            return "dns"
        if isinstance(e, (ConnectionResetError, BrokenPipeError, asyncio.IncompleteReadError)):
            return "closed"
        if isinstance(e, (httpx.TimeoutException, TimeoutError)):
            return "timeout"
    if isinstance(exc, httpx.RemoteProtocolError):
        text = str(exc).lower()
        return "closed" if "disconnected" in text or "closed" in text else "protocol"
    if isinstance(exc, (httpx.ProtocolError, httpx.DecodingError)):
        return "protocol"
    if isinstance(exc, httpx.ReadError):
        return "closed"
    if isinstance(exc, httpx.ConnectError):
        text = str(exc).lower()
        if "refused" in text:
            return "refused"
        if "ssl" in text or "tls" in text or "certificate" in text:
            return "tls"
        return "connect"
    return "other"


@asynccontextmanager
async def _client(client: httpx.AsyncClient | None, timeout_s: float):  # type: ignore[no-untyped-def]
    if client is not None:
        yield client
        return
    async with httpx.AsyncClient(
        timeout=timeout_s, trust_env=False, headers={"User-Agent": user_agent()}
    ) as own:
        yield own


def _pick(headers: httpx.Headers, names: Iterable[str]) -> dict[str, str]:
    out = {}
    for name in names:
        if name in headers:
            value = headers[name]
            out[name] = REDACTED if name in _SENSITIVE else value
    return out


async def observe_get(
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 10.0,
    headers: Mapping[str, str] | None = None,
    header_names: Iterable[str] = DEFAULT_HEADERS,
) -> HttpObservation:
    """GET ``url`` once and observe the response; never raises for target failures.

    Args:
        url: absolute URL.
        client: injected client (created for the call when None).
        timeout_s: bound on the whole request.
        headers: extra request headers.
        header_names: response headers to keep.
    """
    start = time.perf_counter()
    try:
        async with _client(client, timeout_s) as http:
            resp = await asyncio.wait_for(
                http.get(url, headers=dict(headers or {}), timeout=timeout_s), timeout_s + 1.0
            )
    except (httpx.HTTPError, httpx.InvalidURL, OSError, TimeoutError, ssl.SSLError) as exc:
        latency = time.perf_counter() - start
        return HttpObservation(
            url=url,
            latency_s=latency,
            error=error_kind(exc),
            error_detail=redact(exc_text(exc, timeout_s)),
        )
    latency = time.perf_counter() - start
    body: Any = None
    text = ""
    try:
        body = resp.json()
    except ValueError:
        text = redact_excerpt(resp.text, _TEXT_EXCERPT)
    return HttpObservation(
        url=url,
        status=resp.status_code,
        latency_s=latency,
        json=redact_obj(body) if body is not None else None,
        text=text,
        headers=_pick(resp.headers, header_names),
        http_version=resp.http_version,
    )


async def sample_latency(
    url: str,
    n: int = 5,
    *,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 10.0,
    headers: Mapping[str, str] | None = None,
) -> tuple[HttpObservation, ...]:
    """``n`` sequential GETs of ``url`` (sequential so one sample does not slow another)."""
    async with _client(client, timeout_s) as http:
        out = [
            await observe_get(url, client=http, timeout_s=timeout_s, headers=headers)
            for _ in range(max(1, n))
        ]
    return tuple(out)


async def poll_until_ready(
    url: str,
    *,
    deadline_s: float,
    interval_s: float = 1.0,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> ReadinessTimeline:
    """Poll ``url`` until it answers 200 or ``deadline_s`` passes, recording every answer.

    Args:
        url: absolute URL.
        deadline_s: give up after this many seconds.
        interval_s: pause between polls (settings ``thresholds.poll_interval_s``).
        client: injected client.
        timeout_s: bound on each poll (clipped to the time left).
        clock: monotonic clock (injected in tests).
        sleep: sleep function (injected in tests to make waits instant).
    """
    t0 = clock()
    points: list[TimelinePoint] = []
    ready_at: float | None = None
    async with _client(client, timeout_s) as http:
        while True:
            left = deadline_s - (clock() - t0)
            t = clock() - t0
            obs = await observe_get(url, client=http, timeout_s=max(0.1, min(timeout_s, left)))
            points.append(
                TimelinePoint(t=t, status=obs.status, error=obs.error, latency_s=obs.latency_s)
            )
            if obs.status == 200:
                ready_at = t + obs.latency_s
                break
            left = deadline_s - (clock() - t0)
            if left <= 0:
                break
            await sleep(min(interval_s, left))
    return ReadinessTimeline(
        url=url,
        points=tuple(points),
        ready_at=ready_at,
        deadline_s=deadline_s,
        interval_s=interval_s,
    )


@dataclass(frozen=True, slots=True)
class VerboseCapture:
    """What ``curl -v`` would show, redacted: request and response headers, body excerpt."""

    url: str
    method: str
    request_headers: tuple[tuple[str, str], ...]
    status: int | None = None
    http_version: str = ""
    response_headers: tuple[tuple[str, str], ...] = ()
    body_excerpt: str = ""
    latency_s: float = 0.0
    error: str | None = None
    error_detail: str = ""

    def lines(self) -> list[str]:
        """The capture as ``curl -v``-style lines."""
        out = [f"> {self.method} {redact(self.url)}"]
        out += [f"> {k}: {v}" for k, v in self.request_headers]
        if self.status is None:
            out.append(f"* failed: {self.error} {self.error_detail}")
            return out
        out.append(f"< {self.http_version} {self.status}")
        out += [f"< {k}: {v}" for k, v in self.response_headers]
        if self.body_excerpt:
            out.append(self.body_excerpt)
        return out


def _redact_headers(items: Iterable[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    return tuple((k, REDACTED if k.lower() in _SENSITIVE else redact(v)) for k, v in items)


async def capture_verbose(
    url: str,
    *,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 10.0,
    headers: Mapping[str, str] | None = None,
    method: str = "GET",
) -> VerboseCapture:
    """One request with every request and response header kept (credentials redacted)."""
    start = time.perf_counter()
    async with _client(client, timeout_s) as http:
        request = http.build_request(method, url, headers=dict(headers or {}), timeout=timeout_s)
        req_headers = _redact_headers(request.headers.items())
        try:
            resp = await asyncio.wait_for(http.send(request), timeout_s + 1.0)
        except (httpx.HTTPError, httpx.InvalidURL, OSError, TimeoutError, ssl.SSLError) as exc:
            return VerboseCapture(
                url=url,
                method=method,
                request_headers=req_headers,
                latency_s=time.perf_counter() - start,
                error=error_kind(exc),
                error_detail=redact(exc_text(exc, timeout_s)),
            )
    return VerboseCapture(
        url=url,
        method=method,
        request_headers=req_headers,
        status=resp.status_code,
        http_version=resp.http_version,
        response_headers=_redact_headers(resp.headers.items()),
        body_excerpt=redact_excerpt(resp.text, _TEXT_EXCERPT),
        latency_s=time.perf_counter() - start,
    )
