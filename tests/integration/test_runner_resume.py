"""The runner in-process against the simulated WhatsApp server and DynamoDB (moto): linked
sessions are resumed a few at a time, as the runner's `resume_concurrency` says, and stay
the runner's through its reconcile."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from aiadmin.db import Store
from aiadmin.db.sessions import Sessions
from aiadmin.models import SessionLease
from aiadmin.push import Pusher
from aiadmin.yclients import YClientsClient
from local.fake_whatsapp import FakeWhatsApp
from local.seed import pair, record_linked, simulated_whatsapp
from wa_runner.runner import Runner, RunnerLimits
from wa_runner.simulated import SimulatedEngine

pytestmark = pytest.mark.integration

SALONS = list(range(700, 716))


class SlowResumes(FakeWhatsApp):
    """WhatsApp takes a moment to accept a resumed device (it does: a few hundred ms)."""

    async def _resume(self, ws: web.WebSocketResponse, device_id: str) -> None:
        await asyncio.sleep(0.2)
        await super()._resume(ws, device_id)


async def _resume_all(store: Store, sessions_dir: Path, concurrency: int) -> int:
    """Resume SALONS with a fresh runner; returns the most sessions seen connecting at once."""
    async with simulated_whatsapp(SlowResumes()) as (whatsapp, url):
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
            # A few lease reads and renewals later, every session is still there, never dropped.
            await asyncio.sleep(2.5)
            assert runner.status()["phases"] == {"connected": len(SALONS)}
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


class SlowReconcile(Sessions):
    """The real session repository, whose read of the runner's sessions for the reconcile takes a
    while (as with thousands of them), and tells when one is under way."""

    def __init__(self, table: Any) -> None:
        super().__init__(table)
        self.reading = threading.Event()

    def owned_by(self, runner_id: str, limit: int | None = None) -> list[SessionLease]:
        self.reading.set()
        try:
            found = super().owned_by(runner_id, limit)
            time.sleep(0.8)  # the answer is already old when it arrives
            return found
        finally:
            self.reading.clear()


def test_a_session_claimed_during_the_reconcile_is_kept(table: Any, tmp_path: Path) -> None:
    store = Store(table)
    store.sessions = slow = SlowReconcile(table)

    async def scenario() -> None:
        async with simulated_whatsapp() as (whatsapp, url):
            await pair(SimulatedEngine(url, tmp_path), url, [801, 802])
            record_linked(store, [801], run=True)
            record_linked(store, [802], run=False)
            runner = Runner("runner-t", store, SimulatedEngine(url, tmp_path), Pusher(url),
                            YClientsClient(url, "partner-token", 1), url, poll_seconds=0.05, reconcile_seconds=1)
            stop = asyncio.Event()
            running = asyncio.create_task(runner.run(stop))
            try:
                while not (801 in runner.book and slow.reading.is_set()):
                    await asyncio.sleep(0.01)
                store.sessions.request(802, "run")  # claimed while the reconcile's read is under way
                await asyncio.sleep(3)  # several reconciles later
                assert runner.status()["phases"] == {"connected": 2}
                assert [d.resumes for d in whatsapp.devices.values()] == [1, 1]  # neither was dropped
            finally:
                stop.set()
                await running

    asyncio.run(scenario())
