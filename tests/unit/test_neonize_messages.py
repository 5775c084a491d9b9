"""neonize's message and receipt events, built from neonize's own protobuf classes, through the
engine's pure mapping functions and through neonize's own dispatcher (`Event.execute`, as Go
calls it); the Go-call lock (never two calls at once, sends ahead of queued start-ups); sends
with a stand-in client. Nothing here connects to WhatsApp."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest
from neonize.client import NewClient
from neonize.events import ConnectedEv
from neonize.exc import SendMessageError
from neonize.proto.Neonize_pb2 import JID, IsOnWhatsAppResponse, MessageInfo, MessageSource, SendResponse
from neonize.proto.Neonize_pb2 import Message as NeonizeMessage
from neonize.proto.Neonize_pb2 import Receipt as NeonizeReceipt
from neonize.proto.waCommon.WACommon_pb2 import MessageKey
from neonize.proto.waE2E.WAWebProtobufsE2E_pb2 import (
    ContextInfo,
    DocumentMessage,
    ExtendedTextMessage,
    FutureProofMessage,
    ImageMessage,
    LocationMessage,
    Message,
    ProtocolMessage,
    ReactionMessage,
    VideoMessage,
)

from tests.unit.test_neonize_engine import Harness, loop  # noqa: F401  (fixture)
from wa_runner.engine import ChatMessage, EventKind, Receipt, SendFailed, Sent
from wa_runner.keys import SqliteKeyFiles
from wa_runner.neonize_engine import (
    GoCalls,
    NeonizeEngine,
    SessionEvents,
    chat_message,
    message_content,
    receipt,
    send_failure,
)

CLIENT = "79001112233"
AT_MS = 1_760_000_000_123


def jid(user: str, server: str = "s.whatsapp.net") -> JID:
    return JID(User=user, Server=server, RawAgent=0, Device=0, Integrator=0, IsEmpty=not user)


def source(chat: JID, from_me: bool = False, group: bool = False, **more: Any) -> MessageSource:
    empty = jid("")
    fields: dict[str, Any] = {"Sender": chat, "SenderAlt": empty, "RecipientAlt": empty, "BroadcastListOwner": empty,
                              **more}
    return MessageSource(Chat=chat, IsFromMe=from_me, IsGroup=group, **fields)


def message_event(content: Message, chat: JID | None = None, from_me: bool = False, group: bool = False,
                  wa_id: str = "3EB0AAA", push_name: str = "Анна", **more: Any) -> NeonizeMessage:
    """As neonize's Go side fills it (EncodeEventTypesMessage): Timestamp in milliseconds."""
    info = MessageInfo(MessageSource=source(chat or jid(CLIENT), from_me, group, **more.pop("source", {})),
                       ID=wa_id, ServerID=0, Type="text", Pushname=push_name, Timestamp=AT_MS, Category="",
                       Multicast=False, MediaType="", Edit="")
    flags = {"IsEphemeral": False, "IsViewOnce": False, "IsViewOnceV2": False, "IsEdit": False,
             "IsViewOnceV2Extension": False, "IsDocumentWithCaption": False, "IsLottieSticker": False,
             "UnavailableRequestID": "", "RetryCount": 0, **more}
    return NeonizeMessage(Info=info, Message=content, **flags)


def quoting(stanza: str) -> ContextInfo:
    return ContextInfo(stanzaID=stanza, participant=f"{CLIENT}@s.whatsapp.net")


@pytest.mark.parametrize(("content", "expected"), [
    (Message(conversation="Здравствуйте"), ("text", "Здравствуйте", None)),
    (Message(extendedTextMessage=ExtendedTextMessage(text="да, в 15:00", contextInfo=quoting("3EB0Q"))),
     ("text", "да, в 15:00", "3EB0Q")),
    (Message(imageMessage=ImageMessage(caption="вот такой маникюр")), ("image", "вот такой маникюр", None)),
    (Message(videoMessage=VideoMessage(caption="видео", contextInfo=quoting("3EB0V"))), ("video", "видео", "3EB0V")),
    (Message(documentMessage=DocumentMessage(caption="прайс.pdf")), ("document", "прайс.pdf", None)),
    (Message(documentWithCaptionMessage=FutureProofMessage(
        message=Message(documentMessage=DocumentMessage(caption="в обёртке")))), ("document", "в обёртке", None)),
    (Message(ephemeralMessage=FutureProofMessage(message=Message(conversation="исчезающее"))),
     ("text", "исчезающее", None)),
    (Message(locationMessage=LocationMessage(degreesLatitude=55.75, degreesLongitude=37.62)), ("location", "", None)),
    (Message(reactionMessage=ReactionMessage(key=MessageKey(ID="3EB0R"), text="👍")), ("reaction", "👍", "3EB0R")),
])
def test_message_content_kind_text_and_quote(content: Message, expected: tuple[str, str, str | None]) -> None:
    assert message_content(content) == expected


