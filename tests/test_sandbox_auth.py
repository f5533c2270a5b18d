"""Sandbox auth service served by uvicorn on loopback, and its tokens against a backend."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator

import httpx
import jwt
import pytest
from asgi_server import served
from timing import T
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from runbook_lib.sandbox.auth_service import create_auth_app, decode_token, mint_token
from runbook_lib.sandbox.backend import create_app

SECRET = "auth-test-secret-0123456789-abcdefghijklmnopq"
TIMEOUT = T(10.0)


@pytest.fixture
async def auth() -> AsyncIterator[httpx.AsyncClient]:
    async with served(create_auth_app(jwt_secret=SECRET, issuer="test-issuer")) as port:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=TIMEOUT) as c:
            yield c


async def test_health_and_config(auth: httpx.AsyncClient) -> None:
    """/health is ok and /auth/config describes issuer, algorithms and WS auth modes."""
    health = await auth.get("/health")
    assert health.status_code == 200
    assert health.json() == {"status": "ok", "service": "auth"}
    config = (await auth.get("/auth/config")).json()
    assert config["issuer"] == "test-issuer"
    assert config["algorithms"] == ["HS256"]
    assert config["ws_auth_modes"] == ["bearer", "subprotocol", "query"]
    assert config["subprotocol_format"] == "jwt.{token}"
    assert config["token_ttl_s"] > 0
    assert config["dev_token_endpoint"] == "/auth/dev-token"


async def test_dev_token_is_a_valid_jwt(auth: httpx.AsyncClient) -> None:
    """POST /auth/dev-token mints an HS256 JWT with sub, iss and the requested TTL."""
    response = await auth.post("/auth/dev-token", json={"user_id": "alice", "ttl_s": 120})
    assert response.status_code == 200
    body = response.json()
    claims = decode_token(SECRET, body["token"])
    assert claims["sub"] == "alice"
    assert claims["iss"] == "test-issuer"
    assert 100 <= claims["exp"] - time.time() <= 125
    assert body["expires_at"].endswith("Z")


async def test_dev_token_expired_flag(auth: httpx.AsyncClient) -> None:
    """expired=true yields a token that verification rejects as expired."""
    body = (await auth.post("/auth/dev-token", json={"user_id": "bob", "expired": True})).json()
    with pytest.raises(jwt.ExpiredSignatureError):
        decode_token(SECRET, body["token"])


async def test_dev_token_validates_body(auth: httpx.AsyncClient) -> None:
    """An empty user id or a non-positive TTL is a 422, not a token."""
    assert (await auth.post("/auth/dev-token", json={"user_id": ""})).status_code == 422
    assert (
        await auth.post("/auth/dev-token", json={"user_id": "x", "ttl_s": 0})
    ).status_code == 422


def test_mint_token_claims_and_signature() -> None:
    """mint_token signs with the secret; extra claims are included; other secrets fail."""
    token = mint_token(SECRET, "carol", ttl_s=60, role="admin")
    claims = decode_token(SECRET, token)
    assert claims["sub"] == "carol"
    assert claims["role"] == "admin"
    with pytest.raises(jwt.InvalidSignatureError):
        decode_token("some-other-secret-0123456789-abcdefghijkl", token)


def test_create_auth_app_requires_secret() -> None:
    """An empty secret is a configuration error, raised at construction."""
    with pytest.raises(ValueError):
        create_auth_app(jwt_secret="")


async def test_dev_tokens_work_against_backend(auth: httpx.AsyncClient) -> None:
    """A dev token opens a backend WebSocket; an expired dev token is closed with 1008."""
    good = (await auth.post("/auth/dev-token", json={"user_id": "dana"})).json()["token"]
    stale = (await auth.post("/auth/dev-token", json={"user_id": "dana", "expired": True})).json()[
        "token"
    ]
    app = create_app(profile="healthy", revision="rev-1", service="svc", jwt_secret=SECRET)
    async with served(app) as port:
        headers = {"Authorization": f"Bearer {good}"}
        async with connect(
            f"ws://127.0.0.1:{port}/websocket", additional_headers=headers, open_timeout=TIMEOUT
        ) as ws:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert welcome["user_id"] == "dana"
        async with connect(
            f"ws://127.0.0.1:{port}/websocket", subprotocols=[f"jwt.{stale}"], open_timeout=TIMEOUT
        ) as ws:
            frame = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
            assert frame == {"type": "error", "error": "auth_failed", "reason": "token expired"}
            with pytest.raises(ConnectionClosed):
                await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert ws.close_code == 1008
