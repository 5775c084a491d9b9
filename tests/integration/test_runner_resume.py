"""The runner in-process against the simulated WhatsApp server and DynamoDB (moto): linked
sessions are resumed a few at a time, as the runner's `resume_concurrency` says."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from aiadmin.push import Pusher
from aiadmin.store import Store
from aiadmin.yclients import YClientsClient
from local.seed import pair, record_linked, simulated_whatsapp
from wa_runner.runner import Runner, RunnerLimits
from wa_runner.simulated import SimulatedEngine

pytestmark = pytest.mark.integration

SALONS = list(range(700, 716))


async def _resume_all(store: Store, sessions_dir: Path, concurrency: int) -> int:
    """Resume SALONS with a fresh runner; returns the most sessions seen connecting at once."""
    async with simulated_whatsapp() as (whatsapp, url):
        await pair(SimulatedEngine(url, sessions_dir), url, SALONS)
        record_linked(store, SALONS)
        engine = SimulatedEngine(url, sessions_dir)
        runner = Runner("runner-t", store, engine, Pusher(url), YClientsClient(url, "partner-token", 1), url,
                        poll_seconds=0.05, limits=RunnerLimits(resume_concurrency=concurrency))
        stop = asyncio.Event()
        running = asyncio.create_task(runner.run(stop))
        most = 0
        deadline = time.monotonic() + 20
        try:
            while runner.status()["phases"].get("connected", 0) < len(SALONS):
                assert time.monotonic() < deadline, runner.status()
                most = max(most, runner.status()["phases"].get("starting", 0))
                await asyncio.sleep(0)  # look again after every step of the other tasks
            assert all(device.resumes == 1 for device in whatsapp.devices.values())
            assert whatsapp.pairing_attempts == {str(s): 1 for s in SALONS}  # resumed, never paired again
        finally:
            stop.set()
            await running
    return most


def test_linked_sessions_resume_a_few_at_a_time(store: Store, tmp_path: Path) -> None:
    assert 1 <= asyncio.run(_resume_all(store, tmp_path, concurrency=3)) <= 3


def test_without_the_bound_they_would_all_connect_at_once(store: Store, tmp_path: Path) -> None:
    # The same observation sees the difference: it is the bound that staggers them.
    assert asyncio.run(_resume_all(store, tmp_path, concurrency=len(SALONS))) > 3
