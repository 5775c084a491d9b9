"""Messages through faults, over the local stack (real processes: moto, the gateway, simulated
WhatsApp, runner processes):

- the client's phone offline for a while: messages are `sent`, not delivered, then delivered in
  order when it comes back; the salon's device disconnected: messages wait queued and go out in
  order once it is connected again;
- the runner that owns the salon SIGKILLed during a burst of 100 messages: after the takeover
  each ends sent or `unknown` (at most the one it was handing over), none lost, none twice, in
  the caller's order;
- DynamoDB slow, then throttling, while messages are sent and clients write: nothing lost, the
  backlog drains in order, every client message reaches the inbound queue; and throttling longer
  than botocore's retries that begins while a backlog that is all in is being sent: it drains by
  itself afterwards, in order, each message sent once. SQS faults are not played: the stack
  has no SQS fault proxy (the runner's publishing retries until the queue takes a record,
  `wa_runner.inbound`: tests/unit/test_runner_messages.py plays the queue away).

The paces are raised (first contacts 10 a second): the faults, not ban protection, are tested.
Salons of this module: 1741 to 1749."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from aiadmin.config import LOCAL_MESSAGES_API_KEY
from local.observe import owners, wait_until, whatsapp
from local.owner import link_whatsapp
from local.process import RunningStack, local_stack
from tests.helpers import report_stack_output_on_failure

pytestmark = pytest.mark.integration

AUTH = {"Authorization": f"Bearer {LOCAL_MESSAGES_API_KEY}"}
LEASE_SECONDS = 6
ENV = {
    "LOG_LEVEL": "INFO",
    "RUNNER_LEASE_SECONDS": str(LEASE_SECONDS),
    # First contacts at 10 a second (burst 3), every message of a salon at 100 a second.
    "MESSAGES_FIRST_CONTACT_PER_MINUTE": "600",
    "MESSAGES_PER_MINUTE": "6000",
    "MESSAGES_REPLY_PER_SECOND": "100",
}
SENT = {"sent", "delivered", "read"}
LONG_THROTTLE_SECONDS = 30  # longer than botocore's retries of one DynamoDB call (about 25 s)
FINAL = SENT | {"failed", "unknown"}


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningStack]:
    """Two runners with a short lease (a takeover within seconds)."""
    with local_stack(time_scale=0.1, runners=2, extra_env=ENV,
                     data_dir=tmp_path_factory.mktemp("messages-faults")) as running:
        yield running
        report_stack_output_on_failure(request, running)


# ---- helpers -----------------------------------------------------------------------------------

def _link(stack: RunningStack, salon_id: int) -> None:
    asyncio.run(link_whatsapp(stack.base_url, stack.marketplace, salon_id, {"active"}))


def _post(stack: RunningStack, salon_id: int, caller_id: str, to: str, text: str, patience: float = 120) -> None:
    """POST a message as a careful caller does: a 5xx or no answer is tried again with the same id
    (idempotent), until it is accepted."""
    deadline = time.monotonic() + patience
    while True:
        try:
            answer = requests.post(f"{stack.base_url}/salons/{salon_id}/messages", headers=AUTH, timeout=60,
                                   json={"id": caller_id, "to": "+" + to, "text": text})
            if answer.status_code == 202:
                return
            assert answer.status_code >= 500, answer.text  # a refusal is a bug here
        except requests.RequestException:
            pass
        assert time.monotonic() < deadline, f"{caller_id} was never accepted"
        time.sleep(0.5)


def _inbox(stack: RunningStack, phone: str) -> list[dict[str, Any]]:
    answer = requests.get(f"{stack.base_url}/_local/whatsapp/client-inbox", params={"phone": phone}, timeout=10)
    assert answer.status_code == 200, answer.text
    return list(answer.json()["messages"])


def _statuses(stack: RunningStack, salon_id: int, caller_ids: list[str]) -> dict[str, dict[str, Any]]:
    """The messages' records, read from DynamoDB directly (moto: the truth, even during a fault)."""
    table = stack.table()
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(caller_ids), 100):
        keys = [{"pk": f"SALON#{salon_id}", "sk": f"MSG#{c}"} for c in caller_ids[start:start + 100]]
        response = table.meta.client.batch_get_item(RequestItems={table.name: {"Keys": keys, "ConsistentRead": True}})
        for item in response["Responses"][table.name]:
            found[str(item["id"])] = dict(item)  # (the resource's client gives plain values)
    return found


