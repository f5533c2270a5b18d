"""Traffic router: a raw TCP proxy in front of real backends on loopback."""

from __future__ import annotations

import asyncio
import json
import random
import socket
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import httpx
import pytest
from asgi_server import served
from timing import T
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed, ConnectionClosedError, InvalidStatus

from runbook_lib.sandbox.auth_service import mint_token
from runbook_lib.sandbox.backend import CRITICAL_EVENTS, create_app
from runbook_lib.sandbox.router import Router, Upstream, strip_upgrade_headers

SECRET = "router-test-secret-0123456789-abcdefghijklmnop"
TIMEOUT = T(10.0)


@asynccontextmanager
async def backend(profile: str = "healthy", revision: str = "rev-a") -> AsyncIterator[int]:
    """Serve a sandbox backend app with uvicorn on a free loopback port, in this loop."""
    app = create_app(profile=profile, revision=revision, service="svc", jwt_secret=SECRET)
    async with served(app) as port:
        yield port


@asynccontextmanager
async def router_for(choose: Callable[[], Upstream | None]) -> AsyncIterator[Router]:
    router = Router(choose)
    await router.start()
    try:
        yield router
    finally:
        await router.stop()


def fixed(upstream: Upstream | None) -> Callable[[], Upstream | None]:
    return lambda: upstream


def token(user: str) -> str:
    return mint_token(SECRET, user)


async def test_split_honoured_over_100_connections() -> None:
    """A 50/50 choose() sends roughly half of 100 new connections to each revision."""
    async with backend(revision="rev-a") as port_a, backend(revision="rev-b") as port_b:
        rng = random.Random(1234)
        ups = [Upstream("127.0.0.1", port_a, "rev-a"), Upstream("127.0.0.1", port_b, "rev-b")]
        async with router_for(lambda: rng.choice(ups)) as router:
            seen: dict[str, int] = {"rev-a": 0, "rev-b": 0}
            # No keep-alive: every request is a new connection, hence a new routing decision.
            limits = httpx.Limits(max_keepalive_connections=0)
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{router.port}", timeout=TIMEOUT, limits=limits
            ) as client:
                for _ in range(100):
                    response = await client.get("/health")
                    assert response.status_code == 200
                    seen[response.json()["revision"]] += 1
            stats = router.stats
    assert 25 <= seen["rev-a"] <= 75
    assert seen["rev-a"] + seen["rev-b"] == 100
    assert stats == seen


async def test_websocket_through_router_full_protocol() -> None:
    """Handshake, subprotocol echo, ping/pong and the five events all pass through the router."""
    async with backend() as port:
        async with router_for(fixed(Upstream("127.0.0.1", port, "rev-a"))) as router:
            tok = token("alice")
            async with connect(
                f"ws://127.0.0.1:{router.port}/websocket",
                subprotocols=[f"jwt.{tok}"],
                open_timeout=TIMEOUT,
            ) as ws:
                assert ws.subprotocol == f"jwt.{tok}"
                welcome = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert welcome["user_id"] == "alice"
                await ws.send(json.dumps({"type": "ping"}))
                pong = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert pong["type"] == "pong"
                await ws.send(json.dumps({"type": "agent_execute", "data": {"message": "hi"}}))
                frames = [
                    json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT)) for _ in CRITICAL_EVENTS
                ]
            assert [f["type"] for f in frames] == list(CRITICAL_EVENTS)
            assert ws.close_code == 1000
            assert router.stats == {"rev-a": 1}


async def test_auth_close_code_1008_passes_through() -> None:
    """The backend's auth_failed frame and 1008 close reach the client unchanged."""
    async with backend() as port:
        async with router_for(fixed(Upstream("127.0.0.1", port, "rev-a"))) as router:
            async with connect(
                f"ws://127.0.0.1:{router.port}/websocket?token=bad", open_timeout=TIMEOUT
            ) as ws:
                frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
                assert frame["error"] == "auth_failed"
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1008


async def test_custom_upstream_close_code_passes_through() -> None:
    """An application close code (4001 + reason) from the upstream is preserved."""

    async def handler(conn: ServerConnection) -> None:
        await conn.recv()
        await conn.close(code=4001, reason="custom bye")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with router_for(fixed(Upstream("127.0.0.1", port, "echo"))) as router:
            async with connect(f"ws://127.0.0.1:{router.port}/", open_timeout=TIMEOUT) as ws:
                await ws.send("bye")
                with pytest.raises(ConnectionClosed):
                    await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 4001
            assert ws.close_reason == "custom bye"


async def test_strip_upgrade_turns_handshake_into_plain_get() -> None:
    """strip_upgrade: /websocket answers 404 (plain GET on a WS-only route), /ws/test 200."""
    async with backend(profile="healthy") as port:
        upstream = Upstream("127.0.0.1", port, "rev-strip", strip_upgrade=True)
        async with router_for(fixed(upstream)) as router:
            tok = token("alice")
            statuses = {}
            for path in ("/websocket", "/ws/test"):
                with pytest.raises(InvalidStatus) as refused:
                    async with connect(
                        f"ws://127.0.0.1:{router.port}{path}?token={tok}", open_timeout=TIMEOUT
                    ):
                        pass
                statuses[path] = refused.value.response.status_code
    assert statuses == {"/websocket": 404, "/ws/test": 200}


def test_strip_upgrade_headers_keeps_other_headers() -> None:
    """Only Upgrade and the upgrade token of Connection are removed."""
    head = (
        b"GET /websocket HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Upgrade\r\n"
        b"Upgrade: websocket\r\nSec-WebSocket-Key: abc\r\n\r\n"
    )
    assert strip_upgrade_headers(head) == (
        b"GET /websocket HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n"
        b"Sec-WebSocket-Key: abc\r\n\r\n"
    )


