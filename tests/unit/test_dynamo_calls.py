"""The cost benchmark's DynamoDB counter (bench/dynamo_calls.py): item sizes and request
units by DynamoDB's billing rules, whose cost each item is, and the botocore hook itself."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import boto3
import pytest

from bench.dynamo_calls import SizeCache, install, item_operations, item_size, owner_of, read_calls
from local.template import create_tables, load_template


def test_item_size_follows_dynamodbs_rules_typed_or_not() -> None:
    typed = {"pk": {"S": "SALON#1"}, "n": {"N": "12345"}, "ok": {"BOOL": True}, "tags": {"L": [{"S": "ab"}]},
             "name": {"S": "Лотос"}}
    plain = {"pk": "SALON#1", "n": 12345, "ok": True, "tags": ["ab"], "name": "Лотос"}
    # names + "SALON#1" (7) + 12345 (1 + 3) + bool (1) + list (3 + 1 + 2) + 10 bytes of UTF-8
    expected = len("pknoktagsname") + 7 + 4 + 1 + 6 + 10
    assert item_size(typed) == item_size(plain) == expected


@pytest.mark.parametrize(("pk", "owner"), [("SALON#42", "salon:42"), ("CONN#abc", "conn"),
                                          ("idempotency#x", "idem"), ("RUNNERS", "fixed:RUNNERS"), (None, "fixed:?")])
def test_whose_item(pk: str | None, owner: str) -> None:
    assert owner_of(pk) == owner


def test_request_units_by_operation() -> None:
    cache = SizeCache()
    big = {"pk": {"S": "SALON#1"}, "sk": {"S": "STATE"}, "blob": {"S": "x" * 5000}}
    key = {"pk": {"S": "SALON#1"}, "sk": {"S": "STATE"}}
    strong = item_operations("GetItem", {"TableName": "T", "Key": key, "ConsistentRead": True}, {"Item": big}, True,
                             cache)
    assert strong == [("salon:1", 2.0, 0, 1.0)]  # 5 KB: two 4 KB units
    eventual = item_operations("GetItem", {"TableName": "T", "Key": key}, {}, True, cache)
    assert eventual == [("salon:1", 0.5, 0, 1.0)]  # nothing found still costs the minimum
    # An update is sized by the item as last seen (5 KB: five 1 KB units).
    assert item_operations("UpdateItem", {"TableName": "T", "Key": key}, {}, True, cache) == [("salon:1", 0, 5.0, 1.0)]
    batch = {"RequestItems": {"T": {"ConsistentRead": True, "Keys": [key, {"pk": {"S": "SALON#2"},
                                                                           "sk": {"S": "SESSION"}}]}}}
    assert item_operations("BatchGetItem", batch, {"Responses": {"T": [big]}}, True, cache) == [
        ("salon:1", 2.0, 0, 1.0), ("salon:2", 1.0, 0, 1.0)]
    transaction = {"TransactItems": [
        {"Put": {"TableName": "T", "Item": {"pk": {"S": "SALON#3"}, "sk": {"S": "EVENT#1"}}}},
        {"Update": {"TableName": "T", "Key": {"pk": {"S": "SALON#3"}, "sk": {"S": "STATE"}}}},
        {"ConditionCheck": {"TableName": "T", "Key": {"pk": {"S": "SALON#3"}, "sk": {"S": "SESSION"}}}}]}
    assert item_operations("TransactWriteItems", transaction, {}, True, cache) == [("salon:3", 0, 2.0, 1.0)] * 3
    query = {"TableName": "T", "IndexName": "LeaseIndex", "ExpressionAttributeValues": {":p": {"S": "LEASE"},
                                                                                       ":now": {"N": "5"}}}
    assert item_operations("Query", query, {"Items": [], "ScannedCount": 0}, True, cache) == [
        ("fixed:LeaseIndex", 0.5, 0, 1.0)]
    # A runner's own query that reads salons' sessions: their cost, shared.
    sessions = [{"pk": {"S": f"SALON#{n}"}, "sk": {"S": "SESSION"}} for n in (4, 5)]
    reconcile = {"TableName": "T", "IndexName": "SessionIndex",
                 "ExpressionAttributeValues": {":owner": {"S": "runner-1"}}}
    assert item_operations("Query", reconcile, {"Items": sessions, "ScannedCount": 2}, True, cache) == [
        ("salon:4", 0.25, 0, 0.5), ("salon:5", 0.25, 0, 0.5)]
    # Throttled: counted as a request, billed nothing.
    assert item_operations("PutItem", {"TableName": "T", "Item": big}, {}, False, cache) == [("salon:1", 0.0, 0.0, 1.0)]


def test_the_hook_records_every_call_of_the_process(aws: None, tmp_path: Path) -> None:
    uninstall = install(tmp_path)
    try:
        session = boto3.Session(region_name="eu-central-1")
        names = create_tables(session.client("dynamodb"), load_template())
        table: Any = session.resource("dynamodb").Table(names["AppTable"])
        table.put_item(Item={"pk": "SALON#7", "sk": "STATE", "state": "active"})
        table.get_item(Key={"pk": "SALON#7", "sk": "STATE"}, ConsistentRead=True)
        table.put_item(Item={"pk": "RUNNERS", "sk": "r1", "at": 1})
    finally:
        uninstall()
    calls = list(read_calls(tmp_path))
    assert [call["op"] for call in calls] == ["PutItem", "GetItem", "PutItem"]  # CreateTable is not counted
    assert [call["items"] for call in calls] == [[["salon:7", 0, 1.0, 1.0]], [["salon:7", 1.0, 0, 1.0]],
                                                 [["fixed:RUNNERS", 0, 1.0, 1.0]]]