def _all_final(stack: RunningStack, salon_id: int, caller_ids: list[str],
               final: set[str] = FINAL) -> dict[str, dict[str, Any]] | None:
    records = _statuses(stack, salon_id, caller_ids)
    done = len(records) == len(caller_ids) and all(r["status"] in final for r in records.values())
    return records if done else None


def _wait_final(stack: RunningStack, salon_id: int, caller_ids: list[str], timeout: float, what: str,
                final: set[str] = FINAL) -> dict[str, dict[str, Any]]:
    """Wait until every message's status is one of `final`; their records."""
    records = wait_until(lambda: _all_final(stack, salon_id, caller_ids, final), timeout, interval=0.2, what=what)
    assert records is not None
    return records


def _client_writes(stack: RunningStack, salon_id: int, phone: str, text: str) -> str:
    answer = requests.post(f"{stack.base_url}/_local/whatsapp/client-message", timeout=10,
                           json={"salon_id": salon_id, "from": phone, "text": text})
    assert answer.status_code == 200, answer.text
    return str(answer.json()["id"])


def _offline(stack: RunningStack, phone: str, offline: bool) -> None:
    answer = requests.post(f"{stack.base_url}/_local/whatsapp/client-offline", timeout=10,
                           json={"phone": phone, "offline": offline})
    assert answer.status_code == 200, answer.text


# ---- the client's phone and the salon's device away ----------------------------------------------

def test_messages_to_an_offline_phone_are_sent_then_delivered_in_order_when_it_is_back(stack: RunningStack) -> None:
    salon, client = 1743, "79001117743"
    _link(stack, salon)
    _offline(stack, client, True)
    ids = [f"offline-{n}" for n in range(6)]
    texts = [f"Пока вы не в сети {n}" for n in range(6)]
    for caller_id, text in zip(ids, texts, strict=True):
        _post(stack, salon, caller_id, client, text)
    records = _wait_final(stack, salon, ids, 30, "every message sent")
    assert {r["status"] for r in records.values()} == {"sent"}  # on WhatsApp's server, not on the phone
    time.sleep(1)
    assert {r["status"] for r in _statuses(stack, salon, ids).values()} == {"sent"}
    inbox = _inbox(stack, client)
    assert [m["text"] for m in inbox] == texts and {m["status"] for m in inbox} == {"sent"}

    _offline(stack, client, False)
    _wait_final(stack, salon, ids, 20, "every message delivered", {"delivered"})
    inbox = _inbox(stack, client)
    assert [m["text"] for m in inbox] == texts and {m["status"] for m in inbox} == {"delivered"}
    records = _statuses(stack, salon, ids)
    assert [records[c]["wa_message_id"] for c in ids] == [m["id"] for m in inbox]


def test_messages_wait_while_the_salons_device_is_disconnected_and_go_in_order_after(stack: RunningStack) -> None:
    salon, client = 1744, "79001117744"
    _link(stack, salon)
    before = whatsapp(stack)
    assert before.connected(salon)
    # WhatsApp drops the device's stream (another client took it): the owner waits out its
    # membership margin before it connects again (wa_runner.events, `_stream_replaced`).
    dropped = requests.post(f"{stack.base_url}/_local/whatsapp/session-event", timeout=10,
                            json={"session": str(salon), "event": "stream_replaced"})
    assert dropped.status_code == 200 and dropped.json()["status"] == "sent", dropped.text
    ids = [f"away-{n}" for n in range(6)]
    texts = [f"Пока салон не в сети {n}" for n in range(6)]
    for caller_id, text in zip(ids, texts, strict=True):
        _post(stack, salon, caller_id, client, text)
    if not whatsapp(stack).connected(salon):  # still away: nothing went out meanwhile
        assert {r["status"] for r in _statuses(stack, salon, ids).values()} == {"queued"}
        assert _inbox(stack, client) == []
    wait_until(lambda: whatsapp(stack).resumes(salon) > before.resumes(salon) and whatsapp(stack).connected(salon),
               40, what="the device connected again")
    records = _wait_final(stack, salon, ids, 30, "every message sent after", SENT)
    inbox = _inbox(stack, client)
    assert [m["text"] for m in inbox] == texts
    assert [records[c]["wa_message_id"] for c in ids] == [m["id"] for m in inbox]
    _wait_final(stack, salon, ids, 20, "every message delivered", {"delivered"})


