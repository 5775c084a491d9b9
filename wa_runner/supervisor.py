"""Session supervision: the runner's book of owned sessions, and the engine made to match
what each one's command asks (link, run, pause, stop).

- Linked sessions are resumed a few at a time (`resume_concurrency`); linking attempts are
  bounded per runner (`max_pairings`) and stopped when nobody watches (`abandon_seconds`).
- A session whose engine task died, or that does not connect in time, restarts with backoff
  while the others go on; the engine never runs a session the book does not hold.
- Nothing starts while the runner's membership does not hold (`Membership.holds`), so a
  runner that was frozen or cut off never connects a session someone else now runs.

Every step takes `now`: tests drive it with a fake clock."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiadmin.models import Salon, SessionLease
from aiadmin.observability import logger, metrics
from aiadmin.onboarding import NO_CODES
from aiadmin.ownership import Fence, Ownership
from aiadmin.states import IllegalTransition, SalonState
from aiadmin.store import LeaseLost, Store
from wa_runner.activations import ActivationWorker
from wa_runner.engine import WhatsAppEngine
from wa_runner.mapping import SHOWING_CODE
from wa_runner.salons import SalonWriter
from wa_runner.sessions import LIVE_PHASES, OwnedSession, Phase

# A resume that has not connected by then no longer holds a resume slot.
START_TIMEOUT_SECONDS = 30.0
# Engine sessions stopped at once when everything stops (lapse, shutdown).
STOP_CONCURRENCY = 64


@dataclass(frozen=True)
class RunnerLimits:
    max_pairings: int = 20          # linking attempts at once (RUNNER_MAX_PAIRINGS)
    resume_concurrency: int = 5     # linked sessions connecting at once (RUNNER_RESUME_CONCURRENCY)
    abandon_seconds: float = 160.0  # no page and no scan for this long stops an attempt

    @property
    def resume_backlog(self) -> int:
        """Claimed linked sessions waiting to start beyond which a runner claims no more, so
        that after a restart or a takeover the other runners take their share."""
        return 10 * self.resume_concurrency

    @property
    def page_check_seconds(self) -> float:
        return min(5.0, self.abandon_seconds / 4)


class Supervisor:
    def __init__(self, store: Store, ownership: Ownership, engine: WhatsAppEngine, writer: SalonWriter,
                 activations: ActivationWorker, fence: Callable[[], Fence], holds: Callable[[float], bool],
                 limits: RunnerLimits | None = None) -> None:
        self._store = store
        self._ownership = ownership
        self._engine = engine
        self._writer = writer
        self._activations = activations
        self._fence = fence
        self._holds = holds
        self.limits = limits or RunnerLimits()
        self.owned: dict[int, OwnedSession] = {}
        self.resume_queue: deque[int] = deque()
        self.resume_wakeup = asyncio.Event()
        self._last_page_check = 0.0

    # ---- what the runner is doing ---------------------------------------------------------

    def pairings_in_flight(self) -> int:
        return sum(owned.pairing for owned in self.owned.values())

    def pairing_room(self) -> int:
        return self.limits.max_pairings - self.pairings_in_flight()

    def backlog_room(self) -> int:
        return self.limits.resume_backlog - len(self.resume_queue)

    def status(self) -> dict[str, Any]:
        """Sessions by phase and pairings in flight: the heartbeat's content."""
        phases = Counter(owned.phase.value for owned in self.owned.values())
        return {"sessions": len(self.owned), "phases": dict(phases), "pairings": self.pairings_in_flight()}

    # ---- commands -------------------------------------------------------------------------

    async def adopt(self, lease: SessionLease, now: float, salon: Salon | None = None) -> None:
        """A session just claimed or taken over: run what its command asks. `salon`: its record
        as read just now, if it was (see `read_salons`)."""
        logger.info("session is ours", extra={"salon_id": lease.salon_id, "desired": lease.desired})
        owned = OwnedSession(lease, since=now, page_seen_at=now, retry_activation=lease.wants_activation_retry,
                             known_salon=salon, known_at=now)
        self.owned[lease.salon_id] = owned
        await self.apply(owned, now)

    async def read_salons(self, salon_ids: list[int]) -> dict[int, Salon]:
        """The salons of sessions about to be claimed, in one call: their connects then need no
        read of their own (a mass resume costs one read per claim page, not one per session)."""
        return await asyncio.to_thread(self._store.get_salons, salon_ids) if salon_ids else {}

    async def command(self, lease: SessionLease, now: float) -> None:
        """The session item as read now (consistently): act on a changed command. Raises when
        acting failed; the book then still holds the previous command, so it is seen as a
        change again next time (never lost)."""
        owned = self.owned.get(lease.salon_id)
        if owned is None:
            await self.adopt(lease, now)  # ours, but not in the book (a claim whose answer was lost)
            return
        previous = owned.lease
        owned.lease = lease
        if lease.wants_activation_retry:
            owned.retry_activation = True
        if lease.command != previous.command or owned.retry_activation:
            try:
                await self.apply(owned, now)
            except Exception:
                owned.lease = previous
                raise

    async def apply(self, owned: OwnedSession, now: float) -> None:
        """Make the engine match what the session's command asks for."""
        lease = owned.lease
        salon_id = lease.salon_id
        if lease.desired == "stop":
            await self._engine.stop(salon_id, logout=True)
            await self.retire(owned)
        elif lease.desired == "pause":
            await self._engine.stop(salon_id)
            owned.enter(Phase.PAUSED, now)
            await self.retire(owned)  # a later command makes it claimable again
        elif lease.desired == "run":
            if owned.phase == Phase.CONNECTED:
                await self._activations.consider(owned)  # e.g. an explicit activation retry
            elif owned.phase not in (Phase.QUEUED, Phase.STARTING, Phase.RETRYING):
                self.enqueue(owned, now)
        elif owned.started_generation != lease.generation:
            await self.start_linking(owned, now)

    async def start_linking(self, owned: OwnedSession, now: float) -> None:
        owned.page_seen_at = now  # the page's grace period starts with the attempt
        owned.enter(Phase.AWAITING_PHONE, now)
        if self._engine.has_credentials(owned.salon_id):
            # A new linking (a reinstall, a relink) starts clean even when it overtook the
            # `stop` that would have logged the old device out.
            await self._engine.stop(owned.salon_id, logout=True)
        if await self.engine_start(owned, now) and owned.lease.pair_phone:
            await self._engine.request_pairing_code(owned.salon_id, owned.lease.pair_phone)

    async def engine_start(self, owned: OwnedSession, now: float) -> bool:
        salon_id = owned.salon_id
        if not self._holds(now):
            return False  # a lapsed runner starts nothing: its sessions are about to be dropped
        owned.started_generation = owned.lease.generation
        try:
            if salon_id in self._engine.running():
                await self._engine.stop(salon_id)
            await self._engine.start(salon_id, owned.lease.generation)
        except Exception:
            logger.exception("engine start failed", extra={"salon_id": salon_id})
            metrics.add_metric(name="SessionCrashed", unit="Count", value=1)
            owned.schedule_retry(now)
            return False
        return True

    def enqueue(self, owned: OwnedSession, now: float) -> None:
        owned.enter(Phase.QUEUED, now)
        self.resume_queue.append(owned.salon_id)
        self.resume_wakeup.set()

    async def resume_step(self, now: float) -> None:
        """Start queued linked sessions, at most `resume_concurrency` connecting at once."""
        connecting = sum(1 for owned in self.owned.values() if owned.phase == Phase.STARTING
                         and now - owned.since < START_TIMEOUT_SECONDS)
        while self.resume_queue and connecting < self.limits.resume_concurrency and self._holds(now):
            queued = self.owned.get(self.resume_queue.popleft())
            if queued is None or queued.phase != Phase.QUEUED:
                continue
            queued.enter(Phase.STARTING, now)
            await self.engine_start(queued, now)
            connecting += 1

    # ---- supervision ----------------------------------------------------------------------

    async def supervise(self, now: float, quiet: Callable[[int], bool] = lambda _s: True) -> None:
        """Sessions whose engine task ended without an event that explains it (a crash)
        restart with backoff; due retries restart; the engine never runs a session we do not
        own. `quiet(salon_id)`: no event of the salon is waiting to be handled."""
        running = self._engine.running()
        for salon_id in running - self.owned.keys():
            logger.warning("stopping a session this runner does not own", extra={"salon_id": salon_id})
            await self._engine.stop(salon_id)
        for owned in list(self.owned.values()):
            salon_id = owned.salon_id
            # (looked up again: a resume may have started it since the snapshot)
            if owned.phase in LIVE_PHASES and salon_id not in running and quiet(salon_id) \
                    and salon_id not in self._engine.running():
                metrics.add_metric(name="SessionCrashed", unit="Count", value=1)
                delay = owned.schedule_retry(now)
                logger.error("session ended without a word, restarting",
                             extra={"salon_id": salon_id, "retry_in": round(delay, 1)})
            elif owned.phase == Phase.STARTING and now - owned.since > START_TIMEOUT_SECONDS:
                metrics.add_metric(name="SessionCrashed", unit="Count", value=1)
                await self._engine.stop(salon_id)
                delay = owned.schedule_retry(now)
                logger.error("session did not connect in time, restarting",
                             extra={"salon_id": salon_id, "retry_in": round(delay, 1)})
            elif owned.phase not in LIVE_PHASES and salon_id in running:
                await self._engine.stop(salon_id)
            if owned.phase == Phase.RETRYING and now >= owned.retry_at:
                if owned.lease.desired == "link":
                    await self.start_linking(owned, now)
                elif owned.lease.desired == "run":
                    self.enqueue(owned, now)

    async def check_pages(self, now: float) -> None:
        """A linking attempt nobody watches (no page socket, no scan) for `abandon_seconds`
        is stopped and its memory released; it starts again when the page is back."""
        if now - self._last_page_check < self.limits.page_check_seconds:
            return
        self._last_page_check = now
        linking = [owned for owned in self.owned.values() if owned.lease.desired == "link"
                   and (owned.pairing or owned.phase == Phase.IDLE)]
        for owned in linking:
            has_page = bool(await asyncio.to_thread(self._store.connections_of, owned.salon_id))
            if self.owned.get(owned.salon_id) is not owned:
                continue
            if has_page:
                owned.page_seen_at = now
            if owned.phase == Phase.IDLE:
                if has_page:
                    logger.info("page is back, linking again", extra={"salon_id": owned.salon_id})
                    await self.start_linking(owned, now)
            elif not has_page and now - owned.page_seen_at >= self.limits.abandon_seconds:
                metrics.add_metric(name="PairingAbandoned", unit="Count", value=1)
                logger.info("linking attempt abandoned: no page and no scan", extra={"salon_id": owned.salon_id})
                await self.end_linking(owned, now, "no page open and no scan")

    async def end_linking(self, owned: OwnedSession, now: float, reason: str) -> None:
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
            await self.drop(owned.salon_id, "a write was refused: the session is no longer ours")
            return
        await self.retire(owned)

    # ---- letting go ----------------------------------------------------------------------

    async def retire(self, owned: OwnedSession) -> bool:
        """Nothing to run: leave the session owner-less and forget it, unless a newer command
        came (the command poll brings it)."""
        done = await asyncio.to_thread(self._ownership.retire, owned.lease, self._fence())
        if done:
            self.forget(owned.salon_id)
        return done

    def forget(self, salon_id: int) -> None:
        self.owned.pop(salon_id, None)
        self._activations.cancel(salon_id)

    async def drop(self, salon_id: int, reason: str) -> None:
        """No longer ours: stop the session at once, before its next owner starts it."""
        logger.warning("dropping session", extra={"salon_id": salon_id, "reason": reason})
        metrics.add_metric(name="LeaseLost", unit="Count", value=1)
        self.forget(salon_id)
        try:
            await self._engine.stop(salon_id)
        except Exception:
            logger.exception("engine stop failed", extra={"salon_id": salon_id})

    async def stop_all(self, timeout: float | None = None) -> list[SessionLease]:
        """Stop every session at once, in parallel (a lapse, a shutdown); forget them. Returns
        the leases they had."""
        leases = [owned.lease for owned in self.owned.values()]
        for salon_id in list(self.owned):
            self.forget(salon_id)
        self.resume_queue.clear()
        gate = asyncio.Semaphore(STOP_CONCURRENCY)

        async def stop(salon_id: int) -> None:
            async with gate:
                try:
                    await self._engine.stop(salon_id)
                except Exception:
                    logger.exception("engine stop failed", extra={"salon_id": salon_id})

        salon_ids = {lease.salon_id for lease in leases} | self._engine.running()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(stop(salon_id) for salon_id in salon_ids)), timeout)
        return leases
