"""AI Admin's messages API: send a message through a salon's linked WhatsApp, and read its status.

- POST /salons/{salon_id}/messages `{"id", "to", "text"}`: accepted into the salon's outbox
  (202, the same answer for a replay of the same id); the runner that owns the salon's session
  sends it at the salon's pace.
- GET /salons/{salon_id}/messages/{message_id}: the message's status (`aiadmin.messages`).

Authentication is API Gateway's (IAM, SigV4 from AI Admin's role; the local stack's gateway
checks a bearer key instead): nothing here. Every refusal is a 4xx with `{"error": <code>, ...}`
and writes nothing."""

from __future__ import annotations

import json
import re
import time
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.event_handler import APIGatewayHttpResolver, Response, content_types
from aws_lambda_powertools.utilities.typing import LambdaContext

from aiadmin.observability import logger, metrics, tracer

if TYPE_CHECKING:
    from aiadmin.db import Store
    from aiadmin.settings import MessagesSettings

# Cold start: the settings (pydantic-settings), the store and the message models are imported by
# the first request, not with this module.
FIRST_USE_IMPORTS = ("aiadmin.settings", "aiadmin.db", "aiadmin.models", "aiadmin.messages", "aiadmin.db.messages")
# A message's text is 4096 characters at most; as JSON with every character escaped (`\ud83d\ude00`
# is 12 bytes for one emoji) that is under 50 KiB. Past this the body is refused unread.
MAX_BODY_BYTES = 64 * 1024
# What a full outbox asks the caller to wait: about a minute of sending at the salon's pace.
BACKLOG_RETRY_AFTER_SECONDS = 60
# A caller's id as `aiadmin.messages.CallerId` takes it (anything else names no message).
_CALLER_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


@cache
def settings() -> MessagesSettings:
    from aiadmin.settings import MessagesSettings

    return MessagesSettings.load()


def store() -> Store:
    from aiadmin.db import open_store

    return open_store(settings().table_name)


app = APIGatewayHttpResolver()


def _json(status: int, body: dict[str, Any], headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, content_type=content_types.APPLICATION_JSON,
                    body=json.dumps(body, ensure_ascii=False), headers=headers)


def _refused(status: int, error: str, headers: dict[str, str] | None = None, **details: Any) -> Response:
    metrics.add_metric(name="MessageRefused", unit="Count", value=1)
    return _json(status, {"error": error, **details}, headers)


def _status_url(salon_id: int, message_id: str) -> str:
    return f"/salons/{salon_id}/messages/{message_id}"


def _read_request(salon_id: int) -> Any:
    """The body as an `OutboundRequest`, or the refusal (a Response)."""
    from pydantic import ValidationError

    from aiadmin.messages import OutboundRequest

    raw_body = app.current_event.body or ""
    if len(raw_body) > MAX_BODY_BYTES * 2:  # base64 or not, far past the bound: not even decoded
        return _refused(413, "body_too_large", max_bytes=MAX_BODY_BYTES)
    try:
        raw = app.current_event.decoded_body or ""  # not UTF-8: ValueError
    except ValueError:
        return _refused(400, "invalid_request", message="the body is not UTF-8 JSON")
    if len(raw.encode("utf-8", "surrogatepass")) > MAX_BODY_BYTES:
        return _refused(413, "body_too_large", max_bytes=MAX_BODY_BYTES)
    try:
        return OutboundRequest.model_validate_json(raw)
    except ValidationError as exc:
        problems = [{"field": ".".join(str(part) for part in detail["loc"]) or "body",
                     "message": detail["msg"].removeprefix("Value error, ")}
                    for detail in exc.errors(include_input=False, include_url=False)]
        fields = ", ".join(problem["field"] for problem in problems)
        return _refused(400, "invalid_request", message=f"invalid or missing: {fields}", fields=problems)


@app.post("/salons/<salon_id>/messages")
@tracer.capture_method
def send_message(salon_id: str) -> Response:
    from aiadmin.db.messages import EnqueueRefused
    from aiadmin.models import parse_salon_id
    from aiadmin.states import SalonState

    salon = parse_salon_id(salon_id)
    if salon is None:
        return _refused(404, "salon_not_found")
    request = _read_request(salon)
    if isinstance(request, Response):
        return request
    record = store().salons.get(salon)
    if record is None:
        return _refused(404, "salon_not_found")
    # A replay of a message accepted while the salon was active still gets its status (the
    # enqueue below writes nothing for it); anything new is refused.
    if record.state != SalonState.ACTIVE and store().messages.get(salon, request.id) is None:
        return _refused(409, "salon_not_active", state=record.state.value)
    try:
        status, created = store().messages.enqueue(salon, request, time.time(), settings().messages_outbox_max)
    except EnqueueRefused as exc:
        logger.info("message refused", extra={"salon_id": salon, "reason": exc.code})
        if exc.code == "backlog_full":
            return _refused(429, exc.code, {"Retry-After": str(BACKLOG_RETRY_AFTER_SECONDS)},
                            max_queued=settings().messages_outbox_max)
        return _refused(409, exc.code)
    if created:
        metrics.add_metric(name="MessageAccepted", unit="Count", value=1)
        logger.info("message accepted", extra={"salon_id": salon, "message_id": request.id})
    else:
        metrics.add_metric(name="MessageReplayed", unit="Count", value=1)
    return _json(202, {**status.model_dump(mode="json"), "status_url": _status_url(salon, request.id)})


@app.get("/salons/<salon_id>/messages/<message_id>")
@tracer.capture_method
def message_status(salon_id: str, message_id: str) -> Response:
    from aiadmin.models import parse_salon_id

    salon = parse_salon_id(salon_id)
    if salon is None or not _CALLER_ID.fullmatch(message_id):
        return _json(404, {"error": "message_not_found"})
    status = store().messages.get(salon, message_id)
    if status is None:
        return _json(404, {"error": "message_not_found"})
    return _json(200, {**status.model_dump(mode="json"), "status_url": _status_url(salon, message_id)})


@app.not_found
def not_found(_exc: Exception) -> Response:
    return _json(404, {"error": "not_found"})


@app.exception_handler(Exception)
def unexpected(exc: Exception) -> Response:
    logger.exception("unexpected error")
    return _json(503, {"error": "temporarily_unavailable", "message": "temporary error, retry later"},
                 {"Retry-After": "5"})


@logger.inject_lambda_context
@metrics.log_metrics
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    return app.resolve(event, context)