# ---- the owning runner killed during a burst -----------------------------------------------------

def test_a_runner_killed_during_a_burst_loses_nothing_and_sends_nothing_twice(stack: RunningStack) -> None:
    salon, client = 1741, "79001117741"
    _link(stack, salon)
    owner = str(wait_until(lambda: owners(stack, [salon])[salon], 10, what="the salon has an owner"))
    survivors = [r for r in stack.runners if r != owner]
    assert survivors, "the other runner is gone"
    ids = [f"burst-{n:03d}" for n in range(100)]
    texts = [f"Рассылка {n:03d}" for n in range(100)]
    killed: list[int] = []

    def kill_mid_burst() -> None:
        # Once a part of the burst is on the phone: the owner is sending.
        wait_until(lambda: len(_inbox(stack, client)) >= 15, 60, interval=0.05, what="the burst is under way")
        os.kill(stack.runners[owner], signal.SIGKILL)
        killed.append(len(_inbox(stack, client)))

    killer = threading.Thread(target=kill_mid_burst, daemon=True)
    killer.start()
    for caller_id, text in zip(ids, texts, strict=True):  # one caller, in order
        _post(stack, salon, caller_id, client, text)
    killer.join(60)
    assert killed and killed[0] < 100, "the runner was not killed in the middle of the burst"

    records = _wait_final(stack, salon, ids, 60, "every message has a final status")
    assert owners(stack, [salon])[salon] in survivors
    statuses = {c: records[c]["status"] for c in ids}
    unknown = [c for c in ids if statuses[c] == "unknown"]
    assert set(statuses.values()) <= SENT | {"unknown"}, statuses
    # One message at a time is handed to WhatsApp: at most that one is in doubt.
    assert len(unknown) <= 1, unknown

    inbox = [m for m in _inbox(stack, client) if m["salon_id"] == salon]
    arrived = [m["text"] for m in inbox]
    assert len(arrived) == len(set(arrived)), "a message reached the client twice"
    assert arrived == [t for t in texts if t in arrived], "the chat's order broke"
    by_wa_id = {m["id"]: m["text"] for m in inbox}
    for caller_id, text in zip(ids, texts, strict=True):
        if statuses[caller_id] in SENT:  # recorded sent: it is on the phone, under that WhatsApp id
            assert by_wa_id.get(records[caller_id]["wa_message_id"]) == text, caller_id
    # Everything but the one in doubt arrived (the one in doubt: at most once, already checked).
    assert len(arrived) >= 100 - len(unknown)


# ---- DynamoDB slow, then throttling --------------------------------------------------------------

@pytest.fixture
def faulty_stack(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningStack]:
    """One runner; it and the handlers reach DynamoDB through the fault proxy. No stand-in: the
    test reads the inbound queue itself."""
    # The runners' default lease (20 s): longer than the throttling, as in AWS (a fault longer
    # than the lease stops every session, which test_dynamo_faults is about).
    env = {key: value for key, value in ENV.items() if key != "RUNNER_LEASE_SECONDS"}
    with local_stack(time_scale=0.1, runners=1, extra_env=env, data_dir=tmp_path, dynamodb_faults=True,
                     auto_reply=False) as running:
        yield running
        report_stack_output_on_failure(request, running)


def _drain_queue(stack: RunningStack, into: list[dict[str, Any]], stop: threading.Event) -> None:
    """Read the inbound queue as AI Admin would (each record deleted once read)."""
    sqs = stack.sqs()
    while not stop.is_set():
        try:
            batch = sqs.receive_message(QueueUrl=stack.inbound_queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=1)
        except Exception:  # moto busy, or the stack stopping: the test's checks decide
            time.sleep(0.2)
            continue
        for message in batch.get("Messages", []):
            into.append(json.loads(message["Body"]))
            sqs.delete_message(QueueUrl=stack.inbound_queue_url, ReceiptHandle=message["ReceiptHandle"])


