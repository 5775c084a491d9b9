"""Linking attempts (QR codes or a pairing code): starting one, the runner's bound on them
(`max_pairings`), and ending one: nobody watches it (no page socket, no scan) for
`abandon_seconds`, or its codes ran out. An ended attempt's QR expires (`qr_expired`) and the
session is retired until the owner asks for a new code."""

from __future__ import annotations

import asyncio

from aiadmin.db import Store
from aiadmin.db.transitions import LeaseLost
from aiadmin.observability import logger, metrics
from aiadmin.onboarding import NO_CODES
from aiadmin.states import IllegalTransition, SalonState
from wa_runner.book import SessionBook
from wa_runner.engine import WhatsAppEngine
from wa_runner.limits import RunnerLimits
from wa_runner.mapping import SHOWING_CODE
from wa_runner.restarts import Restarts
from wa_runner.salons import SalonWriter
from wa_runner.sessions import OwnedSession, Phase


class LinkingAttempts:
    def __init__(self, book: SessionBook, engine: WhatsAppEngine, restarts: Restarts, writer: SalonWriter,
                 store: Store, limits: RunnerLimits) -> None:
        self._book = book
        self._engine = engine
        self._restarts = restarts
        self._writer = writer
        self._store = store
        self._limits = limits
        self._last_page_check = 0.0

    def room(self) -> int:
        """Linking attempts this runner may still take on."""
        return self._limits.max_pairings - self._book.pairings_in_flight()

    async def start(self, owned: OwnedSession, now: float) -> None:
        owned.page_seen_at = now  # the page's grace period starts with the attempt
        owned.enter(Phase.AWAITING_PHONE, now)
        if self._engine.has_credentials(owned.salon_id):
            # A new linking (a reinstall, a relink) starts clean even when it overtook the
            # `stop` that would have logged the old device out.
            await self._engine.stop(owned.salon_id, logout=True)
        if await self._restarts.start(owned, now) and owned.lease.pair_phone:
            await self._engine.request_pairing_code(owned.salon_id, owned.lease.pair_phone)

    async def check_pages(self, now: float) -> None:
        """A linking attempt nobody watches (no page socket, no scan) for `abandon_seconds`
        is stopped and its memory released; it starts again when the page is back."""
        if now - self._last_page_check < self._limits.page_check_seconds:
            return
        self._last_page_check = now
        linking = [owned for owned in self._book.sessions() if owned.lease.desired == "link"
                   and (owned.pairing or owned.phase == Phase.IDLE)]
        for owned in linking:
            has_page = bool(await asyncio.to_thread(self._store.connections.ids_of, owned.salon_id))
            if not self._book.still_holds(owned):
                continue
            if has_page:
                owned.page_seen_at = now
            if owned.phase == Phase.IDLE:
                if has_page:
                    logger.info("page is back, linking again", extra={"salon_id": owned.salon_id})
                    await self.start(owned, now)
            elif not has_page and now - owned.page_seen_at >= self._limits.abandon_seconds:
                metrics.add_metric(name="PairingAbandoned", unit="Count", value=1)
                logger.info("linking attempt abandoned: no page and no scan", extra={"salon_id": owned.salon_id})
                await self.end(owned, now, "no page open and no scan")

    async def end(self, owned: OwnedSession, now: float, reason: str) -> None:
        """Stop a linking attempt: the QR expires, and the session is retired until the owner
        asks for a new code (which makes it claimable again). One that never showed a code
        stays ours, idle, until its page is back."""
        await self._engine.stop(owned.salon_id)
        owned.enter(Phase.IDLE, now)
        try:
            await self._writer.transition(owned.salon_id, SalonState.QR_EXPIRED, reason, NO_CODES,
                                          expected=SHOWING_CODE, attempt=owned.started_generation)
        except IllegalTransition as exc:
            if exc.current != SalonState.QR_EXPIRED:
                return
        except LeaseLost:
            await self._book.drop(owned.salon_id, "a write was refused: the session is no longer ours")
            return
        await self._book.retire(owned)
