"""WebSocket $connect (authenticate the onboarding token, record the connection) and
$disconnect (forget it)."""

from __future__ import annotations

from typing import Any

import boto3
from aws_lambda_powertools.utilities.data_classes import APIGatewayWebSocketEvent, event_source
from aws_lambda_powertools.utilities.typing import LambdaContext

from aiadmin.config import load_settings
from aiadmin.lazy import lazy
from aiadmin.observability import logger, metrics, tracer
from aiadmin.store import Store
from aiadmin.tokens import InvalidToken, verify_token

settings = load_settings(["table_name", "jwt_secret"])
store = lazy(lambda: Store(boto3.resource("dynamodb").Table(settings.table_name)))


def _connect(event: APIGatewayWebSocketEvent) -> dict[str, Any]:
    token = (event.query_string_parameters or {}).get("token")
    try:
        salon_id = verify_token(token, settings.jwt_secret.reveal())
    except InvalidToken as exc:
        # API Gateway refuses the upgrade with this status; the token itself is never logged.
        logger.info("connection refused", extra={"reason": str(exc)})
        metrics.add_metric(name="SocketRefused", unit="Count", value=1)
        return {"statusCode": 401}
    store.add_connection(event.request_context.connection_id, salon_id)
    logger.info("connected", extra={"salon_id": salon_id})
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
        store.remove_connection(event.request_context.connection_id)
        return {"statusCode": 200}
    return {"statusCode": 400}