def test_slow_then_throttled_dynamodb_loses_no_message_and_the_backlog_drains(faulty_stack: RunningStack) -> None:
    stack = faulty_stack
    salon = 1742
    chats = ["79001117742", "79001117752", "79001117762"]
    _link(stack, salon)
    records: list[dict[str, Any]] = []
    stop = threading.Event()
    reader = threading.Thread(target=_drain_queue, args=(stack, records, stop), daemon=True)
    reader.start()
    per_chat = 5
    ids = {chat: [f"fault-{chat[-4:]}-{n}" for n in range(per_chat)] for chat in chats}
    texts = {chat: [f"Ответ {chat[-4:]} {n}" for n in range(per_chat)] for chat in chats}
    written: dict[str, list[str]] = {chat: [] for chat in chats}

    def one_chat(chat: str) -> None:
        """The client writes and AI Admin sends, one after another in this chat, through the fault."""
        for n in range(per_chat):
            written[chat].append(_client_writes(stack, salon, chat, f"Вопрос {chat[-4:]} {n}"))
            _post(stack, salon, ids[chat][n], chat, texts[chat][n])
            time.sleep(0.3)

    try:
        stack.dynamodb_fault(delay_seconds=1.5, for_seconds=12)
        with ThreadPoolExecutor(len(chats)) as pool:
            first = [pool.submit(one_chat, chat) for chat in chats]
            time.sleep(12)
            stack.dynamodb_fault(throttle=True, for_seconds=8)
            for done in first:
                done.result(timeout=300)
        proxy = requests.get(stack.base_url + "/_local/dynamodb/faults", timeout=5).json()["counts"]
        assert proxy.get("delayed", 0) > 0 and proxy.get("throttled", 0) > 0, proxy  # the faults were real

        every_id = [c for chat in chats for c in ids[chat]]
        sent = _wait_final(stack, salon, every_id, 90, "the backlog drained: every message sent", SENT)
        for chat in chats:
            inbox = _inbox(stack, chat)
            assert [m["text"] for m in inbox] == texts[chat], chat  # once each, in order
            assert [sent[c]["wa_message_id"] for c in ids[chat]] == [m["id"] for m in inbox]
        wanted = {wa_id for chat in chats for wa_id in written[chat]}

        def arrived() -> bool:
            return wanted <= {r.get("wa_message_id") for r in records if r.get("type") == "message"}

        wait_until(arrived, 60, interval=0.5, what="every client message on the inbound queue")
    finally:
        stop.set()
        reader.join(10)
    messages = [r for r in records if r.get("type") == "message"]
    assert len(messages) == len({r["wa_message_id"] for r in messages}), "a client message came twice"
    for chat in chats:
        in_chat = [r["wa_message_id"] for r in messages if r["chat"]["phone"] == "+" + chat]
        assert in_chat == written[chat], chat  # in the chat's order

    # Throttling that starts while the runner drains a backlog that is all in (no new message
    # will nudge the session), and outlasts botocore's own retries of one call (about 25 s): the
    # drain's read of the outbox fails meanwhile; once it ends the backlog goes on, in order, each
    # message once. (Only queries: the runner keeps its membership. The outbox's own retries
    # after botocore's are unit-tested: tests/unit/test_runner_messages.py.)
    chat = "79001117772"
    backlog = [f"backlog-{n:03d}" for n in range(100)]  # 10 s at the first-contact pace
    for caller_id in backlog:
        _post(stack, salon, caller_id, chat, f"Хвост {caller_id}")
    wait_until(lambda: len(_inbox(stack, chat)) >= 3, 20, interval=0.05, what="the backlog is being sent")
    stack.dynamodb_fault(throttle=True, for_seconds=LONG_THROTTLE_SECONDS, operations=["Query"])
    assert len(_inbox(stack, chat)) < len(backlog), "the backlog was sent before the throttling"
    drained = _wait_final(stack, salon, backlog, LONG_THROTTLE_SECONDS + 40, "the backlog drained after the throttling",
                          SENT)
    inbox = _inbox(stack, chat)
    assert [m["text"] for m in inbox] == [f"Хвост {c}" for c in backlog]
    assert [drained[c]["wa_message_id"] for c in backlog] == [m["id"] for m in inbox]