def test_a_clients_text_becomes_a_chat_message() -> None:
    content = Message(extendedTextMessage=ExtendedTextMessage(text="Можно на завтра?", contextInfo=quoting("3EB0Q")))
    assert chat_message(message_event(content)) == ChatMessage(
        wa_id="3EB0AAA", chat_phone=CLIENT, chat_jid=f"{CLIENT}@s.whatsapp.net", at=AT_MS / 1000, kind="text",
        text="Можно на завтра?", push_name="Анна", quoted_id="3EB0Q", from_me=False)


def test_the_salons_own_phone_writing_is_from_me() -> None:
    message = chat_message(message_event(Message(conversation="Ждём вас"), from_me=True,
                                         source={"Sender": jid("79990001122")}))
    assert message is not None and (message.from_me, message.chat_phone, message.push_name) == (True, CLIENT, "")


def test_a_lid_chat_takes_the_number_from_the_alternate_jid() -> None:
    lid = jid("123456789012345", "lid")
    incoming = chat_message(message_event(Message(conversation="hi"), chat=lid, source={"SenderAlt": jid(CLIENT)}))
    ours = chat_message(message_event(Message(conversation="hi"), chat=lid, from_me=True,
                                      source={"RecipientAlt": jid(CLIENT)}))
    hidden = chat_message(message_event(Message(conversation="hi"), chat=lid))
    assert incoming is not None and (incoming.chat_phone, incoming.chat_jid) == (CLIENT, "123456789012345@lid")
    assert ours is not None and ours.chat_phone == CLIENT
    assert hidden is not None and hidden.chat_phone == ""


@pytest.mark.parametrize("event", [
    message_event(Message(conversation="group"), chat=jid("120363000000000000", "g.us"), group=True),
    message_event(Message(conversation="status"), chat=jid("status", "broadcast")),
    message_event(Message(conversation="list"), chat=jid("1700000000", "broadcast")),
    message_event(Message(conversation="news"), chat=jid("120363000000000001", "newsletter")),
    message_event(Message(conversation="list copy"), source={"BroadcastListOwner": jid("79990001122")}),
    message_event(Message(protocolMessage=ProtocolMessage(type=ProtocolMessage.HISTORY_SYNC_NOTIFICATION)),
                  from_me=True),
    message_event(Message(protocolMessage=ProtocolMessage(type=ProtocolMessage.REVOKE))),
    message_event(Message(conversation="edited"), IsEdit=True),
    message_event(Message()),
], ids=["group", "status", "broadcast-list", "newsletter", "list-owner", "history-sync", "revoke", "edit", "empty"])
def test_what_is_not_a_clients_chat_is_ignored(event: NeonizeMessage) -> None:
    assert chat_message(event) is None


def receipt_event(kind: int, ids: list[str], chat: JID | None = None, from_me: bool = False) -> NeonizeReceipt:
    return NeonizeReceipt(MessageSource=source(chat or jid(CLIENT), from_me), MessageIDs=ids,
                          Timestamp=1_760_000_100, Type=kind)


def test_delivered_and_read_receipts() -> None:
    assert receipt(receipt_event(NeonizeReceipt.DELIVERED, ["3EB01", "3EB02"])) == Receipt(
        wa_ids=("3EB01", "3EB02"), chat_phone=CLIENT, status="delivered", at=1_760_000_100.0)
    read = receipt(receipt_event(NeonizeReceipt.READ, ["3EB01"]))
    assert read is not None and read.status == "read"


