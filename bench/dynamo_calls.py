"""Counts the DynamoDB requests of a process and estimates the capacity they consume, through
botocore's event hooks; `bench/cost.py` turns every process's counts into per-salon figures.

Activated in every process of the local stack by `bench/dynamo_hook/sitecustomize.py` when
`AIADMIN_DYNAMODB_CALLS_DIR` is set: each process appends one JSON line per DynamoDB call to
`<dir>/calls-<pid>.jsonl` (the gateway runs the handlers in its own process, the runners are
processes of their own; all of them inherit the setting).

What a line holds: the time, the operation, and one entry per item operation as DynamoDB
bills it (each item of a batch or a transaction counts; a Query or Scan page is one), each
with whose it is (`salon:<id>` for a salon's items, `conn` for connection-by-id items,
`idem` for idempotency records, `fixed:<partition>` for everything else: runner heartbeats,
lease-index queries) and its estimated read and write request units.

Capacity is estimated from item sizes by DynamoDB's rules (moto's `ConsumedCapacity` is a
constant, so asking for it would measure nothing): reads 4 KB per unit, halved when
eventually consistent (GSI queries always are), doubled in transactions; writes 1 KB per
unit, doubled in transactions (a `ConditionCheck` is counted as a transactional write); a
failed conditional write is billed, a throttled call is not. An UpdateItem or DeleteItem is
sized by the item's last size this process saw (1 KB or less when it never saw it), since
DynamoDB bills the larger of the item before and after.
"""

from __future__ import annotations

import json
import math
import os
import threading
import time
from base64 import b64decode
from collections.abc import Callable, Iterable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

ENV_DIR = "AIADMIN_DYNAMODB_CALLS_DIR"
READ_UNIT_BYTES = 4096
WRITE_UNIT_BYTES = 1024
# Control-plane calls are not billed per request (and happen once, at start).
CONTROL_PLANE = {"CreateTable", "DescribeTable", "ListTables", "UpdateTable", "DeleteTable", "DescribeTimeToLive",
                 "UpdateTimeToLive", "DescribeContinuousBackups", "ListTagsOfResource", "TagResource",
                 "DescribeEndpoints", "DescribeLimits"}
_TYPE_KEYS = {"S", "N", "B", "BOOL", "NULL", "L", "M", "SS", "NS", "BS"}
Op = tuple[str, float, float, float]  # owner, read request units, write request units, share of a request
_SCANNED_ITEM_GUESS = 512  # bytes per item a Query/Scan read but filtered out (its size is not returned)


# ---- item sizes (DynamoDB's rules, close enough for billing estimates) ------------------------

def _is_typed(value: Any) -> bool:
    return isinstance(value, dict) and len(value) == 1 and next(iter(value)) in _TYPE_KEYS


def _number_size(text: str) -> int:
    digits = len(text.lstrip("-").replace(".", "").lstrip("0")) or 1
    return 1 + math.ceil(digits / 2)


def value_size(value: Any) -> int:
    """The size of one attribute value, typed (`{"S": "x"}`) or as boto3's resource layer
    gives it (str, Decimal, bytes, ...)."""
    if _is_typed(value):
        kind, inner = next(iter(value.items()))
        if kind == "S":
            return len(str(inner).encode())
        if kind == "N":
            return _number_size(str(inner))
        if kind == "B":
            return len(inner) if isinstance(inner, (bytes, bytearray)) else len(b64decode(inner))
        if kind in ("BOOL", "NULL"):
            return 1
        if kind == "L":
            return 3 + sum(1 + value_size(v) for v in inner)
        if kind == "M":
            return 3 + sum(1 + len(k.encode()) + value_size(v) for k, v in inner.items())
        if kind == "SS":
            return sum(len(str(v).encode()) for v in inner)
        if kind == "NS":
            return sum(_number_size(str(v)) for v in inner)
        return sum(len(v) for v in inner)  # BS
    if isinstance(value, bool) or value is None:
        return 1
    if isinstance(value, (int, float, Decimal)):
        return _number_size(str(value))
    if isinstance(value, str):
        return len(value.encode())
    if isinstance(value, (bytes, bytearray)):
        return len(value)
    if isinstance(value, dict):
        return 3 + sum(1 + len(str(k).encode()) + value_size(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set)):
        return 3 + sum(1 + value_size(v) for v in value)
    return len(str(value).encode())


def item_size(item: dict[str, Any] | None) -> int:
    return sum(len(name.encode()) + value_size(value) for name, value in (item or {}).items())


def _string(value: Any) -> str | None:
    if _is_typed(value):
        value = value.get("S")
    return value if isinstance(value, str) else None


