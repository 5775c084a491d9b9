"""Chats through the simulated WhatsApp: the real server (aiohttp, in process, on a loopback
port) and the SimulatedEngine over a real WebSocket. A client's phone writes, the salon's own
phone writes, the engine sends; receipts come back; a device or a phone that is offline gets
everything later, in order. No sleeps: every wait is for an event."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from local.fake_whatsapp import FakeWhatsApp
from local.seed import next_event, simulated_whatsapp
from wa_runner.engine import EngineEvent, EventKind, SendFailed, Sent
from wa_runner.simulated import SimulatedEngine

SALON = 4101
CLIENT = "79001112233"
pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Setup:
    def __init__(self, whatsapp: FakeWhatsApp, url: str, engine: SimulatedEngine, http: aiohttp.ClientSession) -> None:
        self.whatsapp, self.url, self.engine, self.http = whatsapp, url, engine, http

    async def post(self, path: str, body: dict[str, Any], status: int = 200) -> dict[str, Any]:
        async with self.http.post(f"{self.url}/_local/whatsapp/{path}", json=body) as answer:
            data: dict[str, Any] = await answer.json()
            assert answer.status == status, data
            return data

    async def inbox(self, phone: str = CLIENT) -> dict[str, Any]:
        async with self.http.get(f"{self.url}/_local/whatsapp/client-inbox", params={"phone": phone}) as answer:
            assert answer.status == 200
            data: dict[str, Any] = await answer.json()
            return data

    async def event(self, *kinds: EventKind) -> EngineEvent:
        return await next_event(self.engine, SALON, set(kinds), timeout=5)

    async def connect(self) -> None:
        await self.engine.start(SALON, 2)
        await self.event(EventKind.CONNECTED)


@pytest.fixture
async def linked(tmp_path: Path) -> AsyncIterator[Setup]:
    """A salon whose device is linked and connected (paired through the real flow)."""
    async with simulated_whatsapp() as (whatsapp, url), aiohttp.ClientSession() as http:
        engine = SimulatedEngine(url, tmp_path)
        setup = Setup(whatsapp, url, engine, http)
        await engine.start(SALON, 1)
        qr = await setup.event(EventKind.QR)
        await setup.post("scan", {"qr": qr.code, "phone": "79990001122"})
        await setup.event(EventKind.CONNECTED)
        try:
            yield setup
        finally:
            await engine.close()


async def test_a_clients_message_arrives_as_a_message_event(linked: Setup) -> None:
    answer = await linked.post("client-message", {"salon_id": SALON, "from": CLIENT, "text": "Здравствуйте!",
                                                  "push_name": "Анна", "quoted_id": "3EB0QUOTED"})
    event = await linked.event(EventKind.MESSAGE)
    message = event.message
    assert message is not None and event.generation == 1
    assert (message.wa_id, message.chat_phone, message.chat_jid, message.at) == (
        answer["id"], CLIENT, f"{CLIENT}@s.whatsapp.net", answer["at"])
    assert (message.kind, message.text, message.push_name, message.quoted_id, message.from_me) == (
        "text", "Здравствуйте!", "Анна", "3EB0QUOTED", False)
    assert answer["status"] == "delivered" and answer["id"].startswith("3EB0")


async def test_media_kind_carries_its_caption(linked: Setup) -> None:
    await linked.post("client-message", {"salon_id": SALON, "from": CLIENT, "text": "моё фото", "kind": "image"})
    message = (await linked.event(EventKind.MESSAGE)).message
    assert message is not None and (message.kind, message.text, message.quoted_id) == ("image", "моё фото", None)


async def test_messages_for_an_offline_device_arrive_in_order_on_reconnect(linked: Setup) -> None:
    await linked.engine.stop(SALON)
    ids = [(await linked.post("client-message", {"salon_id": SALON, "from": CLIENT, "text": f"#{n}"}))
           for n in range(5)]
    assert {a["status"] for a in ids} == {"queued"}
    await linked.connect()
    received = [(await linked.event(EventKind.MESSAGE)).message for _ in ids]
    assert [m.text for m in received if m] == [f"#{n}" for n in range(5)]
    assert [m.wa_id for m in received if m] == [a["id"] for a in ids]


async def test_acked_messages_are_not_delivered_twice(linked: Setup) -> None:
    await linked.post("client-message", {"salon_id": SALON, "from": CLIENT, "text": "one"})
    assert (await linked.event(EventKind.MESSAGE)).message is not None
    await linked.engine.stop(SALON)
    await linked.post("client-message", {"salon_id": SALON, "from": CLIENT, "text": "two"})
    await linked.connect()
    message = (await linked.event(EventKind.MESSAGE)).message
    assert message is not None and message.text == "two"  # "one" was acked: not sent again


async def test_send_text_gives_whatsapps_id_and_the_client_receives_in_order(linked: Setup) -> None:
    sent = [await linked.engine.send_text(SALON, CLIENT, f"Напоминание {n}") for n in range(3)]
    assert all(isinstance(s, Sent) and s.wa_id.startswith("3EB0") for s in sent)
    assert sent[0].at <= sent[1].at <= sent[2].at
    inbox = await linked.inbox()
    assert [(m["id"], m["text"], m["salon_id"], m["from"]) for m in inbox["messages"]] == [
        (s.wa_id, f"Напоминание {n}", SALON, "79990001122") for n, s in enumerate(sent)]
    assert [m["at"] for m in inbox["messages"]] == [s.at for s in sent]


async def test_concurrent_sends_keep_their_order(linked: Setup) -> None:
    sent = await asyncio.gather(*(linked.engine.send_text(SALON, CLIENT, str(n)) for n in range(20)))
    inbox = await linked.inbox()
    assert [m["text"] for m in inbox["messages"]] == [str(n) for n in range(20)]
    assert [m["id"] for m in inbox["messages"]] == [s.wa_id for s in sent]


async def test_a_number_not_on_whatsapp_fails_the_send(linked: Setup) -> None:
    with pytest.raises(SendFailed) as failed:
        await linked.engine.send_text(SALON, "79001110000", "hello")
    assert failed.value.reason == "not_on_whatsapp"
    await linked.post("client-register", {"phone": "79005556677", "on_whatsapp": False})
    with pytest.raises(SendFailed) as failed:
        await linked.engine.send_text(SALON, "79005556677", "hello")
    assert failed.value.reason == "not_on_whatsapp"
    # Registered explicitly, a 0000 number has WhatsApp after all.
    await linked.post("client-register", {"phone": "79001110000", "on_whatsapp": True})
    assert isinstance(await linked.engine.send_text(SALON, "79001110000", "hello"), Sent)
    assert (await linked.inbox("79005556677"))["messages"] == []


async def test_sending_without_a_connected_session_fails(linked: Setup) -> None:
    await linked.engine.stop(SALON)
    with pytest.raises(SendFailed) as failed:
        await linked.engine.send_text(SALON, CLIENT, "hello")
    assert failed.value.reason == "salon_not_linked"
    with pytest.raises(SendFailed):
        await linked.engine.send_text(999, CLIENT, "hello")


async def test_delivered_then_read_receipts_reach_the_engine(linked: Setup) -> None:
    first = await linked.engine.send_text(SALON, CLIENT, "a")
    delivered = (await linked.event(EventKind.RECEIPT)).receipt
    assert delivered is not None and (delivered.wa_ids, delivered.status, delivered.chat_phone) == (
        (first.wa_id,), "delivered", CLIENT)
    second = await linked.engine.send_text(SALON, CLIENT, "b")
    assert (await linked.event(EventKind.RECEIPT)).receipt.wa_ids == (second.wa_id,)  # type: ignore[union-attr]
    await linked.post("client-read", {"phone": CLIENT})
    read = (await linked.event(EventKind.RECEIPT)).receipt
    assert read is not None and (read.wa_ids, read.status) == ((first.wa_id, second.wa_id), "read")
    assert [m["status"] for m in (await linked.inbox())["messages"]] == ["read", "read"]


async def test_an_offline_phone_delivers_when_it_comes_back(linked: Setup) -> None:
    await linked.post("client-offline", {"phone": CLIENT, "offline": True})
    sent = [await linked.engine.send_text(SALON, CLIENT, f"m{n}") for n in range(3)]
    inbox = await linked.inbox()
    assert [m["status"] for m in inbox["messages"]] == ["sent"] * 3 and inbox["online"] is False
    await linked.post("client-read", {"phone": CLIENT}, status=409)
    assert (await linked.post("client-offline", {"phone": CLIENT, "offline": False}))["delivered"] == 3
    receipt = (await linked.event(EventKind.RECEIPT)).receipt
    assert receipt is not None and (receipt.status, receipt.wa_ids) == ("delivered", tuple(s.wa_id for s in sent))


async def test_receipts_for_an_offline_device_wait_for_it(linked: Setup) -> None:
    sent = await linked.engine.send_text(SALON, CLIENT, "a")
    await linked.event(EventKind.RECEIPT)
    await linked.engine.stop(SALON)
    await linked.post("client-read", {"phone": CLIENT})
    await linked.post("client-message", {"salon_id": SALON, "from": CLIENT, "text": "thanks"})
    await linked.connect()
    read = await linked.event(EventKind.RECEIPT, EventKind.MESSAGE)
    reply = await linked.event(EventKind.RECEIPT, EventKind.MESSAGE)
    assert read.receipt is not None and (read.receipt.status, read.receipt.wa_ids) == ("read", (sent.wa_id,))
    assert reply.message is not None and reply.message.text == "thanks"


async def test_the_salons_own_phone_writing_is_from_me(linked: Setup) -> None:
    answer = await linked.post("salon-phone-message", {"salon_id": SALON, "to": CLIENT, "text": "Ждём вас!"})
    message = (await linked.event(EventKind.MESSAGE)).message
    assert message is not None and (message.wa_id, message.from_me, message.chat_phone, message.text) == (
        answer["id"], True, CLIENT, "Ждём вас!")
    [entry] = (await linked.inbox())["messages"]
    assert (entry["id"], entry["sent_by"]) == (answer["id"], "phone")


async def test_bad_requests_and_unknown_salons_are_refused(linked: Setup) -> None:
    await linked.post("client-message", {"salon_id": 999, "from": CLIENT, "text": "hi"}, status=404)
    for body in ({}, {"salon_id": SALON, "text": "hi"}, {"salon_id": SALON, "from": "12ab", "text": "hi"},
                 {"salon_id": SALON, "from": CLIENT, "text": ""}, {"salon_id": SALON, "from": CLIENT, "text": 5},
                 {"salon_id": SALON, "from": CLIENT, "text": "hi", "kind": "poll"},
                 {"salon_id": True, "from": CLIENT, "text": "hi"}):
        error = await linked.post("client-message", body, status=400)
        assert error["error"]
    await linked.post("salon-phone-message", {"salon_id": SALON, "to": "79001110000", "text": "x"}, status=422)
    await linked.post("client-offline", {"phone": CLIENT, "offline": "yes"}, status=400)
    await linked.post("client-read", {}, status=400)
    async with linked.http.get(f"{linked.url}/_local/whatsapp/client-inbox") as answer:
        assert answer.status == 400