@pytest.mark.parametrize("event", [
    receipt_event(NeonizeReceipt.READ_SELF, ["3EB01"], from_me=True),
    receipt_event(NeonizeReceipt.SENDER, ["3EB01"], from_me=True),
    receipt_event(NeonizeReceipt.RETRY, ["3EB01"]),
    receipt_event(NeonizeReceipt.PLAYED, ["3EB01"]),
    receipt_event(NeonizeReceipt.HISTORY_SYNC, ["3EB01"]),
    receipt_event(NeonizeReceipt.READ, ["3EB01"], chat=jid("120363000000000000", "g.us")),
    receipt_event(NeonizeReceipt.DELIVERED, []),
    NeonizeReceipt(MessageSource=source(jid(CLIENT)), MessageIDs=["x"], Timestamp=1),  # type unset: not "delivered"
])
def test_other_receipts_are_ignored(event: NeonizeReceipt) -> None:
    assert receipt(event) is None


def test_messages_and_receipts_through_neonizes_dispatcher(loop: asyncio.AbstractEventLoop) -> None:  # noqa: F811
    harness = Harness(loop)
    harness.from_go_thread(
        lambda: harness.go_event(message_event(Message(conversation="first"), wa_id="3EB01")),
        lambda: harness.go_event(message_event(Message(conversation="g"), chat=jid("1203", "g.us"), group=True)),
        lambda: harness.go_event(receipt_event(NeonizeReceipt.DELIVERED, ["3EB0S"])),
        lambda: harness.go_event(message_event(Message(conversation="second"), wa_id="3EB02")),
    )
    events = loop.run_until_complete(harness.next_events(3))
    assert [e.kind for e in events] == [EventKind.MESSAGE, EventKind.RECEIPT, EventKind.MESSAGE]
    assert [e.message.text for e in events if e.message] == ["first", "second"]
    assert all((e.salon_id, e.generation) == (101, 7) for e in events)


def test_a_stopped_session_still_hands_over_messages(loop: asyncio.AbstractEventLoop) -> None:  # noqa: F811
    """WhatsApp has forgotten it by then: dropping it in the engine would lose it."""
    harness = Harness(loop)
    harness.events.close()
    harness.from_go_thread(lambda: harness.go_event(message_event(Message(conversation="late"))))
    [event] = loop.run_until_complete(harness.next_events(1))
    assert event.message is not None and event.message.text == "late"


def test_handover_is_timed(loop: asyncio.AbstractEventLoop) -> None:  # noqa: F811
    samples: list[float] = []
    queue: asyncio.Queue[Any] = asyncio.Queue()
    events = SessionEvents(5, 1, loop, queue.put_nowait, on_handover=samples.append)
    threading.Thread(target=events.on_message, args=(None, message_event(Message(conversation="x")))).start()
    loop.run_until_complete(asyncio.wait_for(queue.get(), 2))
    assert len(samples) == 1 and 0 <= samples[0] < 1


@pytest.mark.parametrize(("error", "reason"), [
    ("websocket not connected", "salon_not_linked"),
    ("server returned error 479", "send_error"),
    ("failed to get device list: info query returned status 404", "send_error"),
    ("timed out waiting for message send response", None),
    ("failed to send message node: write: broken pipe", None),
])
def test_send_errors_say_whether_anything_reached_whatsapp(error: str, reason: str | None) -> None:
    failure = send_failure(error)
    assert (failure.reason if failure else None) == reason


# ---- the Go-call lock --------------------------------------------------------------------------------

