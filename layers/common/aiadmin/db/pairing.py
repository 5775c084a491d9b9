"""Pairing-code limits (pk `SALON#<id>`, sk `PAIRING`): how many numbers a salon asked codes for
in the window, and when it last asked; numbers kept as hashes, for the window only (TTL)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Literal

from aiadmin.db.dynamo import conditionally, from_dynamo, salon_pk, to_dynamo

PAIRING_SK = "PAIRING"


@dataclass(frozen=True)
class PairingVerdict:
    """Whether a pairing-code request may go ahead; when not, why and for how long."""

    allowed: bool
    reason: Literal["", "interval", "phones"] = ""
    retry_after: float = 0.0


class PairingLimits:
    """Admits pairing-code requests under a salon's limits. `table` is a boto3 Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def admit(self, salon_id: int, phone: str, now: float, min_interval: float, max_phones: int,
              window: float) -> PairingVerdict:
        """Count a pairing-code request for `phone` if the salon's limits allow it: at most
        `max_phones` distinct numbers per `window` seconds, and `min_interval` seconds between
        requests. Conditional writes decide (never a read-modify-write), so concurrent requests
        cannot both slip under a limit."""
        key = {"pk": salon_pk(salon_id), "sk": PAIRING_SK}
        digest = hashlib.sha256(f"{salon_id}:{phone}".encode()).hexdigest()[:24]
        attempts: list[tuple[str, str, dict[str, Any]]] = [
            # Same window: under both limits (the number is known already, or there is room).
            ("SET last_at = :now ADD phones :phone",
             "window_start > :floor AND last_at <= :recent AND (contains(phones, :h) OR size(phones) < :max)",
             {":floor": to_dynamo(now - window), ":recent": to_dynamo(now - min_interval), ":h": digest,
              ":max": max_phones}),
            # No window yet, or it has passed: this request opens a new one.
            ("SET window_start = :now, last_at = :now, phones = :phone, #ttl = :ttl",
             "attribute_not_exists(pk) OR window_start <= :floor",
             {":floor": to_dynamo(now - window), ":ttl": int(now + window) + 1}),
        ]
        for update, condition, values in attempts:
            if conditionally(
                self._table.update_item, Key=key, UpdateExpression=update, ConditionExpression=condition,
                ExpressionAttributeValues={":now": to_dynamo(now), ":phone": {digest}, **values},
                **({"ExpressionAttributeNames": {"#ttl": "ttl"}} if "#ttl" in update else {}),
            ):
                return PairingVerdict(allowed=True)
        item = from_dynamo(self._table.get_item(Key=key, ConsistentRead=True).get("Item") or {})
        last_at, started = float(item.get("last_at", 0)), float(item.get("window_start", 0))
        if now - last_at < min_interval:
            return PairingVerdict(False, "interval", last_at + min_interval - now)
        return PairingVerdict(False, "phones", max(0.0, started + window - now))
