"""Runner memberships (pk `RUNNERS`, sk runner id): who is alive, under which epoch; each one
is also its runner's heartbeat. `aiadmin.db.sessions` says how they fence session ownership."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

from boto3.dynamodb.conditions import Key

from aiadmin.db.dynamo import conditionally, from_dynamo, to_dynamo

if TYPE_CHECKING:
    from typing_extensions import TypeIs

    from aiadmin.models import SessionLease

MEMBERS_PARTITION = "RUNNERS"


class Fence(NamedTuple):
    """A runner membership: (runner id, epoch). Owns sessions; fences the runner's writes."""

    runner_id: str
    epoch: int

    def owns(self, lease: SessionLease | None) -> TypeIs[SessionLease]:
        """Whether the session is this membership's: "is this session ours", in one place."""
        return lease is not None and lease.owner == self.runner_id and lease.owner_epoch == self.epoch


@dataclass(frozen=True)
class Member:
    runner_id: str
    epoch: int
    expires: float
    at: float = 0.0
    left: bool = False
    status: Mapping[str, Any] = field(default_factory=dict)

    @property
    def fence(self) -> Fence:
        return Fence(self.runner_id, self.epoch)

    def dead(self, now: float, grace: float) -> bool:
        """Left cleanly (its sessions are stopped), or lapsed more than `grace` ago."""
        return self.left or self.expires + grace < now

    def heartbeat(self) -> dict[str, Any]:
        """What ops read of it: `runner_id`, `at` (its last renewal), `sessions`, `phases`,
        `pairings`, and `epoch`, `expires`, `left`."""
        status = dict(self.status)
        return {"runner_id": self.runner_id, "at": self.at, "sessions": int(status.get("sessions", 0)),
                "phases": dict(status.get("phases") or {}), "pairings": int(status.get("pairings", 0)),
                "epoch": self.epoch, "expires": self.expires, "left": self.left}


def member_key(runner_id: str) -> dict[str, str]:
    return {"pk": MEMBERS_PARTITION, "sk": runner_id}


class Memberships:
    """Join, renew, leave and list runner memberships. `table` is a boto3 Table resource (the
    runner gives this one a client of its own: see `wa_runner.__main__`)."""

    def __init__(self, table: Any) -> None:
        self._table = table

    def join(self, runner_id: str, now: float, lease_seconds: float, status: Mapping[str, Any]) -> int:
        """Become a member with a new epoch (sessions of earlier epochs are dead from now on)."""
        response = self._table.update_item(
            Key=member_key(runner_id),
            UpdateExpression="SET epoch = if_not_exists(epoch, :zero) + :one, expires = :until, #at = :now, "
                             "#status = :status REMOVE #left",
            ExpressionAttributeNames={"#at": "at", "#status": "status", "#left": "left"},
            ExpressionAttributeValues={":zero": 0, ":one": 1, ":until": to_dynamo(now + lease_seconds),
                                       ":now": to_dynamo(now), ":status": to_dynamo(dict(status))},
            ReturnValues="UPDATED_NEW",
        )
        return int(response["Attributes"]["epoch"])

    def renew(self, fence: Fence, now: float, lease_seconds: float, status: Mapping[str, Any]) -> bool:
        """Extend a live membership; False when it lapsed or was replaced (never revived)."""
        return conditionally(
            self._table.update_item,
            Key=member_key(fence.runner_id),
            UpdateExpression="SET expires = :until, #at = :now, #status = :status",
            ConditionExpression="epoch = :epoch AND expires > :now AND attribute_not_exists(#left)",
            ExpressionAttributeNames={"#at": "at", "#status": "status", "#left": "left"},
            ExpressionAttributeValues={":epoch": fence.epoch, ":until": to_dynamo(now + lease_seconds),
                                       ":now": to_dynamo(now), ":status": to_dynamo(dict(status))},
        )

    def leave(self, fence: Fence, now: float) -> None:
        """Left cleanly, every session stopped: the others may take over at once."""
        conditionally(
            self._table.update_item,
            Key=member_key(fence.runner_id),
            UpdateExpression="SET expires = :zero, #left = :yes, #at = :now",
            ConditionExpression="epoch = :epoch",
            ExpressionAttributeNames={"#left": "left", "#at": "at"},
            ExpressionAttributeValues={":zero": 0, ":yes": True, ":now": to_dynamo(now), ":epoch": fence.epoch},
        )

    def all(self) -> list[Member]:
        """Every runner membership, live or dead (one small partition, read consistently)."""
        response = self._table.query(KeyConditionExpression=Key("pk").eq(MEMBERS_PARTITION), ConsistentRead=True)
        return [Member(runner_id=str(item["sk"]), epoch=int(item.get("epoch", 0)),
                       expires=float(item.get("expires", 0)), at=float(item.get("at", 0)),
                       left=bool(item.get("left", False)), status=dict(item.get("status") or {}))
                for item in map(from_dynamo, response["Items"])]

    def forget(self, member: Member, cutoff: float) -> bool:
        """Delete a dead membership whose sessions have all been taken over."""
        return conditionally(
            self._table.delete_item,
            Key=member_key(member.runner_id),
            ConditionExpression="epoch = :epoch AND (expires < :cutoff OR #left = :yes)",
            ExpressionAttributeNames={"#left": "left"},
            ExpressionAttributeValues={":epoch": member.epoch, ":cutoff": to_dynamo(cutoff), ":yes": True},
        )

    def heartbeats(self) -> list[dict[str, Any]]:
        """Every membership as ops read it (`Member.heartbeat`)."""
        return [member.heartbeat() for member in self.all()]

    def latest_heartbeat(self) -> float | None:
        stamps = [member.at for member in self.all()]
        return max(stamps) if stamps else None
