"""The runner's half of outbound messages (keys in `aiadmin.db.message_keys`): the salon's
outbox in order, each message's way through `sending` to `sent` (or `failed`, `unknown`), the
receipts that move it on, and which clients wrote first. Every write of a message's status is
fenced on the session being the writing runner's (`Sessions.fence_checks`): after a takeover
only the new owner records anything."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.conditions import Key

from aiadmin.db.dynamo import batch_get, conditional_write, conditionally, from_dynamo, salon_pk, set_clause, to_dynamo
from aiadmin.db.memberships import Fence
from aiadmin.db.message_keys import RECEIPT_POINTER_TTL_SECONDS, chat_sk, message_sk, receipt_sk
from aiadmin.db.sessions import Sessions, session_key
from aiadmin.messages import STATUS_ORDER, MessageStatus

# A client's chat counts as one they opened for this long after their last message (WhatsApp's
# own customer-service window is 24 hours).
CONVERSATION_SECONDS = 24 * 3600


@dataclass(frozen=True)
class QueuedMessage:
    """One entry of a salon's outbox, oldest first."""

    salon_id: int
    queue_sk: str
    caller_id: str
    to: str          # international digits
    text: str
    status: MessageStatus = MessageStatus.QUEUED  # the message's own status, read with the entry


class Outbox:
    """Reads and moves a salon's outbound messages. `table` is a boto3 Table resource."""

    def __init__(self, table: Any, sessions: Sessions) -> None:
        self._table = table
        self._client = table.meta.client
        self._sessions = sessions

    def pending(self, salon_id: int, limit: int = 50) -> list[QueuedMessage]:
        """The outbox's first `limit` entries in order (a consistent query of the queue items
        only: sent messages leave it), each with its message's status."""
        response = self._table.query(
            KeyConditionExpression=Key("pk").eq(salon_pk(salon_id)) & Key("sk").begins_with("Q#"),
            ConsistentRead=True, Limit=limit)
        entries = [from_dynamo(item) for item in response["Items"]]
        statuses = self._statuses(salon_id, [str(entry["id"]) for entry in entries])
        return [QueuedMessage(salon_id, str(entry["sk"]), str(entry["id"]), str(entry["to"]),
                              str(entry["text"]), statuses.get(str(entry["id"]), MessageStatus.QUEUED))
                for entry in entries]

    def _statuses(self, salon_id: int, caller_ids: list[str]) -> dict[str, MessageStatus]:
        if not caller_ids:
            return {}
        keys = [{"pk": salon_pk(salon_id), "sk": message_sk(caller_id)} for caller_id in dict.fromkeys(caller_ids)]
        return {str(item["id"]): MessageStatus(str(item["status"]))
                for item in batch_get(self._table, keys, ("id", "status"))}

    def start_sending(self, entry: QueuedMessage, fence: Fence, now: float) -> bool:
        """`queued` -> `sending`, recorded before the message is handed to WhatsApp: a runner that
        stops after this and before `sent` leaves it `sending`, which the next owner turns into
        `unknown` (never sent twice). False when it is not queued any more or not ours."""
        return conditionally(self._client.transact_write_items, TransactItems=[
            self._status_update(entry, MessageStatus.SENDING, now, "#s = :queued", {":queued": "queued"}),
            *self._sessions.fence_checks(entry.salon_id, fence)])

    def requeue(self, entry: QueuedMessage, fence: Fence, now: float) -> bool:
        """`sending` -> `queued` again, when the engine said nothing was sent (not connected)."""
        return conditionally(self._client.transact_write_items, TransactItems=[
            self._status_update(entry, MessageStatus.QUEUED, now, "#s = :sending", {":sending": "sending"}),
            *self._sessions.fence_checks(entry.salon_id, fence)])

    def finish(self, entry: QueuedMessage, fence: Fence, now: float, status: MessageStatus,
               reason: str | None = None, wa_id: str | None = None) -> bool:
        """The message leaves the outbox as `sent` (with WhatsApp's id, kept for its receipts),
        `failed` (`reason`) or `unknown`; the salon's outbox count goes down. One transaction,
        fenced; False when not ours (the next owner finds it and decides)."""
        fields: dict[str, Any] = {}
        if reason is not None:
            fields["reason"] = reason
        if wa_id is not None:
            fields["wa_message_id"] = wa_id
        items: list[dict[str, Any]] = [
            self._status_update(entry, status, now, "attribute_exists(pk)", {}, fields),
            {"Delete": {"TableName": self._table.name, "Key": {"pk": salon_pk(entry.salon_id), "sk": entry.queue_sk}}},
            {"Update": {"TableName": self._table.name, "Key": session_key(entry.salon_id),
                        "UpdateExpression": "ADD queued :minus", "ExpressionAttributeValues": {":minus": -1}}},
        ]
        if wa_id is not None:
            items.append({"Put": {"TableName": self._table.name, "Item": {
                "pk": salon_pk(entry.salon_id), "sk": receipt_sk(wa_id), "caller_id": entry.caller_id,
                "ttl": int(now) + RECEIPT_POINTER_TTL_SECONDS}}})
        # The fence last: the session item is also updated above, and a transaction may hold an
        # item once only, so the count's update carries the fence's condition instead.
        fence_check = self._sessions.fence_checks(entry.salon_id, fence)[0]["ConditionCheck"]
        items[2]["Update"].update(ConditionExpression=fence_check["ConditionExpression"],
                                  ExpressionAttributeNames=fence_check["ExpressionAttributeNames"])
        items[2]["Update"]["ExpressionAttributeValues"].update(fence_check["ExpressionAttributeValues"])
        return conditionally(self._client.transact_write_items, TransactItems=items)

    def _status_update(self, entry: QueuedMessage, status: MessageStatus, now: float, condition: str,
                       values: dict[str, Any], fields: dict[str, Any] | None = None) -> dict[str, Any]:
        expression, names, sets = set_clause({"status": status.value, "updated_at": now, **(fields or {})})
        return {"Update": {
            "TableName": self._table.name, "Key": {"pk": salon_pk(entry.salon_id), "sk": message_sk(entry.caller_id)},
            "UpdateExpression": expression, "ConditionExpression": condition,
            "ExpressionAttributeNames": {**names, **({"#s": "status"} if "#s" in condition else {})},
            "ExpressionAttributeValues": {**sets, **values}}}

    def receipt(self, salon_id: int, wa_id: str, status: MessageStatus, now: float) -> str | None:
        """A delivery or read receipt for a message we sent: its status moves forward (never back:
        a late `delivered` after `read` changes nothing). The caller's id of the message, or
        None when the WhatsApp id is not one of ours (sent from the salon's phone)."""
        pointer = self._table.get_item(Key={"pk": salon_pk(salon_id), "sk": receipt_sk(wa_id)}).get("Item")
        if pointer is None:
            return None
        caller_id = str(pointer["caller_id"])
        earlier = [s.value for s, rank in STATUS_ORDER.items() if rank < STATUS_ORDER[status]]
        conditional_write(
            self._table.update_item, Key={"pk": salon_pk(salon_id), "sk": message_sk(caller_id)},
            UpdateExpression="SET #s = :s, updated_at = :now",
            ConditionExpression="#s IN (" + ", ".join(f":e{i}" for i in range(len(earlier))) + ")",
            ExpressionAttributeNames={"#s": "status"},
            ExpressionAttributeValues={":s": status.value, ":now": to_dynamo(now),
                                       **{f":e{i}": value for i, value in enumerate(earlier)}})
        return caller_id

    def note_client_wrote(self, salon_id: int, phone: str, at: float) -> None:
        """The client wrote to the salon: their chat is a conversation for a while (paced as one)."""
        self._table.put_item(Item={"pk": salon_pk(salon_id), "sk": chat_sk(phone), "last_in": to_dynamo(at),
                                   "ttl": int(at) + CONVERSATION_SECONDS})

    def client_wrote_since(self, salon_id: int, phone: str, since: float) -> bool:
        item = self._table.get_item(Key={"pk": salon_pk(salon_id), "sk": chat_sk(phone)},
                                    ConsistentRead=True).get("Item")
        return item is not None and float(item.get("last_in", 0)) >= since
