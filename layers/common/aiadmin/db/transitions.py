"""Salon state changes: a `Transition` says what one change writes (the state and its fields, the
event, the runner's command, secrets, forgotten items, the fence), and `Transitions` composes it
into one DynamoDB transaction, conditional on the salon's version (optimistic, retried on a race)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import KW_ONLY, dataclass, field
from enum import Enum
from typing import Any

from botocore.exceptions import ClientError

from aiadmin.db.dynamo import cancelled_by_checks, from_dynamo, is_condition_failure, salon_pk, to_dynamo
from aiadmin.db.events import event_item
from aiadmin.db.memberships import Fence
from aiadmin.db.salon_secrets import SalonSecrets
from aiadmin.db.salons import Salons, state_key
from aiadmin.db.sessions import UNINSTALLED_RETENTION_SECONDS, SessionCommand, Sessions
from aiadmin.models import Salon
from aiadmin.observability import log_state_change, logger, metrics
from aiadmin.states import IllegalTransition, SalonState, check_transition

_ATTEMPTS = 5
# The checks a fenced transition adds after everything else (see `Transitions._items`).
_FENCE_CHECKS = 1


class ConcurrentUpdate(RuntimeError):
    """The salon kept changing under us; the caller may retry later."""


class StaleAttempt(IllegalTransition):
    """A runner's write for a linking attempt the owner has since replaced (see
    `Sessions.fence_checks`): refused, and the session is still the runner's."""

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


class Unread(Enum):
    """A transition's `seen` when the caller has not read the salon: it is read first."""

    UNREAD = "unread"


UNREAD = Unread.UNREAD


@dataclass(frozen=True)
class Transition:
    """One change of a salon's state and everything written with it, all or nothing.

    - `attrs` are set on the state item, `remove` deleted from it; entering `uninstalled` sets
      the item's TTL, any other state clears it.
    - `expected` restricts the states this caller may move the salon from (the runner only turns
      a QR into `qr_expired` while it is `qr_ready`); the state machine's rules always apply.
      IllegalTransition otherwise.
    - `guard` is called with every read of the salon and may raise to refuse the change: the
      write is conditional on the version it saw, so its verdict holds (who the salon is bound to).
    - `seen` is the salon as the caller read it: the first attempt writes on its version without
      reading again (a redirect reads a salon once); on a race the salon is read again.
    - `command` tells the session's runner what to do, in the same transaction.
    - `secrets` replace the salon's secrets item; `forget` deletes the salon's items with those
      sort keys (`SECRETS_SK`, `PAIRING_SK`); `also` adds the caller's own transaction items
      (`Connections.reissue_items`).
    - `fence` (a runner membership) makes the write happen only while the salon's session is that
      membership's (LeaseLost otherwise); with it, `attempt` (a command generation) also requires
      that the session still runs that linking attempt (StaleAttempt otherwise).
    """

    salon_id: int
    to: SalonState
    actor: str
    reason: str = ""
    _: KW_ONLY
    attrs: Mapping[str, Any] = field(default_factory=dict)
    remove: Sequence[str] = ()
    expected: Collection[SalonState | None] | None = None
    guard: Callable[[Salon | None], None] | None = None
    seen: Salon | Unread | None = UNREAD
    command: SessionCommand | None = None
    secrets: Mapping[str, str] | None = None
    forget: Sequence[str] = ()
    also: Sequence[Mapping[str, Any]] = ()
    fence: Fence | None = None
    attempt: int | None = None

    def fenced(self, fence: Fence, attempt: int | None = None) -> Transition:
        return dataclasses.replace(self, fence=fence, attempt=attempt)


