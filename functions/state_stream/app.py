"""The DynamoDB stream consumer: pushes salon state changes made outside the runner (lifecycle
webhooks, the page) to the salon's open sockets. Records are handled one by one (powertools'
BatchProcessor): a record that fails is reported alone (ReportBatchItemFailures), and Lambda
retries from it, not the whole batch."""

from __future__ import annotations

import time
from functools import cache
from typing import TYPE_CHECKING, Any

from aws_lambda_powertools.utilities.typing import LambdaContext
from pydantic import ValidationError

from aiadmin.db import Store
from aiadmin.db.salons import Salons
from aiadmin.models import Salon
from aiadmin.observability import logger, metrics
from aiadmin.onboarding import state_message
from aiadmin.push import Pusher, open_pusher, pushed_by_stream

if TYPE_CHECKING:
    from aws_lambda_powertools.utilities.batch import BatchProcessor
    from aws_lambda_powertools.utilities.batch.types import PartialItemFailureResponse
    from aws_lambda_powertools.utilities.data_classes.dynamo_db_stream_event import DynamoDBRecord

    from aiadmin.settings import StateStreamSettings

# Imported by the first batch (the settings, with pydantic-settings; powertools' batch utility), not
# with this module (cold start); a state showing a QR draws it with qrcode.
FIRST_USE_IMPORTS = ("aiadmin.settings", "qrcode.image.svg")


@cache
def settings() -> StateStreamSettings:
    from aiadmin.settings import StateStreamSettings

    return StateStreamSettings.load()


def store() -> Store:
    from aiadmin.db import open_store

    return open_store(settings().table_name)


def pusher() -> Pusher:
    return open_pusher(settings().websocket_management_url)


@cache
def processor() -> BatchProcessor:
    from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType

    return BatchProcessor(event_type=EventType.DynamoDBStreams)


def push_change(record: DynamoDBRecord) -> None:
    """One stream record: the salon's state as it is now, to its sockets, if this record is its
    latest version and the stream is the one to push it (aiadmin.push says who pushes what)."""
    image = record.dynamodb.new_image if record.dynamodb else None
    if not image or image.get("sk") != "STATE":
        return
    try:
        salon: Salon | None = Salons.from_image(image)
    except ValidationError:
        # A partial image (some stores stream keys only): read the item itself.
        salon = store().salons.get(int(str(image["pk"]).removeprefix("SALON#")))
    if salon is None or not pushed_by_stream(salon):
        return
    # The stream lags: by now the runner may have moved the salon on (a QR a few ms after the
    # consent) and pushed that itself. The page ignores older versions, but a page cached from
    # before versions did not: only the latest version is pushed; each later one has its own
    # record or was pushed by the runner.
    current = store().salons.get(salon.salon_id)
    if current is None or current.version != salon.version:
        return
    pusher().fan_out(store(), current, state_message(current, time.time()))


@logger.inject_lambda_context
@metrics.log_metrics
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> PartialItemFailureResponse:
    from aws_lambda_powertools.utilities.batch import process_partial_response

    return process_partial_response(event=event, record_handler=push_change, processor=processor(), context=context)
