"""Authentication material for WebSocket connects, and the invalid tokens to probe with.

Where a token comes from, in order of preference (per :class:`AuthSettings`):

1. ``jwt_secret`` (from ``jwt_secret_env``): mint an HS256 JWT per test user
   (``sub`` = user id, ``iat``, ``exp`` = now + ``ttl_s``, plus ``jwt_claims``);
2. ``token_endpoint``: POST ``{"user_id": ...}`` to a dev-only issuer that answers
   ``{"token": ..., "expires_at": ...}`` (it also honours ``"expired": true``);
3. ``tokens`` (from ``token_envs``): one ready token per simulated user;
4. ``token`` (from ``token_env``): one ready token shared by every user (so, to the
   server, every simulated user is the same user).

Every token obtained or minted is registered for redaction before it is returned.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import httpx
import jwt

from .identity import user_agent
from .redaction import redact, redact_excerpt, register_secret
from .settings import AuthSettings

__all__ = [
    "NEGATIVE_CASES",
    "ConnectAuth",
    "NegativeCase",
    "TokenResult",
    "connect_auth",
    "mint_jwt",
    "negative_cases",
    "obtain_token",
]

log = logging.getLogger(__name__)

NEGATIVE_CASES = ("missing", "malformed", "wrong_signature", "expired")


@dataclass(frozen=True, slots=True)
class TokenResult:
    """A token for one user, or why none could be obtained.

    Attributes:
        token: the token ('' when none).
        source: ``jwt_secret``, ``endpoint``, ``env`` or ``none``.
        user_id: the user the token is for.
        expires_at: expiry as the issuer reported it (ISO text or epoch), if known.
        error: why no token could be obtained ('' on success).
    """

    token: str = field(default="", repr=False)
    source: str = "none"
    user_id: str = ""
    expires_at: Any = None
    error: str = ""

    @property
    def ok(self) -> bool:
        """True when a token was obtained."""
        return bool(self.token) and not self.error


@dataclass(frozen=True, slots=True)
class ConnectAuth:
    """Credentials laid out for a WebSocket connect (websockets or picows).

    Attributes:
        headers: extra request headers, e.g. ``(("Authorization", "Bearer ..."),)``.
        subprotocols: subprotocols to offer, e.g. ``("jwt.<token>",)``.
        query: query parameters to append to the URL.
        token: the value of ``{token}`` in a flow's frames (``mode = "message"``).
        in_message: the credential travels in a frame (``mode = "message"``): only the
            flow completing proves it accepted.
    """

    headers: tuple[tuple[str, str], ...] = ()
    subprotocols: tuple[str, ...] = ()
    query: tuple[tuple[str, str], ...] = ()
    token: str = field(default="", repr=False)
    in_message: bool = False

    def url(self, ws_url: str) -> str:
        """``ws_url`` with the query parameters appended."""
        if not self.query:
            return ws_url
        parts = urlsplit(ws_url)
        extra = urlencode(list(self.query))
        query = f"{parts.query}&{extra}" if parts.query else extra
        return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))

    def header_dict(self) -> dict[str, str]:
        """The headers as a dict."""
        return dict(self.headers)

    def __repr__(self) -> str:
        return redact(
            f"ConnectAuth(headers={self.headers!r}, subprotocols={self.subprotocols!r}, "
            f"query={self.query!r})"
        )


@dataclass(frozen=True, slots=True)
class NegativeCase:
    """One invalid credential for ``auth.rejects_invalid``.

    Attributes:
        name: ``missing``, ``malformed``, ``wrong_signature`` or ``expired``.
        produced: False when the configuration cannot produce this case.
        auth: the credentials to connect with (empty for ``missing``).
        reason: how it was produced, or why it could not be.
    """

    name: str
    produced: bool
    auth: ConnectAuth = field(default_factory=ConnectAuth)
    reason: str = ""


def mint_jwt(
    secret: str,
    user_id: str,
    *,
    ttl_s: float = 300,
    claims: dict[str, Any] | None = None,
    now: float | None = None,
    expired: bool = False,
) -> str:
    """An HS256 JWT for ``user_id`` (registered as a secret).

    Args:
        secret: the HS256 key.
        user_id: the ``sub`` claim.
        ttl_s: lifetime in seconds.
        claims: extra claims (``jwt_claims``); ``sub``/``iat``/``exp`` are set here.
        now: epoch seconds to mint at (default: the current time).
        expired: mint a token that expired an hour before ``now``.
    """
    issued = int(time.time() if now is None else now)
    if expired:
        issued -= 3600 + int(ttl_s)
    payload = dict(claims or {})
    payload.update({"sub": user_id, "iat": issued, "exp": issued + int(ttl_s)})
    token = jwt.encode(payload, secret, algorithm="HS256")
    register_secret(token)
    return token


async def obtain_token(
    auth: AuthSettings,
    user_id: str | None = None,
    *,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 5.0,
    expired: bool = False,
    index: int | None = None,
) -> TokenResult:
    """Obtain a token for ``user_id`` per the configured sources; never raises.

    Args:
        auth: the ``[auth]`` settings.
        user_id: the test user (default ``auth.default_user``).
        client: HTTP client for the token endpoint (one is created when None).
        timeout_s: bound on the token endpoint call.
        expired: ask for an already-expired token (minted, or ``"expired": true``);
            an env token cannot be made expired, which is reported as an error.
        index: the simulated user's number: picks its token from ``token_envs``.
    """
    user = user_id or auth.default_user
    if auth.jwt_secret:
        token = mint_jwt(
            auth.jwt_secret, user, ttl_s=auth.ttl_s, claims=dict(auth.jwt_claims), expired=expired
        )
        return TokenResult(token=token, source="jwt_secret", user_id=user)
    if auth.token_endpoint:
        return await _from_endpoint(auth.token_endpoint, user, client, timeout_s, expired)
    if auth.tokens and index is not None and not expired:
        token = auth.tokens[index % len(auth.tokens)]
        register_secret(token)
        return TokenResult(token=token, source="env", user_id=user)
    if auth.token and not expired:
        register_secret(auth.token)
        return TokenResult(token=auth.token, source="env", user_id=user)
    if auth.token and expired:
        return TokenResult(
            source="env", user_id=user, error="a ready token from token_env cannot be made expired"
        )
    return TokenResult(
        user_id=user,
        error="no token source configured (set auth.jwt_secret_env, auth.token_endpoint "
        "or auth.token_env)",
    )


async def _from_endpoint(
    url: str, user: str, client: httpx.AsyncClient | None, timeout_s: float, expired: bool
) -> TokenResult:
    body: dict[str, Any] = {"user_id": user}
    if expired:
        body["expired"] = True
    own = client is None
    http = client or httpx.AsyncClient(
        timeout=timeout_s, trust_env=False, headers={"User-Agent": user_agent()}
    )
    try:
        resp = await http.post(url, json=body, timeout=timeout_s)
    except httpx.HTTPError as exc:
        return TokenResult(
            source="endpoint",
            user_id=user,
            error=f"token endpoint {url} unreachable: {type(exc).__name__}: {exc}",
        )
    finally:
        if own:
            await http.aclose()
    try:
        doc = resp.json()
    except ValueError:
        doc = None
    token = doc.get("token") if isinstance(doc, dict) else None
    if isinstance(token, str) and token:
        register_secret(token)
    if resp.status_code != 200 or not isinstance(token, str) or not token:
        return TokenResult(
            source="endpoint",
            user_id=user,
            error=f"token endpoint {url} answered HTTP {resp.status_code} without a token: "
            f"{redact_excerpt(resp.text, 200)}",
        )
    return TokenResult(
        token=token, source="endpoint", user_id=user, expires_at=doc.get("expires_at")
    )


def connect_auth(auth: AuthSettings, token: str | None) -> ConnectAuth:
    """Lay ``token`` out as the configured mode wants (empty for mode none or no token)."""
    if auth.mode == "message":
        return ConnectAuth(token=token or "", in_message=True)
    if not token or auth.mode == "none":
        return ConnectAuth()
    if auth.mode == "bearer":
        return ConnectAuth(headers=(("Authorization", f"Bearer {token}"),))
    if auth.mode == "subprotocol":
        return ConnectAuth(subprotocols=(auth.subprotocol.replace("{token}", token),))
    if auth.mode == "query":
        return ConnectAuth(query=((auth.query_param, token),))
    raise ValueError(f"unknown auth mode {auth.mode!r}")


def _resign(token: str) -> str | None:
    """The claims of ``token`` re-signed with a random key (None if it is not a JWT)."""
    try:
        claims = jwt.decode(token, options={"verify_signature": False, "verify_exp": False})
    except jwt.PyJWTError:
        return None
    forged = jwt.encode(claims, secrets.token_hex(32), algorithm="HS256")
    register_secret(forged)
    return forged


async def negative_cases(
    auth: AuthSettings,
    *,
    user_id: str | None = None,
    client: httpx.AsyncClient | None = None,
    timeout_s: float = 5.0,
) -> tuple[NegativeCase, ...]:
    """The four invalid credentials, each produced or marked as not producible.

    * ``missing``: connect with no credentials.
    * ``malformed``: a string that is not a JWT.
    * ``wrong_signature``: valid-looking claims signed with a random key (needs a
      JWT secret, or a valid JWT to re-sign).
    * ``expired``: minted with a past ``exp`` (JWT secret) or issued with
      ``"expired": true`` by the token endpoint; a ready env token cannot.
    """
    user = user_id or auth.default_user
    if auth.mode == "none":
        reason = "auth.mode is none: the service is not configured to require credentials"
        return tuple(NegativeCase(name, False, reason=reason) for name in NEGATIVE_CASES)
    missing = connect_auth(auth, "")  # message mode: the frame carries an empty token
    out = [NegativeCase("missing", True, missing, "no credentials sent")]
    # Token-shaped but not a JWT; long enough to be registered (harmless) as a secret.
    malformed = "not-a-jwt." + secrets.token_hex(8)
    out.append(
        NegativeCase(
            "malformed", True, connect_auth(auth, malformed), "a random string that is not a JWT"
        )
    )

    if auth.jwt_secret:
        wrong = mint_jwt(
            secrets.token_hex(32), user, ttl_s=auth.ttl_s, claims=dict(auth.jwt_claims)
        )
        out.append(
            NegativeCase(
                "wrong_signature",
                True,
                connect_auth(auth, wrong),
                "claims for the test user signed with a random key",
            )
        )
    else:
        valid = await obtain_token(auth, user, client=client, timeout_s=timeout_s)
        forged = _resign(valid.token) if valid.ok else None
        if forged:
            out.append(
                NegativeCase(
                    "wrong_signature",
                    True,
                    connect_auth(auth, forged),
                    f"a valid token ({valid.source}) re-signed with a random key",
                )
            )
        else:
            why = valid.error or "the configured token is not a JWT, so it cannot be re-signed"
            out.append(NegativeCase("wrong_signature", False, reason=why))

    expired = await obtain_token(auth, user, client=client, timeout_s=timeout_s, expired=True)
    if expired.ok:
        how = (
            "minted with a past exp"
            if expired.source == "jwt_secret"
            else "issued already expired by the token endpoint"
        )
        out.append(NegativeCase("expired", True, connect_auth(auth, expired.token), how))
    else:
        out.append(NegativeCase("expired", False, reason=expired.error))
    return tuple(out)
