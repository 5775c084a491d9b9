"""Data access for the one application table (`AppTable` in template.yaml): one repository per
aggregate, each in its own module, and `Store`, which gives them all over one table.

Key schema (single table, string keys `pk`/`sk`):

| item              | pk                   | sk                | module        | holds                                 |
|-------------------|----------------------|-------------------|---------------|---------------------------------------|
| salon state       | SALON#<id>           | STATE             | salons        | `Salon`; streamed; TTL if uninstalled |
| salon secrets     | SALON#<id>           | SECRETS           | salon_secrets | api_key, webhook_secret; in no GSI    |
| pairing limit     | SALON#<id>           | PAIRING           | pairing       | phone hashes, request times; TTL      |
| salon event log   | SALON#<id>           | EVENT#<ms>#<rand> | events        | who/what/when; TTL                    |
| socket slot       | SALON#<id>           | CONN#<slot 0..4>  | connections   | connection_id, token; TTL             |
| connection by id  | CONN#<connection id> | CONN              | connections   | salon, slot, token, message counts    |
| token's messages  | TOKEN#<token id>     | TOKEN             | connections   | message count per window; TTL         |
| WhatsApp session  | SALON#<id>           | SESSION           | sessions      | `SessionLease`; GSI SessionIndex      |
| runner membership | RUNNERS              | <runner id>       | memberships   | epoch, expires, status (heartbeat)    |
| outbound message  | SALON#<id>           | MSG#<caller id>   | messages      | to, text, status, times; TTL          |
| salon's outbox    | SALON#<id>           | Q#<ms>#<caller id>| messages      | a message not sent yet, in order      |
| idempotency       | idempotency#...      | <hash>            | (powertools)  | written by powertools Idempotency     |

A state change, with everything written in its transaction, is a `Transition` (`transitions`).
Messages (the outbound ones above, and the runner's receipt pointers and chat items) are laid out
in `aiadmin.db.message_keys`; the API writes them with `messages`, the runner with `outbox`.

`SessionIndex` (pk `session_pk`, sk `session_sk`, sparse) holds claimable sessions and owned ones
by owner: `aiadmin.db.sessions` says how ownership works. TTL attribute: `ttl` (epoch seconds).
An uninstalled salon's STATE and SESSION items get one (`UNINSTALLED_RETENTION_SECONDS`); any
later transition or command removes it again. Helpers every repository uses (conditional
writes, batch reads, number conversion) are in `aiadmin.db.dynamo`.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from aiadmin.db.connections import Connections
from aiadmin.db.events import EventLog
from aiadmin.db.memberships import Memberships
from aiadmin.db.messages import Messages
from aiadmin.db.pairing import PairingLimits
from aiadmin.db.salon_secrets import SalonSecrets
from aiadmin.db.salons import Salons
from aiadmin.db.sessions import Sessions
from aiadmin.db.transitions import Transitions


class Store:
    """The repositories of one application table (a boto3 Table resource): `salons`,
    `transitions`, `events`, `secrets`, `connections`, `pairing`, `sessions`, `members`, `messages`."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self.salons = Salons(table)
        self.events = EventLog(table)
        self.secrets = SalonSecrets(table)
        self.connections = Connections(table)
        self.pairing = PairingLimits(table)
        self.sessions = Sessions(table)
        self.members = Memberships(table)
        self.messages = Messages(table)
        self.transitions = Transitions(table, self.salons, self.sessions)


@cache
def open_store(table_name: str) -> Store:
    """The store of the table named `table_name`, on boto3's default session: made on a handler's
    first request that needs it and kept for the container's life (one per table)."""
    import boto3  # here, not at import: only what opens a store pays for it

    return Store(boto3.resource("dynamodb").Table(table_name))


__all__ = ["Store", "open_store"]
