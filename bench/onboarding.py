"""Onboarding latency on the local stack, as the owner experiences it.

For N onboardings (one salon each) it measures, over real HTTP and a real WebSocket:
- redirect -> first QR: from the redirect request (the browser arriving from YClients) to
  the first QR code received on the page's socket;
- scan -> active: from the simulated phone's scan to the `active` state on that socket
  (pairing, connection, the YClients activation call and every push in between).
Prints median and p95 of each. Run: `make bench` or `python bench/onboarding.py -n 50`.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from local.owner import follow_redirect, open_page, press_connect, receive_until, scan
from local.process import RunningStack, local_stack


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


async def one_onboarding(stack: RunningStack, salon_id: int) -> tuple[float, float]:
    redirect_url = press_connect(stack.marketplace, salon_id)
    started = time.perf_counter()
    response, token = follow_redirect(redirect_url)
    if token is None:
        raise RuntimeError(f"redirect refused: {response.status_code}")
    async with open_page(stack.ws_url, token) as ws:
        message = await receive_until(ws, {"qr_ready"})
        first_qr = time.perf_counter() - started
        scanned = time.perf_counter()
        if scan(stack.base_url, message["qr"]).status_code != 200:
            raise RuntimeError("scan refused")
        await receive_until(ws, {"active"})
        to_active = time.perf_counter() - scanned
    return first_qr, to_active


def report(name: str, values: list[float]) -> None:
    print(f"{name:<22} median {statistics.median(values) * 1000:8.1f} ms   "
          f"p95 {percentile(values, 0.95) * 1000:8.1f} ms   (n={len(values)})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-n", "--onboardings", type=int, default=30)
    args = parser.parse_args()
    first_qr: list[float] = []
    to_active: list[float] = []
    with local_stack() as stack:
        for index in range(args.onboardings):
            try:
                qr_time, active_time = asyncio.run(one_onboarding(stack, 20_000 + index))
            except Exception:
                print("".join(stack.output[-40:]), file=sys.stderr)
                raise
            first_qr.append(qr_time)
            to_active.append(active_time)
    print(f"Onboarding on the local stack, {args.onboardings} salons, one after another:")
    report("redirect -> first QR", first_qr)
    report("scan -> active", to_active)


if __name__ == "__main__":
    main()
