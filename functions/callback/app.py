"""POST /callback/yclients: YClients lifecycle webhooks (`uninstall`, `freeze`, ...).

Authenticity is the `partner_token` in the body, compared in constant time."""

from __future__ import annotations

import hmac
import json
from typing import Any

import boto3
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import BaseModel, ConfigDict, ValidationError

from aiadmin.config import load_settings
from aiadmin.lifecycle import apply_lifecycle_event
from aiadmin.observability import logger, metrics, tracer
from aiadmin.store import Store

settings = load_settings(["table_name", "yclients_partner_token", "yclients_app_id"])
store = Store(boto3.resource("dynamodb").Table(settings.table_name))
app = APIGatewayHttpResolver()


class LifecycleWebhook(BaseModel):
    model_config = ConfigDict(extra="allow")

    salon_id: int
    application_id: int
    event: str
    partner_token: str


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body))


@app.post("/callback/yclients")
@tracer.capture_method
def lifecycle() -> Response:
    try:
        payload = json.loads(app.current_event.decoded_body or "")
    except (ValueError, TypeError):
        return _json(400, {"success": False, "message": "body is not JSON"})
    if not isinstance(payload, dict):
        return _json(400, {"success": False, "message": "body is not a JSON object"})
    token = payload.get("partner_token")
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode(), settings.yclients_partner_token.reveal().encode()
    ):
        metrics.add_metric(name="WebhookRefused", unit="Count", value=1)
        return _json(401, {"success": False, "message": "bad partner_token"})
    try:
        webhook = LifecycleWebhook.model_validate(payload)
    except ValidationError:
        return _json(400, {"success": False, "message": "salon_id, application_id and event are required"})
    if webhook.application_id != settings.yclients_app_id:
        return _json(400, {"success": False, "message": "unknown application_id"})
    result = apply_lifecycle_event(store, webhook.salon_id, webhook.event)
    logger.info("lifecycle webhook", extra={"salon_id": webhook.salon_id, "event": webhook.event, "result": result})
    return _json(200, {"success": True, "result": result})


@app.exception_handler(Exception)
def unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error")
    return _json(503, {"success": False, "message": "temporary error, retry later"})


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
