"""The monitoring window: health and WebSocket availability sampled on a schedule.

The scheduler combines three observers (a health GET, a raw upgrade, the ping flow);
its clock and sleep are injected so tests run it without waiting.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from .checks.causes import flow_drop
from .flow_runner import run_flow
from .flows import Flow, FlowObservation
from .handshake import observe_handshake, with_subprotocols
from .http_checks import observe_get
from .identity import user_agent
from .observations import HandshakeObservation, HttpObservation, MonitorObservation, MonitorTick
from .protocol import ProtocolSettings
from .tokens import ConnectAuth

__all__ = ["observe_monitor"]


def _ping_error(obs: FlowObservation) -> str | None:
    """Why the ping flow failed, in its own words (an error frame quoted), else None."""
    if obs.completed or not obs.stop_detail:
        return None
    if (drop := flow_drop(obs)) is not None:
        # The tick keeps words only: diagnose the drop by its timing while it is known.
        return f"{obs.stop_detail} ({drop[1]})"
    return str(obs.stop_detail)


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
    ping_flow: Flow | None = None,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 5.0,
    reply_timeout_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[Any]] = asyncio.sleep,
) -> MonitorObservation:
    """Sample health and WebSocket availability every ``interval_s`` for ``window_s``.

    Each tick runs a health GET and a raw WebSocket handshake concurrently (plus the
    ``ping_flow`` conversation when given: the ``load`` flow, as ``ws.roundtrip`` runs it). ``health_url`` None (the
    service has no health route) samples the WebSocket side only: the tick's health
    fields are None with the error ``not configured``. ``reply_timeout_s`` bounds each
    expect step of the ping flow that has no ``timeout_s`` (None: the flow's one default).
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
                    # The ping's reply deadline is the flow's, as in ws.roundtrip.
                    step_timeout_s=reply_timeout_s,
                    linger_s=0.0,
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
            ping_ok=got[2].completed if len(got) > 2 else None,
            ping_error=_ping_error(got[2]) if len(got) > 2 else None,
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
