"""WebSocket $connect (authenticate the onboarding token: signature, expiry, and that its consent
is still the salon's; take one of the salon's socket slots) and $disconnect (forget the
connection, free its slot)."""

from __future__ import annotations

import time
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from aiadmin.db import Store
from aiadmin.observability import logger, metrics, tracer
from aiadmin.sockets import MAX_SOCKETS_PER_SALON, Opening, open_socket
from aiadmin.tokens import InvalidToken, verify_token_claims

if TYPE_CHECKING:
    from aiadmin.settings import SocketConnectSettings

# Imported by the first request (the settings, with pydantic-settings) and the first $connect (to
# check its token), not with this module (cold start).
FIRST_USE_IMPORTS = ("aiadmin.settings", "jwt")


@cache
def settings() -> SocketConnectSettings:
    from aiadmin.settings import SocketConnectSettings

    return SocketConnectSettings.load()


def store() -> Store:
    from aiadmin.db import open_store

    return open_store(settings().table_name)


def _connect(event: APIGatewayWebSocketEvent) -> dict[str, Any]:
    token = (event.query_string_parameters or {}).get("token")
    try:
        claims = verify_token_claims(token, settings().jwt_secret.reveal())
    except InvalidToken as exc:
        # API Gateway refuses the upgrade with this status; the token itself is never logged.
        logger.info("connection refused", extra={"reason": str(exc)})
        metrics.add_metric(name="SocketRefused", unit="Count", value=1)
        return {"statusCode": 401}
    opening = open_socket(store(), event.request_context.connection_id, claims, time.time())
    if opening == Opening.CONSENT_ENDED:
        # A token of an ended consent (uninstalled, bound to another user, re-linked since): 403,
        # where a bad or expired token gets 401. Nothing written.
        logger.info("connection refused: the token's consent has ended", extra={"salon_id": claims.salon_id})
        metrics.add_metric(name="SocketRevoked", unit="Count", value=1)
        return {"statusCode": 403}
    if opening == Opening.SALON_FULL:
        # Every slot is held by a live socket: refused, nothing written (aiadmin.sockets says why
        # refusing beats closing the oldest).
        logger.warning("connection refused: salon has its maximum of sockets open",
                       extra={"salon_id": claims.salon_id, "max": MAX_SOCKETS_PER_SALON})
        metrics.add_metric(name="SocketLimitReached", unit="Count", value=1)
        return {"statusCode": 429}
    logger.info("connected", extra={"salon_id": claims.salon_id})
    return {"statusCode": 200}


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
@event_source(data_class=APIGatewayWebSocketEvent)
def lambda_handler(event: APIGatewayWebSocketEvent, context: LambdaContext) -> dict[str, Any]:
    route = event.request_context.route_key
    if route == "$connect":
        return _connect(event)
    if route == "$disconnect":
        store().connections.remove(event.request_context.connection_id)
        return {"statusCode": 200}
    return {"statusCode": 400}
