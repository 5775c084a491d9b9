"""Linked salons made in bulk for tests and benchmarks, through the real flow: the engine
starts a linking attempt, the simulated phone scans its code, the engine stores its keys.
Nothing here knows how an engine keeps its keys."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterable

import aiohttp
from aiohttp import web

from aiadmin.states import SalonState
from aiadmin.store import Store
from local.fake_whatsapp import FakeWhatsApp
from wa_runner.engine import EngineEvent, EventKind, WhatsAppEngine

# The states a salon goes through from consent to an active integration.
_TO_ACTIVE = [SalonState.PENDING_WHATSAPP, SalonState.QR_READY, SalonState.PAIRING,
              SalonState.WHATSAPP_CONNECTED, SalonState.ACTIVATING, SalonState.ACTIVE]


@contextlib.asynccontextmanager
async def simulated_whatsapp(time_scale: float = 1.0) -> AsyncIterator[tuple[FakeWhatsApp, str]]:
    """The simulated WhatsApp server alone, on a free loopback port: (server, base URL)."""
    whatsapp = FakeWhatsApp(time_scale=time_scale)
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
    """Link each salon's device (one at a time), then disconnect it, keys kept."""
    async with aiohttp.ClientSession() as http:
        for salon_id in salon_ids:
            await engine.start(salon_id, 1)
            qr = await next_event(engine, salon_id, {EventKind.QR})
            async with http.post(f"{whatsapp_url}/_local/whatsapp/scan", json={"qr": qr.code}) as answer:
                if answer.status != 200:
                    raise RuntimeError(f"salon {salon_id}: scan refused ({answer.status})")
            await next_event(engine, salon_id, {EventKind.CONNECTED})
            await engine.stop(salon_id)


def record_linked(store: Store, salon_ids: Iterable[int], run: bool = True) -> None:
    """Salons as they are after a finished onboarding: `active`, and (with `run`) a linked
    session for some runner to run."""
    for salon_id in salon_ids:
        for state in _TO_ACTIVE:
            store.transition(salon_id, state, actor="seed")
        if run:
            store.request_session(salon_id, "run")
