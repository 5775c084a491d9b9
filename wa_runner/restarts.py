"""Starting sessions' engines, and restarting crashed ones: a session whose engine task ended
without an event that explains it, or that did not connect in time, restarts with backoff
(`OwnedSession.schedule_retry`: 1, 2, 4 ... 60 s) while the others go on. The engine never
runs a session the book does not hold, and nothing starts while the runner's membership does
not hold (a runner that was frozen or cut off never connects a session someone else now runs)."""

from __future__ import annotations

from collections.abc import Callable

from aiadmin.observability import logger, metrics
from wa_runner.book import SessionBook
from wa_runner.engine import WhatsAppEngine
from wa_runner.sessions import LIVE_PHASES, OwnedSession, Phase

# A resume that has not connected by then no longer holds a resume slot, and is restarted.
START_TIMEOUT_SECONDS = 30.0


def _crashed(salon_id: int, reason: str, delay: float) -> None:
    metrics.add_metric(name="SessionCrashed", unit="Count", value=1)
    logger.error(reason, extra={"salon_id": salon_id, "retry_in": round(delay, 1)})


class Restarts:
    def __init__(self, book: SessionBook, engine: WhatsAppEngine, holds: Callable[[float], bool]) -> None:
        self._book = book
        self._engine = engine
        self._holds = holds

    async def start(self, owned: OwnedSession, now: float) -> bool:
        """Start the engine for the session's command; a failure is a crash (restarted later)."""
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

    async def supervise(self, now: float, quiet: Callable[[int], bool] = lambda _s: True) -> list[OwnedSession]:
        """Schedule crashed sessions' restarts, stop what the engine runs without cause; returns
        the sessions whose restart is due (their command is then carried out again).
        `quiet(salon_id)`: no event of the salon is waiting to be handled."""
        running = self._engine.running()
        for salon_id in running - self._book.salon_ids():
            logger.warning("stopping a session this runner does not own", extra={"salon_id": salon_id})
            await self._engine.stop(salon_id)
        due = []
        for owned in self._book.sessions():
            salon_id = owned.salon_id
            # (looked up again: a resume may have started it since the snapshot)
            if owned.phase in LIVE_PHASES and salon_id not in running and quiet(salon_id) \
                    and salon_id not in self._engine.running():
                _crashed(salon_id, "session ended without a word, restarting", owned.schedule_retry(now))
            elif owned.phase == Phase.STARTING and now - owned.since > START_TIMEOUT_SECONDS:
                await self._engine.stop(salon_id)
                _crashed(salon_id, "session did not connect in time, restarting", owned.schedule_retry(now))
            elif owned.phase not in LIVE_PHASES and salon_id in running:
                await self._engine.stop(salon_id)
            if owned.phase == Phase.RETRYING and now >= owned.retry_at:
                due.append(owned)
        return due
