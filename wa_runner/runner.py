"""The runner: owns salons' WhatsApp sessions, drives the engine, turns engine events into
salon states, pushes them to the onboarding page and activates the integration. This module
only puts the parts together and runs their loops:

| part                           | module          | runs on                                   |
|--------------------------------|-----------------|-------------------------------------------|
| membership (one lease per runner) | membership   | its own thread and DynamoDB client        |
| claims and takeovers           | claims          | the claim loop (RUNNER_POLL_SECONDS)      |
| command intake, reconcile      | intake          | the command loop (RUNNER_COMMAND_POLL_SECONDS) |
| the book of owned sessions     | book            | (kept by the others)                      |
| applying commands              | commands        | the claim and command loops               |
| resume pacing                  | resumes         | the resume loop                           |
| linking attempts (abandoned: qr_expired) | linking | the upkeep loop (1 s)                  |
| crash restarts (backoff)       | restarts        | the upkeep loop (1 s)                     |
| engine event -> salon state    | mapping, events | one task per salon with events            |
| activation in YClients         | activations     | a bounded pool of its own                 |
| salon writes and pushes        | salons          | I/O threads; pushes on the pusher's pool (`aiadmin.push`) |
| health                         | health          | the upkeep loop                           |

Upkeep does not grow with idle sessions: per runner, one membership renewal every few
seconds, one command query every 0.5 s, one claim query per poll and a takeover look at the
memberships; per idle session nothing, except its share of a reconcile every few minutes.

On SIGTERM every session is stopped in parallel, handed back (claimable at once by the other
runners), and the membership left; all within ECS's StopTimeout."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiadmin.activation import ActivationPolicy, Activator
from aiadmin.db import Store
from aiadmin.db.memberships import Fence, Memberships
from aiadmin.db.outbox import Outbox
from aiadmin.models import SessionLease
from aiadmin.observability import logger, metrics
from aiadmin.push import RUNNER_ACTOR, Pusher
from aiadmin.yclients import YClientsClient
from wa_runner.activations import ACTIVATION_WORKERS, ActivationWorker
from wa_runner.book import SessionBook
from wa_runner.claims import Claimer
from wa_runner.commands import CommandApplier
from wa_runner.engine import WhatsAppEngine
from wa_runner.events import EventHandler
from wa_runner.health import Health
from wa_runner.inbound import InboundPublisher, MessageQueue
from wa_runner.intake import CommandIntake
from wa_runner.limits import RunnerLimits
from wa_runner.linking import LinkingAttempts
from wa_runner.membership import Membership, MembershipKeeper
from wa_runner.outbox import OutboxSender
from wa_runner.pace import PacePolicy
from wa_runner.restarts import Restarts
from wa_runner.resumes import ResumePacer
from wa_runner.salons import SalonWriter

__all__ = ["Runner", "RunnerLimits"]

IO_THREADS = 16
UPKEEP_SECONDS = 1.0
TAKEOVER_LOOK_SECONDS = 2.0
# SIGTERM: engine sessions stopped within this, then handed back within RELEASE_SECONDS
# (ECS kills the task 30 s after SIGTERM; what is not handed back is taken over once the
# membership's end is seen).
STOP_SECONDS = 12.0
RELEASE_SECONDS = 8.0
RELEASE_THREADS = 32
DRAIN_SECONDS = 2.0


class Runner:
    def __init__(self, runner_id: str, store: Store, engine: WhatsAppEngine, pusher: Pusher,
                 yclients: YClientsClient, public_base_url: str, poll_seconds: float = 0.1,
                 lease_seconds: float = 20, limits: RunnerLimits | None = None,
                 activation_policy: ActivationPolicy | None = None, command_poll_seconds: float = 0.5,
                 reconcile_seconds: float = 300.0, activation_workers: int = ACTIVATION_WORKERS,
                 membership_store: Memberships | None = None, clock: Callable[[], float] = time.time,
                 inbound_queue: MessageQueue | None = None, pace: PacePolicy | None = None) -> None:
        self.runner_id = runner_id
        self._clock = clock
        self._store = store
        self._engine = engine
        self._poll_seconds = poll_seconds
        self._command_poll_seconds = command_poll_seconds
        self._reconcile_seconds = reconcile_seconds
        sessions = store.sessions
        self.health = Health(runner_id)
        self.membership = Membership(membership_store or store.members, runner_id, lease_seconds,
                                     status=lambda: self.health.status, on_lapse=self._on_lapse)
        fence, holds = self._fence, self.membership.holds
        self._pusher = pusher
        self.writer = SalonWriter(store, pusher, fence, clock)
        policy = activation_policy or ActivationPolicy()
        self.activations = ActivationWorker(
            store, sessions, fence, workers=activation_workers,
            make_activator=lambda: Activator(store, yclients, public_base_url, fence, policy,
                                             notify=self.writer.notify, clock=clock, actor=RUNNER_ACTOR))
        limits = limits or RunnerLimits()
        self.book = SessionBook(sessions, engine, fence, on_forget=self._forgotten)
        self.restarts = Restarts(self.book, engine, holds)
        self.resumes = ResumePacer(self.book, self.restarts, holds, limits)
        self.linking = LinkingAttempts(self.book, engine, self.restarts, self.writer, store, limits)
        outbox = Outbox(store.table, sessions)
        self.inbound = InboundPublisher(inbound_queue, outbox, clock) if inbound_queue is not None else None
        self.outbox = OutboxSender(outbox, engine, self.book, fence, clock, pace,
                                   on_sent=self.inbound.sent if self.inbound is not None else None)
        self.commands = CommandApplier(self.book, engine, self.linking, self.resumes, self.activations, self.outbox)
        times = self.membership.times
        self.events = EventHandler(engine, self.book, self.resumes, self.linking, self.writer, sessions,
                                   self.activations, fence, holds, stale_owner_seconds=times.margin + times.grace + 1,
                                   outbox=self.outbox, inbound=self.inbound, clock=clock)
        self.claimer = Claimer(sessions, store.members, self.commands, self.linking, self.resumes,
                               store.salons.get_many, fence, holds, times.grace)
        self.intake = CommandIntake(sessions, self.book, self.commands, fence, holds)
        self._sessions = sessions
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lapse_task: asyncio.Task[None] | None = None
        self._stopping = False

    def _fence(self) -> Fence:
        return self.membership.fence

    def _forgotten(self, salon_id: int) -> None:
        """A session left the book: its work in the other parts ends (its activation, its pace)."""
        self.activations.cancel(salon_id)
        self.outbox.forget(salon_id)

    # ---- what the runner is doing ---------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Sessions by phase and pairings in flight: the heartbeat's content."""
        return self.book.status()

    def pairings_in_flight(self) -> int:
        return self.book.pairings_in_flight()

    # ---- the loops ------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop.set_default_executor(ThreadPoolExecutor(IO_THREADS, thread_name_prefix="runner-io"))
        while not self.membership.holds(self._clock()) and not stop.is_set():
            await asyncio.to_thread(self.membership.step, self._clock())  # join (retried until DynamoDB answers)
            if not self.membership.holds(self._clock()):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)
        keeper = MembershipKeeper(self.membership, self._clock)
        keeper.start()
        background = [asyncio.create_task(self.events.consume()), asyncio.create_task(self._resume_loop()),
                      asyncio.create_task(self.writer.pump())]
        loops = [asyncio.create_task(self._claim_loop(stop)), asyncio.create_task(self._command_loop(stop)),
                 asyncio.create_task(self._upkeep_loop(stop))]
        try:
            await asyncio.gather(*loops)  # all end at the stop signal, after their current round
        finally:
            for task in [*loops, *background, *self.events.workers.values()]:
                task.cancel()
            try:
                await self._shutdown()
            finally:
                keeper.stopping.set()

    async def _every(self, stop: asyncio.Event, seconds: float, started: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, seconds - (self._clock() - started)))

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        """New work within a poll (a pause of RUNNER_POLL_SECONDS after each empty one); a look
        for dead runners' sessions every two seconds (one small consistent query: their
        sessions resume within the lease, the grace and two seconds)."""
        last_takeover = 0.0
        while not stop.is_set():
            now = self._clock()
            claimed = await _step("claim", self.claimer.claim_step(now))
            if now - last_takeover >= min(TAKEOVER_LOOK_SECONDS, self.membership.times.renew_every):
                last_takeover = now
                await _step("takeover", self.claimer.takeover_step(now))
            if not claimed:  # a full page may have more behind it: poll again at once
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll_seconds)

    async def _command_loop(self, stop: asyncio.Event) -> None:
        last_reconcile, epoch = 0.0, None
        while not stop.is_set():
            now = self._clock()
            await _step("commands", self.intake.poll(now))
            if self.membership.holds(now) and (epoch != self.membership.epoch
                                               or now - last_reconcile >= self._reconcile_seconds):
                # After each (re)join at once: sessions of an earlier epoch come back.
                epoch, last_reconcile = self.membership.epoch, now
                await _step("reconcile", self.intake.reconcile(now))
            await self._every(stop, self._command_poll_seconds, now)

    async def _upkeep_loop(self, stop: asyncio.Event) -> None:
        """Once a second: crash restarts, abandoned pairings, health."""
        while not stop.is_set():
            now = self._clock()
            await _step("supervise", self.restart_crashed(now))
            await _step("page check", self.linking.check_pages(now))
            self.health.update(self.status(), self.book.linked(), now)
            self.resumes.wake()  # resumes that timed out free their slots
            await self._every(stop, UPKEEP_SECONDS, now)

    async def restart_crashed(self, now: float) -> None:
        """Crashed sessions are restarted with backoff: a due restart carries out the command again."""
        for owned in await self.restarts.supervise(now, self.events.quiet):
            await self.commands.restart(owned, now)

    async def _resume_loop(self) -> None:
        while True:
            await self.resumes.woken()
            await _step("resume", self.resumes.step(self._clock()))

    async def stop_sessions(self, timeout: float | None) -> list[SessionLease]:
        """Stop every session at once (a lapse, a shutdown); returns the leases they had."""
        self.resumes.clear()
        return await self.book.stop_all(timeout)

    # ---- a lapsed membership ----------------------------------------------------------------

    def _on_lapse(self) -> None:
        """From the membership thread: stop everything on the loop, then let it join again
        (not while shutting down: the shutdown stops everything and leaves)."""
        if self._loop is not None and not self._loop.is_closed() and not self._stopping:
            self._loop.call_soon_threadsafe(self._start_lapse)

    def _start_lapse(self) -> None:
        self._lapse_task = asyncio.create_task(self._lapsed())

    async def _lapsed(self) -> None:
        stopped = await self.stop_sessions(STOP_SECONDS)
        # Each one dropped: counted as the fence's drops are (the others take them over).
        metrics.add_metric(name="LeaseLost", unit="Count", value=len(stopped))
        logger.error("membership lapsed: every session stopped", extra={"sessions": len(stopped)})
        self.membership.stopped_all.set()

    # ---- shutdown -------------------------------------------------------------------------

    async def _shutdown(self) -> None:
        """On SIGTERM: stop every session in parallel, hand them back, leave."""
        started = self._clock()
        self._stopping = True
        self.activations.close()
        holding = self.membership.holds(started)
        leases = await self.stop_sessions(STOP_SECONDS)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self._engine.close(), max(1.0, STOP_SECONDS - (self._clock() - started)))
        released = await self._release(leases) if holding else 0
        await self.writer.drain(DRAIN_SECONDS)  # the last states reach their pages
        try:
            await asyncio.to_thread(self.membership.leave, self._clock())
        except Exception:
            logger.exception("leaving the membership failed: the others take over once it ends")
        self._pusher.shutdown()
        logger.info("sessions handed over", extra={"runner_id": self.runner_id, "sessions": len(leases),
                                                   "released": released, "seconds": round(self._clock() - started, 2)})

    async def _release(self, leases: list[SessionLease]) -> int:
        fence = self._fence()
        pool = ThreadPoolExecutor(RELEASE_THREADS, thread_name_prefix="release")
        loop = asyncio.get_running_loop()
        futures = [loop.run_in_executor(pool, self._sessions.release, lease, fence) for lease in leases]
        try:
            done, _pending = await asyncio.wait(futures, timeout=RELEASE_SECONDS) if futures else (set(), set())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return sum(1 for future in done if not future.exception() and future.result())


async def _step(name: str, step: Awaitable[Any]) -> Any:
    """One failing step (DynamoDB unreachable, a bug) is logged and retried next round; it
    never ends its loop."""
    try:
        return await step
    except Exception:
        logger.exception("runner step failed", extra={"step": name})
        metrics.add_metric(name="RunnerStepFailed", unit="Count", value=1)
        return None