def test_go_calls_never_overlap_and_urgent_calls_jump_queued_start_ups() -> None:
    async def scenario() -> tuple[list[str], int]:
        calls = GoCalls()
        order: list[str] = []
        inside = 0
        most = 0
        release_first = asyncio.Event()

        async def call(kind: str, priority: int, gate: asyncio.Event | None = None) -> None:
            nonlocal inside, most
            async with calls.hold(kind, priority):
                inside += 1
                most = max(most, inside)
                order.append(kind)
                if gate is not None:
                    await gate.wait()
                await asyncio.sleep(0)
                inside -= 1

        first = asyncio.create_task(call("start-0", GoCalls.START, release_first))
        await asyncio.sleep(0)
        assert calls.locked() and calls.holder == "start-0"
        waiting = [asyncio.create_task(call(f"start-{n}", GoCalls.START)) for n in range(1, 4)]
        await asyncio.sleep(0)
        send = asyncio.create_task(call("send", GoCalls.URGENT))
        cancelled = asyncio.create_task(call("cancelled", GoCalls.URGENT))
        await asyncio.sleep(0)
        cancelled.cancel()
        release_first.set()
        await asyncio.gather(first, send, *waiting)
        assert calls.stats()["send"]["hold_count"] == 1 and "cancelled" not in calls.stats()
        return order, most

    order, most = asyncio.run(scenario())
    assert most == 1
    assert order == ["start-0", "send", "start-1", "start-2", "start-3"]


def test_lock_stats_measure_hold_and_wait() -> None:
    now = [0.0]

    async def scenario() -> dict[str, dict[str, float]]:
        calls = GoCalls(clock=lambda: now[0])
        gate = asyncio.Event()

        async def start() -> None:
            async with calls.hold("start", GoCalls.START):
                await gate.wait()
                now[0] += 2.0

        async def send() -> None:
            async with calls.hold("send"):
                now[0] += 0.5

        first = asyncio.create_task(start())
        await asyncio.sleep(0)
        second = asyncio.create_task(send())
        await asyncio.sleep(0)
        gate.set()
        await asyncio.gather(first, second)
        return calls.stats()

    stats = asyncio.run(scenario())
    assert (stats["start"]["hold_max"], stats["start"]["wait_max"]) == (2.0, 0.0)
    assert (stats["send"]["hold_max"], stats["send"]["wait_max"]) == (0.5, 2.0)
    assert stats["all"]["hold_count"] == 2 and stats["all"]["wait_max"] == 2.0


class FakeGoClient:
    """Stands in for a neonize client's Go calls; records whether two ever ran at once."""

    def __init__(self, on_whatsapp: bool = True, error: str | None = None) -> None:
        self.on = on_whatsapp
        self.error = error
        self.inside = 0
        self.overlaps = 0
        self.sent: list[tuple[str, str]] = []
        self.lookups = 0

    def _enter(self) -> None:
        self.inside += 1
        self.overlaps += self.inside > 1
        self.inside -= 1

    def is_on_whatsapp(self, *numbers: str) -> list[IsOnWhatsAppResponse]:
        self._enter()
        self.lookups += 1
        return [IsOnWhatsAppResponse(Query=n, JID=jid(n.lstrip("+")), IsIn=self.on) for n in numbers]

    def send_message(self, to: JID, message: Message) -> SendResponse:
        self._enter()
        if self.error:
            raise SendMessageError(self.error)
        self.sent.append((to.User, message.conversation))
        return SendResponse(ID=f"3EB0{len(self.sent):04d}", Timestamp=1_760_000_200)


def _engine_with_session(tmp_path: Path, client: FakeGoClient, salon_id: int = 7) -> NeonizeEngine:
    """An engine whose salon has a registered, running session with a stand-in client."""
    from wa_runner.neonize_engine import _Session

    engine = NeonizeEngine(SqliteKeyFiles(tmp_path))
    stop = threading.Event()
    thread = threading.Thread(target=stop.wait, daemon=True)
    thread.start()
    events = SessionEvents(salon_id, 1, asyncio.get_running_loop(), engine.events.put_nowait)
    events.alive.set()
    engine._sessions[salon_id] = _Session(client, events, thread)
    engine._stop_thread = stop  # type: ignore[attr-defined]
    return engine


def test_send_text_asks_whatsapp_once_then_sends(tmp_path: Path) -> None:
    async def scenario() -> tuple[list[Sent], FakeGoClient, NeonizeEngine]:
        client = FakeGoClient()
        engine = _engine_with_session(tmp_path, client)
        sent = await asyncio.gather(*(engine.send_text(7, CLIENT, f"n{n}") for n in range(5)))
        engine._stop_thread.set()  # type: ignore[attr-defined]
        return list(sent), client, engine

    sent, client, engine = asyncio.run(scenario())
    assert [s.wa_id for s in sent] == [f"3EB0{n:04d}" for n in range(1, 6)] and sent[0].at == 1_760_000_200.0
    assert client.sent == [(CLIENT, f"n{n}") for n in range(5)]  # in order, the JID WhatsApp gave
    assert client.lookups == 1 and client.overlaps == 0
    assert engine.lock_stats()["send"]["hold_count"] == 5


