"""YClients webhooks and the marketplace health check.

- POST /callback/yclients: lifecycle webhooks (`uninstall`, `freeze`, `payment`, ...);
  authenticity is the `partner_token` in the body, compared in constant time.
- POST /webhook/yclients/{salon_id}/{secret}: entity webhooks (records, clients, ...); not
  signed by YClients, so the unguessable per-salon secret in the URL authenticates them.
  Validated and queued for the bot; answered at once (YClients waits 15 s at most).
- GET /marketplace/health-check."""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable
from functools import cache
from typing import TYPE_CHECKING, Any

import boto3
from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.utilities.idempotency import (
    DynamoDBPersistenceLayer,
    IdempotencyConfig,
    idempotent_function,
)
from aws_lambda_powertools.utilities.idempotency.exceptions import IdempotencyAlreadyInProgressError
from aws_lambda_powertools.utilities.typing import LambdaContext

from aiadmin.observability import logger, metrics, tracer
from aiadmin.untrusted_json import load_json

if TYPE_CHECKING:
    from aiadmin.db import Store
    from aiadmin.entity_queue import EntityQueue
    from aiadmin.settings import CallbackSettings

# Cold start: the settings (pydantic-settings) and the store (with the pydantic models under it)
# are imported by the first request, not with this module; the queue by the first entity
# webhook, the lifecycle rules by the first lifecycle webhook. Each route imports what it uses.
FIRST_USE_IMPORTS = ("aiadmin.settings", "aiadmin.db", "aiadmin.models", "aiadmin.entity_queue",
                     "aiadmin.lifecycle")
RUNNER_STALE_SECONDS = 60


@cache
def settings() -> CallbackSettings:
    from aiadmin.settings import CallbackSettings

    return CallbackSettings.load()


def store() -> Store:
    from aiadmin.db import open_store

    return open_store(settings().table_name)


@cache
def entity_queue() -> EntityQueue:
    from aiadmin.entity_queue import EntityQueue

    return EntityQueue(boto3.client("sqs"), settings().entity_queue_url)


app = APIGatewayHttpResolver()
# SQS takes 256 KiB per message; an entity webhook is a few KiB.
MAX_ENTITY_WEBHOOK_BYTES = 128 * 1024
# A lifecycle webhook is one flat object of a few hundred bytes, read before its partner token is
# checked: 64 Ki characters and 16 levels are ample, and bound what anyone's body makes us scan.
MAX_LIFECYCLE_WEBHOOK_CHARS = 64 * 1024
MAX_LIFECYCLE_WEBHOOK_DEPTH = 16

# Replays of a lifecycle webhook (YClients' retries are undocumented) return the first answer
# and change nothing. The payload carries no event id, so the key includes the salon's state
# version as read on arrival: a replay while nothing has changed is answered from the record,
# while the same event after a change (uninstall -> reinstall -> uninstall within minutes, or
# freeze -> payment -> freeze) has a new key and is processed. A replay that arrives after the
# state moved is processed too: it finds the salon in the event's state already, changes
# nothing and gets the first delivery's answer.
idempotency_config = IdempotencyConfig(
    event_key_jmespath="[salon_id, application_id, event, details.period_from, details.period_to, salon_version]",
    expires_after_seconds=3600)


def _apply_lifecycle(webhook: dict[str, Any]) -> dict[str, Any]:
    from aiadmin.lifecycle import apply_lifecycle_event  # FIRST_USE_IMPORTS

    result = apply_lifecycle_event(store(), int(webhook["salon_id"]), str(webhook["event"]), webhook["details"])
    logger.info("lifecycle webhook", extra={"salon_id": webhook["salon_id"], "event": webhook["event"],
                                            "result": result})
    return {"success": True, "result": result}


@cache
def process_lifecycle() -> Callable[..., dict[str, Any]]:
    """`_apply_lifecycle` once per delivery: its records (powertools Idempotency) in the table,
    whose client is made here, on first use."""
    persistence = DynamoDBPersistenceLayer(table_name=settings().table_name, key_attr="pk", sort_key_attr="sk",
                                           expiry_attr="ttl")
    process: Callable[..., dict[str, Any]] = idempotent_function(
        data_keyword_argument="webhook", persistence_store=persistence, config=idempotency_config)(_apply_lifecycle)
    return process


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON, body=json.dumps(body))


