"""Salon state items (pk `SALON#<id>`, sk `STATE`): reads, and the writes that are not state
changes (a binding, profile fields, seeding). State changes go through `aiadmin.db.transitions`."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from boto3.dynamodb.conditions import Attr

from aiadmin.db.dynamo import batch_get, conditional_write, from_dynamo, query_all, salon_pk, set_clause, to_dynamo
from aiadmin.models import Salon

STATE_SK = "STATE"


def state_key(salon_id: int) -> dict[str, str]:
    return {"pk": salon_pk(salon_id), "sk": STATE_SK}


class Salons:
    """The salons' records. `table` is a boto3 Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, salon_id: int) -> Salon | None:
        item = self._table.get_item(Key=state_key(salon_id), ConsistentRead=True).get("Item")
        return Salon.model_validate(from_dynamo(item)) if item else None

    def get_many(self, salon_ids: Iterable[int]) -> dict[int, Salon]:
        """Several salons' records, read consistently, 100 per request (a mass resume reads the
        salons of a claim page in one call instead of one each)."""
        items = batch_get(self._table, map(state_key, dict.fromkeys(salon_ids)))
        return {salon.salon_id: salon for salon in map(Salon.model_validate, items)}

    def all(self) -> Iterator[Salon]:
        """Every salon record, page by page (a Scan: for ops tools, never on a request path)."""
        return (Salon.model_validate(item)
                for item in query_all(self._table, scan=True, FilterExpression=Attr("sk").eq(STATE_SK)))

    def put(self, salon: Salon) -> None:
        """Write a salon record as it is, with no state-machine check and no event: for
        seeding tests and benchmarks with many salons at once (state changes are transitions)."""
        item = {**salon.model_dump(exclude_none=True), "state": salon.state.value}
        self._table.put_item(Item=to_dynamo({**item, **state_key(salon.salon_id)}))

    def bind_owner(self, salon_id: int, user_id: str, consent_id: str) -> Salon | None:
        """Bind an existing, unbound salon to the YClients user who consented, with a new consent
        (`consent_id`: the tokens of the unbound consents end; see `aiadmin.onboarding`). The
        salon as bound; None when it is bound already, to anyone, meanwhile."""
        response = conditional_write(
            self._table.update_item,
            Key=state_key(salon_id),
            UpdateExpression="SET owner_user_id = :u, consent_id = :c ADD version :one",
            ConditionExpression=("attribute_exists(pk) AND (attribute_not_exists(owner_user_id) OR "
                                 "attribute_type(owner_user_id, :null))"),
            ExpressionAttributeValues={":u": user_id, ":c": consent_id, ":null": "NULL", ":one": 1},
            ReturnValues="ALL_NEW",
        )
        return Salon.model_validate(from_dynamo(response["Attributes"])) if response else None

    def update_profile(self, salon_id: int, attrs: Mapping[str, Any]) -> Salon:
        """Set descriptive fields (names, consent) that do not change the state; the salon as
        written."""
        update, names, values = set_clause(attrs)
        response = self._table.update_item(
            Key=state_key(salon_id), UpdateExpression=update, ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames=names, ExpressionAttributeValues=values, ReturnValues="ALL_NEW",
        )
        return Salon.model_validate(from_dynamo(response["Attributes"]))

    @staticmethod
    def from_image(image: Mapping[str, Any]) -> Salon:
        """A `Salon` from a stream record's deserialised new image."""
        return Salon.model_validate(from_dynamo(dict(image)))
