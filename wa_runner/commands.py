"""Applying commands: the engine made to match what each owned session's command asks (link,
run, pause, stop), when the session is taken on, when its command changes, and when a crashed
session's restart is due (its command carried out again)."""

from __future__ import annotations

from aiadmin.models import Salon, SessionLease
from wa_runner.activations import ActivationWorker
from wa_runner.book import SessionBook
from wa_runner.engine import WhatsAppEngine
from wa_runner.linking import LinkingAttempts
from wa_runner.outbox import OutboxSender
from wa_runner.resumes import ResumePacer
from wa_runner.sessions import OwnedSession, Phase


class CommandApplier:
    def __init__(self, book: SessionBook, engine: WhatsAppEngine, linking: LinkingAttempts, resumes: ResumePacer,
                 activations: ActivationWorker, outbox: OutboxSender) -> None:
        self._book = book
        self._engine = engine
        self._linking = linking
        self._resumes = resumes
        self._activations = activations
        self._outbox = outbox

    async def adopt(self, lease: SessionLease, now: float, salon: Salon | None = None) -> None:
        """A session just claimed or taken over: run what its command asks. `salon`: its record
        as read just now, if it was (a claim page's salons are read in one call)."""
        owned = OwnedSession(lease, since=now, page_seen_at=now, retry_activation=lease.wants_activation_retry,
                             known_salon=salon, known_at=now)
        self._book.add(owned)
        await self.apply(owned, now)

    async def command(self, lease: SessionLease, now: float) -> None:
        """The session item as read now (consistently): act on a changed command. Raises when
        acting failed; the book then still holds the previous command, so it is seen as a
        change again next time (never lost)."""
        owned = self._book.get(lease.salon_id)
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
        # Every new outbound message nudges the session like a command: send what waits.
        self._outbox.wake(lease.salon_id)

    async def apply(self, owned: OwnedSession, now: float) -> None:
        """Make the engine match what the session's command asks for."""
        lease = owned.lease
        salon_id = lease.salon_id
        if lease.desired == "stop":
            await self._engine.stop(salon_id, logout=True)
            await self._outbox.settle(salon_id)  # what waits can never be sent: failed, while still ours
            await self._book.retire(owned)
        elif lease.desired == "pause":
            await self._engine.stop(salon_id)
            owned.enter(Phase.PAUSED, now)
            await self._outbox.quiesce(salon_id)  # what waits stays queued for the next owner
            await self._book.retire(owned)  # a later command makes it claimable again
        elif lease.desired == "run":
            if owned.phase == Phase.CONNECTED:
                await self._activations.consider(owned)  # e.g. an explicit activation retry
            elif owned.phase not in (Phase.QUEUED, Phase.STARTING, Phase.RETRYING):
                self._resumes.enqueue(owned, now)
        elif owned.started_generation != lease.generation:
            await self._outbox.settle(salon_id)  # a new link may be another number: nothing old goes out
            await self._linking.start(owned, now)

    async def restart(self, owned: OwnedSession, now: float) -> None:
        """A crashed session's restart is due (`wa_runner.restarts`)."""
        if owned.lease.desired == "link":
            await self._linking.start(owned, now)
        elif owned.lease.desired == "run":
            self._resumes.enqueue(owned, now)
