"""WebSocket $default: messages from the page (`sync`, `new_qr`, `pairing_code`, `relink`), each
counted against its token's rate limit; a socket whose token has expired, or whose consent is no
longer the salon's, is told why and closed."""

from __future__ import annotations

import json
import time
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from aiadmin.db import Store
from aiadmin.models import ErrorMessage, TokenMessage
from aiadmin.observability import logger, metrics, tracer
from aiadmin.onboarding import (
    ConsentEnded,
    InvalidPhone,
    KeptSocket,
    PairingLimited,
    Requester,
    request_new_qr,
    request_pairing_code,
    request_relink,
    state_message,
)
from aiadmin.push import Pusher, open_pusher
from aiadmin.sockets import (
    MESSAGE_WINDOW_SECONDS,
    RATE_LIMITED_KEY,
    RATE_LIMITED_TEXT,
    UNKNOWN_ACTION_KEY,
    UNKNOWN_ACTION_TEXT,
    Admission,
    Verdict,
    admit_message,
)
from aiadmin.tokens import issue_token, new_token_id

if TYPE_CHECKING:
    from aiadmin.settings import SocketMessageSettings

# Imported by the first message (the settings, with pydantic-settings) or the first that needs
# them (a state showing a QR or a linked number, a pairing-code request, a re-link's new token),
# not with this module (cold start).
FIRST_USE_IMPORTS = ("aiadmin.settings", "qrcode.image.svg", "phonenumbers", "jwt")


@cache
def settings() -> SocketMessageSettings:
    from aiadmin.settings import SocketMessageSettings

    return SocketMessageSettings.load()


def store() -> Store:
    from aiadmin.db import open_store

    return open_store(settings().table_name)


def pusher() -> Pusher:
    return open_pusher(settings().websocket_management_url)


ACTIONS = ("sync", "new_qr", "pairing_code", "relink")

# The time a message is counted at (its rate-limit window); tests put a fake clock here.
clock = time.time


def _message(event: APIGatewayWebSocketEvent) -> dict[str, Any]:
    try:
        body = json.loads(event.body or "")
    except (ValueError, TypeError, RecursionError):
        return {}
    return body if isinstance(body, dict) else {}


def _reply(connection_id: str, salon_id: int, payload: str) -> None:
    if not pusher().send(connection_id, payload):
        store().connections.remove(connection_id, salon_id)


def _refuse(connection_id: str, salon_id: int, action: str, code: str, text: str, status: int,
            metric: str, retry_after: float | None = None, key: str = "",
            params: dict[str, int | float | str] | None = None) -> dict[str, Any]:
    """Nothing changed: the page reads why (by `key`, in the owner's language), ops count it."""
    metrics.add_metric(name=metric, unit="Count", value=1)
    _reply(connection_id, salon_id, ErrorMessage(action=action, code=code, message=text, retry_after=retry_after,
                                                 key=key, params=params or {}).model_dump_json())
    return {"statusCode": status}


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
@event_source(data_class=APIGatewayWebSocketEvent)
def lambda_handler(event: APIGatewayWebSocketEvent, context: LambdaContext) -> dict[str, Any]:
    connection_id = event.request_context.connection_id
    now = clock()
    admission = admit_message(store(), connection_id, now)
    if admission.verdict == Verdict.UNKNOWN or admission.salon_id is None:
        metrics.add_metric(name="SocketUnknownConnection", unit="Count", value=1)
        return {"statusCode": 403}
    salon_id = admission.salon_id
    if admission.verdict == Verdict.SILENCED:
        metrics.add_metric(name="SocketRateLimited", unit="Count", value=1)
        return {"statusCode": 429}
    message = _message(event)
    raw_action = message.get("action")
    action = raw_action if isinstance(raw_action, str) and raw_action in ACTIONS else "unknown"
    if admission.verdict == Verdict.RATE_LIMITED:
        wait = MESSAGE_WINDOW_SECONDS - now % MESSAGE_WINDOW_SECONDS
        return _refuse(connection_id, salon_id, action, "rate_limited", RATE_LIMITED_TEXT, 429,
                       "SocketRateLimited", retry_after=round(wait, 1), key=RATE_LIMITED_KEY)
    if admission.verdict == Verdict.TOKEN_EXPIRED:
        # The page reads why; the socket gets nothing more (pushes included) and is closed.
        metrics.add_metric(name="SocketTokenExpired", unit="Count", value=1)
        pusher().end(store(), connection_id, salon_id, "token_expired", action)
        return {"statusCode": 403}
    if action not in ACTIONS:
        return _refuse(connection_id, salon_id, action, "bad_request", UNKNOWN_ACTION_TEXT, 400, "SocketBadMessage",
                       key=UNKNOWN_ACTION_KEY)
    requester = Requester(consent_id=admission.consent_id)
    try:
        if action == "new_qr":
            request_new_qr(store(), salon_id, requester)
        elif action == "relink":
            requester = _relink(connection_id, admission, requester, now)
        elif action == "pairing_code":
            try:
                request_pairing_code(store(), salon_id, message.get("phone"), requester, now,
                                     min_interval=settings().pairing_min_interval_seconds)
            except InvalidPhone as exc:
                # Nothing changed; the owner reads why next to the number they typed.
                return _refuse(connection_id, salon_id, action, "invalid_phone", str(exc), 400,
                               "PairingPhoneRefused", key=exc.key)
            except PairingLimited as exc:
                return _refuse(connection_id, salon_id, action, "pairing_limited", str(exc), 429,
                               "PairingCodeLimited", retry_after=round(exc.retry_after, 1), key=exc.key,
                               params=dict(exc.params))
        salon = store().salons.get(salon_id)
        if not requester.may_act_on(salon):
            raise ConsentEnded(salon_id)
    except ConsentEnded:
        # The token's consent is no longer the salon's: nothing changed, the page reads why, and
        # the socket gets nothing more.
        pusher().end(store(), connection_id, salon_id, "token_revoked", action)
        return {"statusCode": 403}
    assert salon is not None  # may_act_on said so
    _reply(connection_id, salon_id, state_message(salon, now))
    return {"statusCode": 200}


def _relink(connection_id: str, admission: Admission, requester: Requester, now: float) -> Requester:
    """An explicit owner action (confirmed on the page) on a socket of the salon's consent. It
    starts a new consent: every other socket and token of the salon ends, and this socket moves
    onto the new one with a new token, which the page keeps for reconnecting. Returns who the
    socket is from now on."""
    assert admission.salon_id is not None
    token_id, issued, s = new_token_id(), int(now), settings()
    kept = KeptSocket(connection_id, admission.slot, token_id, issued + s.token_ttl_seconds)
    salon = request_relink(store(), admission.salon_id, now, requester, kept)
    if salon is not None:
        token = issue_token(admission.salon_id, s.jwt_secret.reveal(), s.token_ttl_seconds, issued,
                            consent_id=salon.consent_id, token_id=token_id)
        _reply(connection_id, admission.salon_id, TokenMessage(salon_id=admission.salon_id,
                                                               token=token).model_dump_json())
        return Requester(consent_id=salon.consent_id)
    return requester
