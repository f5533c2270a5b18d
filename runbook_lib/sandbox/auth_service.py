"""Sandbox auth service: the rehearsal stand-in for the real auth service.

It serves what the runbook's phase 5 reads (``/health``, ``/auth/config``) and a
dev-only token endpoint, which exists only because the sandbox is a rehearsal
target: it mints HS256 JWTs with the same secret the sandbox backends verify.
"""

from __future__ import annotations

import time
from typing import Any

import jwt
from fastapi import FastAPI
from pydantic import BaseModel, Field

__all__ = [
    "ALGORITHM",
    "DEFAULT_TOKEN_TTL_S",
    "DevTokenRequest",
    "create_auth_app",
    "decode_token",
    "mint_token",
]

ALGORITHM = "HS256"
DEFAULT_TOKEN_TTL_S = 300


def mint_token(secret: str, user_id: str, ttl_s: int = DEFAULT_TOKEN_TTL_S, **claims: Any) -> str:
    """Mint an HS256 JWT for ``user_id`` (``sub``) valid ``ttl_s`` seconds from now.

    A negative ``ttl_s`` yields an already expired token. Extra ``claims`` are
    merged last, so they may override ``iat``/``exp``.
    """
    now = int(time.time())
    payload: dict[str, Any] = {"sub": user_id, "iat": now, "exp": now + int(ttl_s)}
    payload.update(claims)
    return jwt.encode(payload, secret, algorithm=ALGORITHM)


def decode_token(secret: str, token: str) -> dict[str, Any]:
    """Verify ``token`` (signature, ``exp``, ``sub`` present) and return its claims.

    Raises:
        jwt.InvalidTokenError: malformed, wrongly signed, expired or missing ``sub``.
    """
    return jwt.decode(
        token,
        secret,
        algorithms=[ALGORITHM],
        options={"require": ["exp", "sub"], "verify_aud": False},
    )


class DevTokenRequest(BaseModel):
    """Body of ``POST /auth/dev-token``."""

    user_id: str = Field(min_length=1, max_length=200)
    ttl_s: int | None = Field(default=None, ge=1, le=86_400)
    expired: bool = False


def create_auth_app(*, jwt_secret: str, issuer: str = "sandbox-auth") -> FastAPI:
    """Build the sandbox auth service app.

    Args:
        jwt_secret: HS256 secret shared with the sandbox backends.
        issuer: ``iss`` claim of minted tokens and the issuer advertised by ``/auth/config``.
    """
    if not jwt_secret:
        raise ValueError("jwt_secret must not be empty")
    app = FastAPI(title="sandbox auth service", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok", "service": "auth"}

    @app.get("/auth/config")
    async def auth_config() -> dict[str, Any]:
        return {
            "issuer": issuer,
            "algorithms": [ALGORITHM],
            "ws_auth_modes": ["bearer", "subprotocol", "query"],
            "subprotocol_format": "jwt.{token}",
            "query_param": "token",
            "token_ttl_s": DEFAULT_TOKEN_TTL_S,
            "dev_token_endpoint": "/auth/dev-token",
            "environment": "sandbox",
        }

    @app.post("/auth/dev-token")
    async def dev_token(body: DevTokenRequest) -> dict[str, Any]:
        ttl = body.ttl_s or DEFAULT_TOKEN_TTL_S
        now = int(time.time())
        if body.expired:
            # Expired a minute ago, so clock skew cannot make it valid again.
            iat, exp = now - ttl - 60, now - 60
        else:
            iat, exp = now, now + ttl
        token = mint_token(jwt_secret, body.user_id, iss=issuer, iat=iat, exp=exp)
        return {
            "token": token,
            "expires_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(exp)),
        }

    return app
