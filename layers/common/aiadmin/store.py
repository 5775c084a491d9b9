"""DynamoDB access for the one application table (`AppTable` in template.yaml).

Key schema (single table, string keys `pk`/`sk`):

| item              | pk                | sk                     | notes                                   |
|-------------------|-------------------|------------------------|-----------------------------------------|
| salon state       | SALON#<id>        | STATE                  | `Salon` model; streamed to ws_notify     |
| salon event log   | SALON#<id>        | EVENT#<ms>#<rand>      | who/what/when; TTL                      |
| connection (fan-out) | SALON#<id>     | CONN#<connection id>   | TTL                                     |
| connection by id  | CONN#<connection id> | CONN                | salon_id; TTL                           |
| WhatsApp session  | SALON#<id>        | SESSION                | `SessionLease`: command, owner; GSI SessionIndex |
| runner membership | RUNNERS           | <runner id>            | epoch, expires, at, status (heartbeat)  |
| idempotency       | idempotency#...   | <hash>                 | written by powertools Idempotency       |

`SessionIndex` (pk `session_pk`, sk `session_sk`, sparse) holds claimable sessions
(`CLAIM#<shard>`), and owned ones by owner (`OWNER#<runner id>`, with a pending command
sorted first). How ownership works (memberships, epochs, fencing, commands, takeover)
is in `aiadmin.ownership`, which reads and writes the session and membership items.
TTL attribute: `ttl` (epoch seconds).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Key
from botocore.exceptions import ClientError

from aiadmin.dynamo import cancelled_by_checks
from aiadmin.dynamo import from_dynamo as _from_dynamo
from aiadmin.dynamo import is_condition_failure as _is_condition_failure
from aiadmin.dynamo import salon_pk as _salon_pk
from aiadmin.dynamo import to_dynamo as _to_dynamo
from aiadmin.models import Salon, SessionDesire, SessionLease
from aiadmin.observability import logger, metrics
from aiadmin.ownership import Fence, Member, Ownership
from aiadmin.states import IllegalTransition, SalonState, check_transition

CONNECTION_TTL_SECONDS = 2 * 3600
EVENT_TTL_SECONDS = 90 * 24 * 3600
_TRANSITION_ATTEMPTS = 5
# The checks a fenced transition adds after the salon update and its event (see `transition`).
_FENCE_CHECKS = 2


class ConcurrentUpdate(RuntimeError):
    """The salon kept changing under us; the caller may retry later."""


class LeaseLost(RuntimeError):
    """A runner's fenced write was refused: the salon's session is no longer its own, or its
    membership is no longer live."""

    def __init__(self, salon_id: int) -> None:
        super().__init__(f"session of salon {salon_id} is no longer ours")
        self.salon_id = salon_id


class Store:
    """All reads and writes of the application table. `table` is a boto3 Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._client = table.meta.client  # the resource's client accepts plain Python types
        self.ownership = Ownership(table)

    @property
    def table(self) -> Any:
        return self._table

    # ---- salons -------------------------------------------------------------------------

    def get_salon(self, salon_id: int) -> Salon | None:
        item = self._table.get_item(
            Key={"pk": _salon_pk(salon_id), "sk": "STATE"}, ConsistentRead=True
        ).get("Item")
        return Salon.model_validate(_from_dynamo(item)) if item else None

    def transition(
        self,
        salon_id: int,
        new_state: SalonState,
        actor: str,
        reason: str = "",
        attrs: Mapping[str, Any] | None = None,
        expected: Iterable[SalonState] | None = None,
        fence: Fence | None = None,
    ) -> Salon:
        """Move a salon to `new_state` (and set `attrs`), append an event, count a metric.

        Optimistic: the write is conditional on the version read, retried on a race.
        `expected`, if given, restricts the states this caller may move the salon from
        (e.g. the runner only turns a QR into `qr_expired` while it is `qr_ready`).
        `fence` (a runner membership) fences the write: it happens only while the salon's
        session is that membership's and the membership is live (a runner that lost either
        cannot push a stale QR); LeaseLost otherwise. Raises IllegalTransition when the state
        machine refuses it."""
        for _ in range(_TRANSITION_ATTEMPTS):
            current = self.get_salon(salon_id)
            current_state = current.state if current else None
            if expected is not None and current_state not in set(expected):
                raise IllegalTransition(current_state, new_state)
            try:
                check_transition(current_state, new_state)
            except IllegalTransition:
                logger.warning(
                    "refused illegal transition",
                    extra={"salon_id": salon_id, "from": current_state, "to": new_state, "actor": actor},
                )
                raise
            now = time.time()
            version = current.version if current else 0
            fields: dict[str, Any] = {
                **(attrs or {}),
                "state": new_state.value,
                "version": version + 1,
                "updated_at": now,
                "updated_by": actor,
                "salon_id": salon_id,
            }
            names = {f"#f{i}": key for i, key in enumerate(fields)}
            values = {f":v{i}": _to_dynamo(value) for i, value in enumerate(fields.values())}
            update = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields)))
            if current:
                condition = "#version = :expected"
                names["#version"] = "version"
                values[":expected"] = version
            else:
                condition = "attribute_not_exists(pk)"
            items: list[dict[str, Any]] = [
                {
                    "Update": {
                        "TableName": self._table.name,
                        "Key": {"pk": _salon_pk(salon_id), "sk": "STATE"},
                        "UpdateExpression": update,
                        "ConditionExpression": condition,
                        "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values,
                    }
                },
                {"Put": {"TableName": self._table.name, "Item": self._event_item(
                    salon_id, current_state, new_state, actor, reason, now)}},
            ]
            if fence is not None:
                items += self.ownership.fence_checks(salon_id, fence, now)
            try:
                self._client.transact_write_items(TransactItems=items)
            except ClientError as exc:
                if fence is not None and cancelled_by_checks(exc, _FENCE_CHECKS):
                    raise LeaseLost(salon_id) from exc
                if _is_condition_failure(exc):
                    continue
                raise
            metrics.add_metric(name=f"Transition_{new_state.value}", unit="Count", value=1)
            logger.info(
                "salon state changed",
                extra={"salon_id": salon_id, "from": current_state, "to": new_state, "actor": actor},
            )
            return Salon.model_validate(_from_dynamo({**(current.model_dump() if current else {}), **fields}))
        raise ConcurrentUpdate(f"salon {salon_id} changed concurrently {_TRANSITION_ATTEMPTS} times")

    def put_salon(self, salon: Salon) -> None:
        """Write a salon record as it is, with no state-machine check and no event: for
        seeding tests and benchmarks with many salons at once (state changes use `transition`)."""
        item = {**salon.model_dump(exclude_none=True), "state": salon.state.value}
        self._table.put_item(Item=_to_dynamo({**item, "pk": _salon_pk(salon.salon_id), "sk": "STATE"}))

    def get_salon_secrets(self, salon_id: int) -> dict[str, str]:
        """The per-salon secrets kept beside the state (never part of the `Salon` model,
        so they never reach a page or a log line)."""
        item = self._table.get_item(
            Key={"pk": _salon_pk(salon_id), "sk": "STATE"}, ConsistentRead=True,
            ProjectionExpression="api_key, webhook_secret",
        ).get("Item") or {}
        # A removed secret is stored as NULL: it must never compare equal to anything.
        return {key: str(value) for key, value in item.items() if isinstance(value, str) and value}

    def hold_activation(self, salon_id: int, owner: str, now: float, lock_seconds: float) -> bool:
        """Take or renew the salon's activation lock: only while it is `activating`, and only when
        the lock is ours, free or expired. False: someone else activates, or the salon moved on."""
        try:
            self._table.update_item(
                Key={"pk": _salon_pk(salon_id), "sk": "STATE"},
                UpdateExpression="SET activation_owner = :me, activation_lock_until = :until",
                ConditionExpression=(
                    "#state = :activating AND (attribute_not_exists(activation_owner) OR "
                    "attribute_type(activation_owner, :null) OR activation_owner = :me OR "
                    "activation_lock_until < :now)"
                ),
                ExpressionAttributeNames={"#state": "state"},
                ExpressionAttributeValues={
                    ":me": owner, ":until": _to_dynamo(now + lock_seconds), ":now": _to_dynamo(now),
                    ":activating": SalonState.ACTIVATING.value, ":null": "NULL",
                },
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return False
            raise
        return True

    @staticmethod
    def salon_from_image(image: Mapping[str, Any]) -> Salon:
        """A `Salon` from a stream record's deserialised new image."""
        return Salon.model_validate(_from_dynamo(dict(image)))

    def update_profile(self, salon_id: int, attrs: Mapping[str, Any]) -> None:
        """Set descriptive fields (names, consent) that do not change the state."""
        names = {f"#f{i}": key for i, key in enumerate(attrs)}
        values = {f":v{i}": _to_dynamo(value) for i, value in enumerate(attrs.values())}
        self._table.update_item(
            Key={"pk": _salon_pk(salon_id), "sk": "STATE"},
            UpdateExpression="SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(attrs))),
            ConditionExpression="attribute_exists(pk)",
            ExpressionAttributeNames=names,
            ExpressionAttributeValues=values,
        )

    @staticmethod
    def _event_item(
        salon_id: int, old: SalonState | None, new: SalonState | None, actor: str, reason: str, now: float
    ) -> dict[str, Any]:
        return {
            "pk": _salon_pk(salon_id),
            "sk": f"EVENT#{int(now * 1000):015d}#{secrets.token_hex(4)}",
            "from_state": old.value if old else None,
            "to_state": new.value if new else None,
            "actor": actor,
            "reason": reason[:500],
            "at": Decimal(str(now)),
            "ttl": int(now) + EVENT_TTL_SECONDS,
        }

    def record_event(self, salon_id: int, actor: str, reason: str, details: Mapping[str, Any] | None = None,
                     now: float | None = None) -> None:
        """Append an event that changes no state (a payment, an unknown webhook)."""
        moment = now or time.time()
        state = self.get_salon(salon_id)
        current = state.state if state else None
        item = self._event_item(salon_id, current, current, actor, reason, moment)
        item["details"] = _to_dynamo(dict(details or {}))
        self._table.put_item(Item=item)

    def events_of(self, salon_id: int) -> list[dict[str, Any]]:
        response = self._table.query(
            KeyConditionExpression=Key("pk").eq(_salon_pk(salon_id)) & Key("sk").begins_with("EVENT#")
        )
        return [_from_dynamo(item) for item in response["Items"]]

    # ---- WebSocket connections ------------------------------------------------------------

    def add_connection(self, connection_id: str, salon_id: int, now: float | None = None) -> None:
        expires = int(now or time.time()) + CONNECTION_TTL_SECONDS
        self._client.transact_write_items(
            TransactItems=[
                {"Put": {"TableName": self._table.name, "Item": {
                    "pk": _salon_pk(salon_id), "sk": f"CONN#{connection_id}",
                    "connection_id": connection_id, "ttl": expires}}},
                {"Put": {"TableName": self._table.name, "Item": {
                    "pk": f"CONN#{connection_id}", "sk": "CONN", "salon_id": salon_id, "ttl": expires}}},
            ]
        )

    def salon_of_connection(self, connection_id: str) -> int | None:
        item = self._table.get_item(Key={"pk": f"CONN#{connection_id}", "sk": "CONN"}).get("Item")
        return int(item["salon_id"]) if item else None

    def remove_connection(self, connection_id: str, salon_id: int | None = None) -> None:
        """Forget a connection; harmless when it is already gone (a replayed $disconnect)."""
        if salon_id is None:
            salon_id = self.salon_of_connection(connection_id)
        self._table.delete_item(Key={"pk": f"CONN#{connection_id}", "sk": "CONN"})
        if salon_id is not None:
            self._table.delete_item(Key={"pk": _salon_pk(salon_id), "sk": f"CONN#{connection_id}"})

    def connections_of(self, salon_id: int) -> list[str]:
        response = self._table.query(
            KeyConditionExpression=Key("pk").eq(_salon_pk(salon_id)) & Key("sk").begins_with("CONN#"),
            ProjectionExpression="connection_id",
        )
        return [str(item["connection_id"]) for item in response["Items"]]

    # ---- WhatsApp sessions and runners (aiadmin.ownership) ------------------------------------

    def get_session(self, salon_id: int) -> SessionLease | None:
        return self.ownership.get_session(salon_id)

    def get_sessions(self, salon_ids: Iterable[int]) -> dict[int, SessionLease]:
        return self.ownership.get_sessions(salon_ids)

    def request_session(self, salon_id: int, desired: SessionDesire, pair_phone: str | None = None,
                        renew_command: bool = False) -> SessionLease:
        """See `Ownership.request_session`."""
        return self.ownership.request_session(salon_id, desired, pair_phone, renew_command)

    def set_session_device(self, salon_id: int, device_jid: str | None) -> None:
        self.ownership.set_session_device(salon_id, device_jid)

    def runner_heartbeats(self) -> list[dict[str, Any]]:
        """Every runner membership: `runner_id`, `at` (its last renewal), `sessions`, `phases`,
        `pairings`, and `epoch`, `expires`, `left`."""
        return [_heartbeat(member) for member in self.ownership.members()]

    def latest_heartbeat(self) -> float | None:
        stamps = [member.at for member in self.ownership.members()]
        return max(stamps) if stamps else None


def _heartbeat(member: Member) -> dict[str, Any]:
    status = dict(member.status)
    return {"runner_id": member.runner_id, "at": member.at, "sessions": int(status.get("sessions", 0)),
            "phases": dict(status.get("phases") or {}), "pairings": int(status.get("pairings", 0)),
            "epoch": member.epoch, "expires": member.expires, "left": member.left}
