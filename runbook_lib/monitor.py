"""The monitoring window: health and WebSocket availability sampled on a schedule.

The scheduler combines three observers (a health GET, a raw upgrade, a ping round
trip); its clock and sleep are injected so tests run it without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .flow_runner import run_flow
from .flows import Flow
from .handshake import observe_handshake, with_subprotocols
from .http_checks import observe_get
from .identity import user_agent
from .observations import HandshakeObservation, HttpObservation, MonitorObservation, MonitorTick
from .settings import ProtocolSettings
from .tokens import ConnectAuth
from .ws_checks import observe_roundtrip

__all__ = ["observe_monitor"]


def _answered(obs: Any) -> bool:
    """The ping was answered: a round trip's pong, or every step of the ping flow."""
    return bool(obs.pong) if hasattr(obs, "pong") else bool(obs.completed)


async def _no_health() -> HttpObservation:
    return HttpObservation(url="", status=None, latency_s=0.0, error="not configured")


async def observe_monitor(
    health_url: str | None,
    ws_url: str,
    *,
    window_s: float,
    interval_s: float = 2.0,
    auth: ConnectAuth | None = None,
    protocol: ProtocolSettings | None = None,
    ping: bool = False,
    ping_flow: Flow | None = None,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 5.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> MonitorObservation:
    """Sample health and WebSocket availability every ``interval_s`` for ``window_s``.

    Each tick runs a health GET and a raw WebSocket handshake concurrently (plus a
    ping round trip when ``ping`` and a ``protocol`` are given, or the ``ping_flow``
    conversation: the ``load`` flow, as ``ws.roundtrip`` runs it). ``health_url`` None (the
    service has no health route) samples the WebSocket side only: the tick's health
    fields are None with the error ``not configured``.
    """
    own = client is None
    http = client or httpx.AsyncClient(
        timeout=timeout_s, trust_env=False, headers={"User-Agent": user_agent()}
    )

    async def tick(t: float) -> MonitorTick:
        jobs: list[Awaitable[Any]] = [
            observe_get(health_url, client=http, timeout_s=timeout_s)
            if health_url is not None
            else _no_health(),
            # [protocol] subprotocols are offered: a server may require one to upgrade.
            observe_handshake(
                ws_url,
                timeout_s=timeout_s,
                auth=with_subprotocols(auth, protocol.subprotocols if protocol else ()),
            ),
        ]
        if ping_flow is not None:
            jobs.append(
                run_flow(
                    ws_url,
                    ping_flow,
                    None,
                    protocol or ProtocolSettings(),
                    auth=auth,
                    open_timeout_s=timeout_s,
                    step_timeout_s=timeout_s,
                    linger_s=0.0,
                )
            )
        elif ping and protocol is not None:
            jobs.append(
                observe_roundtrip(
                    ws_url, protocol, auth=auth, timeout_s=timeout_s, open_timeout_s=timeout_s
                )
            )
        got = await asyncio.gather(*jobs)
        h: HttpObservation = got[0]
        hs: HandshakeObservation = got[1]
        return MonitorTick(
            t=t,
            health_status=h.status,
            health_latency_s=h.latency_s,
            health_error=h.error,
            ws_status=hs.status,
            ws_latency_s=hs.latency_s,
            ws_error=hs.error,
            ws_upgraded=hs.upgraded,
            ping_ok=_answered(got[2]) if len(got) > 2 else None,
        )

    # Samples start on schedule whatever each one takes (every sample is bounded by
    # timeout_s): a slow service shows as slow samples, not as fewer of them.
    tasks: list[asyncio.Task[MonitorTick]] = []
    t0 = clock()
    k = 0
    try:
        while True:
            tasks.append(asyncio.ensure_future(tick(clock() - t0)))
            k += 1
            if k * interval_s >= window_s:
                break
            wait = k * interval_s - (clock() - t0)
            if wait > 0:
                await sleep(wait)
        ticks = list(await asyncio.gather(*tasks))
    finally:
        for task in tasks:
            task.cancel()
        if own:
            await http.aclose()
    return MonitorObservation(
        health_url=health_url or "",
        ws_url=ws_url,
        window_s=window_s,
        interval_s=interval_s,
        ticks=tuple(ticks),
    )