async def test_no_upstream_answers_503() -> None:
    """choose() returning None: 503 with "no ready instance" for HTTP and WS handshakes."""
    async with router_for(fixed(None)) as router:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(f"http://127.0.0.1:{router.port}/health")
        assert response.status_code == 503
        assert response.json()["error"] == "no ready instance"
        with pytest.raises(InvalidStatus) as refused:
            async with connect(f"ws://127.0.0.1:{router.port}/websocket", open_timeout=TIMEOUT):
                pass
        assert refused.value.response.status_code == 503
        assert router.rejected == 2


async def test_refused_upstream_answers_503() -> None:
    """An upstream that refuses the TCP connection yields 503, not a hang or a reset."""
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    dead_port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    async with router_for(fixed(Upstream("127.0.0.1", dead_port, "rev-dead"))) as router:
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            response = await client.get(f"http://127.0.0.1:{router.port}/health")
    assert response.status_code == 503
    assert response.json()["revision"] == "rev-dead"


async def test_malformed_head_answers_400() -> None:
    """A request head that is not HTTP/1.x gets 400 and the upstream is never chosen."""
    calls: list[int] = []

    def choose() -> Upstream | None:
        calls.append(1)
        return None

    async with router_for(choose) as router:
        reader, writer = await asyncio.open_connection("127.0.0.1", router.port)
        writer.write(b"HELLO THERE\r\nno colon here\r\n\r\n")
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), TIMEOUT)
        writer.close()
        await writer.wait_closed()
    assert reply.startswith(b"HTTP/1.1 400 ")
    assert calls == []


async def test_dropped_upstream_drops_client_1006(monkeypatch: pytest.MonkeyPatch) -> None:
    """idle-close behind the router: the client sees 1006, no close frame."""
    monkeypatch.setenv("SANDBOX_IDLE_CLOSE_S", "0.5")
    async with backend(profile="idle-close") as port:
        async with router_for(fixed(Upstream("127.0.0.1", port, "rev-idle"))) as router:
            ws = await connect(
                f"ws://127.0.0.1:{router.port}/websocket?token={token('alice')}",
                open_timeout=TIMEOUT,
            )
            await asyncio.wait_for(ws.recv(), TIMEOUT)  # welcome
            with pytest.raises(ConnectionClosedError) as closed:
                await asyncio.wait_for(ws.recv(), TIMEOUT)
            assert ws.close_code == 1006
            assert closed.value.rcvd is None


async def test_many_concurrent_websockets() -> None:
    """300 concurrent sockets held open through the router all echo correctly."""

    async def echo(conn: ServerConnection) -> None:
        async for message in conn:
            await conn.send(message)

    async def one(i: int, port: int, gate: asyncio.Event) -> bool:
        async with connect(f"ws://127.0.0.1:{port}/", open_timeout=30) as ws:
            await gate.wait()
            await ws.send(f"m{i}")
            return await asyncio.wait_for(ws.recv(), 30) == f"m{i}"

    async with serve(echo, "127.0.0.1", 0, backlog=1024) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        async with router_for(fixed(Upstream("127.0.0.1", port, "echo"))) as router:
            gate = asyncio.Event()
            tasks = [asyncio.create_task(one(i, router.port, gate)) for i in range(300)]
            for _ in range(300):  # wait (bounded) until every socket is open at once
                if router.active >= 300:
                    break
                await asyncio.sleep(0.05)
            peak = router.active
            gate.set()
            results = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert peak == 300
    assert all(results)


async def test_stop_drops_open_connections() -> None:
    """Router.stop() closes proxied sockets instead of leaving them hanging."""

    async def hold(conn: ServerConnection) -> None:
        await conn.wait_closed()

    async with serve(hold, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        router = Router(fixed(Upstream("127.0.0.1", port, "hold")))
        router_port = await router.start()
        ws = await connect(f"ws://127.0.0.1:{router_port}/", open_timeout=TIMEOUT)
        await router.stop()
        with pytest.raises(ConnectionClosed):
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        await ws.close()


async def test_tag_listeners_give_each_tag_its_own_url() -> None:
    """open() returns a URL at once (usable before the router accepts); close() refuses it."""
    from runbook_lib.sandbox.router import TagListeners

    tags = TagListeners()
    async with backend(revision="rev-a") as port_a, backend(revision="rev-b") as port_b:
        target = {"green": Upstream("127.0.0.1", port_a, "rev-a")}
        green = tags.open("svc#green", lambda: target["green"])
        blue = tags.open("svc#blue", fixed(Upstream("127.0.0.1", port_b, "rev-b")))
        assert tags.open("svc#green", fixed(None)) == green  # idempotent: same URL
        assert green != blue and green.startswith("http://127.0.0.1:")
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            assert (await client.get(f"{green}/health")).json()["revision"] == "rev-a"
            assert (await client.get(f"{blue}/health")).json()["revision"] == "rev-b"
        target["green"] = Upstream("127.0.0.1", port_b, "rev-b")  # the tag moved: same URL
        async with httpx.AsyncClient(timeout=TIMEOUT) as client:
            assert (await client.get(f"{green}/health")).json()["revision"] == "rev-b"
        tags.close("svc#green")
        await tags.aclose()
        assert tags.urls() == {}
        for url in (green, blue):
            with pytest.raises(httpx.ConnectError):
                async with httpx.AsyncClient(timeout=TIMEOUT) as client:
                    await client.get(f"{url}/health")
