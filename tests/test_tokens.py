"""Tokens: minting, the dev token endpoint, connect layouts, negative cases."""

from __future__ import annotations

import json
import time
from dataclasses import replace

import httpx
import jwt
import pytest

from runbook_lib.redaction import registered_secrets
from runbook_lib.settings import AuthSettings
from runbook_lib.tokens import (
    ConnectAuth,
    connect_auth,
    mint_jwt,
    negative_cases,
    obtain_token,
)

SECRET = "s3cret-for-tests-only-0123456789abcdef"


def test_minted_jwt_has_claims_and_is_registered() -> None:
    tok = mint_jwt(SECRET, "alice", ttl_s=60, claims={"aud": "x"}, now=1000)
    claims = jwt.decode(
        tok, SECRET, algorithms=["HS256"], audience="x", options={"verify_exp": False}
    )
    assert claims == {"sub": "alice", "iat": 1000, "exp": 1060, "aud": "x"}
    assert tok in registered_secrets()


def test_expired_jwt_is_rejected_by_pyjwt() -> None:
    tok = mint_jwt(SECRET, "alice", expired=True)
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(tok, SECRET, algorithms=["HS256"])


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        ("bearer", ConnectAuth(headers=(("Authorization", "Bearer TOKEN123"),))),
        ("subprotocol", ConnectAuth(subprotocols=("jwt.TOKEN123",))),
        ("query", ConnectAuth(query=(("token", "TOKEN123"),))),
        ("none", ConnectAuth()),
    ],
)
def test_connect_auth_layout_per_mode(mode: str, expected: ConnectAuth) -> None:
    assert connect_auth(AuthSettings(mode=mode), "TOKEN123") == expected


def test_connect_auth_url_appends_query_and_repr_hides_token() -> None:
    ca = ConnectAuth(query=(("token", "eyJabcdefgh.eyJabcdefgh.abcdefghij"),))
    assert ca.url("ws://h/ws?x=1") == "ws://h/ws?x=1&token=eyJabcdefgh.eyJabcdefgh.abcdefghij"
    assert "eyJabcdefgh" not in repr(ca)


async def test_obtain_token_prefers_secret_then_endpoint_then_env() -> None:
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        calls.append(body)
        return httpx.Response(
            200, json={"token": f"endpoint-token-{body['user_id']}", "expires_at": "later"}
        )

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        a = AuthSettings(
            mode="bearer", jwt_secret=SECRET, token_endpoint="http://x/t", token="env-token-value"
        )
        assert (await obtain_token(a, "u1", client=client)).source == "jwt_secret"
        b = replace(a, jwt_secret="")
        got = await obtain_token(b, "u1", client=client)
        assert (got.source, got.token, got.expires_at) == ("endpoint", "endpoint-token-u1", "later")
        assert "endpoint-token-u1" in registered_secrets()
        exp = await obtain_token(b, "u2", client=client, expired=True)
        assert exp.ok and calls[-1] == {"user_id": "u2", "expired": True}
        c = replace(b, token_endpoint="")
        assert (await obtain_token(c, "u1")).source == "env"
        assert not (await obtain_token(c, "u1", expired=True)).ok
        assert "no token source" in (await obtain_token(AuthSettings(mode="bearer"))).error


async def test_token_endpoint_failure_is_data() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(500, text="boom")

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        got = await obtain_token(
            AuthSettings(mode="query", token_endpoint="http://x/t"), "u", client=client
        )
    assert not got.ok and "HTTP 500" in got.error


async def test_token_endpoint_unreachable_is_data(closed_port: int) -> None:
    got = await obtain_token(
        AuthSettings(mode="query", token_endpoint=f"http://127.0.0.1:{closed_port}/t"),
        "u",
        timeout_s=2,
    )
    assert not got.ok and "unreachable" in got.error


async def test_negative_cases_with_secret_are_all_produced() -> None:
    cases = {
        c.name: c
        for c in await negative_cases(AuthSettings(mode="query", jwt_secret=SECRET), user_id="u")
    }
    assert all(c.produced for c in cases.values())
    assert cases["missing"].auth == ConnectAuth()
    forged = dict(cases["wrong_signature"].auth.query)["token"]
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(forged, SECRET, algorithms=["HS256"])
    expired = dict(cases["expired"].auth.query)["token"]
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(expired, SECRET, algorithms=["HS256"])


async def test_negative_cases_with_env_token_report_what_cannot_be_produced() -> None:
    opaque = AuthSettings(mode="bearer", token="opaque-not-a-jwt")
    cases = {c.name: c for c in await negative_cases(opaque)}
    assert cases["missing"].produced and cases["malformed"].produced
    assert not cases["wrong_signature"].produced and "not a JWT" in cases["wrong_signature"].reason
    assert not cases["expired"].produced
    env_jwt = AuthSettings(
        mode="bearer",
        token=mint_jwt("other-secret-0123456789abcdef-0123456789", "u", now=time.time()),
    )
    cases = {c.name: c for c in await negative_cases(env_jwt)}
    assert cases["wrong_signature"].produced  # a real JWT can be re-signed


async def test_negative_cases_mode_none_produces_nothing() -> None:
    assert not any(c.produced for c in await negative_cases(AuthSettings()))
