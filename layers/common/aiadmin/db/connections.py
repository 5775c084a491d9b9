"""Page sockets: a salon's fixed socket slots (pk `SALON#<id>`, sk `CONN#<0..n-1>`, read by the
fan-out) and each connection's own item (pk `CONN#<connection id>`, sk `CONN`, read by
`$default`), with the token each was opened with and its message counts; and the per-token
message counts (pk `TOKEN#<token id>`).

`$connect` takes a free or stale slot with a conditional write, so the bound holds under
concurrent connects and the fan-out reads at most n items."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from boto3.dynamodb.conditions import Key

from aiadmin.db.dynamo import conditional_write, conditionally, salon_pk, set_clause, to_dynamo

# API Gateway closes a WebSocket after 2 hours at most: a slot whose $disconnect was lost is
# free again after that.
CONNECTION_TTL_SECONDS = 2 * 3600


@dataclass(frozen=True)
class ConnectionRecord:
    """A socket as `$default` sees it: its salon, its token (expiry, consent, id), and the
    messages counted in this window on the socket and on its token (None: recorded without a
    token id)."""

    salon_id: int
    token_exp: float | None
    messages: int
    consent_id: str | None = None
    token_id: str | None = None
    slot: int | None = None
    token_messages: int | None = None


@dataclass(frozen=True)
class PageSocket:
    """One of a salon's socket slots as the fan-out sees it: the connection and its token."""

    connection_id: str
    consent_id: str | None
    token_exp: float | None

    def ended(self, consent_id: str | None, now: float) -> str | None:
        """Why this socket may receive nothing of the salon whose consent is `consent_id`:
        `token_expired`, `token_revoked`; None while it is of that consent and unexpired. A
        socket recorded without its token's expiry counts as expired."""
        if self.token_exp is None or self.token_exp <= now:
            return "token_expired"
        if self.consent_id != consent_id:
            return "token_revoked"
        return None


def _connection_key(connection_id: str) -> dict[str, str]:
    return {"pk": f"CONN#{connection_id}", "sk": "CONN"}


def _slot_key(salon_id: int, slot: int | str) -> dict[str, str]:
    return {"pk": salon_pk(salon_id), "sk": f"CONN#{slot}"}


def _token_fields(token_exp: float | None, consent_id: str | None, token_id: str | None) -> dict[str, Any]:
    """What a socket's items keep of the token it was opened with."""
    fields: dict[str, Any] = {}
    if token_exp is not None:
        fields["token_exp"] = to_dynamo(token_exp)
    if consent_id is not None:
        fields["consent_id"] = consent_id
    if token_id is not None:
        fields["token_id"] = token_id
    return fields


