"""The simulated engine alone, in a process of its own, for bench/runner.py: "the engine's
own" memory, connect time and CPU, without the runner, DynamoDB or anything else imported.
Prints one JSON line. Not meant to be run by hand."""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from wa_runner.engine import EventKind
from wa_runner.simulated import SimulatedEngine

SETTLE_SECONDS = 3.0


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def wait_for(engine: SimulatedEngine, kind: EventKind, salon_ids: set[int], timeout: float = 120) -> int:
    """Until each salon had a `kind` event; returns how many events of any kind came meanwhile."""
    waiting, seen = set(salon_ids), 0
    async with asyncio.timeout(timeout):
        while waiting:
            event = await engine.events.get()
            seen += 1
            if event.kind == kind:
                waiting.discard(event.salon_id)
    return seen


async def connect_all(engine: SimulatedEngine, salon_ids: list[int]) -> float:
    started = time.perf_counter()
    for salon_id in salon_ids:
        await engine.start(salon_id, 0)
    await wait_for(engine, EventKind.CONNECTED, set(salon_ids))
    return time.perf_counter() - started


async def settled_rss() -> float:
    gc.collect()
    await asyncio.sleep(SETTLE_SECONDS)
    return rss_mb()


async def memory(engine: SimulatedEngine, salon_ids: list[int]) -> dict[str, Any]:
    """RSS with one session (what a process per session would cost), N/2 and N sessions."""
    await connect_all(engine, salon_ids[:1])
    result = {"one_process_mb": await settled_rss()}
    await engine.stop(salon_ids[0])
    half = len(salon_ids) // 2
    await connect_all(engine, salon_ids[:half])
    result["half_mb"] = await settled_rss()
    await connect_all(engine, salon_ids[half:])
    result["full_mb"] = await settled_rss()
    return result


async def qr(engine: SimulatedEngine, salon_ids: list[int], concurrent: int) -> dict[str, Any]:
    """start() -> first QR, one attempt at a time; then CPU per QR code with `concurrent`
    attempts running to their end."""
    first_qr = []
    for salon_id in salon_ids:
        started = time.perf_counter()
        await engine.start(salon_id, 1)
        await wait_for(engine, EventKind.QR, {salon_id})
        first_qr.append(time.perf_counter() - started)
        await engine.stop(salon_id)
    while not engine.events.empty():
        engine.events.get_nowait()
    attempts = salon_ids[:concurrent]
    cpu_before = time.process_time()
    for salon_id in attempts:
        await engine.start(salon_id, 2)
    events = await wait_for(engine, EventKind.QR_TIMEOUT, set(attempts))
    codes = events - len(attempts)  # every event but the timeouts is a code
    return {"first_qr": first_qr, "cpu_per_qr": (time.process_time() - cpu_before) / max(codes, 1)}


async def run(args: argparse.Namespace) -> dict[str, Any]:
    engine = SimulatedEngine(args.server, args.sessions_dir)
    ids = [int(i) for i in args.ids.split(",")]
    try:
        if args.mode == "memory":
            return await memory(engine, ids)
        if args.mode == "resume":
            return {"seconds": await connect_all(engine, ids)}
        return await qr(engine, ids, args.concurrent)
    finally:
        await engine.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("mode", choices=["memory", "resume", "qr"])
    parser.add_argument("--server", required=True)
    parser.add_argument("--sessions-dir", required=True)
    parser.add_argument("--ids", required=True)
    parser.add_argument("--concurrent", type=int, default=0)
    print(json.dumps(asyncio.run(run(parser.parse_args()))), flush=True)


if __name__ == "__main__":
    main()
