"""WebSocket $default (messages from the page: `sync`, `new_qr`, `pairing_code`) and the
DynamoDB stream consumer that pushes state changes made outside the runner (lifecycle
webhooks, the page)."""

from __future__ import annotations

import json
import time
from typing import Any

import boto3
from aws_lambda_powertools.utilities.data_classes import (
    APIGatewayWebSocketEvent,
    DynamoDBStreamEvent,
    event_source,
)
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from aiadmin.config import load_settings
from aiadmin.lazy import lazy
from aiadmin.models import ErrorMessage, Salon
from aiadmin.observability import logger, metrics, tracer
from aiadmin.onboarding import InvalidPhone, request_new_qr, request_pairing_code, state_message
from aiadmin.push import Pusher
from aiadmin.store import Store

settings = load_settings(["table_name", "websocket_management_url"])
store = lazy(lambda: Store(boto3.resource("dynamodb").Table(settings.table_name)))
pusher = lazy(lambda: Pusher(settings.websocket_management_url))

# The runner pushes what it changes itself, straight away; the stream covers everyone else.
RUNNER_ACTOR = "runner"


def _message(event: APIGatewayWebSocketEvent) -> dict[str, Any]:
    try:
        body = json.loads(event.body or "")
    except (ValueError, TypeError):
        return {}
    return body if isinstance(body, dict) else {}


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
@event_source(data_class=APIGatewayWebSocketEvent)
def lambda_handler(event: APIGatewayWebSocketEvent, context: LambdaContext) -> dict[str, Any]:
    connection_id = event.request_context.connection_id
    salon_id = store.salon_of_connection(connection_id)
    if salon_id is None:
        return {"statusCode": 403}
    message = _message(event)
    action = message.get("action")
    if action == "new_qr":
        request_new_qr(store, salon_id)
    elif action == "pairing_code":
        try:
            request_pairing_code(store, salon_id, message.get("phone"))
        except InvalidPhone as exc:
            # Nothing changed; the owner reads why next to the number they typed.
            metrics.add_metric(name="PairingPhoneRefused", unit="Count", value=1)
            if not pusher.send(connection_id, ErrorMessage(action="pairing_code", message=str(exc)).model_dump_json()):
                store.remove_connection(connection_id, salon_id)
            return {"statusCode": 200}
    elif action != "sync":
        return {"statusCode": 400}
    salon = store.get_salon(salon_id)
    if salon is not None and not pusher.send(connection_id, state_message(salon, time.time())):
        store.remove_connection(connection_id, salon_id)
    return {"statusCode": 200}


@logger.inject_lambda_context
@metrics.log_metrics
@event_source(data_class=DynamoDBStreamEvent)
def stream_handler(event: DynamoDBStreamEvent, context: LambdaContext) -> None:
    for record in event.records:
        image = record.dynamodb.new_image if record.dynamodb else None
        if not image or image.get("sk") != "STATE" or image.get("updated_by") == RUNNER_ACTOR:
            continue
        try:
            salon: Salon | None = Store.salon_from_image(image)
        except ValidationError:
            # A partial image (some stores stream keys only): read the item itself.
            salon = store.get_salon(int(str(image["pk"]).removeprefix("SALON#")))
        if salon is None:
            continue
        # The stream lags: by now the runner may have moved the salon on (a QR a few ms after
        # the consent) and pushed that itself. Pushing this older state after it would leave
        # the page showing it, so only the latest version is pushed; each later one has its
        # own record or was pushed by the runner.
        current = store.get_salon(salon.salon_id)
        if current is None or current.version != salon.version:
            continue
        pusher.fan_out(store, salon.salon_id, state_message(current, time.time()))
