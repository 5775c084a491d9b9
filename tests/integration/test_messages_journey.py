"""A linked salon's WhatsApp carries clients' chats both ways, over the local stack (real HTTP,
WebSockets, SQS and DynamoDB in moto, the simulated WhatsApp): a client's message reaches the
inbound queue and the stand-in for AI Admin answers it through the API; messages sent through
the API arrive in order and their statuses follow the receipts.

Salons of this module: 1731, 1732."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest
import requests

from aiadmin.config import LOCAL_MESSAGES_API_KEY
from local.owner import link_whatsapp
from local.process import RunningStack

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {LOCAL_MESSAGES_API_KEY}"}
CLIENT = "79001117731"


def _until(check: Any, timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.2)


def _inbox(stack: RunningStack, phone: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{stack.base_url}/_local/whatsapp/client-inbox", params={"phone": phone}, timeout=10)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["messages"])


def _status(stack: RunningStack, salon: int, caller_id: str) -> dict[str, Any]:
    answer = requests.get(f"{stack.base_url}/salons/{salon}/messages/{caller_id}", headers=AUTH, timeout=10)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def test_a_clients_message_is_answered_through_the_salons_whatsapp(stack: RunningStack) -> None:
    asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 1731, {"active"}))
    wrote = requests.post(f"{stack.base_url}/_local/whatsapp/client-message", timeout=10,
                          json={"salon_id": 1731, "from": CLIENT, "text": "Можно записаться на стрижку?"})
    assert wrote.status_code == 200, wrote.text
    replies = _until(lambda: [m for m in _inbox(stack, CLIENT) if m["salon_id"] == 1731])
    assert replies, "the stand-in for AI Admin never answered"
    assert "Можно записаться на стрижку?" in replies[0]["text"]  # it quotes the client's text
    assert _until(lambda: replies[0]["status"] in ("delivered", "read") or
                  _inbox(stack, CLIENT)[0]["status"] in ("delivered", "read"))


def test_messages_sent_through_the_api_arrive_in_order_and_follow_their_receipts(stack: RunningStack) -> None:
    asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 1732, {"active"}))
    client = "79001117732"
    texts = [f"Напоминание {n}" for n in range(5)]
    for n, text in enumerate(texts):
        posted = requests.post(f"{stack.base_url}/salons/1732/messages", headers=AUTH, timeout=10,
                               json={"id": f"journey-{n}", "to": "+" + client, "text": text})
        assert posted.status_code == 202, posted.text
    arrived = _until(lambda: len(_inbox(stack, client)) >= len(texts) and _inbox(stack, client))
    assert [m["text"] for m in arrived] == texts
    assert _until(lambda: all(_status(stack, 1732, f"journey-{n}")["status"] == "delivered" for n in range(5)))
    assert _status(stack, 1732, "journey-0")["wa_message_id"] == arrived[0]["id"]
    assert requests.post(f"{stack.base_url}/_local/whatsapp/client-read", json={"phone": client},
                         timeout=10).status_code == 200
    assert _until(lambda: all(_status(stack, 1732, f"journey-{n}")["status"] == "read" for n in range(5)))
    nobody = requests.post(f"{stack.base_url}/salons/1732/messages", headers=AUTH, timeout=10,
                           json={"id": "journey-nobody", "to": "+79001230000", "text": "Кто здесь?"})
    assert nobody.status_code == 202
    failed = _until(lambda: _status(stack, 1732, "journey-nobody")["status"] == "failed"
                    and _status(stack, 1732, "journey-nobody"))
    assert failed and failed["reason"] == "not_on_whatsapp"


def test_a_chat_that_never_wrote_is_paced_and_a_conversation_is_not_held_up(stack: RunningStack) -> None:
    """The default pace protects the number: at most 3 messages at once (then 6 a minute) to a
    chat whose client never wrote; a client who wrote first gets replies at once meanwhile."""
    asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, 1733, {"active"}))
    stranger, talking = "79001117733", "79001117734"
    assert requests.post(f"{stack.base_url}/_local/whatsapp/client-message", timeout=10,
                         json={"salon_id": 1733, "from": talking, "text": "Здравствуйте"}).status_code == 200
    for n in range(5):
        assert requests.post(f"{stack.base_url}/salons/1733/messages", headers=AUTH, timeout=10,
                             json={"id": f"cold-{n}", "to": "+" + stranger, "text": f"Акция {n}"}).status_code == 202
    assert requests.post(f"{stack.base_url}/salons/1733/messages", headers=AUTH, timeout=10,
                         json={"id": "warm-0", "to": "+" + talking, "text": "Ответ"}).status_code == 202
    assert _until(lambda: _status(stack, 1733, "warm-0")["status"] in ("sent", "delivered", "read"))
    assert _until(lambda: len(_inbox(stack, stranger)) >= 3)
    statuses = [_status(stack, 1733, f"cold-{n}")["status"] for n in range(5)]
    assert statuses[3:] == ["queued", "queued"], statuses  # the next one goes some 10 s later
    assert [m["text"] for m in _inbox(stack, stranger)] == [f"Акция {n}" for n in range(3)]