def owner_of(pk: str | None) -> str:
    """Whose cost an item is: a salon's, a connection's, an idempotency record's, or fixed."""
    if pk is None:
        return "fixed:?"
    if pk.startswith("SALON#"):
        return "salon:" + pk.split("#", 1)[1]
    if pk.startswith("CONN#"):
        return "conn"
    if pk.startswith("idempotency"):
        return "idem"
    return "fixed:" + pk


def _key_id(table: str, key: dict[str, Any] | None) -> str:
    return table + "|" + json.dumps({k: _string(v) or str(v) for k, v in sorted((key or {}).items())})


def _pk(key: dict[str, Any] | None) -> str | None:
    return _string((key or {}).get("pk")) if key else None


def _units(size: int, per: int, factor: float) -> float:
    return max(1, math.ceil(size / per)) * factor


# ---- one call -> billed item operations -------------------------------------------------------

class SizeCache:
    """Last size seen per item key in this process (UpdateItem and DeleteItem do not return it)."""

    def __init__(self, limit: int = 100_000) -> None:
        self._sizes: dict[str, int] = {}
        self._limit = limit

    def see(self, table: str, item: dict[str, Any] | None) -> None:
        if item and len(self._sizes) < self._limit:
            self._sizes[_key_id(table, {k: v for k, v in item.items() if k in ("pk", "sk")})] = item_size(item)

    def size(self, table: str, key: dict[str, Any] | None) -> int:
        return self._sizes.get(_key_id(table, key), WRITE_UNIT_BYTES)


def item_operations(operation: str, request: dict[str, Any], response: dict[str, Any], billed: bool,
                    cache: SizeCache) -> list[Op]:
    """(owner, read units, write units, weight) for each item operation of one call, as DynamoDB
    bills it. The weight is the share of a request: 1, except that a Query or Scan keyed by
    something fixed (a runner's own index partition) that returns salons' items is shared
    among those salons (a reconcile that reads every session of a runner is their cost)."""
    table = str(request.get("TableName", ""))
    factor_read = 1.0 if request.get("ConsistentRead") else 0.5
    ops: list[Op] = []
    if operation == "GetItem":
        item = response.get("Item")
        cache.see(table, item)
        ops.append((owner_of(_pk(request.get("Key"))), _units(item_size(item), READ_UNIT_BYTES, factor_read), 0, 1.0))
    elif operation == "BatchGetItem":
        for name, wanted in (request.get("RequestItems") or {}).items():
            factor = 1.0 if wanted.get("ConsistentRead") else 0.5
            found = {_key_id(name, {k: v for k, v in item.items() if k in ("pk", "sk")}): item
                     for item in (response.get("Responses") or {}).get(name, [])}
            for key in wanted.get("Keys", []):
                item = found.get(_key_id(name, key))
                cache.see(name, item)
                ops.append((owner_of(_pk(key)), _units(item_size(item), READ_UNIT_BYTES, factor), 0, 1.0))
    elif operation in ("Query", "Scan"):
        items = response.get("Items") or []
        for item in items:
            cache.see(table, item)
        filtered_out = max(0, int(response.get("ScannedCount", len(items))) - len(items))
        size = sum(item_size(item) for item in items) + filtered_out * _SCANNED_ITEM_GUESS
        factor = 0.5 if request.get("IndexName") else factor_read
        values = [_string(v) for v in (request.get("ExpressionAttributeValues") or {}).values()]
        salon = next((v for v in values if v and v.startswith(("SALON#", "CONN#", "idempotency"))), None)
        owner = owner_of(salon) if salon else "fixed:" + str(request.get("IndexName") or next(
            (v for v in values if v), "?"))
        units = _units(size, READ_UNIT_BYTES, factor)
        salons = [owner_of(_pk(item)) for item in items]
        shared = [o for o in salons if o.startswith("salon:")]
        if owner.startswith("fixed:") and shared:
            ops.extend((o, units / len(items), 0, 1 / len(items)) for o in shared)
            rest = (len(items) - len(shared)) / len(items)
            if rest:
                ops.append((owner, units * rest, 0, rest))
        else:
            ops.append((owner, units, 0, 1.0))
    elif operation == "PutItem":
        item = request.get("Item")
        # A put that replaces an item is billed for the larger of the two.
        size = max(item_size(item), cache.size(table, {k: v for k, v in (item or {}).items() if k in ("pk", "sk")}))
        cache.see(table, item)
        ops.append((owner_of(_pk(item)), 0, _units(size, WRITE_UNIT_BYTES, 1.0), 1.0))
    elif operation in ("UpdateItem", "DeleteItem"):
        key = request.get("Key")
        returned = response.get("Attributes")
        size = max(cache.size(table, key), item_size(returned) if returned else 0)
        ops.append((owner_of(_pk(key)), 0, _units(size, WRITE_UNIT_BYTES, 1.0), 1.0))
    elif operation == "BatchWriteItem":
        for name, writes in (request.get("RequestItems") or {}).items():
            for write in writes:
                if "PutRequest" in write:
                    item = write["PutRequest"].get("Item")
                    cache.see(name, item)
                    ops.append((owner_of(_pk(item)), 0, _units(item_size(item), WRITE_UNIT_BYTES, 1.0), 1.0))
                else:
                    key = write.get("DeleteRequest", {}).get("Key")
                    ops.append((owner_of(_pk(key)), 0, _units(cache.size(name, key), WRITE_UNIT_BYTES, 1.0), 1.0))
    elif operation == "TransactWriteItems":
        for action in request.get("TransactItems", []):
            kind, body = next(iter(action.items()))
            name = str(body.get("TableName", ""))
            if kind == "Put":
                cache.see(name, body.get("Item"))
                size, key = item_size(body.get("Item")), body.get("Item")
            else:
                key = body.get("Key")
                size = cache.size(name, key)
            ops.append((owner_of(_pk(key)), 0, _units(size, WRITE_UNIT_BYTES, 2.0), 1.0))
    elif operation == "TransactGetItems":
        answers = response.get("Responses") or []
        for index, action in enumerate(request.get("TransactItems", [])):
            body = action.get("Get", {})
            item = answers[index].get("Item") if index < len(answers) else None
            ops.append((owner_of(_pk(body.get("Key"))), _units(item_size(item), READ_UNIT_BYTES, 2.0), 0, 1.0))
    else:
        ops.append(("fixed:" + operation, 0, 0, 1.0))
    if not billed:
        return [(owner, 0.0, 0.0, weight) for owner, _r, _w, weight in ops]
    return ops


