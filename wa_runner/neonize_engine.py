"""neonize engine: real WhatsApp sessions through neonize (whatsmeow, in Go, behind ctypes).

How neonize behaves, and what this adapter does about it (neonize 0.5.2):
- `NewClient.connect()` blocks a thread for the session's life; Go calls back from its own
  threads. Each session gets a thread; every callback is bridged onto the engine's asyncio
  loop with `loop.call_soon_threadsafe`, and only the loop touches engine state.
- QR codes arrive through the `qr` callback, one call per code (60 s, then 20 s each). neonize
  gives no "attempt timed out" signal, so each attempt has our own 160 s timer (QR_TIMEOUT).
- Several `connect()` calls at once crashed the process (Go "concurrent map writes": the
  Go side keeps its clients in plain maps). Every call that writes or reads those maps
  (start-up until the first callback, stop, PairPhone, logout) goes through one lock.
- `PairPhone` (pairing code by phone number) must be called once the connection is up:
  the request waits for the attempt's first QR code.
- Events mapped: PairStatus (success; an error mentioning a passkey -> PASSKEY_REQUIRED,
  any other -> LINK_REFUSED), Connected, LoggedOut, StreamReplaced, TemporaryBan,
  ClientOutdated, Disconnected. whatsmeow reconnects by itself after a disconnect; its
  passkey request (`PairPasskeyRequest`) is not forwarded by neonize 0.5.2's Go bridge, so
  such an attempt ends as QR_TIMEOUT unless it surfaces as a pair error.
- Keys: `wa_runner.keys` (one SQLite file per salon, or a shared Postgres database with the
  salon's device JID remembered beside its lease).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from neonize.client import NewClient
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    DisconnectedEv,
    LoggedOutEv,
    PairStatusEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.exc import PairPhoneError
from neonize.proto.Neonize_pb2 import JID, ConnectFailureReason, PairStatus, TemporaryBan

from aiadmin.observability import logger
from wa_runner.engine import EngineEvent, EventKind
from wa_runner.keys import KeyStore

ATTEMPT_SECONDS = 160.0       # whatsmeow's QR schedule: 60 s + 5 x 20 s
FIRST_CODE_SECONDS = 60.0
NEXT_CODE_SECONDS = 20.0
STARTUP_WAIT_SECONDS = 15.0   # how long a start-up may hold the lock before the next one goes
STOP_WAIT_SECONDS = 10.0
PAIRING_CODE_WAIT_SECONDS = 45.0  # for the connection to come up before asking for a code


def jid_to_text(jid: JID) -> str:
    """whatsmeow's string form: `user[.agent][:device]@server`."""
    user = f"{jid.User}.{jid.RawAgent}" if jid.RawAgent else jid.User
    if jid.Device:
        user = f"{user}:{jid.Device}"
    return f"{user}@{jid.Server}"


def jid_from_text(text: str) -> JID:
    user, _, server = text.rpartition("@")
    user, _, device = user.partition(":")
    user, _, agent = user.partition(".")
    return JID(User=user, RawAgent=int(agent or 0), Device=int(device or 0), Integrator=0, Server=server,
               IsEmpty=False)


def _enum_name(enum: Any, value: int) -> str:
    try:
        return str(enum.Name(value))
    except ValueError:
        return str(value)


