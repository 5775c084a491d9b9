"""Messages AI Admin sends through a salon's WhatsApp: the API's half (`enqueue`, `get`). The
runner's half (draining the outbox, statuses, receipts) is `aiadmin.db.outbox`; where the items
live is `aiadmin.db.message_keys`.

`enqueue` is one transaction of three items, in this order (a cancellation's reasons are read by
index):

0. Put `MSG#<caller id>`: `salon_id`, `id`, `to` (E.164), `text`, `status` (`queued`),
   `created_at`, `updated_at`, `queue_sk` (the outbox item's sort key), `ttl`; on condition that
   no message of that id exists (the caller's id makes a replay send once);
1. Put `Q#<ms>#<caller id>`: the outbox entry the runner drains in order: `id`, `to` (digits,
   no `+`), `text`, `enqueued_at`;
2. Update `SESSION`: `ADD queued 1` (the bounded backlog, which the runner counts down as
   messages leave the outbox) and a nudge like a command (`command_seq`, the owner's index key,
   see `aiadmin.db.sessions`), so the runner that owns the session, or after a takeover the new
   owner, drains the outbox within its command poll; on condition that the session exists, is
   linked (`desired = run`) and its backlog is under the bound.

A replay (same id, same `to` and `text`) changes nothing and gets the message's current status; the
same id with another `to` or `text` is `IdReused`."""

from __future__ import annotations

import time
from typing import Any

from botocore.exceptions import ClientError

from aiadmin.db.dynamo import from_dynamo, is_condition_failure, salon_pk, to_dynamo
from aiadmin.db.message_keys import MESSAGE_TTL_SECONDS, message_sk, queue_sk
from aiadmin.db.sessions import claim_keys, session_key
from aiadmin.messages import MessageStatus, OutboundRequest, OutboundStatus

# Transaction items by index (see the module's docstring).
_MESSAGE, _OUTBOX, _SESSION = 0, 1, 2
# A transaction cancelled by another one on the same items (two replays at once) is tried again.
_ATTEMPTS = 4
_CONFLICT_PAUSE_SECONDS = 0.05


class EnqueueRefused(Exception):
    """The message was not accepted; nothing was written. `code` is the API's error code."""

    code = "refused"


class IdReused(EnqueueRefused):
    """A message with this id exists with another `to` or `text`."""

    code = "id_reused"


class BacklogFull(EnqueueRefused):
    """The salon's outbox holds `max_backlog` messages not yet sent."""

    code = "backlog_full"


class SalonNotLinked(EnqueueRefused):
    """The salon has no linked WhatsApp session to send through (none, or not `run`)."""

    code = "salon_not_linked"


def message_key(salon_id: int, caller_id: str) -> dict[str, str]:
    return {"pk": salon_pk(salon_id), "sk": message_sk(caller_id)}


def _reasons(exc: ClientError) -> list[str]:
    return [str(reason.get("Code") or "None") for reason in exc.response.get("CancellationReasons") or []]


