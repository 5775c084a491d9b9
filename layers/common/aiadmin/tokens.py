"""Onboarding tokens: short-lived JWTs (HS256, pyjwt) that open one salon's page and sockets."""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

# pyjwt is imported on first use, not with this module: the redirect function's page route
# needs no token, only its redirect route issues them (cold start).

AUDIENCE = "aiadmin-onboarding"
ALGORITHM = "HS256"


class InvalidToken(ValueError):
    """Missing, expired, forged or malformed; the reason is for logs, not for the owner."""


def issue_token(salon_id: int, secret: str, ttl_seconds: int, now: float | None = None) -> str:
    issued = int(now if now is not None else time.time())
    claims = {
        "sub": str(salon_id),
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "jti": secrets.token_urlsafe(8),
    }
    import jwt

    return jwt.encode(claims, secret, algorithm=ALGORITHM)


@dataclass(frozen=True)
class TokenClaims:
    salon_id: int
    # Epoch seconds: a socket opened with the token refuses commands after it (see aiadmin.sockets).
    expires_at: int


def verify_token_claims(token: str | None, secret: str) -> TokenClaims:
    """The salon the token was issued for, and when it expires."""
    if not token:
        raise InvalidToken("missing")
    import jwt

    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], audience=AUDIENCE,
            options={"require": ["exp", "iat", "sub", "aud"]},
        )
        return TokenClaims(salon_id=int(claims["sub"]), expires_at=int(claims["exp"]))
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("expired") from exc
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        raise InvalidToken(type(exc).__name__) from exc


def verify_token(token: str | None, secret: str) -> int:
    """The salon id the token was issued for."""
    return verify_token_claims(token, secret).salon_id
