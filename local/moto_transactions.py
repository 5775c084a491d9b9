"""moto's DynamoDB transactions without whole-table copies, for the local stack.

moto (5.x) backs up a transaction by deep-copying the whole table once per item of the
transaction, stream records included (every write ever made). A two-item transaction then costs
0.2-0.5 s of the stack process's CPU, growing with every write; under 40 owners at once the
copies were three quarters of the stack's CPU (py-spy, `bench/load.py`), so every DynamoDB
call waited seconds for it. DynamoDB's own cost does not grow with the table.

This version keeps DynamoDB's semantics (all or nothing; conditions see the state before the
transaction; one operation per item) in two phases: every condition is checked first (a
refused transaction writes nothing, so the stream never carries a write that was undone), then
the writes are made with an undo log of just the items they touch. Callers hold the lock of
`local.stack.serialise_dynamodb`, which makes the two phases atomic."""

from __future__ import annotations

import copy
from typing import Any

_MAX_ITEMS = 100


def install() -> None:
    """Replace `DynamoDBBackend.transact_write_items` (idempotent; before `serialise_dynamodb`)."""
    from moto.dynamodb.models import DynamoDBBackend

    if getattr(DynamoDBBackend.transact_write_items, "_two_phase", False):
        return
    transact_write_items._two_phase = True  # type: ignore[attr-defined]
    DynamoDBBackend.transact_write_items = transact_write_items  # type: ignore[method-assign]


def transact_write_items(self: Any, transact_items: list[dict[str, Any]]) -> None:
    from moto.dynamodb.comparisons import get_filter_expression
    from moto.dynamodb.exceptions import (
        ConditionalCheckFailed,
        MockValidationException,
        MultipleTransactionsException,
        TooManyTransactionsException,
        TransactionCanceledException,
        TransactWriteSingleOpException,
    )

    if len(transact_items) > _MAX_ITEMS:
        raise TooManyTransactionsException()
    seen: set[tuple[str, str]] = set()
    planned: list[tuple[str, dict[str, Any], dict[str, Any]]] = []  # (operation, its parameters, key)
    errors: list[tuple[str | None, str | None, dict[str, Any] | None]] = []
    # Phase 1: check everything, write nothing.
    for entry in transact_items:
        if len(entry) > 1:
            raise TransactWriteSingleOpException
        op_type, op = next(iter(entry.items()))
        original: dict[str, Any] | None = None
        try:
            if op_type not in {"ConditionCheck", "Put", "Delete", "Update"}:
                raise ValueError("Unsupported transaction operation")
            table = self.get_table(op["TableName"])
            if op_type == "Put":
                attrs = op["Item"]
                key = {table.hash_key_attr: attrs[table.hash_key_attr]}
                if table.range_key_attr is not None:
                    key[table.range_key_attr] = attrs[table.range_key_attr]
            else:
                key = op["Key"]
            unique = (str(op["TableName"]), str(dict(sorted(key.items()))))
            if unique in seen:
                raise MultipleTransactionsException()
            seen.add(unique)
            current = self.get_item(op["TableName"], key)
            if op.get("ConditionExpression") is not None:
                condition = get_filter_expression(op["ConditionExpression"], op.get("ExpressionAttributeNames"),
                                                  op.get("ExpressionAttributeValues"))
                if not condition.expr(current):
                    if op.get("ReturnValuesOnConditionCheckFailure") == "ALL_OLD" and current:
                        original = current.to_json()["Attributes"]
                    raise ConditionalCheckFailed(item=original)
            planned.append((op_type, op, key))
            errors.append((None, None, None))
        except (MultipleTransactionsException, MockValidationException):
            raise
        except ConditionalCheckFailed as exc:
            errors.append(("ConditionalCheckFailed", str(exc.message), original))
        except Exception as exc:  # as moto: reported per item in the cancellation reasons
            errors.append((type(exc).__name__, str(exc), original))
    if any(code is not None for code, _, _ in errors):
        raise TransactionCanceledException(errors)
    # Phase 2: write, undoing the items written so far if one write fails (a bad update
    # expression, an item too large).
    undo: list[tuple[Any, Any, Any, Any]] = []
    streams: dict[int, tuple[Any, int]] = {}
    try:
        for op_type, op, key in planned:
            if op_type == "ConditionCheck":
                continue
            table = self.get_table(op["TableName"])
            hash_key, range_key = self.get_keys_value(table, key)
            undo.append((table, hash_key, range_key, copy.deepcopy(table.get_item(hash_key, range_key))))
            if table.stream_shard is not None and id(table) not in streams:
                streams[id(table)] = (table.stream_shard, len(table.stream_shard.items))
            names, values = op.get("ExpressionAttributeNames"), op.get("ExpressionAttributeValues")
            if op_type == "Put":
                self.put_item(op["TableName"], op["Item"], expression_attribute_names=names,
                              expression_attribute_values=values)
            elif op_type == "Delete":
                self.delete_item(op["TableName"], key, expression_attribute_names=names,
                                 expression_attribute_values=values)
            else:
                self.update_item(op["TableName"], key, update_expression=op["UpdateExpression"],
                                 expression_attribute_names=names, expression_attribute_values=values)
    except Exception:
        for table, hash_key, range_key, before in reversed(undo):
            _restore(table, hash_key, range_key, before)
        for shard, length in streams.values():
            del shard.items[length:]
        raise


def _restore(table: Any, hash_key: Any, range_key: Any, before: Any) -> None:
    if range_key is not None:
        if before is None:
            table.items.get(hash_key, {}).pop(range_key, None)
        else:
            table.items[hash_key][range_key] = before
    elif before is None:
        table.items.pop(hash_key, None)
    else:
        table.items[hash_key] = before
