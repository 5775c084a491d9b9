"""The messages repository, API half (`aiadmin.db.messages`), on a moto table built from
template.yaml: one transaction per accepted message, idempotent on the caller's id, bounded per
salon, refused for a salon with no linked session; the session is nudged into its owner's
command index."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest
from boto3.dynamodb.conditions import Key

from aiadmin.db import Store
from aiadmin.db.memberships import Fence
from aiadmin.db.message_keys import MESSAGE_TTL_SECONDS
from aiadmin.db.messages import BacklogFull, IdReused, SalonNotLinked
from aiadmin.db.sessions import INDEX, owner_partition
from aiadmin.messages import MessageStatus, OutboundRequest

SALON = 1701
NOW = 1_800_000_000.0


def _request(caller_id: str = "m-1", to: str = "+79001112233",
             text: str = "Запись на завтра в 12:00") -> OutboundRequest:
    return OutboundRequest(id=caller_id, to=to, text=text)


def _linked(store: Store, salon_id: int = SALON) -> None:
    store.sessions.request(salon_id, "run", now=NOW - 100)


def _items(table: Any, salon_id: int = SALON) -> list[dict[str, Any]]:
    return table.query(KeyConditionExpression=Key("pk").eq(f"SALON#{salon_id}"), ConsistentRead=True)["Items"]


def _outbox(table: Any, salon_id: int = SALON) -> list[dict[str, Any]]:
    return [item for item in _items(table, salon_id) if item["sk"].startswith("Q#")]


def test_enqueue_writes_the_message_its_outbox_entry_and_counts_it(store: Store, table: Any) -> None:
    _linked(store)
    status, created = store.messages.enqueue(SALON, _request(), NOW, max_backlog=10)
    assert created and status.status == MessageStatus.QUEUED and status.id == "m-1" and status.to == "+79001112233"
    message = table.get_item(Key={"pk": f"SALON#{SALON}", "sk": "MSG#m-1"})["Item"]
    [entry] = _outbox(table)
    assert message["status"] == "queued" and message["text"] == "Запись на завтра в 12:00"
    assert message["salon_id"] == SALON and message["queue_sk"] == entry["sk"]
    assert message["ttl"] == int(NOW) + MESSAGE_TTL_SECONDS
    assert entry["sk"] == f"Q#{int(NOW * 1000):013d}#m-1"
    assert {k: entry[k] for k in ("id", "to", "text")} == {"id": "m-1", "to": "79001112233",
                                                            "text": "Запись на завтра в 12:00"}
    lease = store.sessions.get(SALON)
    assert lease is not None and lease.queued == 1
    assert store.messages.get(SALON, "m-1") == status
    assert store.messages.get(SALON, "other") is None


def test_a_replay_changes_nothing_and_answers_the_existing_status(store: Store, table: Any) -> None:
    _linked(store)
    first, created = store.messages.enqueue(SALON, _request(), NOW, max_backlog=10)
    before = _items(table)
    again, created_again = store.messages.enqueue(SALON, _request(), NOW + 5, max_backlog=10)
    assert created and not created_again and again == first
    assert _items(table) == before  # nothing written: no second outbox entry, count and nudge unchanged
    assert store.sessions.get(SALON).queued == 1  # type: ignore[union-attr]


def test_the_same_id_with_another_text_or_number_is_refused(store: Store, table: Any) -> None:
    _linked(store)
    store.messages.enqueue(SALON, _request(), NOW, max_backlog=10)
    before = _items(table)
    with pytest.raises(IdReused):
        store.messages.enqueue(SALON, _request(text="другой текст"), NOW + 1, max_backlog=10)
    with pytest.raises(IdReused):
        store.messages.enqueue(SALON, _request(to="+79009998877"), NOW + 1, max_backlog=10)
    assert _items(table) == before


def _atomic_transactions(store: Store) -> None:
    """DynamoDB runs a transaction atomically; moto in-process does not: one at a time, as the
    local stack makes its moto server (local.stack.serialise_dynamodb)."""
    lock = threading.Lock()
    client: Any = store.table.meta.client
    original = client.transact_write_items

    def locked(*args: Any, **kwargs: Any) -> Any:
        with lock:
            return original(*args, **kwargs)

    client.transact_write_items = locked


def test_concurrent_replays_write_one_message(store: Store, table: Any) -> None:
    _linked(store)
    _atomic_transactions(store)
    results: list[tuple[Any, bool]] = []
    errors: list[BaseException] = []

    def send() -> None:
        try:
            results.append(store.messages.enqueue(SALON, _request(), time.time(), max_backlog=10))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=send) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(20)
    assert errors == [] and len(results) == 6
    assert [created for _, created in results].count(True) == 1
    assert len({status.created_at for status, _ in results}) == 1
    assert len(_outbox(table)) == 1 and store.sessions.get(SALON).queued == 1  # type: ignore[union-attr]


def test_a_transaction_conflict_is_tried_again(store: Store, table: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two transactions on the same items at once: DynamoDB cancels one with TransactionConflict."""
    from botocore.exceptions import ClientError

    _linked(store)
    client: Any = store.table.meta.client
    original = client.transact_write_items
    calls: list[int] = []

    def conflicting(**request: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise ClientError({"Error": {"Code": "TransactionCanceledException", "Message": "conflict"},
                               "CancellationReasons": [{"Code": "None"}, {"Code": "None"},
                                                       {"Code": "TransactionConflict"}]}, "TransactWriteItems")
        return original(**request)

    monkeypatch.setattr(client, "transact_write_items", conflicting)
    assert store.messages.enqueue(SALON, _request(), NOW, max_backlog=10)[1] is True
    assert len(calls) == 2 and len(_outbox(table)) == 1


def test_the_backlog_is_bounded_per_salon(store: Store, table: Any) -> None:
    _linked(store)
    _linked(store, SALON + 1)
    for index in range(3):
        store.messages.enqueue(SALON, _request(f"m-{index}"), NOW + index, max_backlog=3)
    before = _items(table)
    with pytest.raises(BacklogFull):
        store.messages.enqueue(SALON, _request("m-3"), NOW + 3, max_backlog=3)
    assert _items(table) == before and store.messages.get(SALON, "m-3") is None
    # A replay of an accepted one is still answered; another salon is not affected.
    assert store.messages.enqueue(SALON, _request("m-0"), NOW + 4, max_backlog=3)[1] is False
    assert store.messages.enqueue(SALON + 1, _request("m-3"), NOW + 4, max_backlog=3)[1] is True


@pytest.mark.parametrize("desired", [None, "link", "pause", "stop"])
def test_a_salon_without_a_linked_session_is_refused(store: Store, table: Any, desired: str | None) -> None:
    if desired:
        store.sessions.request(SALON, desired, now=NOW)  # type: ignore[arg-type]
    before = _items(table)
    with pytest.raises(SalonNotLinked):
        store.messages.enqueue(SALON, _request(), NOW, max_backlog=10)
    assert _items(table) == before


def test_a_new_message_puts_the_session_in_its_owners_command_index(store: Store, table: Any) -> None:
    _linked(store)
    fence = Fence("runner-a", store.members.join("runner-a", NOW, 3600, {}))
    assert store.sessions.claim(SALON, fence) is not None
    lease = store.sessions.get(SALON)
    assert lease is not None and not lease.command_waiting
    assert store.sessions.acknowledge(SALON, fence, lease.command_seq)
    assert store.sessions.pending_commands("runner-a") == []

    store.messages.enqueue(SALON, _request(), NOW, max_backlog=10)
    nudged = store.sessions.get(SALON)
    assert nudged is not None and nudged.command_waiting and nudged.command_seq == lease.command_seq + 1
    assert nudged.owner == "runner-a" and nudged.desired == "run" and nudged.generation == lease.generation
    assert store.sessions.pending_commands("runner-a") == [SALON]
    in_index = table.query(IndexName=INDEX, KeyConditionExpression=Key("session_pk").eq(owner_partition("runner-a")))
    assert [item["pk"] for item in in_index["Items"]] == [f"SALON#{SALON}"]
    # The owner acknowledges the nudge like a command.
    assert store.sessions.acknowledge(SALON, fence, nudged.command_seq)
    assert store.sessions.pending_commands("runner-a") == []


def test_a_session_without_an_owner_becomes_claimable_for_a_resume(store: Store) -> None:
    _linked(store)
    store.messages.enqueue(SALON, _request(), NOW, max_backlog=10)
    lease = store.sessions.get(SALON)
    assert lease is not None and lease.owner is None
    from aiadmin.db.sessions import RESUME, claim_partition

    assert [(c.salon_id, c.klass) for c in store.sessions.claimable(claim_partition("run", SALON), {RESUME})] == [
        (SALON, RESUME)]
