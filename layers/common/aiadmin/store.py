"""DynamoDB access for the one application table (`AppTable` in template.yaml).

Key schema (single table, string keys `pk`/`sk`):

| item              | pk                | sk                     | notes                                   |
|-------------------|-------------------|------------------------|-----------------------------------------|
| salon state       | SALON#<id>        | STATE                  | `Salon`; streamed; TTL once uninstalled |
| salon secrets     | SALON#<id>        | SECRETS                | api_key, webhook_secret; in no GSI      |
| pairing limit     | SALON#<id>        | PAIRING                | phone hashes, request times; TTL        |
| salon event log   | SALON#<id>        | EVENT#<ms>#<rand>      | who/what/when; TTL                      |
| socket slot (fan-out) | SALON#<id>    | CONN#<slot 0..4>       | connection_id, held_until; TTL          |
| connection by id  | CONN#<connection id> | CONN                | salon_id, slot, token_exp, message counter; TTL |
| WhatsApp session  | SALON#<id>        | SESSION                | `SessionLease`: command, owner; GSI SessionIndex |
| runner membership | RUNNERS           | <runner id>            | epoch, expires, at, status (heartbeat)  |
| idempotency       | idempotency#...   | <hash>                 | written by powertools Idempotency       |

`SessionIndex` (pk `session_pk`, sk `session_sk`, sparse) holds claimable sessions
(`CLAIM#<shard>`), and owned ones by owner (`OWNER#<runner id>`, with a pending command
sorted first). How ownership works (memberships, epochs, fencing, commands, takeover)
is in `aiadmin.ownership`, which reads and writes the session and membership items.
TTL attribute: `ttl` (epoch seconds). An uninstalled salon's STATE and SESSION items get one
(`UNINSTALLED_RETENTION_SECONDS`); any later transition or command removes it again.

A salon has a fixed number of socket slots (`CONN#0` .. `CONN#<n-1>`): `$connect` takes a free
or stale one with a conditional write, so the bound holds under concurrent connects and the
fan-out reads at most n items.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from boto3.dynamodb.conditions import Attr, Key
from botocore.exceptions import ClientError

from aiadmin.dynamo import cancelled_by_checks
from aiadmin.dynamo import from_dynamo as _from_dynamo
from aiadmin.dynamo import is_condition_failure as _is_condition_failure
from aiadmin.dynamo import salon_pk as _salon_pk
from aiadmin.dynamo import to_dynamo as _to_dynamo
from aiadmin.models import Salon, SessionDesire, SessionLease
from aiadmin.observability import log_state_change, logger, metrics
from aiadmin.ownership import Fence, Member, Ownership
from aiadmin.states import IllegalTransition, SalonState, check_transition

# API Gateway closes a WebSocket after 2 hours at most: a slot whose $disconnect was lost is
# free again after that.
CONNECTION_TTL_SECONDS = 2 * 3600
EVENT_TTL_SECONDS = 90 * 24 * 3600
# What is left of an uninstalled salon (state, session command) is deleted by TTL after this.
UNINSTALLED_RETENTION_SECONDS = 30 * 24 * 3600
SECRETS_SK = "SECRETS"
PAIRING_SK = "PAIRING"
_TRANSITION_ATTEMPTS = 5
# The checks a fenced transition adds after the salon update and its event (see `transition`).
_FENCE_CHECKS = 1


class ConcurrentUpdate(RuntimeError):
    """The salon kept changing under us; the caller may retry later."""


class StaleAttempt(IllegalTransition):
    """A runner's write for a linking attempt the owner has since replaced (see
    `Ownership.fence_checks`): refused, and the session is still the runner's."""

    def __init__(self, salon_id: int, new: SalonState, attempt: int) -> None:
        super().__init__(None, new)
        self.args = (f"salon {salon_id}: attempt {attempt} was replaced; not moved to {new}",)
        self.salon_id = salon_id


class LeaseLost(RuntimeError):
    """A runner's fenced write was refused: the salon's session is no longer its own (that
    runner membership's)."""

    def __init__(self, salon_id: int) -> None:
        super().__init__(f"session of salon {salon_id} is no longer ours")
        self.salon_id = salon_id