# ---- the hook -------------------------------------------------------------------------------

class _Recorder:
    def __init__(self, directory: Path) -> None:
        self._path = directory / f"calls-{os.getpid()}.jsonl"
        self._lock = threading.Lock()
        self._cache = SizeCache()
        self._local = threading.local()

    def before(self, params: dict[str, Any], **_kwargs: Any) -> None:
        try:
            body = params.get("body") or b"{}"
            self._local.request = json.loads(body if isinstance(body, (str, bytes)) else b"{}")
        except ValueError:
            self._local.request = {}

    def after(self, http_response: Any, parsed: dict[str, Any], model: Any, **_kwargs: Any) -> None:
        try:
            request = getattr(self._local, "request", {}) or {}
            self._local.request = {}
            operation = model.name
            if operation in CONTROL_PLANE:
                return
            status = int(getattr(http_response, "status_code", 0))
            error = (parsed.get("Error") or {}).get("Code") if status >= 300 else None
            # A failed condition is billed (the item was read to check it); throttles and faults are not.
            billed = status < 300 or error in ("ConditionalCheckFailedException", "TransactionCanceledException")
            ops = item_operations(operation, request, parsed if status < 300 else {}, billed, self._cache)
            line = json.dumps({"t": time.time(), "pid": os.getpid(), "op": operation,
                               "index": request.get("IndexName"), "status": status, "error": error,
                               "items": [[owner, round(r, 4), round(w, 4), round(weight, 4)]
                                         for owner, r, w, weight in ops]})
            with self._lock, self._path.open("a") as out:
                out.write(line + "\n")
        except Exception:  # noqa: S110 - counting must never break the process it counts
            pass


def install(directory: str | Path) -> Callable[[], None]:
    """Register the hooks on every botocore session this process creates from now on; returns
    what undoes that (for tests)."""
    import botocore.session

    recorder = _Recorder(Path(directory))
    original = botocore.session.Session.__init__
    if getattr(original, "_aiadmin_counted", False):
        return lambda: None

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        events = self.get_component("event_emitter")
        # First: before boto3's resource layer turns the typed values into Python ones.
        events.register_first("before-call.dynamodb", recorder.before)
        events.register_first("after-call.dynamodb", recorder.after)

    def uninstall() -> None:
        botocore.session.Session.__init__ = original  # type: ignore[method-assign]

    init._aiadmin_counted = True  # type: ignore[attr-defined]
    botocore.session.Session.__init__ = init  # type: ignore[method-assign]
    return uninstall


# ---- reading the counts ---------------------------------------------------------------------

def read_calls(directory: Path) -> Iterator[dict[str, Any]]:
    for path in sorted(directory.glob("calls-*.jsonl")):
        for line in path.read_text().splitlines():
            if line.strip():
                try:
                    yield json.loads(line)
                except ValueError:
                    continue  # a line cut by a process that was killed mid-write


def between(calls: Iterable[dict[str, Any]], start: float, end: float) -> list[dict[str, Any]]:
    return [call for call in calls if start <= call["t"] < end]
