"""The runner: claims salons' sessions through DynamoDB leases, drives the engine, turns engine
events into salon states, pushes them to the onboarding page and activates the integration.

Ownership: a salon's session is the runner's while its lease is (the SESSION item's `owner`
and `lease_expires`). The lease is renewed once half of it has passed, and the runner's
salon writes are fenced by it (a runner that lost it cannot push a stale QR). A runner that
cannot renew stops the session itself before the lease runs out, so the next owner never
connects while it still is (WhatsApp would replace one stream with the other). Commands
(`desired`, `generation`) are read with one batch read a second. On SIGTERM the runner stops
its sessions and hands the leases back, so another runner takes over at once.

Isolation and capacity: engine events are handled per salon (one slow push or a failure never
delays another salon); sessions are supervised (one whose engine task died or dropped is
restarted with backoff while the others go on); linked sessions are resumed a few at a
time; linking attempts are bounded per runner and stopped when abandoned.

Blocking calls (boto3, requests) run in worker threads so one slow call never stalls the
engine's event stream."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections import Counter, deque
from collections.abc import Awaitable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from aws_lambda_powertools.metrics import EphemeralMetrics

from aiadmin.activation import ACTIVATABLE_STATES, ActivationPolicy, Activator
from aiadmin.models import Salon, SessionLease
from aiadmin.observability import NAMESPACE, SERVICE, logger, metrics
from aiadmin.onboarding import NO_CODES, state_message
from aiadmin.phones import phone_of_jid
from aiadmin.push import Pusher
from aiadmin.states import IllegalTransition, SalonState
from aiadmin.store import LeaseLost, Store
from aiadmin.yclients import YClientsClient
from wa_runner.engine import EngineEvent, EventKind, WhatsAppEngine
from wa_runner.healthcheck import beat
from wa_runner.sessions import LIVE_PHASES, OwnedSession, Phase

ACTOR = "runner"
S = SalonState
_LINKING = [S.PENDING_WHATSAPP, S.QR_READY, S.QR_EXPIRED]
# States in which an attempt shows the owner a code (a QR or a pairing code).
_SHOWING_CODE = [S.QR_READY, S.CODE_READY]
# Ends of a linking attempt that WhatsApp decided: the owner reads what to do and retries.
_ATTEMPT_REFUSALS = {
    EventKind.LINK_REFUSED: (S.LINK_REFUSED, [*_SHOWING_CODE, S.PAIRING]),
    EventKind.PASSKEY_REQUIRED: (S.PASSKEY_REQUIRED, [*_SHOWING_CODE, S.PAIRING]),
    EventKind.PAIRING_CODE_FAILED: (S.CODE_FAILED, [S.PENDING_WHATSAPP, S.QR_READY]),
}
# Health metrics (EMF) once a minute: one datapoint per runner per CloudWatch period.
HEALTH_METRICS_SECONDS = 60.0
# A resume that has not connected by then no longer holds a resume slot.
START_TIMEOUT_SECONDS = 30.0
IO_THREADS = 16
RENEW_CONCURRENCY = 8
CLAIM_BATCH = 25


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


class Runner:
    def __init__(self, runner_id: str, store: Store, engine: WhatsAppEngine, pusher: Pusher,
                 yclients: YClientsClient, public_base_url: str, poll_seconds: float = 0.1,
                 lease_seconds: float = 30, limits: RunnerLimits | None = None,
                 activation_policy: ActivationPolicy | None = None) -> None:
        self.runner_id = runner_id
        self._store = store
        self._engine = engine
        self._pusher = pusher
        self._yclients = yclients
        self._public_base_url = public_base_url.rstrip("/")
        self._poll_seconds = poll_seconds
        self._lease_seconds = lease_seconds
        self._limits = limits or RunnerLimits()
        self._owned: dict[int, OwnedSession] = {}
        self._activations: dict[int, asyncio.Task[None]] = {}
        self._activation_policy = activation_policy or ActivationPolicy()
        self._stopping = threading.Event()  # ends activation backoffs running in worker threads
        self._inboxes: dict[int, deque[EngineEvent]] = {}
        self._workers: dict[int, asyncio.Task[None]] = {}
        self._resume_queue: deque[int] = deque()
        self._resume_wakeup = asyncio.Event()
        self._last_page_check = 0.0
        # Health gauges carry the runner's id besides the service-wide dimension set.
        self._health = EphemeralMetrics(namespace=NAMESPACE, service=SERVICE)

    # ---- what the runner is doing ---------------------------------------------------------

    def pairings_in_flight(self) -> int:
        return sum(owned.pairing for owned in self._owned.values())

    def status(self) -> dict[str, Any]:
        """Sessions by phase and pairings in flight: the heartbeat's content."""
        phases = Counter(owned.phase.value for owned in self._owned.values())
        return {"sessions": len(self._owned), "phases": dict(phases), "pairings": self.pairings_in_flight()}

    @property
    def _sync_seconds(self) -> float:
        return min(1.0, self._lease_seconds / 6)

    # ---- main loop --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        asyncio.get_running_loop().set_default_executor(
            ThreadPoolExecutor(IO_THREADS, thread_name_prefix="runner-io"))
        background = [asyncio.create_task(self._consume_events()), asyncio.create_task(self._resume_loop())]
        # Claiming is its own loop, so new work never waits behind the upkeep of hundreds of sessions.
        loops = [asyncio.create_task(self._claim_loop(stop)), asyncio.create_task(self._upkeep_loop(stop))]
        try:
            await asyncio.gather(*loops)  # both end at the stop signal, after their current round
        finally:
            for task in [*loops, *background, *self._workers.values()]:
                task.cancel()
            await self._shutdown()

    async def _claim_loop(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self._step("claim", self._claim_new(time.time()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self._poll_seconds)

    async def _upkeep_loop(self, stop: asyncio.Event) -> None:
        """Once a second: commands and lease renewal, the fence, supervision, abandoned
        pairings, the heartbeat."""
        last_health = 0.0
        while not stop.is_set():
            now = time.time()
            await self._step("sync", self._sync_owned(now))
            await self._step("fence", self._fence(time.time()))
            await self._step("supervise", self._supervise(now))
            await self._step("page check", self._check_pages(now))
            publish = now - last_health >= HEALTH_METRICS_SECONDS
            await self._heartbeat(now, publish)
            last_health = now if publish else last_health
            self._resume_wakeup.set()  # resumes that timed out free their slots
            self._flush_metrics()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, self._sync_seconds - (time.time() - now)))

    async def _step(self, name: str, step: Awaitable[None]) -> None:
        """One failing step (DynamoDB unreachable, a bug) is logged and retried next tick; it
        never ends the loop."""
        try:
            await step
        except Exception:
            logger.exception("runner step failed", extra={"step": name})
            metrics.add_metric(name="RunnerStepFailed", unit="Count", value=1)

    async def _claim_new(self, now: float) -> None:
        room = self._limits.max_pairings - self.pairings_in_flight()
        backlog_full = len(self._resume_queue) >= self._limits.resume_backlog
        if room <= 0 and backlog_full:
            return
        candidates = await asyncio.to_thread(self._store.claimable_sessions, now, CLAIM_BATCH,
                                             linking=room > 0, linked=not backlog_full)
        for candidate in candidates:
            if (candidate.desired == "link" and room <= 0) or (candidate.desired == "run" and backlog_full):
                continue  # over our bound: left for another runner
            lease = await asyncio.to_thread(
                self._store.claim_session, candidate.salon_id, self.runner_id, now, self._lease_seconds)
            if lease is None:
                continue
            logger.info("claimed session", extra={"salon_id": lease.salon_id, "desired": lease.desired})
            owned = OwnedSession(lease, since=now, page_seen_at=now)
            self._owned[lease.salon_id] = owned
            await self._apply(owned, now)
            room = self._limits.max_pairings - self.pairings_in_flight()
            backlog_full = len(self._resume_queue) >= self._limits.resume_backlog

    async def _sync_owned(self, now: float) -> None:
        """Pick up commands (desired / generation changes) with one batch read, and renew
        the leases that have used up half their time (renewals are most of a runner's upkeep:
        half-way leaves several tries before the fence, at a third fewer writes than a third)."""
        if not self._owned:
            return
        # Only these: a session claimed while the reads are under way is not in them.
        salon_ids = list(self._owned)
        current: dict[int, SessionLease | None] = dict(
            await asyncio.to_thread(self._store.get_sessions, salon_ids))
        due = [salon_id for salon_id, lease in current.items() if lease is not None
               and lease.owner == self.runner_id and lease.lease_expires - now < self._lease_seconds / 2]
        current.update(await self._renew(due, now))
        for salon_id in salon_ids:
            owned = self._owned.get(salon_id)
            if owned is None:
                continue
            lease = current.get(salon_id)
            if lease is None or lease.owner != self.runner_id:
                metrics.add_metric(name="LeaseLost", unit="Count", value=1)
                await self._drop(salon_id, "lease taken by another runner")
                continue
            previous = owned.lease
            owned.lease = lease
            if (lease.desired, lease.generation) != (previous.desired, previous.generation):
                try:
                    await self._apply(owned, now)
                except Exception:
                    logger.exception("command failed, retried next second", extra={"salon_id": salon_id})
                    owned.lease = previous  # seen as a change again next time: never lost

    async def _renew(self, salon_ids: list[int], now: float) -> dict[int, SessionLease | None]:
        """Renew concurrently (hundreds of leases must not hold up the loop). A lease that
        could not be renewed for an error is left out: the fence stops it if that persists."""
        gate = asyncio.Semaphore(RENEW_CONCURRENCY)

        async def renew(salon_id: int) -> tuple[int, SessionLease | None] | None:
            async with gate:
                try:
                    return salon_id, await asyncio.to_thread(
                        self._store.renew_session, salon_id, self.runner_id, now, self._lease_seconds)
                except Exception:
                    logger.exception("lease renewal failed", extra={"salon_id": salon_id})
                    return None

        results = await asyncio.gather(*(renew(salon_id) for salon_id in salon_ids))
        return dict(result for result in results if result is not None)

    async def _fence(self, now: float) -> None:
        """A lease we could not renew is given up before it expires, with a margin for clock
        skew: whoever claims it next finds the session already stopped."""
        margin = self._lease_seconds / 5
        for owned in list(self._owned.values()):
            if owned.lease.lease_expires - now < margin:
                metrics.add_metric(name="LeaseLost", unit="Count", value=1)
                await self._drop(owned.salon_id, "lease could not be renewed in time")

    async def _apply(self, owned: OwnedSession, now: float) -> None:
        """Make the engine match what the lease asks for."""
        lease = owned.lease
        salon_id = lease.salon_id
        if lease.desired == "stop":
            await self._engine.stop(salon_id, logout=True)
            await self._retire(owned)
        elif lease.desired == "pause":
            await self._engine.stop(salon_id)
            owned.enter(Phase.PAUSED, now)
            await self._retire(owned)  # a later command puts it back in the lease index
        elif lease.desired == "run":
            if owned.phase == Phase.CONNECTED:
                # Already connected: a renewed `run` asks for a retry of a failed or new activation.
                await self._activate_if_needed(salon_id)
            elif owned.phase not in (Phase.QUEUED, Phase.STARTING, Phase.RETRYING):
                self._enqueue(owned, now)
        elif owned.started_generation != lease.generation:
            await self._start_linking(owned, now)

    async def _start_linking(self, owned: OwnedSession, now: float) -> None:
        owned.page_seen_at = now  # the page's grace period starts with the attempt
        owned.enter(Phase.LINKING, now)
        if self._engine.has_credentials(owned.salon_id):
            # A new linking (a reinstall, a relink) starts clean even when it overtook the
            # `stop` that would have logged the old device out.
            await self._engine.stop(owned.salon_id, logout=True)
        await self._engine_start(owned, now)
        if owned.lease.pair_phone:
            await self._engine.request_pairing_code(owned.salon_id, owned.lease.pair_phone)

    async def _engine_start(self, owned: OwnedSession, now: float) -> None:
        salon_id = owned.salon_id
        owned.started_generation = owned.lease.generation
        try:
            if salon_id in self._engine.running():
                await self._engine.stop(salon_id)
            await self._engine.start(salon_id, owned.lease.generation)
        except Exception:
            logger.exception("engine start failed", extra={"salon_id": salon_id})
            metrics.add_metric(name="SessionCrashed", unit="Count", value=1)
            owned.schedule_retry(now)

    def _enqueue(self, owned: OwnedSession, now: float) -> None:
        owned.enter(Phase.QUEUED, now)
        self._resume_queue.append(owned.salon_id)
        self._resume_wakeup.set()

    async def _resume_loop(self) -> None:
        """Start queued linked sessions, at most `resume_concurrency` connecting at once."""
        while True:
            await self._resume_wakeup.wait()
            self._resume_wakeup.clear()
            now = time.time()
            connecting = sum(1 for owned in self._owned.values() if owned.phase == Phase.STARTING
                             and now - owned.since < START_TIMEOUT_SECONDS)
            while self._resume_queue and connecting < self._limits.resume_concurrency:
                queued = self._owned.get(self._resume_queue.popleft())
                if queued is None or queued.phase != Phase.QUEUED:
                    continue
                queued.enter(Phase.STARTING, now)
                await self._engine_start(queued, now)
                connecting += 1

    async def _supervise(self, now: float) -> None:
        """Sessions whose engine task ended without an event we handled (a crash) restart
        with backoff; due retries restart; the engine never runs a session we do not own."""
        running = self._engine.running()
        for salon_id in running - self._owned.keys():
            logger.warning("stopping a session this runner does not own", extra={"salon_id": salon_id})
            await self._engine.stop(salon_id)
        quiet = self._engine.events.empty()  # else an event may still explain a stopped session
        for owned in list(self._owned.values()):
            salon_id = owned.salon_id
            # (looked up again: a resume may have started it since the snapshot)
            if owned.phase in LIVE_PHASES and salon_id not in running and quiet and salon_id not in self._inboxes \
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
                    await self._start_linking(owned, now)
                elif owned.lease.desired == "run":
                    self._enqueue(owned, now)

    async def _check_pages(self, now: float) -> None:
        """A linking attempt nobody watches (no page socket, no scan) for `abandon_seconds`
        is stopped and its memory released; it starts again when the page is back."""
        if now - self._last_page_check < self._limits.page_check_seconds:
            return
        self._last_page_check = now
        linking = [owned for owned in self._owned.values() if owned.lease.desired == "link"
                   and (owned.pairing or owned.phase == Phase.IDLE)]
        for owned in linking:
            has_page = bool(await asyncio.to_thread(self._store.connections_of, owned.salon_id))
            if owned.salon_id not in self._owned:
                continue
            if has_page:
                owned.page_seen_at = now
            if owned.phase == Phase.IDLE:
                if has_page:
                    logger.info("page is back, linking again", extra={"salon_id": owned.salon_id})
                    await self._start_linking(owned, now)
            elif not has_page and now - owned.page_seen_at >= self._limits.abandon_seconds:
                metrics.add_metric(name="PairingAbandoned", unit="Count", value=1)
                logger.info("linking attempt abandoned: no page and no scan", extra={"salon_id": owned.salon_id})
                await self._end_linking(owned, now, "no page open and no scan")

    async def _end_linking(self, owned: OwnedSession, now: float, reason: str) -> None:
        """Stop a linking attempt: the QR expires, and the session leaves the lease index until
        the owner asks for a new code (which puts it back). One that never showed a QR stays
        ours, idle, until its page is back."""
        await self._engine.stop(owned.salon_id)
        owned.enter(Phase.IDLE, now)
        try:
            await self._transition(owned.salon_id, S.QR_EXPIRED, reason, NO_CODES, expected=_SHOWING_CODE)
        except IllegalTransition as exc:
            if exc.current != S.QR_EXPIRED:
                return
        await self._retire(owned)

    async def _retire(self, owned: OwnedSession) -> bool:
        """Take the session out of the lease index and forget it, unless a newer command came."""
        done = await asyncio.to_thread(self._store.release_session, owned.salon_id, self.runner_id, True, owned.lease)
        if done:
            self._forget(owned.salon_id)
        return done

    def _forget(self, salon_id: int) -> None:
        self._owned.pop(salon_id, None)
        task = self._activations.pop(salon_id, None)
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    async def _drop(self, salon_id: int, reason: str) -> None:
        """No longer ours: stop the session at once, before its next owner starts it."""
        logger.warning("dropping session", extra={"salon_id": salon_id, "reason": reason})
        self._forget(salon_id)
        try:
            await self._engine.stop(salon_id)
        except Exception:
            logger.exception("engine stop failed", extra={"salon_id": salon_id})

    async def _heartbeat(self, now: float, publish: bool) -> None:
        status = self.status()
        try:
            beat(status)
        except OSError:
            logger.exception("heartbeat file write failed")
        try:
            await asyncio.to_thread(self._store.record_heartbeat, self.runner_id, now, status["sessions"],
                                    status["phases"], status["pairings"])
        except Exception:
            logger.exception("heartbeat write failed")
        if publish:
            self._publish_health(status)

    def _publish_health(self, status: dict[str, Any]) -> None:
        """Gauges for CloudWatch: each under the service alone (the fleet: alarms) and under
        service + RunnerId (one runner)."""
        phases: dict[str, int] = status["phases"]
        linked = sum(1 for owned in self._owned.values() if owned.lease.desired == "run")
        health = self._health
        health.add_dimensions(service=SERVICE, RunnerId=self.runner_id)
        health.add_metric(name="RunnerHeartbeat", unit="Count", value=1)
        health.add_metric(name="SessionsOwned", unit="Count", value=status["sessions"])
        health.add_metric(name="SessionsLinked", unit="Count", value=linked)
        health.add_metric(name="SessionsConnected", unit="Count", value=phases.get(Phase.CONNECTED, 0))
        health.add_metric(name="SessionsRetrying", unit="Count", value=phases.get(Phase.RETRYING, 0))
        health.add_metric(name="PairingsInFlight", unit="Count", value=status["pairings"])
        try:
            health.flush_metrics()
        except Exception:
            logger.exception("health metrics flush failed")

    @staticmethod
    def _flush_metrics() -> None:
        if not metrics.metric_set:
            return
        try:
            metrics.flush_metrics(raise_on_empty_metrics=False)
        except Exception:
            logger.exception("metrics flush failed")

    async def _shutdown(self) -> None:
        """On SIGTERM: disconnect cleanly and hand the leases back so another runner takes over at once."""
        self._stopping.set()
        await self._engine.close()
        for task in self._activations.values():
            task.cancel()
        salon_ids = list(self._owned)
        self._owned.clear()
        gate = asyncio.Semaphore(IO_THREADS)  # all hands: ECS kills the task 30 s after SIGTERM

        async def release(salon_id: int) -> None:
            async with gate:
                with contextlib.suppress(Exception):
                    await asyncio.to_thread(self._store.release_session, salon_id, self.runner_id)

        await asyncio.gather(*(release(salon_id) for salon_id in salon_ids))

    # ---- engine events -----------------------------------------------------------------

    async def _consume_events(self) -> None:
        """Hand each event to its salon's worker: events of one salon stay in order, and one
        salon's slow write or failure never holds up another's."""
        while True:
            event = await self._engine.events.get()
            self._inboxes.setdefault(event.salon_id, deque()).append(event)
            if event.salon_id not in self._workers:
                self._workers[event.salon_id] = asyncio.create_task(self._drain(event.salon_id))

    async def _drain(self, salon_id: int) -> None:
        inbox = self._inboxes[salon_id]
        try:
            while inbox:
                event = inbox.popleft()
                try:
                    await self._handle(event)
                except IllegalTransition as exc:
                    logger.info("engine event ignored", extra={"salon_id": salon_id, "kind": event.kind,
                                                                "reason": str(exc)})
                except LeaseLost:
                    metrics.add_metric(name="LeaseLost", unit="Count", value=1)
                    await self._drop(salon_id, "a write was refused: lease lost")
                except Exception:
                    logger.exception("engine event failed", extra={"salon_id": salon_id, "kind": event.kind})
                finally:
                    self._resume_wakeup.set()
        finally:
            self._inboxes.pop(salon_id, None)
            self._workers.pop(salon_id, None)

    async def _transition(self, salon_id: int, state: SalonState, reason: str,
                          attrs: dict[str, Any] | None = None,
                          expected: list[SalonState] | None = None) -> Salon:
        salon = await asyncio.to_thread(self._store.transition, salon_id, state, ACTOR, reason, attrs, expected,
                                        self.runner_id)
        await self._push(salon)
        return salon

    async def _push(self, salon: Salon) -> None:
        await asyncio.to_thread(self._push_sync, salon)

    async def _handle(self, event: EngineEvent) -> None:
        owned = self._owned.get(event.salon_id)
        if owned is None or event.generation != owned.started_generation:
            return  # not ours (any more), or left over from an earlier attempt
        salon_id = event.salon_id
        now = time.time()
        if event.kind == EventKind.QR:
            owned.enter(Phase.LINKING, now)
            if owned.lease.pair_phone:
                return  # this attempt links by pairing code: its QR codes are not shown
            await self._transition(salon_id, S.QR_READY, "new QR code",
                                   {"qr": event.code, "qr_expires_at": event.expires_at}, expected=_LINKING)
        elif event.kind == EventKind.PAIRING_CODE:
            owned.enter(Phase.LINKING, now)
            await self._transition(salon_id, S.CODE_READY, "pairing code for the owner's number",
                                   {**NO_CODES, "pairing_code": event.code, "code_expires_at": event.expires_at},
                                   expected=[S.PENDING_WHATSAPP, S.QR_READY])
        elif event.kind == EventKind.QR_TIMEOUT:
            await self._end_linking(owned, now, "no scan within 160 s")
        elif event.kind in _ATTEMPT_REFUSALS:
            state, expected = _ATTEMPT_REFUSALS[event.kind]
            await self._engine.stop(salon_id)
            owned.enter(Phase.IDLE, now)
            metrics.add_metric(name=f"Linking_{state.value}", unit="Count", value=1)
            await self._transition(salon_id, state, event.detail or event.kind.value, NO_CODES, expected=expected)
        elif event.kind == EventKind.PAIR_SUCCESS:
            owned.enter(Phase.STARTING, now)
            # The linked device's JID carries the WhatsApp number: the owner's page shows it (masked).
            await self._transition(salon_id, S.PAIRING, "phone accepted the code",
                                   {**NO_CODES, "linked_phone": phone_of_jid(event.detail)})
            # link -> run, unless a newer command (uninstall, a new attempt) came meanwhile.
            if await asyncio.to_thread(self._store.mark_linked, salon_id, self.runner_id, owned.lease.generation):
                owned.lease = owned.lease.model_copy(update={"desired": "run", "pair_phone": None})
        elif event.kind == EventKind.CONNECTED:
            owned.enter(Phase.CONNECTED, now)
            await self._on_connected(salon_id)
        elif event.kind == EventKind.LOGGED_OUT:
            metrics.add_metric(name="SessionsLoggedOut", unit="Count", value=1)
            await self._engine.stop(salon_id, logout=True)
            owned.enter(Phase.HALTED, now)
            await self._transition(salon_id, S.WHATSAPP_LOGGED_OUT, "device unlinked on the phone")
            await self._retire(owned)
        elif event.kind in (EventKind.BANNED, EventKind.CLIENT_OUTDATED):
            state, metric = ((S.BANNED, "SessionsBanned") if event.kind == EventKind.BANNED
                             else (S.CLIENT_OUTDATED, "SessionsClientOutdated"))
            metrics.add_metric(name=metric, unit="Count", value=1)
            await self._engine.stop(salon_id)
            owned.enter(Phase.HALTED, now)
            await self._transition(salon_id, state, event.detail or event.kind.value)
        elif event.kind == EventKind.STREAM_REPLACED:
            await self._on_stream_replaced(owned, now)
        elif event.kind == EventKind.DISCONNECTED and owned.phase in LIVE_PHASES:
            # The transport dropped (not a stop of ours: those cancel the session quietly).
            delay = owned.schedule_retry(now)
            logger.warning("session disconnected, reconnecting",
                           extra={"salon_id": salon_id, "detail": event.detail, "retry_in": round(delay, 1)})

    async def _on_stream_replaced(self, owned: OwnedSession, now: float) -> None:
        """Another client connected with this salon's keys: two owners. If the lease is no
        longer ours, the other is the rightful owner; if it is, the other is a stale runner
        that stops itself within its lease margin, so reconnect only after that."""
        metrics.add_metric(name="StreamReplaced", unit="Count", value=1)
        lease = await asyncio.to_thread(self._store.get_session, owned.salon_id)
        if lease is None or lease.owner != self.runner_id:
            await self._drop(owned.salon_id, "stream replaced by the session's new owner")
            return
        delay = owned.schedule_retry(now, at_least=self._lease_seconds / 5 + 1)
        logger.error("stream replaced while we own the lease", extra={"salon_id": owned.salon_id,
                                                                       "retry_in": round(delay, 1)})

    async def _on_connected(self, salon_id: int) -> None:
        salon = await asyncio.to_thread(self._store.get_salon, salon_id)
        if salon is None:
            return
        if salon.state in (S.PAIRING, S.PENDING_WHATSAPP, S.QR_READY):
            await self._transition(salon_id, S.WHATSAPP_CONNECTED, "session connected")
        await self._activate_if_needed(salon_id)

    async def _activate_if_needed(self, salon_id: int) -> None:
        salon = await asyncio.to_thread(self._store.get_salon, salon_id)
        needs_activation = salon is not None and (salon.state in ACTIVATABLE_STATES or salon.state == S.ACTIVATING)
        if salon is not None and needs_activation and salon_id not in self._activations:
            task = asyncio.create_task(self._activation(salon))
            self._activations[salon_id] = task
            task.add_done_callback(lambda _t: self._activations.pop(salon_id, None))

    async def _activation(self, salon: Salon) -> None:
        """`_activate`, supervised: its writes are fenced, so a lost lease ends it quietly (the
        new owner activates), and a failure is logged, never lost in an unawaited task."""
        try:
            await self._activate(salon)
        except LeaseLost:
            await self._drop(salon.salon_id, "activation write refused: lease lost")
        except Exception:
            logger.exception("activation failed", extra={"salon_id": salon.salon_id})

    # ---- activation in YClients ---------------------------------------------------------

    async def _activate(self, salon: Salon) -> None:
        """The activation rules live in `aiadmin.activation`; here it runs in a worker thread whose
        backoff waits end at once when the runner stops."""
        activator = Activator(self._store, self._yclients, self._public_base_url, self.runner_id,
                              self._activation_policy, notify=self._push_sync)
        end = await asyncio.to_thread(activator.run, salon.salon_id, self._wait_unless_stopping)
        logger.info("activation ended", extra={"salon_id": salon.salon_id, "end": end})

    def _wait_unless_stopping(self, seconds: float) -> bool:
        return not self._stopping.wait(seconds)

    def _push_sync(self, salon: Salon) -> None:
        self._pusher.fan_out(self._store, salon.salon_id, state_message(salon, time.time()))
