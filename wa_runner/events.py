"""Engine events -> salon states: each event is handed to its salon's own worker (events of
one salon stay in order; one salon's slow write or failure never holds up another's), which
carries out what `wa_runner.mapping` says for it."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable

from aiadmin.db.memberships import Fence
from aiadmin.db.sessions import Sessions
from aiadmin.db.transitions import LeaseLost
from aiadmin.observability import logger, metrics
from aiadmin.states import CONNECTS_FROM, IllegalTransition, SalonState
from wa_runner.activations import ActivationWorker
from wa_runner.book import SessionBook
from wa_runner.engine import EngineEvent, EventKind, WhatsAppEngine
from wa_runner.inbound import InboundPublisher
from wa_runner.linking import LinkingAttempts
from wa_runner.mapping import FollowUp, react
from wa_runner.outbox import OutboxSender
from wa_runner.resumes import ResumePacer
from wa_runner.salons import SalonWriter
from wa_runner.sessions import LIVE_PHASES, OwnedSession


class EventHandler:
    def __init__(self, engine: WhatsAppEngine, book: SessionBook, resumes: ResumePacer, linking: LinkingAttempts,
                 writer: SalonWriter, sessions: Sessions, activations: ActivationWorker,
                 fence: Callable[[], Fence], holds: Callable[[float], bool], stale_owner_seconds: float,
                 outbox: OutboxSender, inbound: InboundPublisher | None,
                 clock: Callable[[], float] = time.time) -> None:
        self._engine = engine
        self._book = book
        self._resumes = resumes
        self._linking = linking
        self._writer = writer
        self._sessions = sessions
        self._activations = activations
        self._fence = fence
        self._holds = holds
        # How long another runner that still connects with a salon's keys may take to stop itself.
        self._stale_owner_seconds = stale_owner_seconds
        self._outbox = outbox
        self._inbound = inbound
        self._clock = clock
        self._inboxes: dict[int, deque[EngineEvent]] = {}
        self.workers: dict[int, asyncio.Task[None]] = {}

    def quiet(self, salon_id: int) -> bool:
        """No event of the salon waits to be handled (supervision asks before calling a crash)."""
        return self._engine.events.empty() and salon_id not in self._inboxes

    async def consume(self) -> None:
        while True:
            self.dispatch(await self._engine.events.get())

    def dispatch(self, event: EngineEvent) -> None:
        self._inboxes.setdefault(event.salon_id, deque()).append(event)
        if event.salon_id not in self.workers:
            self.workers[event.salon_id] = asyncio.create_task(self._drain(event.salon_id))

    async def _drain(self, salon_id: int) -> None:
        inbox = self._inboxes[salon_id]
        try:
            while inbox:
                event = inbox.popleft()
                try:
                    await self.handle(event)
                except IllegalTransition as exc:
                    logger.info("engine event ignored", extra={"salon_id": salon_id, "kind": event.kind,
                                                                "reason": str(exc)})
                except LeaseLost:
                    await self._book.drop(salon_id, "a write was refused: the session is no longer ours")
                except Exception:
                    logger.exception("engine event failed", extra={"salon_id": salon_id, "kind": event.kind})
                finally:
                    self._resumes.wake()
        finally:
            self._inboxes.pop(salon_id, None)
            self.workers.pop(salon_id, None)

    async def handle(self, event: EngineEvent) -> None:
        if event.kind in (EventKind.MESSAGE, EventKind.RECEIPT):
            # Whatever the session's fate since: the engine has acknowledged it to WhatsApp, which
            # will not send it again. Publishing it is harmless even if the session is no longer
            # ours (the queue deduplicates on WhatsApp's id), and nothing else is written.
            await self._carry(event)
            return
        owned = self._book.get(event.salon_id)
        if owned is None or event.generation != owned.started_generation:
            return  # not ours (any more), or left over from an earlier attempt
        now = self._clock()
        if not self._holds(now):
            return  # the membership lapsed: every session is being stopped
        reaction = react(event, linking_by_code=bool(owned.lease.pair_phone))
        if reaction.only_if_live and owned.phase not in LIVE_PHASES:
            return
        salon_id = event.salon_id
        if reaction.metric:
            metrics.add_metric(name=reaction.metric, unit="Count", value=1)
        if reaction.stop:
            await self._engine.stop(salon_id, logout=reaction.logout)
        if reaction.phase is not None:
            owned.enter(reaction.phase, now)
            # A session that left `starting` frees its resume slot now, not after this
            # event's writes (a mass resume is paced by how soon slots free up).
            self._resumes.wake()
        if reaction.state is not None:
            await self._writer.transition(salon_id, reaction.state, reaction.reason, reaction.attrs,
                                          reaction.expected, attempt=event.generation if reaction.of_attempt else None)
        await self._follow_up(reaction.follow_up, owned, event, now)

    async def _carry(self, event: EngineEvent) -> None:
        """A chat message or a receipt: to AI Admin's queue (nothing about the salon's state)."""
        if self._inbound is None:
            metrics.add_metric(name="InboundDropped", unit="Count", value=1)
            logger.warning("no inbound queue: message not delivered", extra={"salon_id": event.salon_id})
        elif event.message is not None:
            await self._inbound.message(event.salon_id, event.message)
        elif event.receipt is not None:
            await self._inbound.receipt(event.salon_id, event.receipt)

    async def _follow_up(self, follow_up: FollowUp, owned: OwnedSession, event: EngineEvent, now: float) -> None:
        salon_id = owned.salon_id
        if follow_up == FollowUp.MARK_LINKED:
            # link -> run, unless a newer command (uninstall, a new attempt) came meanwhile.
            if await asyncio.to_thread(self._sessions.mark_linked, salon_id, self._fence(), owned.lease.generation):
                owned.lease = owned.lease.model_copy(update={"desired": "run", "pair_phone": None})
        elif follow_up == FollowUp.CONNECTED:
            salon = owned.take_known_salon(now) or await self._writer.get_salon(salon_id)
            if salon is not None and salon.state in CONNECTS_FROM:
                salon = await self._writer.transition(salon_id, SalonState.WHATSAPP_CONNECTED, "session connected")
            await self._activations.consider(owned, salon)  # one read of the salon for both (a mass resume)
            self._outbox.wake(salon_id)  # messages that waited for the session
        elif follow_up == FollowUp.RETIRE:
            await self._book.retire(owned)
        elif follow_up == FollowUp.END_LINKING:
            await self._linking.end(owned, now, event.detail or "no scan within 160 s")
        elif follow_up == FollowUp.STREAM_REPLACED:
            await self._stream_replaced(owned, now)
        elif follow_up == FollowUp.RECONNECT:
            delay = owned.schedule_retry(now)
            logger.warning("session disconnected, reconnecting",
                           extra={"salon_id": salon_id, "detail": event.detail, "retry_in": round(delay, 1)})

    async def _stream_replaced(self, owned: OwnedSession, now: float) -> None:
        """Another client connected with this salon's keys: two owners. If the session is no
        longer ours, the other is the rightful owner; if it is, the other is a stale runner
        that stops itself within its membership margin, so reconnect only after that."""
        lease = await asyncio.to_thread(self._sessions.get, owned.salon_id)
        if not self._fence().owns(lease):
            await self._book.drop(owned.salon_id, "stream replaced by the session's new owner")
            return
        delay = owned.schedule_retry(now, at_least=self._stale_owner_seconds)
        logger.error("stream replaced while the session is ours", extra={"salon_id": owned.salon_id,
                                                                          "retry_in": round(delay, 1)})
