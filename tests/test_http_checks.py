"""HTTP observers against a real uvicorn app and misbehaving raw servers."""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from timing import T

from runbook_lib.http_checks import (
    capture_verbose,
    observe_get,
    poll_until_ready,
    sample_latency,
)


def make_app() -> Starlette:
    state = {"flaky": 0}

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"}, headers={"x-revision": "rev-1"})

    async def text(request: Request) -> PlainTextResponse:
        return PlainTextResponse("plain body")

    async def boom(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no ready instance", status_code=503)

    async def flaky(request: Request) -> JSONResponse:
        state["flaky"] += 1
        if state["flaky"] <= 2:
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse({"status": "ok"})

    return Starlette(
        routes=[
            Route("/health", health),
            Route("/text", text),
            Route("/boom", boom),
            Route("/flaky", flaky),
        ]
    )


@pytest.fixture
async def base(uvicorn_app) -> str:
    return await uvicorn_app(make_app())


async def test_get_200_json_with_selected_headers(base: str) -> None:
    obs = await observe_get(f"{base}/health", timeout_s=T(5))
    assert obs.ok and obs.status == 200 and obs.json == {"status": "ok"}
    assert obs.headers["x-revision"] == "rev-1" and obs.error is None and obs.latency_s > 0


async def test_get_text_and_error_status_are_observations(base: str) -> None:
    t = await observe_get(f"{base}/text")
    assert t.json is None and t.text == "plain body"
    b = await observe_get(f"{base}/boom")
    assert b.status == 503 and not b.ok and b.error is None


async def test_refused_is_classified(closed_port: int) -> None:
    obs = await observe_get(f"http://127.0.0.1:{closed_port}/health", timeout_s=2)
    assert obs.status is None and obs.error == "refused"


async def test_silent_server_times_out_within_bound(raw_server) -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(30)

    port = await raw_server(silent)
    start = time.perf_counter()
    obs = await observe_get(f"http://127.0.0.1:{port}/", timeout_s=0.5)
    assert obs.error == "timeout" and time.perf_counter() - start < T(5)


async def test_garbage_answer_is_protocol_error(raw_server) -> None:
    async def garbage(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"SSH-2.0-OpenSSH\r\n\r\nnonsense")
        await writer.drain()

    port = await raw_server(garbage)
    obs = await observe_get(f"http://127.0.0.1:{port}/", timeout_s=T(2))
    assert obs.status is None and obs.error in ("protocol", "closed")


async def test_https_to_plain_port_is_tls_error(raw_server) -> None:
    async def plain(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()

    port = await raw_server(plain)
    obs = await observe_get(f"https://127.0.0.1:{port}/", timeout_s=T(2))
    assert obs.error == "tls"


async def test_latency_samples(base: str) -> None:
    samples = await sample_latency(f"{base}/health", 3, timeout_s=T(5))
    assert len(samples) == 3 and all(s.ok for s in samples)


async def test_poll_until_ready_records_timeline(base: str) -> None:
    tl = await poll_until_ready(f"{base}/flaky", deadline_s=T(20), interval_s=0.05)
    assert tl.ready and [p.status for p in tl.points] == [503, 503, 200]
    assert tl.ready_at is not None and tl.ready_at < T(20)


async def test_poll_gives_up_at_deadline_with_fake_clock(closed_port: int) -> None:
    now = [0.0]
    sleeps: list[float] = []

    async def fake_sleep(s: float) -> None:
        sleeps.append(s)
        now[0] += s

    tl = await poll_until_ready(
        f"http://127.0.0.1:{closed_port}/",
        deadline_s=5,
        interval_s=1,
        clock=lambda: now[0],
        sleep=fake_sleep,
        timeout_s=1,
    )
    assert not tl.ready and len(tl.points) == 6 and sum(sleeps) == pytest.approx(5)
    assert {p.error for p in tl.points} == {"refused"}


async def test_verbose_capture_redacts_authorization() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, headers={"set-cookie": "sid=abcdef123"}, text="ok")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        cap = await capture_verbose(
            "http://svc/health", client=client, headers={"Authorization": "Bearer sekrit-token-1"}
        )
    text = "\n".join(cap.lines())
    assert "sekrit-token-1" not in text and "abcdef123" not in text
    assert cap.status == 200 and "< HTTP/1.1 200" in text and "authorization" in text.lower()
