"""DynamoDB access for the one application table (`AppTable` in template.yaml).

Key schema (single table, string keys `pk`/`sk`):

| item              | pk                | sk                     | notes                                   |
|-------------------|-------------------|------------------------|-----------------------------------------|
| salon state       | SALON#<id>        | STATE                  | `Salon` model; streamed to ws_notify     |
| salon event log   | SALON#<id>        | EVENT#<ms>#<rand>      | who/what/when; TTL                      |
| connection (fan-out) | SALON#<id>     | CONN#<connection id>   | TTL                                     |
| connection by id  | CONN#<connection id> | CONN                | salon_id; TTL                           |
| session lease     | SALON#<id>        | SESSION                | `SessionLease`; GSI LeaseIndex          |
| runner heartbeat  | RUNNERS           | <runner id>            | at, sessions, phases, pairings; TTL     |
| idempotency       | idempotency#...   | <hash>                 | written by powertools Idempotency       |

`LeaseIndex` (pk `lease_pk`, sk `lease_expires`) holds only sessions that need an owner
process (sparse): a runner finds claimable sessions with one Query
`lease_pk = LEASE AND lease_expires < now`, and claims each with a conditional write.
TTL attribute: `ttl` (epoch seconds).
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from aiadmin.models import Salon, SessionDesire, SessionLease
from aiadmin.observability import log_state_change, logger, metrics
from aiadmin.states import IllegalTransition, SalonState, check_transition

CONNECTION_TTL_SECONDS = 2 * 3600
EVENT_TTL_SECONDS = 90 * 24 * 3600
LEASE_PARTITION = "LEASE"
RUNNERS_PARTITION = "RUNNERS"
_TRANSITION_ATTEMPTS = 5


def _salon_pk(salon_id: int) -> str:
    return f"SALON#{salon_id}"


def _map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    if isinstance(value, dict):
        return {k: _map_leaves(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_leaves(v, leaf) for v in value]
    return leaf(value)


def _to_dynamo(value: Any) -> Any:
    """boto3 refuses floats: store them as Decimal (via str, so 0.1 stays 0.1)."""
    return _map_leaves(value, lambda v: Decimal(str(v)) if isinstance(v, float) else v)


def _from_dynamo(value: Any) -> Any:
    """boto3 returns every number as Decimal: give back ints and floats."""
    def number(v: Any) -> Any:
        if isinstance(v, Decimal):
            return int(v) if v == v.to_integral_value() else float(v)
        return v

    return _map_leaves(value, number)


def _is_condition_failure(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("ConditionalCheckFailedException", "TransactionCanceledException")


class ConcurrentUpdate(RuntimeError):
    """The salon kept changing under us; the caller may retry later."""


class LeaseLost(RuntimeError):
    """A runner's fenced write was refused: it no longer holds the salon's session lease."""

    def __init__(self, salon_id: int) -> None:
        super().__init__(f"lease of salon {salon_id} is no longer ours")
        self.salon_id = salon_id


def _lease_check_failed(exc: ClientError) -> bool:
    """Whether the lease check (the transaction's last item) is what cancelled it."""
    reasons = exc.response.get("CancellationReasons") or []
    return bool(reasons) and reasons[-1].get("Code") == "ConditionalCheckFailed"


class Store:
    """All reads and writes of the application table. `table` is a boto3 Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._client = table.meta.client  # the resource's client accepts plain Python types

    # ---- salons -------------------------------------------------------------------------

    def get_salon(self, salon_id: int) -> Salon | None:
        item = self._table.get_item(
            Key={"pk": _salon_pk(salon_id), "sk": "STATE"}, ConsistentRead=True
        ).get("Item")
        return Salon.model_validate(_from_dynamo(item)) if item else None

    def all_salons(self) -> Iterator[Salon]:
        """Every salon record, page by page (a Scan: for ops tools, never on a request path)."""
        request: dict[str, Any] = {"FilterExpression": Attr("sk").eq("STATE")}
        while True:
            page = self._table.scan(**request)
            yield from (Salon.model_validate(_from_dynamo(item)) for item in page["Items"])
            if "LastEvaluatedKey" not in page:
                return
            request["ExclusiveStartKey"] = page["LastEvaluatedKey"]

    def transition(
        self,
        salon_id: int,
        new_state: SalonState,
        actor: str,
        reason: str = "",
        attrs: Mapping[str, Any] | None = None,
        expected: Iterable[SalonState] | None = None,
        lease_owner: str | None = None,
    ) -> Salon:
        """Move a salon to `new_state` (and set `attrs`), append an event, count a metric.

        Optimistic: the write is conditional on the version read, retried on a race.
        `expected`, if given, restricts the states this caller may move the salon from
        (e.g. the runner only turns a QR into `qr_expired` while it is `qr_ready`).
        `lease_owner` fences the write: it happens only while that runner holds an unexpired
        lease on the salon's session (a runner that lost it cannot push a stale QR); LeaseLost
        otherwise. Raises IllegalTransition when the state machine refuses it."""
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
            if lease_owner is not None:
                items.append({"ConditionCheck": self._lease_fence(salon_id, lease_owner, now)})
            try:
                self._client.transact_write_items(TransactItems=items)
            except ClientError as exc:
                if lease_owner is not None and _lease_check_failed(exc):
                    raise LeaseLost(salon_id) from exc
                if _is_condition_failure(exc):
                    continue
                raise
            if new_state != current_state:  # counts entries into a state: a new QR code is not one
                metrics.add_metric(name=f"Transition_{new_state.value}", unit="Count", value=1)
            log_state_change(salon_id, current_state.value if current_state else None, new_state.value, actor, reason)
            return Salon.model_validate(_from_dynamo({**(current.model_dump() if current else {}), **fields}))
        raise ConcurrentUpdate(f"salon {salon_id} changed concurrently {_TRANSITION_ATTEMPTS} times")

    def _lease_fence(self, salon_id: int, runner_id: str, now: float) -> dict[str, Any]:
        return {
            "TableName": self._table.name,
            "Key": {"pk": _salon_pk(salon_id), "sk": "SESSION"},
            "ConditionExpression": "#owner = :me AND lease_expires > :now",
            "ExpressionAttributeNames": {"#owner": "owner"},
            "ExpressionAttributeValues": {":me": runner_id, ":now": _to_dynamo(now)},
        }

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

    # ---- WhatsApp session leases (runner ownership and commands) -------------------------

    def get_session(self, salon_id: int) -> SessionLease | None:
        item = self._table.get_item(
            Key={"pk": _salon_pk(salon_id), "sk": "SESSION"}, ConsistentRead=True
        ).get("Item")
        return SessionLease.model_validate(_from_dynamo(item)) if item else None

    def request_session(self, salon_id: int, desired: SessionDesire, pair_phone: str | None = None,
                        renew_command: bool = False) -> SessionLease:
        """Tell whichever runner owns (or will own) the salon's session what to do.

        A new `link` bumps the generation so the owner starts a fresh attempt; `pair_phone`
        (set or cleared in the same write, so the command and its number are never apart)
        makes that attempt ask for a pairing code for the number; `renew_command` bumps the
        generation for the other commands too, so the owner acts on a repeated `run` (e.g.
        retry an activation). The session enters the lease index, so an unowned one is
        claimed by some runner within a poll."""
        bump = 1 if desired == "link" or renew_command else 0
        values: dict[str, Any] = {":d": desired, ":s": salon_id, ":lp": LEASE_PARTITION, ":zero": 0, ":bump": bump}
        update = (
            "SET desired = :d, salon_id = :s, lease_pk = :lp, "
            "generation = if_not_exists(generation, :zero) + :bump, "
            "lease_expires = if_not_exists(lease_expires, :zero)"
        )
        if pair_phone:
            update += ", pair_phone = :phone"
            values[":phone"] = pair_phone
        else:
            update += " REMOVE pair_phone"
        response = self._table.update_item(
            Key={"pk": _salon_pk(salon_id), "sk": "SESSION"},
            UpdateExpression=update,
            ExpressionAttributeValues=values,
            ReturnValues="ALL_NEW",
        )
        return SessionLease.model_validate(_from_dynamo(response["Attributes"]))

    def set_session_device(self, salon_id: int, device_jid: str | None) -> None:
        """Remember (or forget) which linked device is the salon's, for keys kept in a store
        shared by all salons (Postgres), where the device must be named to be resumed."""
        update: dict[str, Any] = {
            "Key": {"pk": _salon_pk(salon_id), "sk": "SESSION"},
            # Only on an existing session item: never create a half item the lease model refuses.
            "ConditionExpression": "attribute_exists(pk)",
        }
        if device_jid:
            update.update(UpdateExpression="SET device_jid = :j", ExpressionAttributeValues={":j": device_jid})
        else:
            update.update(UpdateExpression="REMOVE device_jid")
        try:
            self._table.update_item(**update)
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise

    def claimable_sessions(self, now: float, limit: int = 25, linking: bool = True,
                           linked: bool = True) -> list[SessionLease]:
        """Sessions without a live owner, oldest lease first. `linking=False` leaves out the
        linking attempts (a runner at its pairing bound still takes linked sessions),
        `linked=False` everything else (a runner with enough sessions to resume still takes a
        new linking attempt at once)."""
        query: dict[str, Any] = {
            "IndexName": "LeaseIndex",
            "KeyConditionExpression": Key("lease_pk").eq(LEASE_PARTITION) & Key("lease_expires").lt(_to_dynamo(now)),
            "Limit": limit,
        }
        if linking != linked:
            query["FilterExpression"] = Attr("desired").eq("link") if linking else Attr("desired").ne("link")
        response = self._table.query(**query)
        return [SessionLease.model_validate(_from_dynamo(item)) for item in response["Items"]]

    def claim_session(self, salon_id: int, runner_id: str, now: float, lease_seconds: float) -> SessionLease | None:
        """Take the lease if it is free or expired; None when another runner got it first."""
        try:
            response = self._table.update_item(
                Key={"pk": _salon_pk(salon_id), "sk": "SESSION"},
                UpdateExpression="SET #owner = :me, lease_expires = :until",
                ConditionExpression="attribute_exists(lease_pk) AND lease_expires < :now",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={
                    ":me": runner_id, ":until": _to_dynamo(now + lease_seconds), ":now": _to_dynamo(now),
                },
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return None
            raise
        return SessionLease.model_validate(_from_dynamo(response["Attributes"]))

    def renew_session(self, salon_id: int, runner_id: str, now: float, lease_seconds: float) -> SessionLease | None:
        """Extend our lease; None when we no longer own it (another runner took over)."""
        try:
            response = self._table.update_item(
                Key={"pk": _salon_pk(salon_id), "sk": "SESSION"},
                UpdateExpression="SET lease_expires = :until",
                ConditionExpression="#owner = :me AND attribute_exists(lease_pk)",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":me": runner_id, ":until": _to_dynamo(now + lease_seconds)},
                ReturnValues="ALL_NEW",
            )
        except ClientError as exc:
            if _is_condition_failure(exc):
                return None
            raise
        return SessionLease.model_validate(_from_dynamo(response["Attributes"]))

    def release_session(self, salon_id: int, runner_id: str, retire: bool = False,
                        command: SessionLease | None = None) -> bool:
        """Give the lease back (another runner may claim at once), or, with `retire`, take
        the session out of the lease index altogether (nothing left to run). With `command`,
        only while the session's `desired` and `generation` are still that lease's: a command
        that arrived meanwhile is never thrown away with the lease. False when not done."""
        update = "SET lease_expires = :zero REMOVE #owner" + (", lease_pk" if retire else "")
        condition = "#owner = :me"
        values: dict[str, Any] = {":me": runner_id, ":zero": 0}
        if command is not None:
            condition += " AND desired = :desired AND generation = :generation"
            values.update({":desired": command.desired, ":generation": command.generation})
        try:
            self._table.update_item(
                Key={"pk": _salon_pk(salon_id), "sk": "SESSION"},
                UpdateExpression=update,
                ConditionExpression=condition,
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=values,
            )
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            return False
        return True

    def mark_linked(self, salon_id: int, runner_id: str, generation: int) -> bool:
        """The owner's pairing succeeded: `link` becomes `run`, unless a newer command (stop,
        pause, another link) arrived meanwhile, which then wins."""
        try:
            self._table.update_item(
                Key={"pk": _salon_pk(salon_id), "sk": "SESSION"},
                UpdateExpression="SET desired = :run REMOVE pair_phone",
                ConditionExpression="#owner = :me AND desired = :link AND generation = :generation",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues={":run": "run", ":link": "link", ":me": runner_id,
                                           ":generation": generation},
            )
        except ClientError as exc:
            if not _is_condition_failure(exc):
                raise
            return False
        return True

    def get_sessions(self, salon_ids: Iterable[int]) -> dict[int, SessionLease]:
        ids = list(dict.fromkeys(salon_ids))
        found: dict[int, SessionLease] = {}
        for start in range(0, len(ids), 100):
            keys = [{"pk": _salon_pk(i), "sk": "SESSION"} for i in ids[start:start + 100]]
            request: dict[str, Any] = {self._table.name: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self._client.batch_get_item(RequestItems=request)
                for item in response["Responses"].get(self._table.name, []):
                    lease = SessionLease.model_validate(_from_dynamo(item))
                    found[lease.salon_id] = lease
                request = response.get("UnprocessedKeys") or {}
        return found

    # ---- runner heartbeats ----------------------------------------------------------------

    def record_heartbeat(self, runner_id: str, now: float, sessions: int,
                         phases: Mapping[str, int] | None = None, pairings: int = 0) -> None:
        """All runners' heartbeats share one small partition: the health check reads it whole.
        `phases` counts the runner's sessions by phase; `pairings` are linking attempts in flight."""
        self._table.put_item(Item={
            "pk": RUNNERS_PARTITION, "sk": runner_id, "at": _to_dynamo(now), "sessions": sessions,
            "phases": dict(phases or {}), "pairings": pairings, "ttl": int(now) + 24 * 3600,
        })

    def latest_heartbeat(self) -> float | None:
        stamps = [float(item["at"]) for item in self.runner_heartbeats()]
        return max(stamps) if stamps else None

    def runner_heartbeats(self) -> list[dict[str, Any]]:
        """Every runner's last heartbeat (`runner_id`, `at`, `sessions`, `phases`, `pairings`)."""
        response = self._table.query(KeyConditionExpression=Key("pk").eq(RUNNERS_PARTITION))
        hidden = ("pk", "sk", "ttl")
        return [{"runner_id": item["sk"], **{k: _from_dynamo(v) for k, v in item.items() if k not in hidden}}
                for item in response["Items"]]
