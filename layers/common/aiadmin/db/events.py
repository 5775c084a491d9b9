"""The salon event log (pk `SALON#<id>`, sk `EVENT#<ms>#<random>`): who did what, when; kept
90 days. A state change writes its event in its own transaction (`aiadmin.db.transitions`)."""

from __future__ import annotations

import secrets
import time
from collections.abc import Mapping
from typing import Any

from boto3.dynamodb.conditions import Key

from aiadmin.db.dynamo import query_all, salon_pk, to_dynamo
from aiadmin.states import SalonState

EVENT_TTL_SECONDS = 90 * 24 * 3600


def event_item(salon_id: int, old: SalonState | None, new: SalonState | None, actor: str, reason: str,
               now: float, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """One event, as written (alone, or as a `Put` of a transition's transaction)."""
    item: dict[str, Any] = {
        "pk": salon_pk(salon_id),
        "sk": f"EVENT#{int(now * 1000):015d}#{secrets.token_hex(4)}",
        "from_state": old.value if old else None,
        "to_state": new.value if new else None,
        "actor": actor,
        "reason": reason[:500],
        "at": to_dynamo(now),
        "ttl": int(now) + EVENT_TTL_SECONDS,
    }
    if details is not None:
        item["details"] = to_dynamo(dict(details))
    return item


class EventLog:
    """Appends and reads a salon's events. `table` is a boto3 Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def record(self, salon_id: int, actor: str, reason: str, details: Mapping[str, Any] | None = None,
               now: float | None = None, *, state: SalonState | None) -> None:
        """Append an event that changes no state (a payment, an unknown webhook, a refusal);
        `state` is the salon's, as the caller read it."""
        self._table.put_item(Item=event_item(salon_id, state, state, actor, reason,
                                             time.time() if now is None else now, details or {}))

    def of(self, salon_id: int) -> list[dict[str, Any]]:
        return list(query_all(self._table, KeyConditionExpression=Key("pk").eq(salon_pk(salon_id))
                              & Key("sk").begins_with("EVENT#")))
