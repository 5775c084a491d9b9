"""N salon owners arriving at once, on the local stack, over real HTTP and WebSockets.

Each owner presses "Подключить" in the fake marketplace, follows the signed redirect, opens
the page's socket, waits for the first QR, scans it with the simulated phone
(`POST /_local/whatsapp/scan`) and waits for `active`. The fake marketplace answers at most
5 requests/s and 200/min per client address, as YClients does per IP (every process of the
stack calls it from 127.0.0.1, so the redirect handlers and the runners share that budget).

Printed:
- how many owners reached `active`, and what happened to the others;
- sessions dropped, from what the stack exposes: the runners' `LeaseLost` and
  `SessionCrashed` metrics (EMF lines on their output), their "dropping session" log lines
  (with the reason, e.g. "lease could not be renewed in time"), QR codes that stopped
  working from the owner's side (a scan refused, or a new linking attempt pushed to a page
  that was waiting for `active`), salons WhatsApp saw more than one linking attempt for, and
  streams replaced (two runners connected with one salon's keys);
- time from the redirect to the first QR on the page, and from the scan to `active`
  (p50, p95), and the marketplace's 429 answers.

`--slow-dynamodb 2` also holds every DynamoDB call of the service 2 s for 20 s while the
owners arrive (the stack's fault proxy, local/dynamo_faults.py).

Bounded: every owner gives up after `--qr-timeout` / `--active-timeout` seconds and the
whole run after their sum plus a minute; then the stack is stopped.

Run: `python bench/load.py` (40 owners, 2 runners) or `python bench/load.py --owners 100`.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import statistics
import sys
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local.observe import runner_events, store, whatsapp
from local.owner import follow_redirect, open_page, press_connect, receive_until, scan
from local.process import RunningStack, local_stack

FIRST_SALON = 60_000
# A browser waits for an answer as long as API Gateway lets an integration run (29 s).
BROWSER_TIMEOUT = 30.0


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))]


def token_salon(token: str) -> str | None:
    """The salon a page token is for (its `sub`; read without checking the signature)."""
    try:
        payload = token.split(".")[1]
        return str(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["sub"])
    except (IndexError, KeyError, ValueError):
        return None


def client_keys(qr: str) -> list[str]:
    """A linking code without its ref: the same for every code of one linking attempt."""
    return qr.split(",")[1:]


@dataclass
class Owner:
    salon_id: int
    outcome: str = "not started"
    first_qr: float | None = None   # seconds from the redirect request to the first QR on the page
    redirect: float | None = None   # of which: the redirect's answer (its YClients checks included)
    to_active: float | None = None  # seconds from the scan to `active` on the page
    qr_broke: bool = False          # the code the owner had stopped working (refused, or replaced)
    states: list[str] = field(default_factory=list)


async def one_owner(stack: RunningStack, owner: Owner, qr_timeout: float, active_timeout: float) -> None:
    seen: list[dict[str, Any]] = []
    try:
        redirect_url = await asyncio.to_thread(press_connect, stack.marketplace, owner.salon_id)
        started = time.perf_counter()
        response, token = await asyncio.to_thread(follow_redirect, redirect_url, BROWSER_TIMEOUT)
        owner.redirect = time.perf_counter() - started
        if token is None:
            owner.outcome = f"redirect answered {response.status_code}"
            return
        if (given := token_salon(token)) != str(owner.salon_id):
            # Never scan another salon's code: that would link the other salon.
            owner.outcome = f"the redirect gave a page for another salon ({given})"
            return
        async with open_page(stack.ws_url, token, BROWSER_TIMEOUT) as page:
            try:
                qr = await receive_until(page, {"qr_ready"}, qr_timeout, seen)
            except TimeoutError:
                owner.outcome = f"no QR within {qr_timeout:.0f} s"
                return
            owner.first_qr = time.perf_counter() - started
            scanned = time.perf_counter()
            answer = await asyncio.to_thread(scan, stack.base_url, qr["qr"], BROWSER_TIMEOUT)
            if answer.status_code != 200:
                owner.qr_broke = True
                owner.outcome = f"scan answered {answer.status_code}"
                return
            deadline = scanned + active_timeout
            while True:
                remaining = deadline - time.perf_counter()
                if remaining <= 0:
                    owner.outcome = f"not active within {active_timeout:.0f} s after the scan"
                    return
                try:
                    message = await receive_until(page, {"active", "qr_ready", "qr_expired", "activation_failed"},
                                                  remaining, seen)
                except TimeoutError:
                    owner.outcome = f"not active within {active_timeout:.0f} s after the scan"
                    return
                if message["state"] == "active":
                    owner.to_active = time.perf_counter() - scanned
                    owner.outcome = "active"
                    return
                if message["state"] == "qr_ready" and client_keys(message["qr"]) == client_keys(qr["qr"]):
                    continue  # the next code of the same attempt (a rotation pushed before the scan landed)
                owner.qr_broke = True  # a new attempt or an expired code: the scanned one no longer counts
                owner.outcome = f"after the scan the page showed {message['state']}"
                return
    except TimeoutError:
        owner.outcome = "the page's socket did not open"
    except Exception as exc:  # one owner's failure is a result, not the end of the benchmark
        owner.outcome = f"{type(exc).__name__}: {str(exc)[:120]}"
    finally:
        owner.states = [str(m.get("state")) for m in seen if m.get("type") == "state"]


def report(name: str, values: list[float]) -> str:
    if not values:
        return f"{name:<24} no values"
    return (f"{name:<24} p50 {statistics.median(values):6.1f} s   p95 {percentile(values, 0.95):6.1f} s   "
            f"max {max(values):6.1f} s   (n={len(values)})")


async def run_owners(stack: RunningStack, owners: list[Owner], qr_timeout: float, active_timeout: float,
                     fault: dict[str, float] | None = None, fault_after: float = 0.0) -> None:
    # The owners' blocking HTTP calls (requests) each need a thread: all of them at once.
    asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(len(owners) + 4))
    tasks = {asyncio.create_task(one_owner(stack, owner, qr_timeout, active_timeout)): owner for owner in owners}
    if fault:
        await asyncio.sleep(fault_after)
        await asyncio.to_thread(stack.dynamodb_fault, **fault)
    _done, pending = await asyncio.wait(tasks, timeout=qr_timeout + active_timeout + 60)
    for task in pending:
        task.cancel()
        tasks[task].outcome = "still waiting when the run's time was up"
    await asyncio.gather(*pending, return_exceptions=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--owners", type=int, default=40, help="owners arriving at once (default 40)")
    parser.add_argument("--runners", type=int, default=2, help="runner processes (default 2)")
    parser.add_argument("--time-scale", type=float, default=1.0, help="WhatsApp's QR timings (default 1: real)")
    parser.add_argument("--qr-timeout", type=float, default=90.0, help="an owner waits this long for a QR")
    parser.add_argument("--active-timeout", type=float, default=90.0, help="and this long from the scan to active")
    parser.add_argument("--first-salon", type=int, default=FIRST_SALON)
    parser.add_argument("--slow-dynamodb", type=float, default=0.0, metavar="SECONDS",
                        help="hold every DynamoDB call this long (the stack's fault proxy) for --fault-seconds, "
                             "starting --fault-after seconds after the owners arrive (default: no fault)")
    parser.add_argument("--fault-seconds", type=float, default=20.0)
    parser.add_argument("--fault-after", type=float, default=5.0)
    parser.add_argument("--no-warmup", action="store_true",
                        help="skip the one owner linked first (not counted) so that handler imports are done")
    args = parser.parse_args()

    owners = [Owner(args.first_salon + index) for index in range(args.owners)]
    # Metrics as EMF lines on the runners' output: the benchmark counts LeaseLost from them.
    env = {"POWERTOOLS_METRICS_DISABLED": "false", "LOG_LEVEL": "WARNING"}
    fault = {"delay_seconds": args.slow_dynamodb, "for_seconds": args.fault_seconds} if args.slow_dynamodb else None
    with local_stack(time_scale=args.time_scale, runners=args.runners, extra_env=env,
                     dynamodb_faults=fault is not None) as stack:
        if not args.no_warmup:
            warmup = Owner(args.first_salon - 1)
            asyncio.run(one_owner(stack, warmup, args.qr_timeout, args.active_timeout))
            if warmup.outcome != "active":
                raise SystemExit(f"the warm-up owner did not reach active: {warmup.outcome}")
            time.sleep(2)  # its marketplace calls leave the rate window
        wall, measured_from = time.perf_counter(), time.time()
        asyncio.run(run_owners(stack, owners, args.qr_timeout, args.active_timeout, fault, args.fault_after))
        wall = time.perf_counter() - wall
        view = whatsapp(stack)
        table = store(stack)
        states = {owner.salon_id: getattr(table.salons.get(owner.salon_id), "state", None) for owner in owners}
        calls = [c for c in requests.get(stack.marketplace + "/_calls", timeout=10).json()
                 if c["at"] >= measured_from]  # not the warm-up's
        time.sleep(1.5)  # the runners' last metric lines (flushed once a second)
        output = list(stack.output)

    events = runner_events(output)
    metrics_seen, reasons = events.metrics, events.drops
    ids = {str(owner.salon_id) for owner in owners}
    repeated_attempts = sum(1 for session, attempts in view.pairing_attempts.items()
                            if session in ids and attempts > 1)
    active = [o for o in owners if o.outcome == "active"]
    statuses = Counter(int(c.get("status") or 0) for c in calls)
    per_second = Counter(int(c["at"]) for c in calls if c.get("status") != 429)

    print(f"\n{args.owners} owners at once, {args.runners} runners, marketplace 5 requests/s and 200/min "
          f"per address, time scale {args.time_scale}; {wall:.0f} s"
          + (f"; DynamoDB {args.slow_dynamodb} s per call for {args.fault_seconds} s from {args.fault_after} s in"
             if fault else ""))
    # Cross-check what the pages saw with the salons' own records and WhatsApp's devices.
    confirmed = sum(1 for o in owners if states[o.salon_id] == "active" and str(o.salon_id) in view.devices)
    print(f"reached active:          {len(active)}/{args.owners} on their pages; {confirmed} salons active in "
          f"DynamoDB with a device linked on WhatsApp")
    for owner in [o for o in active if states[o.salon_id] != "active" or str(o.salon_id) not in view.devices][:10]:
        print(f"  salon {owner.salon_id}: its page showed active, but its record says {states[owner.salon_id]} and "
              f"WhatsApp {'has' if str(owner.salon_id) in view.devices else 'has no'} device for it")
    for outcome, count in Counter(o.outcome for o in owners if o.outcome != "active").most_common():
        print(f"  {count:4} {outcome}")
    for owner in [o for o in owners if o.outcome != "active"][:10]:
        print(f"  salon {owner.salon_id}: the page showed {' > '.join(owner.states) or 'nothing'}")
    dropped = events.sessions_dropped
    print(f"sessions dropped:        LeaseLost metric {metrics_seen['LeaseLost']}, "
          f"'dropping session' log lines {sum(reasons.values())}"
          + "".join(f"\n  {count:4} {reason}" for reason, count in reasons.most_common()))
    print(f"QR stopped working:      {sum(o.qr_broke for o in owners)} owners "
          f"(scan refused or a new attempt after the scan); {repeated_attempts} salons had more than one "
          f"linking attempt")
    print(f"other runner events:     SessionCrashed {metrics_seen['SessionCrashed']}, "
          f"StreamReplaced {metrics_seen['StreamReplaced']} (WhatsApp saw {view.streams_replaced}), "
          f"RunnerStepFailed {metrics_seen['RunnerStepFailed']}")
    print(report("redirect -> first QR", [o.first_qr for o in owners if o.first_qr is not None]))
    print(report("  of which the redirect", [o.redirect for o in owners if o.first_qr is not None and o.redirect]))
    print(report("  then page -> first QR", [o.first_qr - o.redirect for o in owners
                                            if o.first_qr is not None and o.redirect is not None]))
    print(report("scan -> active", [o.to_active for o in owners if o.to_active is not None]))
    print(f"marketplace calls:       {len(calls)} ({', '.join(f'{s}: {n}' for s, n in sorted(statuses.items()))}); "
          f"most served in one second: {max(per_second.values(), default=0)}")
    print(f"SUMMARY: {len(active)}/{args.owners} active, {dropped} sessions dropped")


if __name__ == "__main__":
    main()