class SessionEvents:
    """One session's neonize callbacks -> EngineEvents on the engine's queue.

    The `on_*` handlers are what neonize calls, from Go's threads, with neonize's own event
    objects; they only translate and hand over to the loop. What needs the loop (the attempt
    timer, "the connection is up") happens there, in `_on_loop`."""

    def __init__(self, salon_id: int, generation: int, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[EngineEvent], None], attempt_seconds: float = ATTEMPT_SECONDS,
                 on_linked: Callable[[str], None] | None = None) -> None:
        self.salon_id = salon_id
        self.generation = generation
        self._loop = loop
        self._deliver = deliver
        self._attempt_seconds = attempt_seconds
        self._on_linked = on_linked
        self._lock = threading.Lock()
        self._codes_seen = 0
        self.attempt_deadline: float | None = None
        # Set by the first callback from Go: the client is registered on the Go side.
        self.alive = threading.Event()
        # Set (on the loop) by the attempt's first QR code: WhatsApp's connection is up.
        self.connection_up = asyncio.Event()
        self._timer: asyncio.TimerHandle | None = None
        self._linked = False
        self._closed = False

    def register(self, client: NewClient) -> None:
        client.event.qr(self.on_qr)
        handlers: list[tuple[type[Any], Callable[[NewClient, Any], None]]] = [
            (PairStatusEv, self.on_pair_status), (ConnectedEv, self.on_connected),
            (LoggedOutEv, self.on_logged_out), (StreamReplacedEv, self.on_stream_replaced),
            (TemporaryBanEv, self.on_temporary_ban), (ClientOutdatedEv, self.on_client_outdated),
            (DisconnectedEv, self.on_disconnected),
        ]
        for event_type, handler in handlers:
            client.event(event_type)(handler)

    # ---- called by neonize, on Go's threads ------------------------------------------------

    def on_qr(self, _client: NewClient, data: bytes) -> None:
        now = time.time()
        with self._lock:
            first = self._codes_seen == 0
            self._codes_seen += 1
            if first:
                self.attempt_deadline = now + self._attempt_seconds
            deadline = self.attempt_deadline or now
        lifetime = FIRST_CODE_SECONDS if first else NEXT_CODE_SECONDS
        self._emit(EventKind.QR, code=data.decode(), expires_at=min(now + lifetime, deadline))

    def on_pair_status(self, _client: NewClient, event: PairStatus) -> None:
        if event.Status == PairStatus.SUCCESS:
            jid = jid_to_text(event.ID)
            if self._on_linked is not None:
                try:
                    self._on_linked(jid)
                except Exception:
                    logger.exception("could not record the linked device", extra={"salon_id": self.salon_id})
            self._emit(EventKind.PAIR_SUCCESS, detail=jid)
        elif "passkey" in event.Error.lower():
            self._emit(EventKind.PASSKEY_REQUIRED, detail=event.Error)
        else:
            self._emit(EventKind.LINK_REFUSED, detail=event.Error or "pairing failed")

    def on_connected(self, _client: NewClient, _event: Any) -> None:
        self._emit(EventKind.CONNECTED)

    def on_logged_out(self, _client: NewClient, event: Any) -> None:
        reason = _enum_name(ConnectFailureReason, event.Reason)
        self._emit(EventKind.LOGGED_OUT, detail=f"{reason}{' on connect' if event.OnConnect else ''}")

    def on_stream_replaced(self, _client: NewClient, _event: Any) -> None:
        self._emit(EventKind.STREAM_REPLACED)

    def on_temporary_ban(self, _client: NewClient, event: TemporaryBan) -> None:
        reason = _enum_name(TemporaryBan.TempBanReason, event.Code)
        self._emit(EventKind.BANNED, detail=f"{reason}, expires in {event.Expire} s")

    def on_client_outdated(self, _client: NewClient, _event: Any) -> None:
        self._emit(EventKind.CLIENT_OUTDATED, detail="405 client outdated")

    def on_disconnected(self, _client: NewClient, _event: Any) -> None:
        self._emit(EventKind.DISCONNECTED)

    def connection_ended(self, error: str) -> None:
        """The session's `connect()` returned (from its thread): the session is gone."""
        self._hand_over(EngineEvent(EventKind.DISCONNECTED, self.salon_id, self.generation,
                                    detail=error or "connection ended"))

    # ---- the loop's side ---------------------------------------------------------------------

    def report(self, kind: EventKind, **fields: Any) -> None:
        """Deliver an event from the loop thread (results of our own calls into neonize)."""
        self._on_loop(EngineEvent(kind, self.salon_id, self.generation, **fields))

    def close(self) -> None:
        """Stopped by us: nothing more is delivered, the timer is off (loop thread)."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _emit(self, kind: EventKind, **fields: Any) -> None:
        """From a Go callback: the Go side has this client registered by now."""
        self.alive.set()
        self._hand_over(EngineEvent(kind, self.salon_id, self.generation, **fields))

    def _hand_over(self, event: EngineEvent) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is already closed: the runner is gone
            self._loop.call_soon_threadsafe(self._on_loop, event)

    def _on_loop(self, event: EngineEvent) -> None:
        if self._closed:
            return
        if event.kind == EventKind.QR and not self.connection_up.is_set():
            self.connection_up.set()
            if not self._linked and self.attempt_deadline is not None:
                self._timer = self._loop.call_later(max(0.0, self.attempt_deadline - time.time()), self._timed_out)
        elif event.kind in (EventKind.PAIR_SUCCESS, EventKind.CONNECTED, EventKind.LINK_REFUSED,
                            EventKind.PASSKEY_REQUIRED, EventKind.LOGGED_OUT):
            self._linked = self._linked or event.kind in (EventKind.PAIR_SUCCESS, EventKind.CONNECTED)
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        self._deliver(event)

    def _timed_out(self) -> None:
        self._timer = None
        if not self._closed and not self._linked:
            self._deliver(EngineEvent(EventKind.QR_TIMEOUT, self.salon_id, self.generation))


@dataclass
class _Session:
    client: NewClient
    events: SessionEvents
    thread: threading.Thread
    tasks: set[asyncio.Task[None]] = field(default_factory=set)

    def registered(self) -> bool:
        """Whether the Go side holds this client (calls naming it would crash otherwise)."""
        return self.events.alive.is_set() and self.thread.is_alive()


class NeonizeEngine:
    def __init__(self, keys: KeyStore, attempt_seconds: float = ATTEMPT_SECONDS,
                 startup_wait: float = STARTUP_WAIT_SECONDS) -> None:
        self._keys = keys
        self._attempt_seconds = attempt_seconds
        self._startup_wait = startup_wait
        self._sessions: dict[int, _Session] = {}
        self._go_calls = asyncio.Lock()
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()

    def has_credentials(self, salon_id: int) -> bool:
        return self._keys.device_jid(salon_id) is not None

    def running(self) -> set[int]:
        return {salon_id for salon_id, session in self._sessions.items() if session.thread.is_alive()}

    def new_client(self, salon_id: int) -> NewClient:
        """A client on the salon's key store: its linked device, or a new one to pair.

        A fresh client id per start: neonize stops a client by id when the Python object
        is collected, which must never hit a newer session of the same salon."""
        database = self._keys.database(salon_id)
        jid = self._keys.device_jid(salon_id)
        if jid:
            client = NewClient(database, jid=jid_from_text(jid))
        else:
            client = NewClient(database, uuid=f"salon-{salon_id}-{secrets.token_hex(4)}", new_device=True)
        return client

    async def start(self, salon_id: int, generation: int) -> None:
        await self.stop(salon_id)
        loop = asyncio.get_running_loop()
        events = SessionEvents(salon_id, generation, loop, self.events.put_nowait, self._attempt_seconds,
                               on_linked=lambda jid: self._keys.remember(salon_id, jid))
        client = await asyncio.to_thread(self.new_client, salon_id)
        events.register(client)
        thread = threading.Thread(target=self._connect, args=(client, events), name=f"neonize-{salon_id}",
                                  daemon=True)
        self._sessions[salon_id] = _Session(client, events, thread)
        async with self._go_calls:
            thread.start()
            # Hold the lock until Go has registered the client (its first callback) or gave up:
            # the next start-up (or any call into Go) waits for that.
            deadline = loop.time() + self._startup_wait
            while not events.alive.is_set() and thread.is_alive() and loop.time() < deadline:
                await asyncio.sleep(0.05)

    @staticmethod
    def _connect(client: NewClient, events: SessionEvents) -> None:
        error = ""
        try:
            client.connect()
        except Exception as exc:  # neonize raises its own errors for a failed start
            error = f"{type(exc).__name__}: {exc}"
        events.connection_ended(error)

    async def request_pairing_code(self, salon_id: int, phone: str) -> None:
        session = self._sessions.get(salon_id)
        if session is None or not session.thread.is_alive():
            self.events.put_nowait(EngineEvent(EventKind.PAIRING_CODE_FAILED, salon_id, 0,
                                               detail="no linking attempt is running"))
            return
        # Waits for the connection without holding up the runner's other work.
        task = asyncio.create_task(self._pair_phone(session, phone))
        session.tasks.add(task)
        task.add_done_callback(session.tasks.discard)

    async def _pair_phone(self, session: _Session, phone: str) -> None:
        events = session.events
        try:
            await asyncio.wait_for(events.connection_up.wait(), PAIRING_CODE_WAIT_SECONDS)
        except TimeoutError:
            events.report(EventKind.PAIRING_CODE_FAILED, detail="the connection to WhatsApp did not come up")
            return
        async with self._go_calls:
            if not session.registered():
                return
            try:
                code = await asyncio.to_thread(session.client.PairPhone, phone, True)
            except PairPhoneError as exc:
                events.report(EventKind.PAIRING_CODE_FAILED, detail=str(exc))
                return
        events.report(EventKind.PAIRING_CODE, code=code, expires_at=events.attempt_deadline)

    async def stop(self, salon_id: int, logout: bool = False) -> None:
        session = self._sessions.pop(salon_id, None)
        if session is not None:
            session.events.close()
            for task in list(session.tasks):
                task.cancel()
            async with self._go_calls:
                if logout and session.registered():
                    await asyncio.to_thread(self._logout, session.client, salon_id)
                await asyncio.to_thread(session.client.stop)
            await asyncio.to_thread(session.thread.join, STOP_WAIT_SECONDS)
            # Stopped by us: the collector must not stop that client id again later.
            session.client._stop_finalizer.detach()
        if logout:
            await asyncio.to_thread(self._keys.remove, salon_id)

    @staticmethod
    def _logout(client: NewClient, salon_id: int) -> None:
        """Unlink the device on WhatsApp's side too (it disappears from the phone's list)."""
        try:
            client.logout()
        except Exception as exc:  # not connected, already unlinked: the keys go anyway
            logger.info("logout not confirmed by WhatsApp", extra={"salon_id": salon_id, "error": str(exc)[:200]})

    async def close(self) -> None:
        # All at once: the Go calls queue on their lock, the waits for the threads overlap.
        await asyncio.gather(*(self.stop(salon_id) for salon_id in list(self._sessions)))
