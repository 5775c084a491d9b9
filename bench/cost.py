"""DynamoDB requests and capacity per onboarding and per idle linked salon, on the local stack.

Every process of the stack (the gateway with the handlers, the stream poller, each runner)
counts its own DynamoDB calls through a botocore hook (bench/dynamo_calls.py, switched on by
bench/dynamo_hook/sitecustomize.py), attributed to the salon whose items a call touches, or
to the fixed upkeep of the runners (heartbeats, lease-index queries: what does not grow with
salons). The benchmark:

1. starts the stack with R runners and measures a window with no salon at all: the fixed
   upkeep per runner;
2. onboards M salons one after another through the real flow ("Подключить", redirect, page
   socket, QR, scan, active): requests per onboarding;
3. links more salons up to K, closes every page, lets them settle, and measures an idle
   window of W seconds: requests per idle linked salon per hour = that window's salon
   requests / K, scaled to an hour (the fixed upkeep is reported apart).

A "request" is an item operation as DynamoDB bills it: GetItem, PutItem, UpdateItem,
DeleteItem, one Query or Scan page, and each item of a batch or transaction. Request units
(RRU/WRU) are estimated from item sizes (see bench/dynamo_calls.py: moto's ConsumedCapacity
is a constant, so it is not asked for). Money: on-demand prices, by default eu-central-1
(Frankfurt) as of the November 2024 price cut, from memory: $0.7625 per million write
request units and $0.1525 per million read request units (us-east-1: $0.625 and $0.125;
before the cut twice that). Check https://aws.amazon.com/dynamodb/pricing/on-demand/ and
pass `--write-price`/`--read-price` for others. A month is 730 hours.

A Query or Scan keyed by something fixed (say a runner's partition of an index) that returns
salons' items is shared among those salons, so a periodic full reconcile counts as theirs.

Run: `python bench/cost.py` (2 runners, 5 onboardings, 10 idle salons, a 330 s idle window:
longer than the runners' 300 s reconcile).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.dynamo_calls import ENV_DIR, between, read_calls
from local.observe import heartbeats, wait_until
from local.owner import link_to_active
from local.process import RunningStack, local_stack

ROOT = Path(__file__).resolve().parents[1]
HOOK_DIR = Path(__file__).resolve().with_name("dynamo_hook")
HOURS_PER_MONTH = 730
FIRST_SALON = 70_000


class Tally:
    """Requests, API calls and request units of a set of calls, for the items a filter keeps."""

    def __init__(self, calls: Iterable[dict[str, Any]], keep: Any) -> None:
        self.requests = 0.0
        self.api_calls = 0
        self.rru = 0.0
        self.wru = 0.0
        self.by_operation: dict[str, float] = defaultdict(float)  # requests (shares summed) by operation
        for call in calls:
            items = [item for item in call["items"] if keep(item[0])]
            if not items:
                continue
            weight = sum(_weight(item) for item in items)
            self.api_calls += 1
            self.requests += weight
            self.rru += sum(item[1] for item in items)
            self.wru += sum(item[2] for item in items)
            index = f" on {call['index']}" if call.get("index") else ""
            self.by_operation[f"{call['op']}{index}"] += weight

    def scaled(self, factor: float) -> tuple[float, float, float, float]:
        return self.requests * factor, self.api_calls * factor, self.rru * factor, self.wru * factor


def _top(counts: dict[str, float], n: int) -> list[tuple[str, float]]:
    return sorted(counts.items(), key=lambda kv: -kv[1])[:n]


def _weight(item: list[Any]) -> float:
    """A request's share (1, or a fraction of a Query shared among the salons it read)."""
    return float(item[3]) if len(item) > 3 else 1.0


def dollars(rru: float, wru: float, read_price: float, write_price: float) -> float:
    return rru / 1e6 * read_price + wru / 1e6 * write_price


def _salon_owner(owner: str, salon_ids: set[str] | None = None) -> bool:
    """A salon's own items, plus the connection and idempotency records onboarding writes."""
    if owner.startswith("salon:"):
        return salon_ids is None or owner.split(":", 1)[1] in salon_ids
    return owner in ("conn", "idem")


