"""WhatsApp session items (pk `SALON#<id>`, sk `SESSION`): which runner membership owns each
salon's session, and the commands handlers send to that owner (`aiadmin.db` has the key schema;
memberships are `aiadmin.db.memberships`).

Ownership costs nothing per idle session:
- each runner holds one **membership** (pk `RUNNERS`, sk runner id): an `epoch`, bumped each
  time it (re)joins, and an `expires` it renews every few seconds; its status (sessions by
  phase, pairings) rides along, so the membership is also its heartbeat;
- a session is owned by a membership, (`owner`, `owner_epoch`), recorded once at the claim:
  no per-session renewals. Every salon write of the owner is fenced on the session being that
  membership's (`fence_checks`);
- a runner whose membership lapses stops all its sessions before its `expires` (its own
  clock, with a margin); the others take a dead membership's sessions over only `grace`
  seconds after it (`take_over`, a transaction that checks the membership is dead).

One sparse index, `SessionIndex` (`session_pk`, `session_sk`), serves all the queries with key
conditions only (DynamoDB applies `Limit` before a `FilterExpression`, so a filtered page may
come back empty while matching items exist; key conditions never hide one):

| session is            | session_pk        | session_sk               | read by                       |
|-----------------------|-------------------|--------------------------|-------------------------------|
| claimable (no owner)  | CLAIM#L, CLAIM#R<n> | <class>#<ms>           | claim polls (oldest first)    |
| owned, command waits  | OWNER#<runner id> | <class>#<ms>             | the owner's command poll      |
| owned, nothing to do  | OWNER#<runner id> | S#<salon id>             | reconcile, takeover           |
| retired (nothing runs)| -                 | -                        | -                             |

A command is one unconditional write (so it can ride in a handler's transaction): it sets
`session_pk = if_not_exists(owner_pk, <claim partition>)` (an owned session carries `owner_pk`, its
owner's partition) and `session_sk = <class>#<ms>`, and counts `command_seq`. The owner
acknowledges a command by moving the sort key back to `S#<salon id>`, on condition that
`command_seq` is still the one it carried out: a newer command is never lost.

Claimable sessions: linking attempts (class `0`, sorted first) and stop/pause (`1`) in
`CLAIM#L`, polled often (an owner waits for the QR); linked sessions to resume (`2`) spread
over `RESUME_SHARDS` partitions `CLAIM#R<salon id modulo>`, so a mass release (a deploy) or a
mass takeover never makes one hot index partition, and new owners never queue behind it.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, NamedTuple

from boto3.dynamodb.conditions import ConditionBase, Key

from aiadmin.db.dynamo import (
    batch_get,
    conditional_write,
    conditionally,
    from_dynamo,
    query_all,
    salon_of_pk,
    salon_pk,
    to_dynamo,
)
from aiadmin.db.memberships import Fence, member_key
from aiadmin.models import SessionDesire, SessionLease

INDEX = "SessionIndex"
RESUME_SHARDS = 4
LINKING_PARTITION = "CLAIM#L"
RESUME_PARTITIONS = tuple(f"CLAIM#R{shard}" for shard in range(RESUME_SHARDS))
CLAIM_PARTITIONS = (LINKING_PARTITION, *RESUME_PARTITIONS)
_CLASS: dict[str, str] = {"link": "0", "stop": "1", "pause": "1", "run": "2"}
LINK_ATTEMPT, LIGHT, RESUME = "0", "1", "2"
_ATTEMPTS = 5
# What is left of an uninstalled salon (state, session command) is deleted by TTL after this.
UNINSTALLED_RETENTION_SECONDS = 30 * 24 * 3600


@dataclass(frozen=True)
class SessionCommand:
    """What a handler asks of the runner owning a salon's session (see `Sessions.command_item`):
    `pair_phone` makes a `link` ask for a pairing code for that number; `renew` makes the owner
    act on a repeated command (with `run`: activate again)."""

    desired: SessionDesire
    pair_phone: str | None = None
    renew: bool = False


class Claimable(NamedTuple):
    salon_id: int
    klass: str  # LINK_ATTEMPT, LIGHT or RESUME


def owner_partition(runner_id: str) -> str:
    return f"OWNER#{runner_id}"


def claim_partition(desired: str, salon_id: int) -> str:
    return RESUME_PARTITIONS[salon_id % RESUME_SHARDS] if desired == "run" else LINKING_PARTITION


def _ms(now: float) -> str:
    return f"{int(now * 1000):013d}"


def _idle_key(salon_id: int) -> str:
    return f"S#{salon_id}"


def claim_keys(desired: str, salon_id: int, now: float) -> dict[str, str]:
    """The index keys of a claimable session, as `:cpk` and `:csk`."""
    return {":cpk": claim_partition(desired, salon_id), ":csk": f"{_CLASS[desired]}#{_ms(now)}"}


def session_key(salon_id: int) -> dict[str, str]:
    return {"pk": salon_pk(salon_id), "sk": "SESSION"}


def _command_ttl(desired: SessionDesire, now: float) -> int | None:
    """An uninstalled salon's session item goes with the rest after the retention."""
    return int(now) + UNINSTALLED_RETENTION_SECONDS if desired == "stop" else None


