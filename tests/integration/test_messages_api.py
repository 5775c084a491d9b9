"""The messages API over the local stack (real HTTP through the gateway, which checks the local
bearer key where AWS checks IAM), and the stand-in for AI Admin that reads the inbound queue.

Salons of this module: 1721 (linked, active), 1722 (redirected, not linked), 1729 (unknown)."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from aiadmin.config import LOCAL_MESSAGES_API_KEY
from aiadmin.db import Store
from aiadmin.messages import InboundMessage, MessageStatus
from local.ai_admin import reply_id
from local.owner import follow_redirect, link_whatsapp, press_connect
from local.process import RunningStack

pytestmark = pytest.mark.integration

LINKED, NOT_LINKED, UNKNOWN = 1721, 1722, 1729
AUTH = {"Authorization": f"Bearer {LOCAL_MESSAGES_API_KEY}"}
BODY = {"id": "it-hello-1", "to": "+79001112233", "text": "Здравствуйте! Ждём вас завтра в 12:00."}


@pytest.fixture(scope="module")
def linked(stack: RunningStack) -> Iterator[RunningStack]:
    asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, LINKED, {"active"}))
    follow_redirect(press_connect(stack.marketplace, NOT_LINKED))
    yield stack


def _post(stack: RunningStack, salon: int | str, body: Any, headers: dict[str, str] | None = None,
          ) -> requests.Response:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    return requests.post(f"{stack.base_url}/salons/{salon}/messages", data=data, timeout=15,
                         headers={"Content-Type": "application/json", **(AUTH if headers is None else headers)})


def _messages(stack: RunningStack, salon: int) -> list[str]:
    items = stack.table().query(KeyConditionExpression="pk = :pk", ExpressionAttributeValues={":pk": f"SALON#{salon}"},
                                ConsistentRead=True)["Items"]
    return sorted(item["sk"] for item in items if item["sk"].startswith(("MSG#", "Q#")))


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong-key"},
                                     {"Authorization": f"Basic {LOCAL_MESSAGES_API_KEY}"},
                                     {"Authorization": LOCAL_MESSAGES_API_KEY},
                                     {"Authorization": f"Bearer {LOCAL_MESSAGES_API_KEY}x"}])
def test_without_the_key_the_api_answers_401_and_writes_nothing(linked: RunningStack, headers: dict[str, str]) -> None:
    before = _messages(linked, LINKED)
    response = _post(linked, LINKED, {**BODY, "id": "it-unauthorized"}, headers)
    assert response.status_code == 401 and response.json() == {"message": "Unauthorized"}
    assert _messages(linked, LINKED) == before
    status = requests.get(f"{linked.base_url}/salons/{LINKED}/messages/it-unauthorized", headers=headers, timeout=10)
    assert status.status_code == 401


def test_a_message_is_accepted_once_and_its_status_read(linked: RunningStack) -> None:
    first = _post(linked, LINKED, BODY)
    assert first.status_code == 202, first.text
    answer = first.json()
    assert answer["status"] == "queued" and answer["id"] == BODY["id"] and answer["salon_id"] == LINKED
    assert answer["status_url"] == f"/salons/{LINKED}/messages/{BODY['id']}"
    written = _messages(linked, LINKED)
    replay = _post(linked, LINKED, BODY)
    assert replay.status_code == 202
    assert replay.json()["created_at"] == answer["created_at"]
    assert _messages(linked, LINKED) == written  # the replay wrote nothing
    status = requests.get(linked.base_url + answer["status_url"], headers=AUTH, timeout=10)
    assert status.status_code == 200
    # `queued` until a runner sends it (then sent, delivered, ...: never back).
    assert status.json()["status"] in {s.value for s in MessageStatus}
    assert _post(linked, LINKED, {**BODY, "text": "другой текст"}).json() == {"error": "id_reused"}


def test_bad_requests_are_refused_with_a_clear_error(linked: RunningStack) -> None:
    bad_number = _post(linked, LINKED, {**BODY, "id": "it-bad", "to": "89001112233"})
    assert bad_number.status_code == 400 and bad_number.json()["fields"][0]["field"] == "to"
    assert _post(linked, LINKED, "{not json").status_code == 400
    assert _post(linked, LINKED, {**BODY, "id": "it-big", "text": "я" * 70_000}).status_code == 413
    assert _post(linked, UNKNOWN, BODY).json() == {"error": "salon_not_found"}
    assert _post(linked, "not-a-salon", BODY).status_code == 404
    assert _post(linked, NOT_LINKED, BODY).json()["error"] == "salon_not_active"
    missing = requests.get(f"{linked.base_url}/salons/{LINKED}/messages/it-never-sent", headers=AUTH, timeout=10)
    assert missing.status_code == 404 and missing.json() == {"error": "message_not_found"}
    assert _messages(linked, NOT_LINKED) == [] and _messages(linked, UNKNOWN) == []


def _inbound(wa_message_id: str, text: str, **fields: Any) -> str:
    record = InboundMessage(salon_id=LINKED, chat={"phone": "+79005554433", "jid": "79005554433@s.whatsapp.net"},
                            wa_message_id=wa_message_id, at=time.time(), kind="text", text=text, **fields)
    return record.model_dump_json()


def test_the_stand_in_answers_a_clients_message_through_the_api(linked: RunningStack) -> None:
    sqs = linked.sqs()
    url = linked.inbound_queue_url
    assert url.endswith(".fifo")

    def put(body: str, dedup: str) -> None:  # as the runner publishes: group per salon and chat
        sqs.send_message(QueueUrl=url, MessageBody=body, MessageGroupId=f"{LINKED}:79005554433",
                         MessageDeduplicationId=dedup)

    put("not an inbound record", "garbage-1")
    put(_inbound("3EB0OWN", "от салона", from_me=True), "3EB0OWN")
    put(_inbound("3EB0C1", "Можно перенести запись на пятницу?"), "3EB0C1")
    store = Store(linked.table())
    deadline = time.time() + 20
    while (reply := store.messages.get(LINKED, reply_id("3EB0C1"))) is None and time.time() < deadline:
        time.sleep(0.2)
    assert reply is not None, "the stand-in did not answer"
    assert reply.to == "+79005554433"
    [item] = [i for i in linked.table().query(
        KeyConditionExpression="pk = :pk AND sk = :sk",
        ExpressionAttributeValues={":pk": f"SALON#{LINKED}", ":sk": f"MSG#{reply.id}"})["Items"]]
    assert item["text"] == "Вы написали: «Можно перенести запись на пятницу?». Администратор скоро ответит."
    assert store.messages.get(LINKED, reply_id("3EB0OWN")) is None  # the salon's own message: no reply
    # Every record was dealt with: none is left in the queue.
    deadline = time.time() + 10
    while time.time() < deadline:
        attributes = sqs.get_queue_attributes(QueueUrl=url, AttributeNames=[
            "ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"])["Attributes"]
        if attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}:
            break
        time.sleep(0.2)
    assert attributes == {"ApproximateNumberOfMessages": "0", "ApproximateNumberOfMessagesNotVisible": "0"}
