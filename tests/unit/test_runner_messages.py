"""Messages through the salon's session, the runner's half (in-memory engine, fake clock, moto
table and SQS): the outbox sent in order per chat at the salon's pace, statuses recorded around
each send, `unknown` after a crash and never resent, receipts, and clients' messages published
to the inbound FIFO queue."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from aiadmin.db import Store
from aiadmin.db.dynamo import salon_pk
from aiadmin.db.message_keys import message_sk
from aiadmin.db.sessions import session_key
from aiadmin.messages import OutboundRequest
from tests.unit.runner_fakes import FakeClock, claim_all, engine_of, handle, linked_sessions, make_runner
from wa_runner.engine import ChatMessage, EventKind, Receipt
from wa_runner.inbound import SqsQueue
from wa_runner.pace import Audience, PacePolicy, SalonPace
from wa_runner.runner import Runner

SALON = 4101
CLIENT = "79001112233"


def _enqueue(store: Store, caller_id: str, to: str, text: str, at: float) -> None:
    """What the messages API does for one message (the message, its outbox entry, the nudge)."""
    store.messages.enqueue(SALON, OutboundRequest(id=caller_id, to="+" + to, text=text), now=at)


def _status(store: Store, caller_id: str) -> dict[str, Any]:
    item = store.table.get_item(Key={"pk": salon_pk(SALON), "sk": message_sk(caller_id)})["Item"]
    return dict(item)


def _queue(aws: None) -> tuple[Any, str]:
    sqs = boto3.client("sqs")
    url = sqs.create_queue(QueueName="InboundQueue.fifo", Attributes={"FifoQueue": "true"})["QueueUrl"]
    return sqs, url


def _received(sqs: Any, url: str) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []
    while True:
        batch = sqs.receive_message(QueueUrl=url, MaxNumberOfMessages=10,
                                    AttributeNames=["MessageGroupId", "MessageDeduplicationId"]).get("Messages", [])
        if not batch:
            return found
        for message in batch:
            found.append({**json.loads(message["Body"]), "_group": message["Attributes"]["MessageGroupId"],
                          "_dedup": message["Attributes"]["MessageDeduplicationId"]})
            sqs.delete_message(QueueUrl=url, ReceiptHandle=message["ReceiptHandle"])


async def _connected(store: Store, clock: FakeClock, **runner_args: Any) -> Runner:
    runner = make_runner(store, clock, **runner_args)
    runner.membership.join(clock.now)
    linked_sessions(store, [SALON])
    await claim_all(runner, clock)
    while runner.resumes.waiting():
        await runner.resumes.step(clock.now)
    await handle(runner, EventKind.CONNECTED, SALON)
    await _drained(runner)  # the connect's look at the (empty) outbox
    return runner


async def _drained(runner: Runner) -> None:
    while runner.outbox.drains:
        await asyncio.gather(*runner.outbox.drains.values())


def test_the_pace_lets_a_conversation_go_fast_and_first_contacts_slowly() -> None:
    pace = SalonPace(PacePolicy())
    now = 1000.0
    assert all(pace.take(Audience.CONVERSATION, now) == 0 for _ in range(100))  # a burst of 100
    assert pace.take(Audience.CONVERSATION, now) == pytest.approx(1.0)           # then one a second
    assert pace.take(Audience.CONVERSATION, now + 1) == 0
    first = SalonPace(PacePolicy())
    assert [first.take(Audience.FIRST_CONTACT, now) for _ in range(3)] == [0, 0, 0]
    assert first.take(Audience.FIRST_CONTACT, now) == pytest.approx(10.0)        # 6 a minute
    assert first.take(Audience.CONVERSATION, now) == 0                           # a reply is not held up
    capped = SalonPace(PacePolicy(per_minute=60, burst=2))
    assert [capped.take(Audience.CONVERSATION, now) for _ in range(3)] == [0, 0, pytest.approx(1.0)]


def test_the_outbox_is_sent_in_order_and_each_message_recorded_sent(store: Store) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        runner = await _connected(store, clock)
        for n in range(3):
            _enqueue(store, f"m{n}", CLIENT, f"text {n}", time.time() + n / 1000)
        store.table.put_item(Item={"pk": salon_pk(SALON), "sk": f"CHAT#{CLIENT}", "last_in": int(time.time())})
        runner.outbox.wake(SALON)
        await _drained(runner)
        assert [(to, text) for _s, to, text, _id in engine_of(runner).sent] == [(CLIENT, f"text {n}") for n in range(3)]
        for n in range(3):
            record = _status(store, f"m{n}")
            assert record["status"] == "sent" and record["wa_message_id"] == engine_of(runner).sent[n][3]
        assert store.table.get_item(Key=session_key(SALON))["Item"]["queued"] == 0
        assert not store.table.query(KeyConditionExpression="pk = :p AND begins_with(sk, :q)",
                                     ExpressionAttributeValues={":p": salon_pk(SALON), ":q": "Q#"})["Items"]

    asyncio.run(scenario())


def test_a_message_left_sending_by_a_dead_runner_becomes_unknown_and_is_never_sent(store: Store) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        runner = await _connected(store, clock)
        _enqueue(store, "m0", CLIENT, "hello", time.time())
        store.table.update_item(Key={"pk": salon_pk(SALON), "sk": message_sk("m0")},
                                UpdateExpression="SET #s = :s", ExpressionAttributeNames={"#s": "status"},
                                ExpressionAttributeValues={":s": "sending"})
        _enqueue(store, "m1", CLIENT, "after it", time.time() + 0.001)
        runner.outbox.wake(SALON)
        await _drained(runner)
        assert _status(store, "m0")["status"] == "unknown"
        assert [text for *_x, text, _id in engine_of(runner).sent] == ["after it"]

    asyncio.run(scenario())


def test_a_number_without_whatsapp_fails_and_the_chats_order_goes_on(store: Store) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        runner = await _connected(store, clock)
        engine_of(runner).not_on_whatsapp.add("79990000000")
        _enqueue(store, "m0", "79990000000", "nobody", time.time())
        _enqueue(store, "m1", CLIENT, "somebody", time.time() + 0.001)
        runner.outbox.wake(SALON)
        await _drained(runner)
        assert _status(store, "m0")["status"] == "failed" and _status(store, "m0")["reason"] == "not_on_whatsapp"
        assert _status(store, "m1")["status"] == "sent"

    asyncio.run(scenario())


def test_messages_wait_for_the_session_and_go_when_it_connects(store: Store) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        runner = await _connected(store, clock)
        await handle(runner, EventKind.DISCONNECTED, SALON)
        _enqueue(store, "m0", CLIENT, "while away", time.time())
        runner.outbox.wake(SALON)
        await _drained(runner)
        assert _status(store, "m0")["status"] == "queued" and not engine_of(runner).sent
        await handle(runner, EventKind.CONNECTED, SALON)
        await _drained(runner)
        assert _status(store, "m0")["status"] == "sent"

    asyncio.run(scenario())


def test_an_unlinked_salons_outbox_fails_as_not_linked(store: Store) -> None:
    clock = FakeClock()

    async def scenario() -> None:
        runner = await _connected(store, clock)
        _enqueue(store, "m0", CLIENT, "too late", time.time())
        store.sessions.request(SALON, "stop")  # uninstalled meanwhile
        await runner.intake.poll(clock.now)
        await _drained(runner)
        assert _status(store, "m0")["status"] == "failed" and _status(store, "m0")["reason"] == "salon_not_linked"
        assert not engine_of(runner).sent

    asyncio.run(scenario())


def test_receipts_move_a_message_forward_only_and_reach_the_queue(store: Store, aws: None) -> None:
    clock = FakeClock()
    sqs, url = _queue(aws)

    async def scenario() -> None:
        runner = await _connected(store, clock, inbound_queue=SqsQueue(sqs, url))
        _enqueue(store, "m0", CLIENT, "hello", time.time())
        runner.outbox.wake(SALON)
        await _drained(runner)
        wa_id = engine_of(runner).sent[0][3]
        await handle(runner, EventKind.RECEIPT, SALON, receipt=Receipt((wa_id,), CLIENT, "read", time.time()))
        await handle(runner, EventKind.RECEIPT, SALON, receipt=Receipt((wa_id,), CLIENT, "delivered", time.time()))
        await handle(runner, EventKind.RECEIPT, SALON, receipt=Receipt(("not-ours",), CLIENT, "read", time.time()))
        assert _status(store, "m0")["status"] == "read"
        events = _received(sqs, url)
        assert [(e["type"], e["id"], e["status"]) for e in events] == [("receipt", "m0", "read"),
                                                                        ("receipt", "m0", "delivered")]
        assert {e["_group"] for e in events} == {f"{SALON}-{CLIENT}"}

    asyncio.run(scenario())


def test_a_clients_message_is_published_with_its_chat_and_the_chat_counts_as_a_conversation(
        store: Store, aws: None) -> None:
    clock = FakeClock()
    sqs, url = _queue(aws)

    async def scenario() -> None:
        runner = await _connected(store, clock, inbound_queue=SqsQueue(sqs, url))
        for n, from_me in enumerate((False, True, False)):
            message = ChatMessage(wa_id=f"3EB0{n}", chat_phone=CLIENT, chat_jid=f"{CLIENT}@s.whatsapp.net",
                                  at=1_700_000_000.0 + n, kind="text", text=f"hi {n}", push_name="Анна",
                                  quoted_id="3EB00" if n == 2 else None, from_me=from_me)
            await handle(runner, EventKind.MESSAGE, SALON, message=message)
        events = _received(sqs, url)
        assert [(e["type"], e["wa_message_id"], e["text"], e["from_me"]) for e in events] == [
            ("message", "3EB00", "hi 0", False), ("message", "3EB01", "hi 1", True),
            ("message", "3EB02", "hi 2", False)]
        assert events[0]["chat"] == {"phone": "+" + CLIENT, "jid": f"{CLIENT}@s.whatsapp.net"}
        assert events[0]["salon_id"] == SALON and events[0]["schema_version"] == 1 and events[2]["quoted_id"] == "3EB00"
        assert {e["_group"] for e in events} == {f"{SALON}-{CLIENT}"} and events[0]["_dedup"] == "3EB00"
        assert runner.outbox._outbox.client_wrote_since(SALON, CLIENT, 1_700_000_000.0)

    asyncio.run(scenario())


def _throttled(operation: str) -> ClientError:
    return ClientError({"Error": {"Code": "ProvisionedThroughputExceededException", "Message": "slow down"}},
                       operation)


def test_a_throttled_dynamodb_neither_stalls_the_outbox_nor_turns_a_sent_message_unknown(
        store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    """DynamoDB throttling for longer than botocore's retries (about 25 s): a failed read ended
    the drain for good, and a failed `sent` after WhatsApp took the message left it `sending` (the
    next look makes it `unknown`). The drain looks again by itself (nothing else may wake it:
    every message is in), and the `sent` is written again until it lands."""
    monkeypatch.setattr("wa_runner.outbox.RETRY_SECONDS", (0.01,))
    clock = FakeClock()

    async def scenario() -> None:
        runner = await _connected(store, clock)
        outbox = runner.outbox._outbox
        failures = {"pending": 2, "finish": 2}

        def flaky(name: str) -> Any:
            real = getattr(outbox, name)

            def call(*args: Any, **kwargs: Any) -> Any:
                if failures[name]:
                    failures[name] -= 1
                    raise _throttled(name)
                return real(*args, **kwargs)
            return call

        monkeypatch.setattr(outbox, "pending", flaky("pending"))
        monkeypatch.setattr(outbox, "finish", flaky("finish"))
        for n in range(2):
            _enqueue(store, f"m{n}", CLIENT, f"text {n}", time.time() + n / 1000)
        runner.outbox.wake(SALON)
        await asyncio.wait_for(_drained(runner), 5)
        assert failures == {"pending": 0, "finish": 0}
        assert [text for *_x, text, _id in engine_of(runner).sent] == ["text 0", "text 1"]  # once each, in order
        for n in range(2):
            record = _status(store, f"m{n}")
            assert record["status"] == "sent" and record["wa_message_id"] == engine_of(runner).sent[n][3]
        assert store.table.get_item(Key=session_key(SALON))["Item"]["queued"] == 0

    asyncio.run(scenario())


def test_a_clients_message_waits_for_an_unavailable_queue_and_is_published_once_it_is_back(
        store: Store, aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """SQS away for a while: the message (WhatsApp already has it acknowledged) is kept and sent
    again until the queue takes it; nothing behind it in the salon's events overtakes it."""
    monkeypatch.setattr("wa_runner.inbound.RETRY_SECONDS", (0.01,))
    clock = FakeClock()
    sqs, url = _queue(aws)

    class Unavailable(SqsQueue):
        failures = 3

        def send(self, group: str, dedup: str, body: str) -> None:
            if self.failures:
                self.failures -= 1
                raise ConnectionError("the queue is away")
            super().send(group, dedup, body)

    queue = Unavailable(sqs, url)

    async def scenario() -> None:
        runner = await _connected(store, clock, inbound_queue=queue)
        for n in range(2):
            message = ChatMessage(wa_id=f"3EB0{n}", chat_phone=CLIENT, chat_jid=f"{CLIENT}@s.whatsapp.net",
                                  at=1_700_000_000.0 + n, kind="text", text=f"hi {n}", push_name="Анна")
            await handle(runner, EventKind.MESSAGE, SALON, message=message)
        assert queue.failures == 0
        assert [e["wa_message_id"] for e in _received(sqs, url)] == ["3EB00", "3EB01"]

    asyncio.run(scenario())


def test_a_clients_message_that_arrives_as_the_session_is_dropped_still_reaches_the_queue(
        store: Store, aws: None) -> None:
    """The engine hands a message over (and WhatsApp forgets it) just as the runner drops the
    session (its lease lost, or its membership lapsed): the message is still published (the
    queue deduplicates on WhatsApp's id, so publishing from a runner that no longer owns the
    session is harmless)."""
    clock = FakeClock()
    sqs, url = _queue(aws)

    async def scenario() -> None:
        runner = await _connected(store, clock, inbound_queue=SqsQueue(sqs, url))
        await runner.book.drop(SALON, "the session is no longer ours")
        message = ChatMessage(wa_id="3EB0LATE", chat_phone=CLIENT, chat_jid=f"{CLIENT}@s.whatsapp.net",
                              at=1_700_000_000.0, kind="text", text="ещё тут?", push_name="Анна")
        await handle(runner, EventKind.MESSAGE, SALON, message=message)
        assert [e["wa_message_id"] for e in _received(sqs, url)] == ["3EB0LATE"]

    asyncio.run(scenario())
