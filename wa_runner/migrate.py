"""`python -m wa_runner.migrate`: make session items written before runner memberships
(per-session leases: `lease_pk`, `lease_expires`, `owner`) claimable under the new scheme.

Run once, with the runners stopped, after the deploy that adds `SessionIndex`. Idempotent: an
item already in the new scheme (it has `session_pk` or `owner_epoch`) is left alone. Reads the
table with one Scan (paged): fine once, never on a hot path."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

import boto3
from boto3.dynamodb.conditions import Attr

from aiadmin.db.sessions import claim_keys


def migrate(table: Any, now: float | None = None) -> int:
    """Returns how many sessions were made claimable."""
    moment = time.time() if now is None else now
    scan: dict[str, Any] = {"FilterExpression": Attr("sk").eq("SESSION") & Attr("session_pk").not_exists()
                            & Attr("owner_epoch").not_exists() & Attr("lease_pk").exists()}
    moved = 0
    while True:
        page = table.scan(**scan)
        for item in page["Items"]:
            keys = claim_keys(str(item["desired"]), int(item["salon_id"]), moment)
            table.update_item(
                Key={"pk": item["pk"], "sk": "SESSION"},
                UpdateExpression="SET session_pk = :cpk, session_sk = :csk REMOVE lease_pk, lease_expires, #owner",
                ConditionExpression="attribute_exists(lease_pk) AND attribute_not_exists(session_pk)",
                ExpressionAttributeNames={"#owner": "owner"},
                ExpressionAttributeValues=keys,
            )
            moved += 1
        if "LastEvaluatedKey" not in page:
            return moved
        scan["ExclusiveStartKey"] = page["LastEvaluatedKey"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("table", help="the AppTable's name")
    args = parser.parse_args(argv)
    moved = migrate(boto3.resource("dynamodb").Table(args.table))
    print(f"{moved} sessions made claimable")
    return 0


if __name__ == "__main__":
    sys.exit(main())