class Transitions:
    """Writes `Transition`s. `table` is a boto3 Table resource."""

    def __init__(self, table: Any, salons: Salons, sessions: Sessions) -> None:
        self._table = table
        self._client = table.meta.client
        self._salons = salons
        self._sessions = sessions

    def apply(self, change: Transition) -> Salon:
        """Write `change` and return the salon as written; count a metric and log it. Raises
        IllegalTransition (or StaleAttempt), LeaseLost, ConcurrentUpdate after `_ATTEMPTS` races,
        or whatever `guard` raises."""
        salon_id, new_state = change.salon_id, change.to
        removed = [name for name in dict.fromkeys(change.remove) if name not in change.attrs]
        seen = change.seen
        for _ in range(_ATTEMPTS):
            current = self._salons.get(salon_id) if isinstance(seen, Unread) else seen
            seen = UNREAD  # a race reads it again
            current_state = current.state if current else None
            if change.guard is not None:
                change.guard(current)
            if change.expected is not None and current_state not in change.expected:
                raise IllegalTransition(current_state, new_state)
            try:
                check_transition(current_state, new_state)
            except IllegalTransition:
                logger.warning("refused illegal transition", extra={
                    "salon_id": salon_id, "from": current_state, "to": new_state, "actor": change.actor})
                raise
            now = time.time()
            fields: dict[str, Any] = {
                **change.attrs,
                "state": new_state.value,
                "version": (current.version if current else 0) + 1,
                "updated_at": now,
                "updated_by": change.actor,
                "salon_id": salon_id,
            }
            try:
                self._client.transact_write_items(
                    TransactItems=self._items(change, current, fields, removed, now))
            except ClientError as exc:
                if change.fence is not None and cancelled_by_checks(exc, _FENCE_CHECKS):
                    raise self._fence_refusal(change, change.fence) from exc
                if is_condition_failure(exc):
                    continue
                raise
            if new_state != current_state:  # counts entries into a state: a new QR code is not one
                metrics.add_metric(name=f"Transition_{new_state.value}", unit="Count", value=1)
            log_state_change(salon_id, current_state.value if current_state else None, new_state.value,
                             change.actor, change.reason)
            before = {k: v for k, v in (current.model_dump() if current else {}).items() if k not in removed}
            return Salon.model_validate(from_dynamo({**before, **fields}))
        raise ConcurrentUpdate(f"salon {salon_id} changed concurrently {_ATTEMPTS} times")

    def _items(self, change: Transition, current: Salon | None, fields: dict[str, Any], removed: list[str],
               now: float) -> list[dict[str, Any]]:
        """The transaction: the state item (on the version read), its event, then the command,
        secrets, forgotten items and the caller's items, and the fence's checks last."""
        salon_id, name = change.salon_id, self._table.name
        dropped = list(removed)
        if change.to == SalonState.UNINSTALLED:
            fields["ttl"] = int(now) + UNINSTALLED_RETENTION_SECONDS
        else:
            dropped.append("ttl")
        names = {f"#f{i}": key for i, key in enumerate(fields)}
        values = {f":v{i}": to_dynamo(value) for i, value in enumerate(fields.values())}
        update = "SET " + ", ".join(f"#f{i} = :v{i}" for i in range(len(fields)))
        if dropped:
            names.update({f"#r{i}": key for i, key in enumerate(dropped)})
            update += " REMOVE " + ", ".join(f"#r{i}" for i in range(len(dropped)))
        if current:
            condition = "#version = :expected"
            names["#version"] = "version"
            values[":expected"] = current.version
        else:
            condition = "attribute_not_exists(pk)"
        items: list[dict[str, Any]] = [
            {"Update": {"TableName": name, "Key": state_key(salon_id), "UpdateExpression": update,
                        "ConditionExpression": condition, "ExpressionAttributeNames": names,
                        "ExpressionAttributeValues": values}},
            {"Put": {"TableName": name, "Item": event_item(
                salon_id, current.state if current else None, change.to, change.actor, change.reason, now)}},
        ]
        if change.command is not None:
            items.append({"Update": self._sessions.command_item(change.command, salon_id, now)})
        if change.secrets is not None:
            items.append({"Put": {"TableName": name, "Item": SalonSecrets.item(salon_id, change.secrets)}})
        items.extend({"Delete": {"TableName": name, "Key": {"pk": salon_pk(salon_id), "sk": sk}}}
                     for sk in dict.fromkeys(change.forget))
        items.extend(dict(item) for item in change.also)
        if change.fence is not None:
            # Last on purpose: `cancelled_by_checks` reads the last cancellation reasons.
            items += self._sessions.fence_checks(salon_id, change.fence, change.attempt)
        return items

    def _fence_refusal(self, change: Transition, fence: Fence) -> Exception:
        """Why a fenced write was refused: the session is no longer ours, or (still ours) the
        attempt was replaced. Read only on a refusal, so the common write costs nothing more."""
        if change.attempt is not None and fence.owns(self._sessions.get(change.salon_id)):
            return StaleAttempt(change.salon_id, change.to, change.attempt)
        return LeaseLost(change.salon_id)

    def hold_activation(self, salon_id: int, fence: Fence) -> bool:
        """Whether the runner of `fence` may go on activating the salon: it is still `activating`
        and its session is still that membership's (the fence proves who may act; a runner that
        lost the session calls YClients no more). Writes nothing."""
        checks = [
            {"ConditionCheck": {
                "TableName": self._table.name, "Key": state_key(salon_id),
                "ConditionExpression": "#state = :activating",
                "ExpressionAttributeNames": {"#state": "state"},
                "ExpressionAttributeValues": {":activating": SalonState.ACTIVATING.value},
            }},
            *self._sessions.fence_checks(salon_id, fence),
        ]
        for _ in range(_ATTEMPTS):
            try:
                self._client.transact_write_items(TransactItems=checks)
            except ClientError as exc:
                if cancelled_by_checks(exc, len(checks)):
                    return False
                if not is_condition_failure(exc):
                    raise
                continue  # a conflict with a concurrent write of the salon: look again
            return True
        raise ConcurrentUpdate(f"salon {salon_id} changed concurrently {_ATTEMPTS} times")