_OWNED_BY_ME = "#owner = :me AND owner_epoch = :epoch"
_TAKE = "SET #owner = :me, owner_epoch = :epoch, owner_pk = :opk, session_pk = :opk, session_sk = :osk"


def _me(fence: Fence) -> dict[str, Any]:
    return {":me": fence.runner_id, ":epoch": fence.epoch}


def _taken_by(fence: Fence, salon_id: int) -> dict[str, Any]:
    return {**_me(fence), ":opk": owner_partition(fence.runner_id), ":osk": _idle_key(salon_id)}


class Sessions:
    """Session items: commands (handlers), claims, takeovers and acknowledgements (runners), and
    the fence every salon write of an owner carries. `table` is a boto3 Table resource."""

    def __init__(self, table: Any) -> None:
        self._table = table
        self._client = table.meta.client

    # ---- what handlers use: commands ------------------------------------------------------

    def get(self, salon_id: int) -> SessionLease | None:
        item = self._table.get_item(Key=session_key(salon_id), ConsistentRead=True).get("Item")
        return SessionLease.model_validate(from_dynamo(item)) if item else None

    def get_many(self, salon_ids: Iterable[int]) -> dict[int, SessionLease]:
        leases = (SessionLease.model_validate(item)
                  for item in batch_get(self._table, map(session_key, dict.fromkeys(salon_ids))))
        return {lease.salon_id: lease for lease in leases}

    def request(self, salon_id: int, desired: SessionDesire, pair_phone: str | None = None,
                renew_command: bool = False, now: float | None = None) -> SessionLease:
        """Tell whichever runner owns (or will own) the salon's session what to do (see
        `command_item`)."""
        update = self.command_item(SessionCommand(desired, pair_phone, renew_command), salon_id,
                                   time.time() if now is None else now)
        del update["TableName"]
        response = self._table.update_item(**update, ReturnValues="ALL_NEW")
        return SessionLease.model_validate(from_dynamo(response["Attributes"]))

    def command_item(self, command: SessionCommand, salon_id: int, now: float) -> dict[str, Any]:
        """The write of a command (alone, or as one `Update` of a transaction): unconditional.

        A new `link` bumps the generation so the owner starts a fresh attempt; `pair_phone`
        (set or cleared in the same write, so the command and its number are never apart)
        makes that attempt ask for a pairing code for the number; `renew` bumps the generation
        for the other commands too, so the owner acts on a repeated command; with `run` it is
        an explicit request to activate again (a failed activation is retried only then). An
        owned session gets the command in its owner's partition of the index, one without an
        owner becomes claimable. `stop` (uninstalled) gives the item a TTL; any other command
        removes it."""
        desired = command.desired
        bump = 1 if desired == "link" or command.renew else 0
        values: dict[str, Any] = {":d": desired, ":s": salon_id, ":zero": 0, ":one": 1, ":bump": bump,
                                  **claim_keys(desired, salon_id, now)}
        sets = ["desired = :d", "salon_id = :s", "generation = if_not_exists(generation, :zero) + :bump",
                "command_seq = if_not_exists(command_seq, :zero) + :one",
                "session_pk = if_not_exists(owner_pk, :cpk)", "session_sk = :csk"]
        removes: list[str] = []
        if command.pair_phone:
            sets.append("pair_phone = :phone")
            values[":phone"] = command.pair_phone
        else:
            removes.append("pair_phone")
        if command.renew and desired == "run":
            sets.append("activation_retry = if_not_exists(generation, :zero) + :bump")
        ttl = _command_ttl(desired, now)
        if ttl is not None:
            sets.append("#ttl = :ttl")
            values[":ttl"] = ttl
        else:
            removes.append("#ttl")
        return {
            "TableName": self._table.name,
            "Key": session_key(salon_id),
            "UpdateExpression": "SET " + ", ".join(sets) + " REMOVE " + ", ".join(removes),
            "ExpressionAttributeNames": {"#ttl": "ttl"},
            "ExpressionAttributeValues": values,
        }

    def set_device(self, salon_id: int, device_jid: str | None) -> None:
        """Remember (or forget) which linked device is the salon's, for keys kept in a store
        shared by all salons (Postgres), where the device must be named to be resumed."""
        update: dict[str, Any] = {
            "Key": session_key(salon_id),
            # Only on an existing session item: never create a half item the model refuses.
            "ConditionExpression": "attribute_exists(pk)",
        }
        if device_jid:
            update.update(UpdateExpression="SET device_jid = :j", ExpressionAttributeValues={":j": device_jid})
        else:
            update.update(UpdateExpression="REMOVE device_jid")
        conditionally(self._table.update_item, **update)

    # ---- claiming -------------------------------------------------------------------------

    def claimable(self, partition: str, classes: set[str], limit: int = 25) -> list[Claimable]:
        """Claimable sessions of one partition (`CLAIM_PARTITIONS`), of the given classes
        (linking before light before resumes), oldest first. Key conditions only: never an
        empty page while such sessions exist."""
        if not classes:
            return []
        key: ConditionBase = Key("session_pk").eq(partition)
        low, high = min(classes), max(classes)
        if low == high:
            key &= Key("session_sk").begins_with(low + "#")
        elif (low, high) != (LINK_ATTEMPT, RESUME):
            key &= Key("session_sk").between(low + "#", high + "$")  # "$" sorts right after "#"
        response = self._table.query(IndexName=INDEX, KeyConditionExpression=key, Limit=limit)
        return [Claimable(salon_of_pk(item["pk"]), str(item["session_sk"])[0]) for item in response["Items"]]

    def claim(self, salon_id: int, fence: Fence) -> SessionLease | None:
        """Take a claimable session; None when another runner got it first (or it is retired)."""
        response = conditional_write(
            self._table.update_item,
            Key=session_key(salon_id), UpdateExpression=_TAKE,
            ConditionExpression="begins_with(session_pk, :claim) AND attribute_not_exists(#owner)",
            ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={**_taken_by(fence, salon_id), ":claim": "CLAIM#"},
            ReturnValues="ALL_NEW",
        )
        return SessionLease.model_validate(from_dynamo(response["Attributes"])) if response else None

    def owned_by(self, runner_id: str, limit: int | None = None) -> list[SessionLease]:
        """Sessions recorded as the runner's (any epoch), from the index: eventually consistent,
        so a caller acting on one confirms it with a consistent read or a conditional write."""
        query: dict[str, Any] = {"IndexName": INDEX,
                                 "KeyConditionExpression": Key("session_pk").eq(owner_partition(runner_id))}
        found: list[SessionLease] = []
        while True:
            if limit is not None:
                query["Limit"] = limit - len(found)
            response = self._table.query(**query)
            found += [SessionLease.model_validate(from_dynamo(item)) for item in response["Items"]]
            if "LastEvaluatedKey" not in response or (limit is not None and len(found) >= limit):
                return found
            query["ExclusiveStartKey"] = response["LastEvaluatedKey"]

    def take_over(self, salon_id: int, fence: Fence, dead: Fence, cutoff: float) -> SessionLease | None:
        """Claim a session of a dead membership: only while the session is still that
        membership's and the membership is gone, of another epoch, or expired before `cutoff`
        (now minus the grace). None otherwise."""
        won = conditionally(self._client.transact_write_items, TransactItems=[
            {"Update": {
                "TableName": self._table.name, "Key": session_key(salon_id), "UpdateExpression": _TAKE,
                "ConditionExpression": "#owner = :dead AND owner_epoch = :dead_epoch",
                "ExpressionAttributeNames": {"#owner": "owner"},
                "ExpressionAttributeValues": {**_taken_by(fence, salon_id), ":dead": dead.runner_id,
                                              ":dead_epoch": dead.epoch},
            }},
            {"ConditionCheck": {
                "TableName": self._table.name, "Key": member_key(dead.runner_id),
                "ConditionExpression": "attribute_not_exists(sk) OR epoch <> :dead_epoch OR expires < :cutoff",
                "ExpressionAttributeValues": {":dead_epoch": dead.epoch, ":cutoff": to_dynamo(cutoff)},
            }},
        ])
        return self.get(salon_id) if won else None

    # ---- the owner's side -----------------------------------------------------------------

    def pending_commands(self, runner_id: str) -> list[int]:
        """Salons of this runner with a command waiting (index: eventually consistent, so the
        caller reads each one consistently before acting)."""
        return [salon_of_pk(item["pk"]) for item in query_all(
            self._table, IndexName=INDEX,
            KeyConditionExpression=Key("session_pk").eq(owner_partition(runner_id))
            & Key("session_sk").lt("3"))]  # the claim classes 0-2, not the idle `S#...`

    def acknowledge(self, salon_id: int, fence: Fence, command_seq: int) -> bool:
        """The command `command_seq` was carried out: out of the command index, unless a newer
        one came."""
        return self._if_mine(salon_id, "SET session_sk = :idle", "command_seq = :seq",
                             {":idle": _idle_key(salon_id), ":seq": command_seq}, fence)

    def release(self, lease: SessionLease, fence: Fence, now: float | None = None) -> bool:
        """Hand the session back (shutdown): claimable by any runner at once. False when it is
        no longer ours."""
        current: SessionLease | None = lease
        for _ in range(_ATTEMPTS):
            if not fence.owns(current):
                return False
            values = {**claim_keys(current.desired, lease.salon_id, time.time() if now is None else now),
                      ":d": current.desired}
            if self._if_mine(lease.salon_id,
                             "SET session_pk = :cpk, session_sk = :csk REMOVE #owner, owner_epoch, owner_pk",
                             "desired = :d", values, fence):
                return True
            current = self.get(lease.salon_id)  # a command changed `desired` meanwhile
        return False

    def retire(self, lease: SessionLease, fence: Fence) -> bool:
        """Nothing left to run (stopped, paused, abandoned, logged out): out of every index and
        owner-less, unless a newer command arrived since `lease` was read (it stays ours then)."""
        unchanged = "command_seq = :seq" if lease.command_seq else "attribute_not_exists(command_seq)"
        return self._if_mine(lease.salon_id, "REMOVE #owner, owner_epoch, owner_pk, session_pk, session_sk",
                             unchanged, {":seq": lease.command_seq} if lease.command_seq else {}, fence)

    def mark_linked(self, salon_id: int, fence: Fence, generation: int) -> bool:
        """The owner's pairing succeeded: `link` becomes `run`, unless a newer command (stop,
        pause, another link) arrived meanwhile, which then wins."""
        return self._if_mine(salon_id, "SET desired = :run REMOVE pair_phone", "desired = :link AND generation = :g",
                             {":run": "run", ":link": "link", ":g": generation}, fence)

    def take_activation_retry(self, salon_id: int, fence: Fence, generation: int) -> bool:
        """Consume an explicit "activate again" request (exactly once: conditional)."""
        return self._if_mine(salon_id, "REMOVE activation_retry", "activation_retry = :g", {":g": generation}, fence)

    def fence_checks(self, salon_id: int, fence: Fence, attempt: int | None = None) -> list[dict[str, Any]]:
        """The condition check that makes a salon write the owner's only: the session is this
        membership's (runner id and epoch). A takeover changes both, so a runner that lost the
        session (it lapsed, was frozen, or joined again) writes nothing from then on. Between a
        lapse and the takeover nobody else owns the session; the lapsed runner itself stops
        acting a margin before its lease ends (`wa_runner.membership`). (A check of the
        membership item too would cost a transaction item on every write and guard nothing more.)

        `attempt` (a command generation) also requires that the session's command is still that
        linking attempt: the owner may have asked for a new one (a pairing code instead of the
        QR, a new QR, a relink) that its runner has not taken yet, and the old attempt's QR must
        not overwrite the new attempt's state."""
        condition, values = _OWNED_BY_ME, _me(fence)
        if attempt is not None:
            condition += " AND generation = :attempt"
            values = {**values, ":attempt": attempt}
        return [
            {"ConditionCheck": {
                "TableName": self._table.name, "Key": session_key(salon_id),
                "ConditionExpression": condition,
                "ExpressionAttributeNames": {"#owner": "owner"},
                "ExpressionAttributeValues": values,
            }},
        ]

    def _if_mine(self, salon_id: int, update: str, condition: str, values: dict[str, Any], fence: Fence) -> bool:
        """An update of the session on condition that it is `fence`'s and `condition` holds."""
        return conditionally(
            self._table.update_item, Key=session_key(salon_id), UpdateExpression=update,
            ConditionExpression=f"{_OWNED_BY_ME} AND {condition}", ExpressionAttributeNames={"#owner": "owner"},
            ExpressionAttributeValues={**_me(fence), **values})
