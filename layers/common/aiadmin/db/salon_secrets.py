"""Salon secrets (pk `SALON#<id>`, sk `SECRETS`): the salon's API key for YClients and its entity
webhook secret. They live in their own item, never on the state item: that one is streamed (the
state_stream consumer only receives `sk = STATE` records, see the template's FilterCriteria) and
copied into pages and logs through the `Salon` model. No GSI key attribute is ever set here."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiadmin.db.dynamo import salon_pk

SECRETS_SK = "SECRETS"


class SalonSecrets:
    """Reads and writes a salon's secrets. `table` is a boto3 Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def get(self, salon_id: int) -> dict[str, str]:
        """The salon's secrets (`api_key`, `webhook_secret`); empty when it has none."""
        item = self._table.get_item(
            Key={"pk": salon_pk(salon_id), "sk": SECRETS_SK}, ConsistentRead=True,
            ProjectionExpression="api_key, webhook_secret",
        ).get("Item") or {}
        # Only non-empty strings: a missing secret must never compare equal to anything.
        return {key: str(value) for key, value in item.items() if isinstance(value, str) and value}

    def put(self, salon_id: int, values: Mapping[str, str]) -> None:
        self._table.put_item(Item=self.item(salon_id, values))

    @staticmethod
    def item(salon_id: int, values: Mapping[str, str]) -> dict[str, Any]:
        """The secrets item as written (alone, or as a `Put` of a transition's transaction)."""
        return {"pk": salon_pk(salon_id), "sk": SECRETS_SK, **values}
