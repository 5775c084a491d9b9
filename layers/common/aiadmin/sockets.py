"""What a token holder may spend on the onboarding page's WebSocket API: sockets per salon,
messages per socket and per token (its sockets share a budget: five sockets do not give five
times the messages), and nothing at all once the token has expired or
its consent is no longer the salon's (`aiadmin.tokens`): such a token is refused at `$connect`,
and a socket of it gets one last message saying why, then is closed.

Choices (issue 9): a sixth socket for a salon is *refused* at `$connect` (429) rather than
closing the oldest: closing needs `DELETE @connections` rights, and would let a second holder
of the token push the owner's own page off in a loop. A slot whose `$disconnect` was lost is
free again after 2 hours, API Gateway's longest connection. Messages are counted in fixed
10-second windows; only the first message over the limit gets an answer, so a flood costs one
push per window."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiadmin.db import Store
from aiadmin.i18n import DEFAULT_LANGUAGE, t
from aiadmin.models import ErrorMessage, Salon
from aiadmin.tokens import TokenClaims

MAX_SOCKETS_PER_SALON = 5
MESSAGES_PER_WINDOW = 10
# All the sockets of one token together, beyond each socket's opening message (paid for by its
# `$connect`: a page that reloads opens a new socket with the same token each time).
MESSAGES_PER_TOKEN_WINDOW = MESSAGES_PER_WINDOW
MESSAGE_WINDOW_SECONDS = 10

# The refusals' texts (Russian, for old pages and logs); each reply also carries its key, by which
# the page shows it in the owner's language.
RATE_LIMITED_KEY = "socket.rate_limited"
TOKEN_EXPIRED_KEY = "socket.token_expired"  # noqa: S105
TOKEN_REVOKED_KEY = "socket.token_revoked"  # noqa: S105
UNKNOWN_ACTION_KEY = "socket.bad_request"
RATE_LIMITED_TEXT = t(DEFAULT_LANGUAGE, RATE_LIMITED_KEY)
TOKEN_EXPIRED_TEXT = t(DEFAULT_LANGUAGE, TOKEN_EXPIRED_KEY)
TOKEN_REVOKED_TEXT = t(DEFAULT_LANGUAGE, TOKEN_REVOKED_KEY)
UNKNOWN_ACTION_TEXT = t(DEFAULT_LANGUAGE, UNKNOWN_ACTION_KEY)
# Why a socket gets nothing more: its token expired, or its consent is no longer the salon's.
ENDED_TOKEN_KEYS = {"token_expired": TOKEN_EXPIRED_KEY, "token_revoked": TOKEN_REVOKED_KEY}


class Opening(StrEnum):
    OPENED = "opened"
    SALON_FULL = "salon_full"          # every slot held by a live socket (429)
    CONSENT_ENDED = "consent_ended"    # the token's consent is not the salon's, or no such salon (403)


def open_socket(store: Store, connection_id: str, claims: TokenClaims, now: float,
                salon: Salon | None = None) -> Opening:
    """Record a new socket for the token's salon, if the token's consent is the salon's now
    (`salon`: the salon as read, or read here)."""
    current = salon if salon is not None else store.salons.get(claims.salon_id)
    if current is None or not current.accepts_token_of(claims.consent_id):
        return Opening.CONSENT_ENDED
    opened = store.connections.add(connection_id, claims.salon_id, now=now, token_exp=claims.expires_at,
                                  max_per_salon=MAX_SOCKETS_PER_SALON, consent_id=claims.consent_id,
                                  token_id=claims.token_id)
    return Opening.OPENED if opened else Opening.SALON_FULL


def ending_message(reason: str, action: str = "") -> str:
    """The last message a socket of an ended token gets (`reason`: a key of `ENDED_TOKEN_KEYS`):
    the page shows why and stops reconnecting."""
    key = ENDED_TOKEN_KEYS[reason]
    return ErrorMessage(action=action, code=reason, message=t(DEFAULT_LANGUAGE, key), key=key).model_dump_json()


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
    # The socket's token: the consent it names (checked against the salon by the caller, which
    # reads the salon anyway), its id and its socket slot (a re-link moves the socket onto a new token).
    consent_id: str | None = None
    token_id: str | None = None
    slot: int | None = None


def admit_message(store: Store, connection_id: str, now: float) -> Admission:
    """Count the message against its socket's and its token's limits, then check the token's expiry."""
    record = store.connections.count_message(connection_id, int(now // MESSAGE_WINDOW_SECONDS))
    if record is None:
        return Admission(Verdict.UNKNOWN)
    token_messages = record.token_messages or 0

    def over(socket_count: int, token_count: int) -> bool:
        return socket_count > MESSAGES_PER_WINDOW or token_count > MESSAGES_PER_TOKEN_WINDOW

    if over(record.messages, token_messages):
        # Only the socket's first message over a limit is answered; then silence.
        first = not over(record.messages - 1, token_messages - 1)
        verdict = Verdict.RATE_LIMITED if first else Verdict.SILENCED
    elif record.token_exp is None or record.token_exp <= now:
        # A connection recorded without an expiry (before this rule) is treated as expired.
        verdict = Verdict.TOKEN_EXPIRED
    else:
        verdict = Verdict.ALLOWED
    return Admission(verdict, record.salon_id, record.consent_id, record.token_id, record.slot)
