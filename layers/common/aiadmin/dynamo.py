"""Small DynamoDB helpers shared by the repositories (`store`, `ownership`): keys, number
conversion, conditional-failure detection."""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any

from botocore.exceptions import ClientError


def salon_pk(salon_id: int) -> str:
    return f"SALON#{salon_id}"


def _map_leaves(value: Any, leaf: Callable[[Any], Any]) -> Any:
    if isinstance(value, dict):
        return {k: _map_leaves(v, leaf) for k, v in value.items()}
    if isinstance(value, list):
        return [_map_leaves(v, leaf) for v in value]
    return leaf(value)


def to_dynamo(value: Any) -> Any:
    """boto3 refuses floats: store them as Decimal (via str, so 0.1 stays 0.1)."""
    return _map_leaves(value, lambda v: Decimal(str(v)) if isinstance(v, float) else v)


def from_dynamo(value: Any) -> Any:
    """boto3 returns every number as Decimal: give back ints and floats."""
    def number(v: Any) -> Any:
        if isinstance(v, Decimal):
            return int(v) if v == v.to_integral_value() else float(v)
        return v

    return _map_leaves(value, number)


def is_condition_failure(exc: ClientError) -> bool:
    code = exc.response.get("Error", {}).get("Code", "")
    return code in ("ConditionalCheckFailedException", "TransactionCanceledException")


def cancelled_by_checks(exc: ClientError, last: int) -> bool:
    """Whether one of a cancelled transaction's `last` items (its condition checks) is what
    cancelled it."""
    reasons = exc.response.get("CancellationReasons") or []
    return any(reason.get("Code") == "ConditionalCheckFailed" for reason in reasons[-last:]) if reasons else False
