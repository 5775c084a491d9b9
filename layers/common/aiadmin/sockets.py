"""What a token holder may spend on the onboarding page's WebSocket API: sockets per salon,
messages per socket, and nothing at all once the token has expired.

Choices (issue 9): a sixth socket for a salon is *refused* at `$connect` (429) rather than
closing the oldest: closing needs `DELETE @connections` rights, and would let a second holder
of the token push the owner's own page off in a loop. A slot whose `$disconnect` was lost is
free again after 2 hours, API Gateway's longest connection. Messages are counted in fixed
10-second windows; only the first message over the limit gets an answer, so a flood costs one
push per window."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiadmin.i18n import DEFAULT_LANGUAGE, t
from aiadmin.store import Store
from aiadmin.tokens import TokenClaims

MAX_SOCKETS_PER_SALON = 5
MESSAGES_PER_WINDOW = 10
MESSAGE_WINDOW_SECONDS = 10

# The refusals' texts (Russian, for old pages and logs); each reply also carries its key, by which
# the page shows it in the owner's language.
RATE_LIMITED_KEY = "socket.rate_limited"
TOKEN_EXPIRED_KEY = "socket.token_expired"  # noqa: S105
UNKNOWN_ACTION_KEY = "socket.bad_request"
RATE_LIMITED_TEXT = t(DEFAULT_LANGUAGE, RATE_LIMITED_KEY)
TOKEN_EXPIRED_TEXT = t(DEFAULT_LANGUAGE, TOKEN_EXPIRED_KEY)
UNKNOWN_ACTION_TEXT = t(DEFAULT_LANGUAGE, UNKNOWN_ACTION_KEY)


def open_socket(store: Store, connection_id: str, claims: TokenClaims, now: float) -> bool:
    """Record a new socket for the token's salon; False when the salon has its maximum open."""
    return store.add_connection(connection_id, claims.salon_id, now=now, token_exp=claims.expires_at,
                                max_per_salon=MAX_SOCKETS_PER_SALON)


class Verdict(StrEnum):
    ALLOWED = "allowed"
    UNKNOWN = "unknown"              # no such connection (never connected, or forgotten)
    RATE_LIMITED = "rate_limited"    # the first message over the limit in this window: answer it
    SILENCED = "silenced"            # further messages over the limit: answer nothing
    TOKEN_EXPIRED = "token_expired"  # noqa: S105


@dataclass(frozen=True)
class Admission:
    verdict: Verdict
    salon_id: int | None = None


def admit_message(store: Store, connection_id: str, now: float) -> Admission:
    """Count the message against its socket's limit, then check the socket's token."""
    record = store.count_message(connection_id, int(now // MESSAGE_WINDOW_SECONDS))
    if record is None:
        return Admission(Verdict.UNKNOWN)
    if record.messages > MESSAGES_PER_WINDOW:
        first = record.messages == MESSAGES_PER_WINDOW + 1
        return Admission(Verdict.RATE_LIMITED if first else Verdict.SILENCED, record.salon_id)
    if record.token_exp is None or record.token_exp <= now:
        # A connection recorded without an expiry (before this rule) is treated as expired.
        return Admission(Verdict.TOKEN_EXPIRED, record.salon_id)
    return Admission(Verdict.ALLOWED, record.salon_id)