class Messages:
    """The salons' outbound messages, as the API sees them. `table` is a boto3 Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._client = table.meta.client

    def get(self, salon_id: int, caller_id: str) -> OutboundStatus | None:
        item = self._table.get_item(Key=message_key(salon_id, caller_id), ConsistentRead=True).get("Item")
        return OutboundStatus.model_validate(from_dynamo(item)) if item else None

    def enqueue(self, salon_id: int, request: OutboundRequest, now: float | None = None,
                max_backlog: int = 500) -> tuple[OutboundStatus, bool]:
        """Accept `request` into the salon's outbox: (its status, True) when it was written now,
        (the existing message's status, False) for a replay. Raises `IdReused`, `BacklogFull` or
        `SalonNotLinked` (nothing written)."""
        now = time.time() if now is None else now
        for attempt in range(_ATTEMPTS):
            try:
                self._client.transact_write_items(TransactItems=self._items(salon_id, request, now, max_backlog))
            except ClientError as exc:
                if not is_condition_failure(exc):
                    raise
                reasons = _reasons(exc)
                if len(reasons) > _MESSAGE and reasons[_MESSAGE] == "ConditionalCheckFailed":
                    return self._replay(salon_id, request), False
                if "TransactionConflict" in reasons and attempt + 1 < _ATTEMPTS:
                    time.sleep(_CONFLICT_PAUSE_SECONDS * (attempt + 1))
                    continue
                if len(reasons) > _SESSION and reasons[_SESSION] == "ConditionalCheckFailed":
                    raise self._session_refusal(salon_id, exc) from None
                # No reasons we can read (a conflict to the end, or an unexpected answer): the
                # message may or may not be there; a replay of the same request decides.
                existing = self.get(salon_id, request.id)
                if existing is not None:
                    return self._replay(salon_id, request), False
                raise
            return self._as_written(salon_id, request, now), True
        raise AssertionError("unreachable")  # pragma: no cover

    def _items(self, salon_id: int, request: OutboundRequest, now: float, max_backlog: int) -> list[dict[str, Any]]:
        table = self._table.name
        outbox_sk = queue_sk(now, request.id)
        message = {
            **message_key(salon_id, request.id), "salon_id": salon_id, "id": request.id, "to": request.to,
            "text": request.text, "status": MessageStatus.QUEUED.value, "created_at": now, "updated_at": now,
            "queue_sk": outbox_sk, "ttl": int(now) + MESSAGE_TTL_SECONDS,
        }
        outbox = {"pk": salon_pk(salon_id), "sk": outbox_sk, "id": request.id, "to": request.to_digits,
                  "text": request.text, "enqueued_at": now}
        return [
            {"Put": {"TableName": table, "Item": to_dynamo(message),
                     "ConditionExpression": "attribute_not_exists(pk)"}},
            {"Put": {"TableName": table, "Item": to_dynamo(outbox)}},
            {"Update": {
                "TableName": table, "Key": session_key(salon_id),
                # Counted, and nudged like a command: the owner's command poll finds it (see
                # aiadmin.db.sessions, `command_item`); an owner-less session becomes claimable.
                "UpdateExpression": ("ADD queued :one SET command_seq = if_not_exists(command_seq, :zero) + :one, "
                                     "session_pk = if_not_exists(owner_pk, :cpk), session_sk = :csk"),
                "ConditionExpression": ("attribute_exists(pk) AND desired = :run AND "
                                        "(attribute_not_exists(queued) OR queued < :max)"),
                "ExpressionAttributeValues": {":one": 1, ":zero": 0, ":run": "run", ":max": max_backlog,
                                              **claim_keys("run", salon_id, now)},
                "ReturnValuesOnConditionCheckFailure": "ALL_OLD",
            }},
        ]

    def _replay(self, salon_id: int, request: OutboundRequest) -> OutboundStatus:
        item = self._table.get_item(Key=message_key(salon_id, request.id), ConsistentRead=True).get("Item")
        if item is None:  # written and gone (its TTL) between the refusal and this read: rare
            raise IdReused(request.id)
        stored = from_dynamo(item)
        if stored.get("to") != request.to or stored.get("text") != request.text:
            raise IdReused(request.id)
        return OutboundStatus.model_validate(stored)

    def _session_refusal(self, salon_id: int, exc: ClientError) -> EnqueueRefused:
        """Why the session refused the message: a full backlog, or no linked session."""
        reasons = exc.response.get("CancellationReasons") or []
        old = reasons[_SESSION].get("Item") if len(reasons) > _SESSION else None
        if old is not None:
            session = from_dynamo(self._client_image(dict(old)))
        else:  # no item in the answer (none existed, or the service left it out): read it
            session = from_dynamo(self._table.get_item(Key=session_key(salon_id), ConsistentRead=True).get("Item"))
        if session and session.get("desired") == "run":
            return BacklogFull(salon_id)
        return SalonNotLinked(salon_id)

    @staticmethod
    def _client_image(image: dict[str, Any]) -> dict[str, Any]:
        """A cancellation reason's `Item` is in DynamoDB's typed form ({"S": ...}) even through
        a Table resource: read it as plain values."""
        from boto3.dynamodb.types import TypeDeserializer

        deserialise = TypeDeserializer().deserialize
        return {key: deserialise(value) for key, value in image.items()}

    @staticmethod
    def _as_written(salon_id: int, request: OutboundRequest, now: float) -> OutboundStatus:
        return OutboundStatus(id=request.id, salon_id=salon_id, to=request.to, status=MessageStatus.QUEUED,
                              created_at=now, updated_at=now)
