"""The local stack's two-phase moto transactions keep DynamoDB's semantics: all or nothing,
conditions against the state before the transaction, no stream record for a refused or undone
write, and a cost that does not grow with the table."""

from __future__ import annotations

import time
from typing import Any

import pytest
from botocore.exceptions import ClientError
from moto.dynamodb.models import DynamoDBBackend, dynamodb_backends

from local import moto_transactions


@pytest.fixture
def two_phase(monkeypatch: pytest.MonkeyPatch, table: Any) -> Any:
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", moto_transactions.transact_write_items)
    return table


def _stream_records(table: Any) -> int:
    backend = dynamodb_backends["123456789012"]["eu-central-1"]
    shard = backend.get_table(table.name).stream_shard
    assert shard is not None  # template.yaml gives the table a stream
    return len(shard.items)


def _put(table: Any, pk: str, **attrs: Any) -> dict[str, Any]:
    return {"Put": {"TableName": table.name, "Item": {"pk": pk, "sk": "X", **attrs}}}


def _transact(table: Any, *items: dict[str, Any]) -> None:
    table.meta.client.transact_write_items(TransactItems=list(items))


def test_writes_every_item(two_phase: Any) -> None:
    _transact(two_phase, _put(two_phase, "c", n=0))
    before = _stream_records(two_phase)
    _transact(two_phase, _put(two_phase, "a", n=1), _put(two_phase, "b", n=2),
              {"Update": {"TableName": two_phase.name, "Key": {"pk": "c", "sk": "X"},
                          "UpdateExpression": "SET n = :n", "ExpressionAttributeValues": {":n": 3}}})
    assert [two_phase.get_item(Key={"pk": pk, "sk": "X"})["Item"]["n"] for pk in "abc"] == [1, 2, 3]
    assert _stream_records(two_phase) == before + 3


def test_a_refused_condition_writes_nothing(two_phase: Any) -> None:
    _transact(two_phase, _put(two_phase, "a", n=1))
    before = _stream_records(two_phase)
    with pytest.raises(ClientError) as refused:
        _transact(two_phase, _put(two_phase, "a", n=2), _put(two_phase, "b", n=2),
                  {"Update": {"TableName": two_phase.name, "Key": {"pk": "z", "sk": "X"},
                              "UpdateExpression": "SET n = :n", "ConditionExpression": "attribute_exists(pk)",
                              "ExpressionAttributeValues": {":n": 1}}})
    reasons = [r["Code"] for r in refused.value.response["CancellationReasons"]]
    assert reasons == ["None", "None", "ConditionalCheckFailed"]
    assert two_phase.get_item(Key={"pk": "a", "sk": "X"})["Item"]["n"] == 1
    assert "Item" not in two_phase.get_item(Key={"pk": "b", "sk": "X"})
    assert _stream_records(two_phase) == before  # the stream never saw the refused writes


def test_conditions_see_the_state_before_the_transaction(two_phase: Any) -> None:
    _transact(two_phase, _put(two_phase, "a", n=1))
    # The check on `a` passes against its state before the transaction; `b` is unrelated.
    _transact(two_phase,
              {"ConditionCheck": {"TableName": two_phase.name, "Key": {"pk": "a", "sk": "X"},
                                  "ConditionExpression": "n = :one", "ExpressionAttributeValues": {":one": 1}}},
              _put(two_phase, "b", n=5))
    assert two_phase.get_item(Key={"pk": "b", "sk": "X"})["Item"]["n"] == 5


def test_a_failed_write_is_undone(two_phase: Any) -> None:
    _transact(two_phase, _put(two_phase, "a", n=1), _put(two_phase, "s", n="text"))
    before = _stream_records(two_phase)
    with pytest.raises(ClientError):
        # The second write fails while writing (a number added to a string): the first is undone.
        _transact(two_phase, _put(two_phase, "a", n=2),
                  {"Update": {"TableName": two_phase.name, "Key": {"pk": "s", "sk": "X"},
                              "UpdateExpression": "SET n = n + :one", "ExpressionAttributeValues": {":one": 1}}})
    assert two_phase.get_item(Key={"pk": "a", "sk": "X"})["Item"]["n"] == 1
    assert two_phase.get_item(Key={"pk": "s", "sk": "X"})["Item"]["n"] == "text"
    assert _stream_records(two_phase) == before


def test_one_operation_per_item(two_phase: Any) -> None:
    with pytest.raises(ClientError) as refused:
        _transact(two_phase, _put(two_phase, "a", n=1), _put(two_phase, "a", n=2))
    assert refused.value.response["Error"]["Code"] == "ValidationException"
    assert "Item" not in two_phase.get_item(Key={"pk": "a", "sk": "X"})


def test_cost_does_not_grow_with_the_table(two_phase: Any) -> None:
    def timed() -> float:
        started = time.perf_counter()
        for index in range(20):
            _transact(two_phase, _put(two_phase, f"t{index}", n=index), _put(two_phase, f"u{index}", n=index))
        return time.perf_counter() - started

    small = timed()
    with two_phase.batch_writer() as batch:
        for index in range(3000):
            batch.put_item(Item={"pk": f"filler{index}", "sk": "X", "n": index})
    # moto's own copies the whole table per item: ~100x slower at this size.
    assert timed() < max(5 * small, 0.5)


def test_install_is_idempotent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(DynamoDBBackend, "transact_write_items", DynamoDBBackend.transact_write_items)
    moto_transactions.install()
    installed = DynamoDBBackend.transact_write_items
    moto_transactions.install()
    assert DynamoDBBackend.transact_write_items is installed is moto_transactions.transact_write_items
