"""Linked salons made in bulk for tests and benchmarks. The devices are linked through the
real flow (the engine starts a linking attempt, the simulated phone scans its code, the
engine stores its keys: nothing here knows how an engine keeps them); the salon records
are written as a finished onboarding leaves them."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web

from aiadmin.db import Store
from aiadmin.models import Salon
from aiadmin.states import SalonState
from local.fake_whatsapp import FakeWhatsApp
from wa_runner.engine import EngineEvent, EventKind, WhatsAppEngine


@contextlib.asynccontextmanager
async def simulated_whatsapp(whatsapp: FakeWhatsApp | None = None) -> AsyncIterator[tuple[FakeWhatsApp, str]]:
    """The simulated WhatsApp server alone, on a free loopback port: (server, base URL)."""
    whatsapp = whatsapp or FakeWhatsApp()
    app = web.Application()
    app.add_routes(whatsapp.routes())
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield whatsapp, f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def next_event(engine: WhatsAppEngine, salon_id: int, kinds: set[EventKind], timeout: float = 10) -> EngineEvent:
    """The salon's next event of one of `kinds` (others are dropped)."""
    async with asyncio.timeout(timeout):
        while True:
            event = await engine.events.get()
            if event.salon_id == salon_id and event.kind in kinds:
                return event


async def pair(engine: WhatsAppEngine, whatsapp_url: str, salon_ids: Iterable[int]) -> None:
    """Link each salon's device (one at a time), then disconnect it, keys kept. The engine
    is closed at the end."""
    async with aiohttp.ClientSession() as http:
        for salon_id in salon_ids:
            await engine.start(salon_id, 1)
            qr = await next_event(engine, salon_id, {EventKind.QR})
            async with http.post(f"{whatsapp_url}/_local/whatsapp/scan", json={"qr": qr.code}) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"salon {salon_id}: scan refused ({answer.status})")
            await next_event(engine, salon_id, {EventKind.CONNECTED})
            await engine.stop(salon_id)
    await engine.close()


def record_linked(store: Store, salon_ids: Iterable[int], run: bool = True) -> None:
    """Salons as they are after a finished onboarding: `active`, and (with `run`) a linked
    session for some runner to run. Written directly: a transition is a transaction, which
    moto makes slower the fuller the table is."""
    for salon_id in salon_ids:
        store.salons.put(Salon(salon_id=salon_id, state=SalonState.ACTIVE, version=6, updated_at=time.time(),
                              updated_by="seed", salon_name=f"Салон {salon_id}"))
        if run:
            store.sessions.request(salon_id, "run")
