"""Onboarding tokens: short-lived JWTs (HS256, pyjwt) that open one salon's page and sockets.

A token names the salon's consent (`cid`, the salon's `consent_id` when it was issued): an
uninstall, a rebinding to another YClients user or the owner's re-link gives the salon a new
consent id, and from then on every older token is refused at `$connect` and on every socket
message, and its open sockets are closed (`aiadmin.sockets`, `aiadmin.push`)."""

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


def new_token_id() -> str:
    return secrets.token_urlsafe(8)


def issue_token(salon_id: int, secret: str, ttl_seconds: int, now: float | None = None,
                consent_id: str | None = None, token_id: str | None = None) -> str:
    """A token for the salon's consent `consent_id` (None: a salon recorded before consents had
    ids); `token_id` (its `jti`, new by default) is what its sockets' message budget is counted on."""
    issued = int(now if now is not None else time.time())
    claims: dict[str, object] = {
        "sub": str(salon_id),
        "aud": AUDIENCE,
        "iat": issued,
        "exp": issued + ttl_seconds,
        "jti": token_id or new_token_id(),
    }
    if consent_id is not None:
        claims["cid"] = consent_id
    import jwt

    return jwt.encode(claims, secret, algorithm=ALGORITHM)


@dataclass(frozen=True)
class TokenClaims:
    salon_id: int
    # Epoch seconds: a socket opened with the token refuses commands after it (see aiadmin.sockets).
    expires_at: int
    # The salon's consent the token was issued for (None: issued before consents had ids).
    consent_id: str | None = None
    # The token's own id (`jti`): its sockets share one message budget.
    token_id: str | None = None


def verify_token_claims(token: str | None, secret: str) -> TokenClaims:
    """The salon the token was issued for, when it expires, and its consent (signature and
    expiry checked here; whether the consent is still the salon's is the caller's check)."""
    if not token:
        raise InvalidToken("missing")
    import jwt

    try:
        claims = jwt.decode(
            token, secret, algorithms=[ALGORITHM], audience=AUDIENCE,
            options={"require": ["exp", "iat", "sub", "aud"]},
        )
        consent, token_id = claims.get("cid"), claims.get("jti")
        return TokenClaims(salon_id=int(claims["sub"]), expires_at=int(claims["exp"]),
                           consent_id=str(consent)[:64] if consent is not None else None,
                           token_id=str(token_id)[:64] if token_id is not None else None)
    except jwt.ExpiredSignatureError as exc:
        raise InvalidToken("expired") from exc
    except (jwt.InvalidTokenError, ValueError, TypeError) as exc:
        raise InvalidToken(type(exc).__name__) from exc


def verify_token(token: str | None, secret: str) -> int:
    """The salon id the token was issued for."""
    return verify_token_claims(token, secret).salon_id