@app.post("/callback/yclients")
@tracer.capture_method
def lifecycle() -> Response:
    try:
        raw = app.current_event.decoded_body or ""  # a body that is not UTF-8 raises ValueError
        if len(raw) > MAX_LIFECYCLE_WEBHOOK_CHARS:
            return _json(413, {"success": False, "message": "body too large"})
        # Shallow and valid Unicode text, or refused here: json.loads alone let a deeply nested
        # body's RecursionError out as a 503.
        payload = load_json(raw, MAX_LIFECYCLE_WEBHOOK_DEPTH)
    except (ValueError, TypeError):  # UntrustedJsonError is a ValueError
        return _json(400, {"success": False, "message": "body is not JSON"})
    if not isinstance(payload, dict):
        return _json(400, {"success": False, "message": "body is not a JSON object"})
    token = payload.get("partner_token")
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode(), settings().yclients_partner_token.reveal().encode()
    ):
        metrics.add_metric(name="WebhookRefused", unit="Count", value=1)
        return _json(401, {"success": False, "message": "bad partner_token"})
    from pydantic import ValidationError

    from aiadmin.models import LifecycleWebhook

    try:
        webhook = LifecycleWebhook.model_validate(payload)
    except ValidationError:
        return _json(400, {"success": False, "message": "salon_id, application_id and event are required"})
    if webhook.application_id != settings().yclients_app_id:
        return _json(400, {"success": False, "message": "unknown application_id"})
    salon = store().salons.get(webhook.salon_id)
    try:
        answer = process_lifecycle()(webhook={
            "salon_id": webhook.salon_id, "application_id": webhook.application_id, "event": webhook.event,
            "details": webhook.details(), "salon_version": salon.version if salon else 0})
    except IdempotencyAlreadyInProgressError:
        # The same delivery is being processed right now (a duplicate sent in parallel).
        metrics.add_metric(name="LifecycleWebhookDuplicate", unit="Count", value=1)
        return _json(200, {"success": True, "result": "in_progress"})
    return _json(200, answer)


@app.post("/webhook/yclients/<salon_id>/<secret>")
@tracer.capture_method
def entity_webhook(salon_id: str, secret: str) -> Response:
    from pydantic import ValidationError

    from aiadmin.models import EntityWebhook, parse_salon_id

    not_found = _json(404, {"success": False, "message": "not found"})
    salon = parse_salon_id(salon_id)
    if salon is None:
        return not_found
    stored = store().secrets.get(salon).get("webhook_secret")
    if not stored or not hmac.compare_digest(stored.encode(), secret.encode()):
        # The same answer for an unknown salon and a wrong secret: nothing to learn by probing.
        metrics.add_metric(name="EntityWebhookRefused", unit="Count", value=1)
        return not_found
    try:
        raw = app.current_event.decoded_body or ""
        if len(raw.encode()) > MAX_ENTITY_WEBHOOK_BYTES:
            return _json(413, {"success": False, "message": "body too large"})
        webhook = EntityWebhook.model_validate_json(raw)
    except (ValidationError, ValueError):
        return _json(400, {"success": False,
                           "message": "expected JSON with company_id, resource, resource_id, status"})
    if webhook.company_id != salon:
        return _json(400, {"success": False, "message": "company_id does not match this URL"})
    message_id = entity_queue().put(salon, webhook)
    metrics.add_metric(name="EntityWebhookQueued", unit="Count", value=1)
    logger.info("entity webhook queued", extra={"salon_id": salon, "resource": webhook.resource,
                                                "status": webhook.status, "message_id": message_id})
    return _json(200, {"success": True})


@app.get("/marketplace/health-check")
def health_check() -> Response:
    """For YClients and uptime checks, unauthenticated: ok (200) when the store answers and a
    runner's heartbeat is fresh, not ok (503) otherwise, and nothing more. Which part failed,
    the heartbeat's age and the store's details are for ops only (`python -m ops doctor`, logs)."""
    try:
        heartbeat = store().members.latest_heartbeat()  # also the reachability probe: one read, not two
    except Exception:
        logger.exception("health check: store unreachable")
        heartbeat = None
    age = time.time() - heartbeat if heartbeat is not None else None
    healthy = age is not None and age < RUNNER_STALE_SECONDS
    if not healthy:
        logger.warning("health check: not ok", extra={"runner_heartbeat_age_seconds": age})
    return _json(200 if healthy else 503, {"success": healthy, "status": "ok" if healthy else "unavailable"})


@app.exception_handler(Exception)
def unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error")
    return _json(503, {"success": False, "message": "temporary error, retry later"})


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    idempotency_config.register_lambda_context(context)
    return app.resolve(event, context)
