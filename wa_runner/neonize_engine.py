"""neonize engine: real WhatsApp sessions through neonize (whatsmeow, in Go, behind ctypes).

How neonize behaves, and what this adapter does about it (neonize 0.5.2):
- `NewClient.connect()` blocks a thread for the session's life; Go calls back from its own
  threads. Each session gets a thread; every callback is bridged onto the engine's asyncio
  loop with `loop.call_soon_threadsafe`, and only the loop touches engine state.
- QR codes arrive through the `qr` callback, one call per code (60 s, then 20 s each). neonize
  gives no "attempt timed out" signal, so each attempt has our own 160 s timer (QR_TIMEOUT).
- Several `connect()` calls at once crashed the process (Go "concurrent map writes": the
  Go side keeps its clients in plain maps, which every exported call reads and a start-up
  and `Stop` write). Every call into Go (start-up until its last touch of those maps, stop,
  PairPhone, logout, is_on_whatsapp + send) goes through one lock, `GoCalls`: urgent calls
  (sends, stops, pairing codes) go before queued start-ups, and `lock_stats()` gives how long
  each kind held it and waited for it.
- `PairPhone` (pairing code by phone number) must be called once the connection is up:
  the request waits for the attempt's first QR code.
- Events mapped: PairStatus (success; an error mentioning a passkey -> PASSKEY_REQUIRED,
  any other -> LINK_REFUSED), Connected, LoggedOut, StreamReplaced, TemporaryBan,
  ClientOutdated, Disconnected; Message -> MESSAGE (one-to-one chats only: groups, status
  broadcasts, broadcast lists, newsletters and protocol messages such as history-sync
  notifications are dropped: `chat_message`) and Receipt -> RECEIPT (delivered, read:
  `receipt`). whatsmeow reconnects by itself after a disconnect; its
  passkey request (`PairPasskeyRequest`) is not forwarded by neonize 0.5.2's Go bridge, so
  such an attempt ends as QR_TIMEOUT unless it surfaces as a pair error.
- Keys: `wa_runner.keys` (one SQLite file per salon, or a shared Postgres database with the
  salon's device JID remembered beside its lease).

Inbound loss window. whatsmeow acknowledges a message (and a receipt) to WhatsApp's server as
soon as its event handlers return; neonize's Go handler only puts the event on a per-client
channel (buffer 100), and a goroutine (`CallbackFunction`) later calls Python with it, one
event at a time per client. So WhatsApp forgets a message *before* Python has seen it: a
runner killed between that ack and the message being on the runner's queue (and then on
SQS, the runner's part) loses it for good; WhatsApp will not send it again. This engine keeps
its share of that window as short as it can: the callback maps the event on Go's thread and
hands it straight to the loop (`call_soon_threadsafe` -> `events.put_nowait`, one hop, no
task, no lock, never dropped, even after `stop`), and measures callback -> on the queue
(`handover_stats()`). The Go side's share (channel wait, one callback at a time) is not
visible from Python.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import secrets
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from neonize.client import NewClient
from neonize.events import (
    ClientOutdatedEv,
    ConnectedEv,
    DisconnectedEv,
    LoggedOutEv,
    MessageEv,
    PairStatusEv,
    ReceiptEv,
    StreamReplacedEv,
    TemporaryBanEv,
)
from neonize.exc import IsOnWhatsAppError, PairPhoneError, SendMessageError
from neonize.proto.Neonize_pb2 import JID, ConnectFailureReason, PairStatus, TemporaryBan
from neonize.proto.Neonize_pb2 import Message as NeonizeMessage
from neonize.proto.Neonize_pb2 import Receipt as NeonizeReceipt
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import Message as WaMessage

from aiadmin.observability import logger
from wa_runner.engine import ChatMessage, EngineEvent, EventKind, Receipt, SendFailed, Sent
from wa_runner.keys import KeyStore

ATTEMPT_SECONDS = 160.0       # whatsmeow's QR schedule: 60 s + 5 x 20 s
FIRST_CODE_SECONDS = 60.0
NEXT_CODE_SECONDS = 20.0
STARTUP_WAIT_SECONDS = 15.0   # how long a start-up may hold the lock before the next one goes
STOP_WAIT_SECONDS = 10.0
PAIRING_CODE_WAIT_SECONDS = 45.0  # for the connection to come up before asking for a code
ON_WHATSAPP_TTL_SECONDS = 24 * 3600.0  # how long a number's "is on WhatsApp" answer is reused
STATS_SAMPLES = 2048          # recent samples kept per figure
USER_SERVER = "s.whatsapp.net"
LID_SERVER = "lid"


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


# ---- neonize's message and receipt events -> ChatMessage / Receipt (pure: testable without Go) ----

# Chats that are not a client's one-to-one chat with the salon: groups, status broadcasts and
# broadcast lists, newsletters (channels), bots, calls.
IGNORED_SERVERS = frozenset({"g.us", "broadcast", "newsletter", "bot", "call", "hosted", "hosted.lid"})
# Wrappers whatsmeow usually unwraps already (`UnwrapRaw`); unwrapped again to be safe.
_WRAPPERS = ("ephemeralMessage", "viewOnceMessage", "viewOnceMessageV2", "viewOnceMessageV2Extension",
             "documentWithCaptionMessage", "editedMessage")
# Sub-message -> kind, in the order they are looked for.
_KINDS: tuple[tuple[str, str], ...] = (
    ("extendedTextMessage", "text"), ("imageMessage", "image"), ("videoMessage", "video"),
    ("ptvMessage", "video"), ("audioMessage", "audio"), ("documentMessage", "document"),
    ("stickerMessage", "sticker"), ("lottieStickerMessage", "sticker"), ("locationMessage", "location"),
    ("liveLocationMessage", "location"), ("contactMessage", "contact"), ("contactsArrayMessage", "contact"),
    ("reactionMessage", "reaction"),
)
_CAPTIONED = ("imageMessage", "videoMessage", "ptvMessage", "documentMessage")
# Nothing a client wrote: key distribution, protocol messages (history-sync notifications,
# app-state keys, revokes, edits, disappearing-timer changes), placeholders.
_NOT_CONTENT = frozenset({"senderKeyDistributionMessage", "fastRatchetKeySenderKeyDistributionMessage",
                          "protocolMessage", "messageContextInfo", "keepInChatMessage", "placeholderMessage",
                          "encReactionMessage", "pollUpdateMessage", "secretEncryptedMessage"})


def _jid_bare(jid: JID) -> str:
    return f"{jid.User}@{jid.Server}"


def chat_of(source: Any, from_me: bool) -> tuple[str, str] | None:
    """(phone, chat JID) of a one-to-one chat's MessageSource; None for any other chat.

    WhatsApp may address a chat by the client's LID (`…@lid`) instead of the number: the number
    is then in the alternate JID (SenderAlt for the client's messages, RecipientAlt for ours).
    A LID chat without it gives an empty phone (the JID still names the chat)."""
    chat = source.Chat
    if source.IsGroup or chat.Server in IGNORED_SERVERS or source.BroadcastListOwner.User:
        return None
    if chat.Server == USER_SERVER:
        return (chat.User if chat.User.isdigit() else "", _jid_bare(chat)) if chat.User else None
    if chat.Server == LID_SERVER:
        alt = source.RecipientAlt if from_me else source.SenderAlt
        phone = alt.User if alt.Server == USER_SERVER and alt.User.isdigit() else ""
        return phone, _jid_bare(chat)
    return None


def _unwrap(message: WaMessage) -> WaMessage:
    for _ in range(4):  # wrappers nest at most a couple deep
        for wrapper in _WRAPPERS:
            if message.HasField(wrapper) and getattr(message, wrapper).HasField("message"):
                message = getattr(message, wrapper).message
                break
        else:
            return message
    return message


def message_content(message: WaMessage) -> tuple[str, str, str | None] | None:
    """(kind, text or caption, quoted message id) of a WhatsApp message; None when it carries
    nothing a client wrote (key distribution, protocol messages)."""
    message = _unwrap(message)
    if message.HasField("conversation") and message.conversation:
        return "text", message.conversation, None
    for name, kind in _KINDS:
        if not message.HasField(name):
            continue
        part = getattr(message, name)
        if kind == "reaction":
            return kind, part.text, part.key.ID or None
        text = part.text if name == "extendedTextMessage" else (part.caption if name in _CAPTIONED else "")
        quoted = part.contextInfo.stanzaID if part.HasField("contextInfo") else ""
        return kind, text, quoted or None
    if any(field.name not in _NOT_CONTENT for field, _ in message.ListFields()):
        return "other", "", None
    return None


def chat_message(event: NeonizeMessage) -> ChatMessage | None:
    """neonize's MessageEv as a ChatMessage; None for what the engine does not report: groups,
    status broadcasts, broadcast lists, newsletters, history sync, edits, protocol messages."""
    info = event.Info
    source = info.MessageSource
    if event.IsEdit or info.Category == "peer" or event.HasField("NewsLetterMeta"):
        return None
    chat = chat_of(source, source.IsFromMe)
    if chat is None:
        return None
    content = message_content(event.Message)
    if content is None:
        return None
    kind, text, quoted = content
    # neonize sends MessageInfo.Timestamp in milliseconds (UnixMilli); receipts in seconds.
    at = info.Timestamp / 1000.0 if info.Timestamp > 10**11 else float(info.Timestamp)
    return ChatMessage(wa_id=info.ID, chat_phone=chat[0], chat_jid=chat[1], at=at, kind=kind, text=text,
                       push_name="" if source.IsFromMe else info.Pushname, quoted_id=quoted,
                       from_me=source.IsFromMe)


_RECEIPT_STATUS = {NeonizeReceipt.DELIVERED: "delivered", NeonizeReceipt.READ: "read"}


def receipt(event: NeonizeReceipt) -> Receipt | None:
    """neonize's ReceiptEv as a Receipt: the client's phone got (`delivered`) or saw (`read`)
    messages the salon sent. None for every other kind (our own devices' receipts, retries,
    server errors, history sync, played) and for groups or broadcasts."""
    if not event.HasField("Type") or event.Type not in _RECEIPT_STATUS or not event.MessageIDs:
        return None
    source = event.MessageSource
    if source.IsFromMe:
        return None  # our own other device (the phone) read a client's message: not a receipt of ours
    chat = chat_of(source, from_me=False)
    if chat is None:
        return None
    return Receipt(wa_ids=tuple(event.MessageIDs), chat_phone=chat[0], status=_RECEIPT_STATUS[event.Type],
                   at=float(event.Timestamp))


def send_failure(error: str) -> SendFailed | None:
    """What a send error from whatsmeow means: SendFailed when nothing reached WhatsApp (not
    connected, refused by the server, failed before sending), None when WhatsApp may have taken
    it (timed out waiting for the server's answer, the node write itself failed): never say
    `failed` then, a resend could be a duplicate."""
    text = error.lower()
    if any(word in text for word in ("timed out", "timeout", "deadline", "failed to send message node",
                                     "context canceled")):
        return None
    if any(word in text for word in ("not connected", "not logged in", "doesn't contain a device jid",
                                     "client not found")):
        return SendFailed("salon_not_linked", error[:200])
    return SendFailed("send_error", error[:200])


# ---- one call into Go at a time, measured ------------------------------------------------------------

class _Figures:
    """Recent durations of one kind (seconds): count, p50, p95, max."""

    def __init__(self) -> None:
        self.samples: deque[float] = deque(maxlen=STATS_SAMPLES)
        self.count = 0
        self.max = 0.0

    def add(self, seconds: float) -> None:
        self.samples.append(seconds)
        self.count += 1
        self.max = max(self.max, seconds)

    def summary(self) -> dict[str, float]:
        ordered = sorted(self.samples)
        if not ordered:
            return {"count": 0, "p50": 0.0, "p95": 0.0, "max": 0.0}

        def at(q: float) -> float:
            return ordered[min(len(ordered) - 1, int(q * len(ordered)))]
        return {"count": self.count, "p50": at(0.5), "p95": at(0.95), "max": self.max}


class GoCalls:
    """The lock every call into neonize's Go side takes (its clients live in plain Go maps: two
    calls at once can crash the process). Exclusive; waiters are served urgent first (sends,
    stops, pairing codes: someone waits on them), then start-ups, each in arrival order, so a
    send waits for at most the one call in progress, not for a whole mass resume queued ahead.
    Records, per kind of call, how long it waited for the lock and how long it held it."""

    URGENT = 0
    START = 1

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._held = False
        self._queue: list[tuple[int, int, asyncio.Future[None]]] = []
        self._arrivals = 0
        self._holds: dict[str, _Figures] = {}
        self._waits: dict[str, _Figures] = {}
        self.holder: str | None = None  # the kind of call holding it (tests, debugging)

    @contextlib.asynccontextmanager
    async def hold(self, kind: str, priority: int = URGENT) -> AsyncIterator[None]:
        asked = self._clock()
        await self._acquire(priority)
        got = self._clock()
        self._waits.setdefault(kind, _Figures()).add(got - asked)
        self.holder = kind
        try:
            yield
        finally:
            self.holder = None
            self._holds.setdefault(kind, _Figures()).add(self._clock() - got)
            self._release()

    def locked(self) -> bool:
        return self._held

    async def _acquire(self, priority: int) -> None:
        if not self._held and not self._queue:
            self._held = True
            return
        self._arrivals += 1
        turn: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._queue, (priority, self._arrivals, turn))
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self._release()  # the turn was handed over as we were cancelled: pass it on
            raise

    def _release(self) -> None:
        while self._queue:
            _, _, turn = heapq.heappop(self._queue)
            if not turn.done():
                turn.set_result(None)  # the lock passes straight to the next waiter
                return
        self._held = False

    def stats(self) -> dict[str, dict[str, float]]:
        """Per kind of call: `hold_*` (seconds it held the lock) and `wait_*` (seconds it waited
        for it), each with count, p50, p95, max; `all` over every kind."""
        result: dict[str, dict[str, float]] = {}
        everything_hold, everything_wait = _Figures(), _Figures()
        for kind in sorted(set(self._holds) | set(self._waits)):
            hold, wait = self._holds.get(kind, _Figures()), self._waits.get(kind, _Figures())
            result[kind] = {**{f"hold_{k}": v for k, v in hold.summary().items()},
                            **{f"wait_{k}": v for k, v in wait.summary().items() if k != "count"}}
            for sample in hold.samples:
                everything_hold.add(sample)
            for sample in wait.samples:
                everything_wait.add(sample)
        result["all"] = {**{f"hold_{k}": v for k, v in everything_hold.summary().items()},
                         **{f"wait_{k}": v for k, v in everything_wait.summary().items() if k != "count"}}
        return result


class SessionEvents:
    """One session's neonize callbacks -> EngineEvents on the engine's queue.

    The `on_*` handlers are what neonize calls, from Go's threads, with neonize's own event
    objects; they only translate and hand over to the loop. What needs the loop (the attempt
    timer, "the connection is up") happens there, in `_on_loop`."""

    def __init__(self, salon_id: int, generation: int, loop: asyncio.AbstractEventLoop,
                 deliver: Callable[[EngineEvent], None], attempt_seconds: float = ATTEMPT_SECONDS,
                 on_linked: Callable[[str], None] | None = None,
                 on_handover: Callable[[float], None] | None = None) -> None:
        self._on_handover = on_handover
        # Set on the loop once Go is done with its maps for this start-up (see `go_done`).
        self.settled = asyncio.Event()
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
            (DisconnectedEv, self.on_disconnected), (MessageEv, self.on_message), (ReceiptEv, self.on_receipt),
        ]
        for event_type, handler in handlers:
            client.event(event_type)(handler)
        # neonize's Go side calls Python first of all with event 0 ("me": no handler of ours):
        # by then that start-up has written its entries in Go's maps and read them back (see
        # `NeonizeEngine.start`). Watch for it on this client only.
        dispatch = client.event.execute

        def execute(uuid: int, binary: int, size: int, code: int) -> None:
            if code == 0:
                self.go_done()
            dispatch(uuid, binary, size, code)

        client.event.execute = execute

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

    def on_message(self, _client: NewClient, event: NeonizeMessage) -> None:
        """A chat message: whatsmeow has already acked it to WhatsApp. Mapped here, on Go's
        thread, and put on the runner's queue with one hop (see the module's loss window)."""
        called = time.monotonic()
        try:
            message = chat_message(event)
        except Exception:  # a shape we did not foresee must not kill Go's callback
            logger.exception("could not read a WhatsApp message", extra={"salon_id": self.salon_id})
            return
        if message is not None:
            self._hand_over_now(EngineEvent(EventKind.MESSAGE, self.salon_id, self.generation, message=message),
                                called)

    def on_receipt(self, _client: NewClient, event: NeonizeReceipt) -> None:
        called = time.monotonic()
        try:
            mapped = receipt(event)
        except Exception:
            logger.exception("could not read a WhatsApp receipt", extra={"salon_id": self.salon_id})
            return
        if mapped is not None:
            self._hand_over_now(EngineEvent(EventKind.RECEIPT, self.salon_id, self.generation, receipt=mapped),
                                called)

    def go_done(self) -> None:
        """Go is done with its maps for this start-up (from any thread): the lock may go."""
        self.alive.set()
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.settled.set)

    def connection_ended(self, error: str) -> None:
        """The session's `connect()` returned (from its thread): the session is gone."""
        with contextlib.suppress(RuntimeError):
            self._loop.call_soon_threadsafe(self.settled.set)
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
        self.go_done()
        self._hand_over(EngineEvent(kind, self.salon_id, self.generation, **fields))

    def _hand_over_now(self, event: EngineEvent, called: float) -> None:
        """A message or receipt straight onto the runner's queue: WhatsApp has forgotten it, so it
        is delivered even after `close` (the runner decides what an old generation's message is
        worth), and timed from the callback."""
        def deliver() -> None:
            self._deliver(event)
            if self._on_handover is not None:
                self._on_handover(time.monotonic() - called)
        try:
            self._loop.call_soon_threadsafe(deliver)
        except RuntimeError:  # the loop is closed: the runner is gone, and the message with it
            logger.error("a WhatsApp message arrived after the runner stopped: lost",
                         extra={"salon_id": self.salon_id, "kind": event.kind})

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
        self._go_calls = GoCalls()
        self._handovers = _Figures()
        # Numbers WhatsApp said have an account, with the JID to send to and until when to trust it.
        self._on_whatsapp: dict[str, tuple[JID, float]] = {}
        self.events: asyncio.Queue[EngineEvent] = asyncio.Queue()

    def lock_stats(self) -> dict[str, dict[str, float]]:
        """How long each kind of Go call (`start`, `send`, `stop`, `pair_phone`) held the Go-call lock
        and waited for it, seconds (count, p50, p95, max; `all` over every kind)."""
        return self._go_calls.stats()

    def handover_stats(self) -> dict[str, float]:
        """Seconds from neonize's callback with a message or receipt to the event being on
        `events` (the engine's share of the inbound loss window): count, p50, p95, max."""
        return self._handovers.summary()

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
                               on_linked=lambda jid: self._keys.remember(salon_id, jid),
                               on_handover=self._handovers.add)
        client = await asyncio.to_thread(self.new_client, salon_id)
        events.register(client)
        thread = threading.Thread(target=self._connect, args=(client, events), name=f"neonize-{salon_id}",
                                  daemon=True)
        self._sessions[salon_id] = _Session(client, events, thread)
        async with self._go_calls.hold("start", GoCalls.START):
            thread.start()
            # How long a start-up holds the lock, and why not less. neonize's `Neonize()` writes
            # the client into three global maps (clients, StopSignal, eventChannel) right after
            # opening its store, then connects (dial + noise handshake: the slow, network part),
            # and then `CallbackFunction` reads two of those maps again (eventChannel[id],
            # clients[id] in FetchMe) before its first call into Python: event 0, "me". Only
            # after that does this start-up leave the maps alone (until `Stop`). The registration
            # itself is not visible from Python (no callback between the map writes and the
            # dial), and releasing right after it would let another start-up's map writes race
            # with those two reads. So the lock is held until event 0 (a resume) or the first QR
            # code (a new device: Go calls the QR callback before CallbackFunction), or until the
            # thread gave up: no longer until ConnectedEv, one more round trip later, and the
            # wait is woken by the callback itself instead of a 50 ms poll. Sends and stops jump
            # the queue of start-ups (GoCalls), so they wait for at most this one hold.
            # A new device's CallbackFunction starts when its pairing ends and reads the maps
            # then, outside the lock: a small window we cannot see from Python.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(events.settled.wait(), self._startup_wait)

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
        async with self._go_calls.hold("pair_phone"):
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
            async with self._go_calls.hold("stop"):
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

    async def send_text(self, salon_id: int, to_phone: str, text: str) -> Sent:
        """Ask WhatsApp whether `to_phone` has an account (answer kept for a day), then send to the
        JID it gave; both calls under the Go-call lock, ahead of queued start-ups."""
        session = self._sessions.get(salon_id)
        if session is None or not session.thread.is_alive():
            raise SendFailed("salon_not_linked", "the salon's session is not running")
        async with self._go_calls.hold("send"):
            if self._sessions.get(salon_id) is not session or not session.registered():
                raise SendFailed("salon_not_linked", "the salon's session is not connected")
            return await asyncio.to_thread(self._send, session.client, to_phone, text)

    def _send(self, client: NewClient, phone: str, text: str) -> Sent:
        """On a worker thread, holding the Go-call lock."""
        now = time.time()
        known = self._on_whatsapp.get(phone)
        if known is None or known[1] < now:
            try:
                answers = client.is_on_whatsapp(f"+{phone}")
            except IsOnWhatsAppError as exc:
                raise send_failure(str(exc)) or SendFailed("send_error", str(exc)[:200]) from exc
            answer = next((a for a in answers if a.IsIn), None)
            if answer is None:
                self._on_whatsapp.pop(phone, None)
                raise SendFailed("not_on_whatsapp", phone[:3] + "…")
            jid = answer.JID if answer.JID.User else jid_from_text(f"{phone}@{USER_SERVER}")
            known = (jid, now + ON_WHATSAPP_TTL_SECONDS)
            self._on_whatsapp[phone] = known
        try:
            # A plain `conversation` message: no mention parsing, no link preview fetched under the lock.
            response = client.send_message(known[0], WaMessage(conversation=text))
        except SendMessageError as exc:
            failure = send_failure(str(exc))
            if failure is None:
                raise  # WhatsApp may have it: unknown, never resent
            raise failure from exc
        return Sent(wa_id=response.ID, at=float(response.Timestamp or now))

    async def close(self) -> None:
        # All at once: the Go calls queue on their lock, the waits for the threads overlap.
        await asyncio.gather(*(self.stop(salon_id) for salon_id in list(self._sessions)))