@pytest.mark.parametrize(("client", "reason"), [
    (FakeGoClient(on_whatsapp=False), "not_on_whatsapp"),
    (FakeGoClient(error="server returned error 463"), "send_error"),
])
def test_send_text_failures(tmp_path: Path, client: FakeGoClient, reason: str) -> None:
    async def scenario() -> None:
        engine = _engine_with_session(tmp_path, client)
        try:
            await engine.send_text(7, CLIENT, "hello")
        finally:
            engine._stop_thread.set()  # type: ignore[attr-defined]

    with pytest.raises(SendFailed) as failed:
        asyncio.run(scenario())
    assert failed.value.reason == reason


def test_a_send_without_a_session_or_timed_out_is_not_failed(tmp_path: Path) -> None:
    async def scenario() -> None:
        engine = _engine_with_session(tmp_path, FakeGoClient(error="timed out waiting for message send response"))
        with pytest.raises(SendFailed) as failed:
            await engine.send_text(8, CLIENT, "hello")
        assert failed.value.reason == "salon_not_linked"
        try:
            with pytest.raises(SendMessageError):  # unknown: WhatsApp may have it
                await engine.send_text(7, CLIENT, "hello")
        finally:
            engine._stop_thread.set()  # type: ignore[attr-defined]

    asyncio.run(scenario())


def test_a_send_waits_for_a_start_up_to_release_the_lock_and_never_overlaps_it(tmp_path: Path) -> None:
    """A start-up holds the lock until Go's first callback; a send asked meanwhile waits, runs
    right after it, before the start-ups queued behind, and is never inside Go with another call."""
    timeline: list[str] = []
    inside = threading.Lock()
    handshake = {salon_id: threading.Event() for salon_id in (1, 2, 3)}
    finish = threading.Event()

    class StartingEngine(NeonizeEngine):
        @staticmethod
        def _connect(client: NewClient, events: SessionEvents) -> None:
            assert inside.acquire(blocking=False), "two Go calls at once"
            timeline.append(f"start {events.salon_id}")
            handshake[events.salon_id].wait(5)  # the dial and handshake
            inside.release()
            events.on_connected(client, ConnectedEv(status=True))
            finish.wait(5)
            events.connection_ended("")

    async def scenario() -> tuple[NeonizeEngine, bool]:
        engine = StartingEngine(SqliteKeyFiles(tmp_path))
        client = FakeGoClient()
        real_enter = client._enter

        def enter() -> None:
            assert inside.acquire(blocking=False), "two Go calls at once"
            timeline.append("send")
            real_enter()
            inside.release()
        client._enter = enter  # type: ignore[method-assign]
        linked = _engine_with_session(tmp_path, client, salon_id=99)
        engine._sessions[99] = linked._sessions[99]
        starts = [asyncio.create_task(engine.start(salon_id, 1)) for salon_id in (1, 2, 3)]
        while engine._go_calls.holder != "start":
            await asyncio.sleep(0)
        send = asyncio.create_task(engine.send_text(99, CLIENT, "during a mass resume"))
        for _ in range(20):
            await asyncio.sleep(0)
        waited = not send.done()
        for event in handshake.values():
            event.set()
        assert (await send).wa_id
        await asyncio.gather(*starts)
        finish.set()
        linked._stop_thread.set()  # type: ignore[attr-defined]
        engine._sessions.pop(99)
        await engine.close()
        return engine, waited

    engine, waited = asyncio.run(scenario())
    assert waited
    assert timeline[1:3] == ["send", "send"]  # is_on_whatsapp, send_message: before the queued start-ups
    assert sorted(timeline[:1] + timeline[3:]) == ["start 1", "start 2", "start 3"]
    stats = engine.lock_stats()
    assert stats["start"]["hold_count"] == 3 and stats["send"]["hold_count"] == 1
    assert stats["send"]["wait_max"] <= stats["start"]["hold_max"] + 0.5
