"""The runner: claims salons' sessions through DynamoDB leases, drives the engine, turns engine
events into salon states, pushes them to the onboarding page and activates the integration.

Blocking calls (boto3, requests) run in worker threads so one slow call never stalls the
engine's event stream."""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
import time
from dataclasses import dataclass
from typing import Any

from aiadmin.activation import ACTIVATABLE_STATES, ActivationPolicy, Activator
from aiadmin.models import Salon, SessionLease
from aiadmin.observability import logger, metrics
from aiadmin.onboarding import state_message
from aiadmin.push import Pusher
from aiadmin.states import IllegalTransition, SalonState
from aiadmin.store import Store
from aiadmin.yclients import YClientsClient
from wa_runner.engine import EngineEvent, EventKind, WhatsAppEngine
from wa_runner.healthcheck import beat

ACTOR = "runner"
S = SalonState
_LINKING = [S.PENDING_WHATSAPP, S.QR_READY, S.QR_EXPIRED]
# States in which an attempt shows the owner a code (a QR or a pairing code).
_SHOWING_CODE = [S.QR_READY, S.CODE_READY]
_NO_CODES = {"qr": None, "qr_expires_at": None, "pairing_code": None, "code_expires_at": None}
# Ends of a linking attempt that WhatsApp decided: the owner reads what to do and retries.
_ATTEMPT_REFUSALS = {
    EventKind.LINK_REFUSED: (S.LINK_REFUSED, [*_SHOWING_CODE, S.PAIRING]),
    EventKind.PASSKEY_REQUIRED: (S.PASSKEY_REQUIRED, [*_SHOWING_CODE, S.PAIRING]),
    EventKind.PAIRING_CODE_FAILED: (S.CODE_FAILED, [S.PENDING_WHATSAPP, S.QR_READY]),
}
_STREAM_REPLACED_PAUSE_SECONDS = 5  # (jittered up to twice that)


@dataclass
class OwnedSession:
    lease: SessionLease
    started_generation: int | None = None


