"""DynamoDB helpers the repositories share: keys, number conversion, conditional writes that
may be refused, and batch reads."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from decimal import Decimal
from typing import Any, TypeVar

from botocore.exceptions import ClientError


def salon_pk(salon_id: int) -> str:
    return f"SALON#{salon_id}"


def salon_of_pk(pk: object) -> int:
    return int(str(pk).removeprefix("SALON#"))


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


Answer = TypeVar("Answer")


def conditional_write(write: Callable[..., Answer], /, **request: Any) -> Answer | None:
    """`write(**request)`, a conditional write or a transaction: its answer, or None when a
    condition refused it; any other error is raised."""
    try:
        return write(**request)
    except ClientError as exc:
        if is_condition_failure(exc):
            return None
        raise


def conditionally(write: Callable[..., object], /, **request: Any) -> bool:
    """`write(**request)`: True when it was written, False when a condition refused it."""
    return conditional_write(write, **request) is not None


def set_clause(fields: Mapping[str, Any], prefix: str = "f") -> tuple[str, dict[str, str], dict[str, Any]]:
    """`SET #f0 = :f0, ...` for `fields`, with its names and (DynamoDB-typed) values."""
    names = {f"#{prefix}{i}": key for i, key in enumerate(fields)}
    values = {f":{prefix}{i}": to_dynamo(value) for i, value in enumerate(fields.values())}
    return "SET " + ", ".join(f"#{prefix}{i} = :{prefix}{i}" for i in range(len(fields))), names, values


def batch_get(table: Any, keys: Iterable[Mapping[str, str]],
              attributes: Iterable[str] | None = None) -> Iterator[dict[str, Any]]:
    """The items of `keys` that exist (only `attributes` of them, if named), read consistently,
    100 per request (what DynamoDB allows), unprocessed keys asked for again."""
    wanted = [dict(key) for key in keys]
    client = table.meta.client  # the resource's client accepts plain Python types
    projection: dict[str, Any] = {}
    if attributes is not None:
        names = {f"#p{i}": name for i, name in enumerate(attributes)}
        projection = {"ProjectionExpression": ", ".join(names), "ExpressionAttributeNames": names}
    for start in range(0, len(wanted), 100):
        request: dict[str, Any] = {table.name: {"Keys": wanted[start:start + 100], "ConsistentRead": True,
                                                **projection}}
        while request:
            response = client.batch_get_item(RequestItems=request)
            yield from (from_dynamo(item) for item in response["Responses"].get(table.name, []))
            request = response.get("UnprocessedKeys") or {}


def query_all(table: Any, **query: Any) -> Iterator[dict[str, Any]]:
    """Every item a query (or, with `scan=True`, a scan) finds, page by page."""
    read = table.scan if query.pop("scan", False) else table.query
    while True:
        page = read(**query)
        yield from (from_dynamo(item) for item in page["Items"])
        if "LastEvaluatedKey" not in page:
            return
        query["ExclusiveStartKey"] = page["LastEvaluatedKey"]
