"""Lifecycle events on moto DynamoDB: the state change and the runner command in one
transaction, and what an uninstall forgets."""

from __future__ import annotations

import time
from typing import Any

import pytest

from aiadmin.db import Store
from aiadmin.db.sessions import UNINSTALLED_RETENTION_SECONDS
from aiadmin.db.transitions import Transition
from aiadmin.lifecycle import apply_lifecycle_event
from aiadmin.models import UserData
from aiadmin.onboarding import start_onboarding
from aiadmin.states import SalonState

S = SalonState
SALON = 31


def _active_salon(store: Store, table: Any) -> None:
    start_onboarding(store, SALON, UserData(id="5", name="Анна", phone="79001234567", salon_name="Салон"), time.time())
    store.sessions.request(SALON, "link", pair_phone="79001234567")
    for state in (S.QR_READY, S.PAIRING, S.WHATSAPP_CONNECTED):
        store.transitions.apply(Transition(SALON, state, actor="runner"))
    store.transitions.apply(Transition(
        SALON, S.ACTIVATING, actor="runner", secrets={"api_key": "k", "webhook_secret": "w"}))
    store.transitions.apply(Transition(SALON, S.ACTIVE, actor="runner"))
    # Whatever later versions of the salon item keep of the owner (issue 9 names them).
    table.update_item(Key={"pk": f"SALON#{SALON}", "sk": "STATE"},
                      UpdateExpression="SET owner_phone = :p, owner_email = :e",
                      ExpressionAttributeValues={":p": "79001234567", ":e": "a@example.ru"})
    store.pairing.admit(SALON, "79001234567", time.time(), 30, 3, 3600)


def _transactions(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[list[dict[str, Any]]]:
    calls: list[list[dict[str, Any]]] = []
    client: Any = store.table.meta.client
    original = client.transact_write_items

    def spy(**kwargs: Any) -> Any:
        calls.append(kwargs["TransactItems"])
        return original(**kwargs)

    monkeypatch.setattr(client, "transact_write_items", spy)
    return calls


def test_uninstall_is_one_transaction_and_forgets_the_owner(store: Store, table: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _active_salon(store, table)
    transactions = _transactions(store, monkeypatch)
    before = time.time()
    assert apply_lifecycle_event(store, SALON, "uninstall") == "uninstalled"
    [items] = transactions
    keys = {(next(iter(item.values())).get("Key") or next(iter(item.values()))["Item"])["sk"] for item in items}
    assert {"STATE", "SESSION", "SECRETS", "PAIRING"} <= keys
    state = table.get_item(Key={"pk": f"SALON#{SALON}", "sk": "STATE"})["Item"]
    for gone in ("user_name", "owner_phone", "owner_email", "api_key", "webhook_secret"):
        assert gone not in state
    assert state["state"] == "uninstalled"
    retention = UNINSTALLED_RETENTION_SECONDS
    assert before + retention - 5 <= int(state["ttl"]) <= time.time() + retention
    session = table.get_item(Key={"pk": f"SALON#{SALON}", "sk": "SESSION"})["Item"]
    assert session["desired"] == "stop" and "pair_phone" not in session and int(session["ttl"]) > time.time()
    assert store.secrets.get(SALON) == {}
    assert "Item" not in table.get_item(Key={"pk": f"SALON#{SALON}", "sk": "PAIRING"})
    # A replay changes nothing, and gets the same answer.
    version = store.salons.get(SALON).version  # type: ignore[union-attr]
    assert apply_lifecycle_event(store, SALON, "uninstall") == "uninstalled"
    assert store.salons.get(SALON).version == version  # type: ignore[union-attr]


def test_a_reinstall_clears_the_ttl_and_a_second_uninstall_is_applied(store: Store, table: Any) -> None:
    _active_salon(store, table)
    apply_lifecycle_event(store, SALON, "uninstall")
    start_onboarding(store, SALON, UserData(id="5", name="Анна"), time.time())
    state = table.get_item(Key={"pk": f"SALON#{SALON}", "sk": "STATE"})["Item"]
    session = table.get_item(Key={"pk": f"SALON#{SALON}", "sk": "SESSION"})["Item"]
    assert "ttl" not in state and "ttl" not in session and session["desired"] == "link"
    assert apply_lifecycle_event(store, SALON, "uninstall") == "uninstalled"
    uninstalls = [e for e in store.events.of(SALON) if e["to_state"] == "uninstalled"]
    assert len(uninstalls) == 2


def test_freeze_and_payment_write_state_and_command_together(store: Store, table: Any,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _active_salon(store, table)
    transactions = _transactions(store, monkeypatch)
    assert apply_lifecycle_event(store, SALON, "freeze") == "frozen"
    assert store.sessions.get(SALON).desired == "pause"  # type: ignore[union-attr]
    assert apply_lifecycle_event(store, SALON, "payment", {"period_from": "a"}) == "active"
    assert store.sessions.get(SALON).desired == "run"  # type: ignore[union-attr]
    assert len(transactions) == 2 and all(
        any(next(iter(i.values())).get("Key", {}).get("sk") == "SESSION" for i in items) for items in transactions)
    # A freeze keeps what a frozen salon needs to resume.
    assert store.secrets.get(SALON) == {"api_key": "k", "webhook_secret": "w"}