class Runner:
    def __init__(self, runner_id: str, store: Store, engine: WhatsAppEngine, pusher: Pusher,
                 yclients: YClientsClient, public_base_url: str, poll_seconds: float = 0.25,
                 lease_seconds: float = 30, activation_policy: ActivationPolicy | None = None) -> None:
        self.runner_id = runner_id
        self._store = store
        self._engine = engine
        self._pusher = pusher
        self._yclients = yclients
        self._public_base_url = public_base_url.rstrip("/")
        self._poll_seconds = poll_seconds
        self._lease_seconds = lease_seconds
        self._owned: dict[int, OwnedSession] = {}
        self._activations: dict[int, asyncio.Task[None]] = {}
        self._activation_policy = activation_policy or ActivationPolicy()
        self._stopping = threading.Event()  # ends activation backoffs running in worker threads
        self._delayed: set[asyncio.Task[None]] = set()

    # ---- main loops --------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        events = asyncio.create_task(self._consume_events())
        last_sync = 0.0
        try:
            while not stop.is_set():
                now = time.time()
                await self._claim_new(now)
                if now - last_sync >= min(1.0, self._lease_seconds / 3):
                    await self._sync_owned(now)
                    last_sync = now
                    beat()
                    await self._heartbeat(now)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self._poll_seconds)
        finally:
            events.cancel()
            await self._shutdown()

    async def _claim_new(self, now: float) -> None:
        try:
            candidates = await asyncio.to_thread(self._store.claimable_sessions, now)
        except Exception:
            logger.exception("lease query failed")
            return
        for candidate in candidates:
            lease = await asyncio.to_thread(
                self._store.claim_session, candidate.salon_id, self.runner_id, now, self._lease_seconds)
            if lease is None:
                continue
            logger.info("claimed session", extra={"salon_id": lease.salon_id, "desired": lease.desired})
            self._owned[lease.salon_id] = OwnedSession(lease)
            await self._apply(self._owned[lease.salon_id])

    async def _sync_owned(self, now: float) -> None:
        """Pick up commands (desired / generation changes) with one batch read, and renew
        the leases that have used up a third of their time."""
        if not self._owned:
            return
        read_against = {salon_id: owned.lease for salon_id, owned in self._owned.items()}
        current = await asyncio.to_thread(self._store.get_sessions, list(self._owned))
        for salon_id in list(self._owned):
            owned = self._owned.get(salon_id)
            lease: SessionLease | None = current.get(salon_id)
            if owned is None or owned.lease is not read_against.get(salon_id):
                # An event changed this lease while we read (e.g. pairing asked for `run`):
                # the read may predate that write; the next sync reads it again.
                continue
            if lease is not None and lease.owner == self.runner_id \
                    and lease.lease_expires - now < self._lease_seconds * 2 / 3:
                lease = await asyncio.to_thread(
                    self._store.renew_session, salon_id, self.runner_id, now, self._lease_seconds)
            if lease is None or lease.owner != self.runner_id:
                logger.warning("lost lease", extra={"salon_id": salon_id})
                self._owned.pop(salon_id, None)
                await self._engine.stop(salon_id)
                continue
            changed = (lease.desired, lease.generation) != (owned.lease.desired, owned.lease.generation)
            owned.lease = lease
            if changed:
                await self._apply(owned)

    async def _heartbeat(self, now: float) -> None:
        try:
            await asyncio.to_thread(self._store.record_heartbeat, self.runner_id, now, len(self._owned))
        except Exception:
            logger.exception("heartbeat write failed")

    async def _apply(self, owned: OwnedSession) -> None:
        """Make the engine match what the lease asks for."""
        lease = owned.lease
        salon_id = lease.salon_id
        if lease.desired == "stop":
            await self._engine.stop(salon_id, logout=True)
            await asyncio.to_thread(self._store.release_session, salon_id, self.runner_id, True)
            self._owned.pop(salon_id, None)
        elif lease.desired == "pause":
            await self._engine.stop(salon_id)
        elif lease.desired == "run" and salon_id in self._engine.running():
            # Already connected: a renewed `run` asks for a retry of a failed or new activation.
            await self._activate_if_needed(salon_id)
        elif lease.desired == "run" or (lease.desired == "link" and owned.started_generation != lease.generation):
            if lease.desired == "link" and owned.started_generation is not None:
                await self._engine.stop(salon_id, logout=False)
            if lease.desired == "link" and self._engine.has_credentials(salon_id):
                # A new linking (a reinstall, a relink) starts clean even when it overtook the
                # `stop` that would have logged the old device out.
                await self._engine.stop(salon_id, logout=True)
            owned.started_generation = lease.generation
            await self._engine.start(salon_id, lease.generation)
            if lease.desired == "link" and lease.pair_phone:
                await self._engine.request_pairing_code(salon_id, lease.pair_phone)

    async def _shutdown(self) -> None:
        """On SIGTERM: disconnect cleanly and hand the leases back so another runner takes over at once."""
        self._stopping.set()
        await self._engine.close()
        for task in [*self._activations.values(), *self._delayed]:
            task.cancel()
        for salon_id in list(self._owned):
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self._store.release_session, salon_id, self.runner_id)
        self._owned.clear()

    # ---- engine events -----------------------------------------------------------------

    async def _consume_events(self) -> None:
        while True:
            event = await self._engine.events.get()
            try:
                await self._handle(event)
            except IllegalTransition as exc:
                logger.info("engine event ignored", extra={"salon_id": event.salon_id, "kind": event.kind,
                                                            "reason": str(exc)})
            except Exception:
                logger.exception("engine event failed", extra={"salon_id": event.salon_id, "kind": event.kind})
            finally:
                metrics.flush_metrics(raise_on_empty_metrics=False)

    async def _transition(self, salon_id: int, state: SalonState, reason: str,
                          attrs: dict[str, Any] | None = None,
                          expected: list[SalonState] | None = None) -> Salon:
        salon = await asyncio.to_thread(self._store.transition, salon_id, state, ACTOR, reason, attrs, expected)
        await self._push(salon)
        return salon

    async def _push(self, salon: Salon) -> None:
        payload = state_message(salon, time.time())
        await asyncio.to_thread(self._pusher.fan_out, self._store, salon.salon_id, payload)

    async def _handle(self, event: EngineEvent) -> None:
        owned = self._owned.get(event.salon_id)
        if owned is None:
            return
        salon_id = event.salon_id
        if event.kind == EventKind.QR:
            if owned.lease.pair_phone:
                return  # this attempt links by pairing code: its QR codes are not shown
            await self._transition(salon_id, S.QR_READY, "new QR code",
                                   {"qr": event.code, "qr_expires_at": event.expires_at}, expected=_LINKING)
        elif event.kind == EventKind.PAIRING_CODE:
            await self._transition(salon_id, S.CODE_READY, "pairing code for the owner's number",
                                   {**_NO_CODES, "pairing_code": event.code, "code_expires_at": event.expires_at},
                                   expected=[S.PENDING_WHATSAPP, S.QR_READY])
        elif event.kind == EventKind.QR_TIMEOUT:
            await self._engine.stop(salon_id)
            await self._transition(salon_id, S.QR_EXPIRED, "no scan within 160 s", _NO_CODES,
                                   expected=_SHOWING_CODE)
        elif event.kind in _ATTEMPT_REFUSALS:
            state, expected = _ATTEMPT_REFUSALS[event.kind]
            await self._engine.stop(salon_id)
            metrics.add_metric(name=f"Linking_{state.value}", unit="Count", value=1)
            await self._transition(salon_id, state, event.detail or event.kind.value, _NO_CODES, expected=expected)
        elif event.kind == EventKind.PAIR_SUCCESS:
            await self._transition(salon_id, S.PAIRING, "phone accepted the code", _NO_CODES)
            await asyncio.to_thread(self._store.request_session, salon_id, "run")
            owned.lease = owned.lease.model_copy(update={"desired": "run", "pair_phone": None})
        elif event.kind == EventKind.CONNECTED:
            await self._on_connected(salon_id)
        elif event.kind == EventKind.LOGGED_OUT:
            await self._engine.stop(salon_id, logout=True)
            await self._transition(salon_id, S.WHATSAPP_LOGGED_OUT, "device unlinked on the phone")
            await asyncio.to_thread(self._store.release_session, salon_id, self.runner_id, True)
            self._owned.pop(salon_id, None)
        elif event.kind in (EventKind.BANNED, EventKind.CLIENT_OUTDATED):
            state = S.BANNED if event.kind == EventKind.BANNED else S.CLIENT_OUTDATED
            await self._engine.stop(salon_id)
            await self._transition(salon_id, state, event.detail or event.kind.value)
        elif event.kind == EventKind.STREAM_REPLACED:
            # The same device connected elsewhere (two owners). WhatsApp closed our stream; a
            # process without the lease stops itself when it sees that, so the owner takes
            # the session back after a pause instead of fighting over it.
            logger.warning("stream replaced", extra={"salon_id": salon_id})
            metrics.add_metric(name="StreamReplaced", unit="Count", value=1)
            await self._engine.stop(salon_id)
            task = asyncio.create_task(self._resume_later(salon_id, _STREAM_REPLACED_PAUSE_SECONDS))
            self._delayed.add(task)
            task.add_done_callback(self._delayed.discard)
        elif event.kind == EventKind.DISCONNECTED and owned.lease.desired in ("run", "link"):
            # The transport dropped (not a stop of ours: those cancel the session quietly).
            # Reconnect after a short, jittered pause; a linking attempt starts over.
            logger.warning("session disconnected, reconnecting", extra={"salon_id": salon_id, "detail": event.detail})
            await asyncio.sleep(1 + random.random())
            if salon_id in self._owned and salon_id not in self._engine.running() \
                    and event.generation == owned.lease.generation:
                await self._engine.start(salon_id, owned.lease.generation)

    async def _resume_later(self, salon_id: int, pause: float) -> None:
        await asyncio.sleep(pause * (1 + random.random()))
        owned = self._owned.get(salon_id)
        if owned is not None and owned.lease.desired == "run" and salon_id not in self._engine.running():
            await self._engine.start(salon_id, owned.lease.generation)

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
            task = asyncio.create_task(self._activate(salon))
            self._activations[salon_id] = task
            task.add_done_callback(lambda _t: self._activations.pop(salon_id, None))

    # ---- activation in YClients ---------------------------------------------------------

    async def _activate(self, salon: Salon) -> None:
        """The activation rules live in `aiadmin.activation`; here it runs in a worker thread whose
        backoff waits end at once when the runner stops."""
        activator = Activator(self._store, self._yclients, self._public_base_url, self.runner_id,
                              self._activation_policy, notify=self._push_sync)
        end = await asyncio.to_thread(activator.run, salon.salon_id, self._wait_unless_stopping)
        metrics.flush_metrics(raise_on_empty_metrics=False)
        logger.info("activation ended", extra={"salon_id": salon.salon_id, "end": end})

    def _wait_unless_stopping(self, seconds: float) -> bool:
        return not self._stopping.wait(seconds)

    def _push_sync(self, salon: Salon) -> None:
        self._pusher.fan_out(self._store, salon.salon_id, state_message(salon, time.time()))