@dataclass(frozen=True)
class SessionCommand:
    """What a handler asks of the runner owning a salon's session (see `Store.request_session`)."""

    desired: SessionDesire
    pair_phone: str | None = None
    renew: bool = False


@dataclass(frozen=True)
class PairingVerdict:
    """Whether a pairing-code request may go ahead; when not, why and for how long."""

    allowed: bool
    reason: Literal["", "interval", "phones"] = ""
    retry_after: float = 0.0


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

    def get_salons(self, salon_ids: Iterable[int]) -> dict[int, Salon]:
        """Several salons' records, read consistently, 100 per request (a mass resume reads the
        salons of a claim page in one call instead of one each)."""
        ids = list(dict.fromkeys(salon_ids))
        found: dict[int, Salon] = {}
        for start in range(0, len(ids), 100):
            keys = [{"pk": _salon_pk(i), "sk": "STATE"} for i in ids[start:start + 100]]
            request: dict[str, Any] = {self._table.name: {"Keys": keys, "ConsistentRead": True}}
            while request:
                response = self._client.batch_get_item(RequestItems=request)
                for item in response["Responses"].get(self._table.name, []):
                    salon = Salon.model_validate(_from_dynamo(item))
                    found[salon.salon_id] = salon
                request = response.get("UnprocessedKeys") or {}
        return found

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
        expected: Iterable[SalonState | None] | None = None,
        fence: Fence | None = None,
        remove: Iterable[str] = (),
        command: SessionCommand | None = None,
        salon_secrets: Mapping[str, str] | None = None,
        forget: Iterable[str] = (),
        guard: Callable[[Salon | None], None] | None = None,
        attempt: int | None = None,
        also: Iterable[Mapping[str, Any]] = (),
    ) -> Salon:
        """Move a salon to `new_state` (and set `attrs`), append an event, count a metric.

        Optimistic: the write is conditional on the version read, retried on a race.
        `expected`, if given, restricts the states this caller may move the salon from
        (e.g. the runner only turns a QR into `qr_expired` while it is `qr_ready`).
        `fence` (a runner membership) fences the write: it happens only while the salon's
        session is that membership's (a runner that lost it cannot push a stale QR); LeaseLost
        otherwise. With `fence`, `attempt` (a command generation) also requires that the session
        still runs that linking attempt; StaleAttempt otherwise. Raises IllegalTransition when the state
        machine refuses it. `guard` is called with every read of the salon and may raise to
        refuse the change: the write is conditional on the version it saw, so its verdict holds
        (e.g. who the salon is bound to).

        In the same transaction: `remove` deletes attributes of the state item, `command` tells
        the session's runner what to do (`request_session`), `salon_secrets` replaces the salon's
        secrets item and `forget` deletes the salon's items with those sort keys (`SECRETS_SK`,
        `PAIRING_SK`); `also` adds transaction items of the caller's (`reissue_socket`). Entering
        `uninstalled` sets the item's TTL; any other state clears it."""
        removed = [name for name in dict.fromkeys(remove) if name not in (attrs or {})]
        extra_items = [dict(item) for item in also]
        for _ in range(_TRANSITION_ATTEMPTS):
            current = self.get_salon(salon_id)
            current_state = current.state if current else None
            if guard is not None:
                guard(current)
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
            dropped = list(removed)
            if new_state == SalonState.UNINSTALLED:
                fields["ttl"] = int(now) + UNINSTALLED_RETENTION_SECONDS
            else:
                dropped.append("ttl")
            names = {f"#f{i}": key for i, key in enumerate(fields)}
            values = {f":v{i}": _to_dynamo(value) for i, value in enumerate(fields.values())}
            update = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields)))
            if dropped:
                names.update({f"#r{i}": key for i, key in enumerate(dropped)})
                update += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(dropped)))
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
            if command is not None:
                items.append({"Update": self._session_command(salon_id, command, now)})
            if salon_secrets is not None:
                items.append({"Put": {"TableName": self._table.name, "Item": {
                    "pk": _salon_pk(salon_id), "sk": SECRETS_SK, **salon_secrets}}})
            items.extend({"Delete": {"TableName": self._table.name, "Key": {"pk": _salon_pk(salon_id), "sk": sk}}}
                         for sk in dict.fromkeys(forget))
            items.extend(extra_items)
            if fence is not None:
                # Last on purpose: `cancelled_by_checks` reads the last cancellation reasons.
                items += self.ownership.fence_checks(salon_id, fence, attempt)
            try:
                self._client.transact_write_items(TransactItems=items)
            except ClientError as exc:
                if fence is not None and cancelled_by_checks(exc, _FENCE_CHECKS):
                    raise self._fence_refusal(salon_id, new_state, fence, attempt) from exc
                if _is_condition_failure(exc):
                    continue
                raise
            if new_state != current_state:  # counts entries into a state: a new QR code is not one
                metrics.add_metric(name=f"Transition_{new_state.value}", unit="Count", value=1)
            log_state_change(salon_id, current_state.value if current_state else None, new_state.value, actor, reason)
            before = {k: v for k, v in (current.model_dump() if current else {}).items() if k not in removed}
            return Salon.model_validate(_from_dynamo({**before, **fields}))
        raise ConcurrentUpdate(f"salon {salon_id} changed concurrently {_TRANSITION_ATTEMPTS} times")

    def _fence_refusal(self, salon_id: int, new_state: SalonState, fence: Fence,
                       attempt: int | None) -> Exception:
        """Why a fenced write was refused: the session is no longer ours, or (still ours) the
        attempt was replaced. Read only on a refusal, so the common write costs nothing more."""
        if attempt is not None:
            session = self.ownership.get_session(salon_id)
            if session is not None and (session.owner, session.owner_epoch) == tuple(fence):
                return StaleAttempt(salon_id, new_state, attempt)
        return LeaseLost(salon_id)

    def put_salon(self, salon: Salon) -> None:
        """Write a salon record as it is, with no state-machine check and no event: for
        seeding tests and benchmarks with many salons at once (state changes use `transition`)."""
        item = {**salon.model_dump(exclude_none=True), "state": salon.state.value}
        self._table.put_item(Item=_to_dynamo({**item, "pk": _salon_pk(salon.salon_id), "sk": "STATE"}))

    # ---- salon secrets -----------------------------------------------------------------
    # The salon's API key for YClients and its entity webhook secret live in their own item,
    # never on the state item: that one is streamed (the state_stream consumer only receives
    # `sk = STATE` records, see the template's FilterCriteria) and copied into pages and logs
    # through the `Salon` model. No GSI key attribute is ever set on the secrets item.

    def get_salon_secrets(self, salon_id: int) -> dict[str, str]:
        """The salon's secrets (`api_key`, `webhook_secret`); empty when it has none."""
        item = self._table.get_item(
            Key={"pk": _salon_pk(salon_id), "sk": SECRETS_SK}, ConsistentRead=True,
            ProjectionExpression="api_key, webhook_secret",
        ).get("Item") or {}
        # Only non-empty strings: a missing secret must never compare equal to anything.
        return {key: str(value) for key, value in item.items() if isinstance(value, str) and value}

    def put_salon_secrets(self, salon_id: int, values: Mapping[str, str]) -> None:
        self._table.put_item(Item={"pk": _salon_pk(salon_id), "sk": SECRETS_SK, **values})

    def hold_activation(self, salon_id: int, fence: Fence) -> bool:
        """Whether the runner of `fence` may go on activating the salon: it is still `activating`
        and its session is still that membership's (the fence proves who may act; a runner that
        lost the session calls YClients no more). Writes nothing."""
        checks = [
            {"ConditionCheck": {
                "TableName": self._table.name, "Key": {"pk": _salon_pk(salon_id), "sk": "STATE"},
                "ConditionExpression": "#state = :activating",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": {":activating": SalonState.ACTIVATING.value},
            }},
            *self.ownership.fence_checks(salon_id, fence),
        ]
        for _ in range(_TRANSITION_ATTEMPTS):
            try:
                self._client.transact_write_items(TransactItems=checks)
            except ClientError as exc:
                if cancelled_by_checks(exc, len(checks)):
                    return False
                if not _is_condition_failure(exc):
                    raise
                continue  # a conflict with a concurrent write of the salon: look again
            return True
        raise ConcurrentUpdate(f"salon {salon_id} changed concurrently {_TRANSITION_ATTEMPTS} times")

    def bind_owner(self, salon_id: int, user_id: str, consent_id: str) -> bool:
        """Bind an existing, unbound salon to the YClients user who consented, with a new consent
        (`consent_id`: the tokens of the unbound consents end; see `aiadmin.onboarding`). False
        when the salon is bound already, to anyone, meanwhile."""
        try:
            self._table.update_item(
                Key={"pk": _salon_pk(salon_id), "sk": "STATE"},
                UpdateExpression="SET owner_user_id = :u, consent_id = :c ADD version :one",
                ConditionExpression=("attribute_exists(pk) AND (attribute_not_exists(owner_user_id) OR "
                                     "attribute_type(owner_user_id, :null))"),
                ExpressionAttributeValues={":u": user_id, ":c": consent_id, ":null": "NULL", ":one": 1},
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

    def add_connection(self, connection_id: str, salon_id: int, now: float | None = None,
                       token_exp: float | None = None, max_per_salon: int = 5, consent_id: str | None = None,
                       token_id: str | None = None) -> bool:
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
            by_id: dict[str, Any] = {"pk": f"CONN#{connection_id}", "sk": "CONN", "salon_id": salon_id,
                                     "slot": slot, "ttl": held_until, **token}
            try:
                self._client.transact_write_items(TransactItems=[
                    {"Put": {
                        "TableName": self._table.name,
                        "Item": {"pk": _salon_pk(salon_id), "sk": f"CONN#{slot}", "connection_id": connection_id,
                                 "held_until": held_until, "ttl": held_until, **token},
                        "ConditionExpression": "attribute_not_exists(pk) OR held_until < :now",
                        "ExpressionAttributeValues": {":now": int(moment)},
                    }},
                    {"Put": {"TableName": self._table.name, "Item": by_id}},
                ])
            except ClientError as exc:
                if _is_condition_failure(exc):
                    continue  # another connection took this slot first: try the next free one
                raise
            return True
        return False

    def _free_slots(self, salon_id: int, now: float, max_per_salon: int) -> list[int]:
        """The salon's slots that look free or stale (a consistent read of at most n items);
        the conditional write in `add_connection` decides."""
        held = {
            int(str(item["sk"]).removeprefix("CONN#"))
            for item in self._query_slots(salon_id, "sk, held_until")
            if str(item["sk"]).removeprefix("CONN#").isdigit() and float(item.get("held_until", 0)) >= now
        }
        return [slot for slot in range(max_per_salon) if slot not in held]

    def _query_slots(self, salon_id: int, projection: str) -> list[dict[str, Any]]:
        response = self._table.query(
            KeyConditionExpression=Key("pk").eq(_salon_pk(salon_id)) & Key("sk").begins_with("CONN#"),
            ProjectionExpression=projection, ConsistentRead=True,
        )
        return list(response["Items"])

    def salon_of_connection(self, connection_id: str) -> int | None:
        item = self._table.get_item(Key={"pk": f"CONN#{connection_id}", "sk": "CONN"}).get("Item")
        return int(item["salon_id"]) if item else None

    def count_message(self, connection_id: str, window: int) -> ConnectionRecord | None:
        """Count one message of the connection in fixed window `window` (an index, e.g. epoch
        seconds // 10) on the socket and on its token (`TOKEN#<token id>`: the sockets of one
        token share that count) and return the connection with both counts so far, this message
        included; None when the connection is unknown. A socket's first message (the page's
        opening `sync`) is not counted on the token: it is paid for by its `$connect`, so a page
        reloaded again and again with one token keeps working. Atomic (ADD under a condition on
        the window), so concurrent messages are all counted."""
        item = self._count_in_window({"pk": f"CONN#{connection_id}", "sk": "CONN"}, window)
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
                try:
                    item = self._table.update_item(
                        Key=dict(key), UpdateExpression=update, ConditionExpression=condition,
                        ExpressionAttributeValues=values, ReturnValues="ALL_NEW", **extra,
                    )["Attributes"]
                except ClientError as exc:
                    if _is_condition_failure(exc):
                        continue
                    raise
                return dict(item)
            # Both refused: the connection is gone, or a concurrent message just opened the window.
        return None

    def reissue_socket(self, connection_id: str, salon_id: int, slot: int | None, token_exp: float,
                       consent_id: str, token_id: str) -> list[dict[str, Any]]:
        """The transaction items that move a socket onto a new token (the consent its owner's
        re-link starts): its connection item and its slot, both only while they still hold it.
        Written with the state change that starts the consent, so no push of the new consent
        ever finds the owner's own socket on the old one."""
        token = _to_dynamo(_token_fields(token_exp, consent_id, token_id))
        names = {f"#t{i}": key for i, key in enumerate(token)}
        update = "SET " + ", ".join(f"#t{i} = :t{i}" for i in range(len(token)))
        values = {f":t{i}": value for i, value in enumerate(token.values())}
        items: list[dict[str, Any]] = [{"Update": {
            "TableName": self._table.name, "Key": {"pk": f"CONN#{connection_id}", "sk": "CONN"},
            "UpdateExpression": update, "ConditionExpression": "attribute_exists(pk)",
            "ExpressionAttributeNames": names, "ExpressionAttributeValues": values}}]
        if slot is not None:
            items.append({"Update": {
                "TableName": self._table.name, "Key": {"pk": _salon_pk(salon_id), "sk": f"CONN#{slot}"},
                "UpdateExpression": update, "ConditionExpression": "connection_id = :c",
                "ExpressionAttributeNames": names, "ExpressionAttributeValues": {**values, ":c": connection_id}}})
        return items

    def remove_connection(self, connection_id: str, salon_id: int | None = None) -> None:
        """Forget a connection and free its slot; harmless when it is already gone (a replayed
        $disconnect). The slot is freed only while it still holds this connection."""
        item = self._table.get_item(Key={"pk": f"CONN#{connection_id}", "sk": "CONN"},
                                    ConsistentRead=True).get("Item")
        if item is not None:
            salon_id = int(item["salon_id"])
        self._table.delete_item(Key={"pk": f"CONN#{connection_id}", "sk": "CONN"})
        if salon_id is None:
            return
        slots = [f"CONN#{item['slot']}"] if item is not None and "slot" in item else [
            str(slot["sk"]) for slot in self._query_slots(salon_id, "sk, connection_id")
            if slot.get("connection_id") == connection_id]
        for sk in slots:
            try:
                self._table.delete_item(Key={"pk": _salon_pk(salon_id), "sk": sk},
                                        ConditionExpression="connection_id = :c",
                                        ExpressionAttributeValues={":c": connection_id})
            except ClientError as exc:
                if not _is_condition_failure(exc):
                    raise

    def connections_of(self, salon_id: int) -> list[str]:
        return [socket.connection_id for socket in self.sockets_of(salon_id)]

    def sockets_of(self, salon_id: int) -> list[PageSocket]:
        """The salon's sockets with their tokens' consent and expiry (at most `max_per_salon`
        items, one consistent query)."""
        return [PageSocket(str(item["connection_id"]), item.get("consent_id"),
                           float(item["token_exp"]) if "token_exp" in item else None)
                for item in self._query_slots(salon_id, "connection_id, consent_id, token_exp")
                if "connection_id" in item]

    # ---- pairing-code limits ----------------------------------------------------------------

    def admit_pairing_request(self, salon_id: int, phone: str, now: float, min_interval: float,
                              max_phones: int, window: float) -> PairingVerdict:
        """Count a pairing-code request for `phone` if the salon's limits allow it: at most
        `max_phones` distinct numbers per `window` seconds, and `min_interval` seconds between
        requests. Conditional writes decide (never a read-modify-write), so concurrent requests
        cannot both slip under a limit. Numbers are kept as hashes, for the window only."""
        key = {"pk": _salon_pk(salon_id), "sk": PAIRING_SK}
        digest = hashlib.sha256(f"{salon_id}:{phone}".encode()).hexdigest()[:24]
        attempts: list[tuple[str, str, dict[str, Any]]] = [
            # Same window: under both limits (the number is known already, or there is room).
            ("SET last_at = :now ADD phones :phone",
             "window_start > :floor AND last_at <= :recent AND (contains(phones, :h) OR size(phones) < :max)",
             {":floor": _to_dynamo(now - window), ":recent": _to_dynamo(now - min_interval), ":h": digest,
              ":max": max_phones}),
            # No window yet, or it has passed: this request opens a new one.
            ("SET window_start = :now, last_at = :now, phones = :phone, #ttl = :ttl",
             "attribute_not_exists(pk) OR window_start <= :floor",
             {":floor": _to_dynamo(now - window), ":ttl": int(now + window) + 1}),
        ]
        for update, condition, values in attempts:
            try:
                self._table.update_item(
                    Key=key, UpdateExpression=update, ConditionExpression=condition,
                    ExpressionAttributeValues={":now": _to_dynamo(now), ":phone": {digest}, **values},
                    **({"ExpressionAttributeNames": {"#ttl": "ttl"}} if "#ttl" in update else {}),
                )
            except ClientError as exc:
                if _is_condition_failure(exc):
                    continue
                raise
            return PairingVerdict(allowed=True)
        item = _from_dynamo(self._table.get_item(Key=key, ConsistentRead=True).get("Item") or {})
        last_at, started = float(item.get("last_at", 0)), float(item.get("window_start", 0))
        if now - last_at < min_interval:
            return PairingVerdict(False, "interval", last_at + min_interval - now)
        return PairingVerdict(False, "phones", max(0.0, started + window - now))

    # ---- WhatsApp sessions and runners (aiadmin.ownership) ------------------------------------

    def get_session(self, salon_id: int) -> SessionLease | None:
        return self.ownership.get_session(salon_id)

    def get_sessions(self, salon_ids: Iterable[int]) -> dict[int, SessionLease]:
        return self.ownership.get_sessions(salon_ids)

    def request_session(self, salon_id: int, desired: SessionDesire, pair_phone: str | None = None,
                        renew_command: bool = False) -> SessionLease:
        """Tell whichever runner owns (or will own) the salon's session what to do (see
        `Ownership.command_update`). `stop` (uninstalled) gives the item a TTL."""
        return self.ownership.request_session(salon_id, desired, pair_phone, renew_command,
                                              ttl=_command_ttl(desired, time.time()))

    def _session_command(self, salon_id: int, command: SessionCommand, now: float) -> dict[str, Any]:
        """The update of the session item that carries `command` (alone or in a transaction)."""
        return self.ownership.command_update(salon_id, command.desired, command.pair_phone, command.renew, now,
                                             _command_ttl(command.desired, now))

    def set_session_device(self, salon_id: int, device_jid: str | None) -> None:
        self.ownership.set_session_device(salon_id, device_jid)

    def runner_heartbeats(self) -> list[dict[str, Any]]:
        """Every runner membership: `runner_id`, `at` (its last renewal), `sessions`, `phases`,
        `pairings`, and `epoch`, `expires`, `left`."""
        return [_heartbeat(member) for member in self.ownership.members()]

    def latest_heartbeat(self) -> float | None:
        stamps = [member.at for member in self.ownership.members()]
        return max(stamps) if stamps else None


def _token_fields(token_exp: float | None, consent_id: str | None, token_id: str | None) -> dict[str, Any]:
    """What a socket's items keep of the token it was opened with."""
    fields: dict[str, Any] = {}
    if token_exp is not None:
        fields["token_exp"] = _to_dynamo(token_exp)
    if consent_id is not None:
        fields["consent_id"] = consent_id
    if token_id is not None:
        fields["token_id"] = token_id
    return fields


def _command_ttl(desired: SessionDesire, now: float) -> int | None:
    """An uninstalled salon's session item goes with the rest after the retention."""
    return int(now) + UNINSTALLED_RETENTION_SECONDS if desired == "stop" else None


def _heartbeat(member: Member) -> dict[str, Any]:
    status = dict(member.status)
    return {"runner_id": member.runner_id, "at": member.at, "sessions": int(status.get("sessions", 0)),
            "phases": dict(status.get("phases") or {}), "pairings": int(status.get("pairings", 0)),
            "epoch": member.epoch, "expires": member.expires, "left": member.left}