class Connections:
    """Records, counts and forgets page sockets. `table` is a boto3 Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._client = table.meta.client

    def add(self, connection_id: str, salon_id: int, now: float | None = None, token_exp: float | None = None,
            max_per_salon: int = 5, consent_id: str | None = None, token_id: str | None = None) -> bool:
        """Record a connection in one of the salon's `max_per_salon` slots; False (nothing
        written) when every slot is held by a live connection.

        A slot is taken with a conditional write (free, or held past `held_until`), in one
        transaction with the connection's own item: concurrent connects never share a slot,
        so the bound holds without a read-modify-write of a counter. The token's expiry, consent
        and id are kept with both: `$default` refuses commands once the token has expired or its
        consent ended, counts messages per token, and the fan-out sends nothing to such a socket."""
        moment = now if now is not None else time.time()
        held_until = int(moment) + CONNECTION_TTL_SECONDS
        token = _token_fields(token_exp, consent_id, token_id)
        for slot in self._free_slots(salon_id, moment, max_per_salon):
            if conditionally(self._client.transact_write_items, TransactItems=[
                {"Put": {
                    "TableName": self._table.name,
                    "Item": {**_slot_key(salon_id, slot), "connection_id": connection_id,
                             "held_until": held_until, "ttl": held_until, **token},
                    "ConditionExpression": "attribute_not_exists(pk) OR held_until < :now",
                    "ExpressionAttributeValues": {":now": int(moment)},
                }},
                {"Put": {"TableName": self._table.name, "Item": {
                    **_connection_key(connection_id), "salon_id": salon_id, "slot": slot,
                    "ttl": held_until, **token}}},
            ]):
                return True
            # Another connection took this slot first: try the next free one.
        return False

    def _free_slots(self, salon_id: int, now: float, max_per_salon: int) -> list[int]:
        """The salon's slots that look free or stale (a consistent read of at most n items);
        the conditional write in `add` decides."""
        held = {
            int(str(item["sk"]).removeprefix("CONN#"))
            for item in self._query_slots(salon_id, "sk, held_until")
            if str(item["sk"]).removeprefix("CONN#").isdigit() and float(item.get("held_until", 0)) >= now
        }
        return [slot for slot in range(max_per_salon) if slot not in held]

    def _query_slots(self, salon_id: int, projection: str) -> list[dict[str, Any]]:
        response = self._table.query(
            KeyConditionExpression=Key("pk").eq(salon_pk(salon_id)) & Key("sk").begins_with("CONN#"),
            ProjectionExpression=projection, ConsistentRead=True,
        )
        return list(response["Items"])

    def salon_of(self, connection_id: str) -> int | None:
        item = self._table.get_item(Key=_connection_key(connection_id)).get("Item")
        return int(item["salon_id"]) if item else None

    def count_message(self, connection_id: str, window: int) -> ConnectionRecord | None:
        """Count one message of the connection in fixed window `window` (an index, e.g. epoch
        seconds // 10) on the socket and on its token (`TOKEN#<token id>`: the sockets of one
        token share that count) and return the connection with both counts so far, this message
        included; None when the connection is unknown. A socket's first message (the page's
        opening `sync`) is not counted on the token: it is paid for by its `$connect`, so a page
        reloaded again and again with one token keeps working. Atomic (ADD under a condition on
        the window), so concurrent messages are all counted."""
        item = self._count_in_window(_connection_key(connection_id), window)
        if item is None:
            return None
        token_id, exp = item.get("token_id"), item.get("token_exp")
        token_messages = None
        if token_id is not None and int(item.get("msg_total", 1)) > 1:
            # The count outlives the token's sockets' messages by a window at most.
            ttl = int(float(exp)) + 60 if exp is not None else int(time.time()) + CONNECTION_TTL_SECONDS
            counted = self._count_in_window({"pk": f"TOKEN#{token_id}", "sk": "TOKEN"}, window, ttl=ttl)
            token_messages = int(counted["msg_count"]) if counted is not None else None
        return ConnectionRecord(salon_id=int(item["salon_id"]), token_exp=float(exp) if exp is not None else None,
                                messages=int(item["msg_count"]), consent_id=item.get("consent_id"),
                                token_id=str(token_id) if token_id is not None else None,
                                slot=int(item["slot"]) if "slot" in item else None, token_messages=token_messages)

    def _count_in_window(self, key: Mapping[str, str], window: int,
                         ttl: int | None = None) -> dict[str, Any] | None:
        """ADD one to the item's count (`msg_count`) for `window`; a new window starts at one.
        Returns the item as it is now. With `ttl` the item may be new (a token's count); without,
        it must exist (a connection's): None when it does not."""
        exists = "attribute_exists(pk) AND " if ttl is None else ""
        for _ in range(2):
            for update, condition in (
                # `msg_total`: every message the item has counted (a socket's first is its opener).
                ("ADD msg_count :one, msg_total :one", "attribute_exists(pk) AND msg_window = :w"),
                ("SET msg_window = :w, msg_count = :one" + (", #ttl = :ttl" if ttl is not None else "")
                 + " ADD msg_total :one", exists + "(attribute_not_exists(msg_window) OR msg_window <> :w)"),
            ):
                values: dict[str, Any] = {":w": window, ":one": 1}
                extra: dict[str, Any] = {}
                if "#ttl" in update:
                    values[":ttl"] = ttl
                    extra["ExpressionAttributeNames"] = {"#ttl": "ttl"}
                response = conditional_write(
                    self._table.update_item, Key=dict(key), UpdateExpression=update, ConditionExpression=condition,
                    ExpressionAttributeValues=values, ReturnValues="ALL_NEW", **extra)
                if response is not None:
                    return dict(response["Attributes"])
            # Both refused: the connection is gone, or a concurrent message just opened the window.
        return None

    def reissue_items(self, connection_id: str, salon_id: int, slot: int | None, token_exp: float,
                      consent_id: str, token_id: str) -> list[dict[str, Any]]:
        """The transaction items that move a socket onto a new token (the consent its owner's
        re-link starts): its connection item and its slot, both only while they still hold it.
        Written with the state change that starts the consent, so no push of the new consent
        ever finds the owner's own socket on the old one."""
        update, names, values = set_clause(_token_fields(token_exp, consent_id, token_id), "t")
        items: list[dict[str, Any]] = [{"Update": {
            "TableName": self._table.name, "Key": _connection_key(connection_id),
            "UpdateExpression": update, "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}}]
        if slot is not None:
            items.append({"Update": {
                "TableName": self._table.name, "Key": _slot_key(salon_id, slot),
                "UpdateExpression": update, "ConditionExpression": "connection_id = :c",
                "ExpressionAttributeNames": names, "ExpressionAttributeValues": {**values, ":c": connection_id}}})
        return items

    def remove(self, connection_id: str, salon_id: int | None = None) -> None:
        """Forget a connection and free its slot; harmless when it is already gone (a replayed
        $disconnect). The slot is freed only while it still holds this connection."""
        item = self._table.get_item(Key=_connection_key(connection_id), ConsistentRead=True).get("Item")
        if item is not None:
            salon_id = int(item["salon_id"])
        self._table.delete_item(Key=_connection_key(connection_id))
        if salon_id is None:
            return
        slots = [item["slot"]] if item is not None and "slot" in item else [
            str(slot["sk"]).removeprefix("CONN#") for slot in self._query_slots(salon_id, "sk, connection_id")
            if slot.get("connection_id") == connection_id]
        for slot in slots:
            conditionally(self._table.delete_item, Key=_slot_key(salon_id, slot),
                          ConditionExpression="connection_id = :c", ExpressionAttributeValues={":c": connection_id})

    def ids_of(self, salon_id: int) -> list[str]:
        return [socket.connection_id for socket in self.sockets_of(salon_id)]

    def sockets_of(self, salon_id: int) -> list[PageSocket]:
        """The salon's sockets with their tokens' consent and expiry (at most `max_per_salon`
        items, one consistent query)."""
        return [PageSocket(str(item["connection_id"]), item.get("consent_id"),
                           float(item["token_exp"]) if "token_exp" in item else None)
                for item in self._query_slots(salon_id, "connection_id, consent_id, token_exp")
                if "connection_id" in item]
