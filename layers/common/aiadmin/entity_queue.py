"""The entity webhook queue (`EntityQueue` in template.yaml): webhooks YClients sends about a
salon's records and clients, kept for the bot. The only access to SQS."""

from __future__ import annotations

import json
import time
from typing import Any

from aiadmin.models import EntityWebhook


class EntityQueue:
    """`sqs` is a boto3 SQS client."""

    def __init__(self, sqs: Any, queue_url: str) -> None:
        self._sqs = sqs
        self._queue_url = queue_url

    def put(self, salon_id: int, webhook: EntityWebhook, received_at: float | None = None) -> str:
        body = {"salon_id": salon_id, "received_at": received_at or time.time(), "webhook": webhook.model_dump()}
        response = self._sqs.send_message(
            QueueUrl=self._queue_url,
            MessageBody=json.dumps(body, ensure_ascii=False),
            MessageAttributes={
                "salon_id": {"DataType": "Number", "StringValue": str(salon_id)},
                "resource": {"DataType": "String", "StringValue": webhook.resource},
            },
        )
        return str(response["MessageId"])