def _link(stack: RunningStack, salon_id: int) -> None:
    asyncio.run(link_to_active(stack.marketplace, stack.ws_url, stack.base_url, salon_id, timeout=60))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runners", type=int, default=2)
    parser.add_argument("--onboardings", type=int, default=5, help="onboardings measured one by one (M)")
    parser.add_argument("--salons", type=int, default=10, help="idle linked salons (K, at least M)")
    # Longer than the runners' slowest periodic work (a full reconcile every 300 s by default):
    # a window shorter than a period can miss it and read too low.
    parser.add_argument("--idle-seconds", type=float, default=330.0, help="idle window (W), seconds")
    parser.add_argument("--baseline-seconds", type=float, default=45.0, help="window with no salon")
    parser.add_argument("--settle-seconds", type=float, default=15.0, help="wait after linking before measuring")
    parser.add_argument("--read-price", type=float, default=0.1525, help="$ per million read request units")
    parser.add_argument("--write-price", type=float, default=0.7625, help="$ per million write request units")
    args = parser.parse_args()
    salons = max(args.salons, args.onboardings)

    calls_dir = Path(tempfile.mkdtemp(prefix="aiadmin-dynamodb-calls-"))
    env = {ENV_DIR: str(calls_dir),
           "PYTHONPATH": os.pathsep.join([str(HOOK_DIR), str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with local_stack(runners=args.runners, extra_env=env) as stack:
        wait_until(lambda: len(heartbeats(stack)) >= args.runners, 60, what="every runner's heartbeat")
        time.sleep(3)
        base_start = time.time()
        time.sleep(args.baseline_seconds)
        base_end = time.time()

        onboarding_windows: list[tuple[int, float, float]] = []
        for index in range(args.onboardings):
            salon_id = FIRST_SALON + index
            started = time.time()
            _link(stack, salon_id)
            # The activation's last writes and the pushes they cause land just after `active`.
            time.sleep(3)
            onboarding_windows.append((salon_id, started, time.time()))
        for index in range(args.onboardings, salons):
            _link(stack, FIRST_SALON + index)
        time.sleep(args.settle_seconds)
        idle_start = time.time()
        time.sleep(args.idle_seconds)
        idle_end = time.time()
        pids = {str(pid) for pid in stack.runners.values()}
        calls = list(read_calls(calls_dir))

    processes = Counter("runner" if str(call["pid"]) in pids else "gateway (handlers, streams)" for call in calls)
    print(f"\nDynamoDB on the local stack: {args.runners} runners, {args.onboardings} onboardings, "
          f"{salons} idle linked salons; calls counted in {len(processes)} kinds of process "
          f"({', '.join(f'{k}: {v}' for k, v in sorted(processes.items()))})")
    print("request units estimated from item sizes (moto's ConsumedCapacity is a constant); "
          f"prices: ${args.read_price} per million RRU, ${args.write_price} per million WRU "
          "(default: eu-central-1 on-demand after the Nov 2024 cut; us-east-1 is $0.125 / $0.625)")

    # 1. Fixed upkeep, with no salon at all.
    base_seconds = base_end - base_start
    fixed = Tally(between(calls, base_start, base_end), lambda owner: True)
    per_hour = 3600 / base_seconds / args.runners
    requests, api, rru, wru = fixed.scaled(per_hour)
    print(f"\nper runner, no salons ({base_seconds:.0f} s window): {requests:,.0f} requests per hour "
          f"({api:,.0f} API calls), {rru:,.0f} RRU + {wru:,.0f} WRU per hour, "
          f"${dollars(rru, wru, args.read_price, args.write_price) * HOURS_PER_MONTH:.2f} per runner-month")
    for operation, count in _top(fixed.by_operation, 6):
        print(f"    {count * per_hour:10,.0f}/h  {operation}")

    # 2. Per onboarding.
    per_onboarding = [Tally(between(calls, start, end), lambda owner, s=str(salon_id): _salon_owner(owner, {s}))
                      for salon_id, start, end in onboarding_windows]
    if per_onboarding:
        count = len(per_onboarding)
        mean_requests = sum(t.requests for t in per_onboarding) / count
        mean_api = sum(t.api_calls for t in per_onboarding) / count
        mean_rru = sum(t.rru for t in per_onboarding) / count
        mean_wru = sum(t.wru for t in per_onboarding) / count
        print(f"\nper onboarding (redirect -> active, mean of {count}): {mean_requests:.0f} requests "
              f"({mean_api:.0f} API calls; min {min(t.requests for t in per_onboarding):.0f}, "
              f"max {max(t.requests for t in per_onboarding):.0f}), {mean_rru:.1f} RRU + {mean_wru:.1f} WRU, "
              f"${dollars(mean_rru, mean_wru, args.read_price, args.write_price):.6f}")
        merged: dict[str, float] = defaultdict(float)
        for tally in per_onboarding:
            for operation, total in tally.by_operation.items():
                merged[operation] += total
        for operation, total in _top(merged, 8):
            print(f"    {total / count:8.1f}  {operation}")

    # 3. Idle linked salons.
    idle_seconds = idle_end - idle_start
    idle_calls = between(calls, idle_start, idle_end)
    idle = Tally(idle_calls, _salon_owner)
    per_salon_hour = 3600 / idle_seconds / salons
    requests, api, rru, wru = idle.scaled(per_salon_hour)
    salon_month = dollars(rru, wru, args.read_price, args.write_price) * HOURS_PER_MONTH
    idle_fixed = Tally(idle_calls, lambda owner: not _salon_owner(owner))
    fixed_requests, _, fixed_rru, fixed_wru = idle_fixed.scaled(3600 / idle_seconds / args.runners)
    print(f"\nidle window: {idle_seconds:.0f} s, {salons} linked salons, pages closed (work that recurs less "
          "often than the window is missed or over-counted: keep it longer than the slowest period)")
    print(f"idle linked salon: {requests:,.0f} DynamoDB requests per hour")
    print(f"    ({api:,.0f} API calls; {rru:,.1f} RRU + {wru:,.1f} WRU per hour; "
          f"${salon_month:.3f} per salon-month at on-demand prices)")
    for operation, total in _top(idle.by_operation, 6):
        print(f"    {total * per_salon_hour:10,.0f}/h  {operation}")
    print(f"runners' fixed upkeep meanwhile: {fixed_requests:,.0f} requests per runner-hour, "
          f"${dollars(fixed_rru, fixed_wru, args.read_price, args.write_price) * HOURS_PER_MONTH:.2f} "
          "per runner-month (not counted per salon)")
    by_owner: dict[str, float] = defaultdict(float)
    for call in idle_calls:
        for item in call["items"]:
            by_owner[item[0] if not item[0].startswith("salon:") else "salon:*"] += _weight(item)
    print("idle window, requests by whose items: "
          + ", ".join(f"{k} {v:,.1f}" for k, v in sorted(by_owner.items())))


if __name__ == "__main__":
    main()
