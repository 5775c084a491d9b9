import time
from typing import Any

import pytest

from aiadmin.db import Store
from aiadmin.db.transitions import Transition
from aiadmin.models import Salon, UserData
from aiadmin.onboarding import start_onboarding
from aiadmin.states import IllegalTransition, SalonState


def test_transition_writes_state_and_event(store: Store) -> None:
    store.transitions.apply(Transition(1, SalonState.PENDING_WHATSAPP, actor="test", reason="consent"))
    salon = store.transitions.apply(Transition(
        1, SalonState.QR_READY, actor="runner", attrs={"qr": "code", "qr_expires_at": 12.5}))
    assert salon.state == SalonState.QR_READY and salon.version == 2
    stored = store.salons.get(1)
    assert stored is not None and stored.qr == "code" and stored.qr_expires_at == 12.5
    events = store.events.of(1)
    assert [(e["from_state"], e["to_state"], e["actor"]) for e in events] == [
        (None, "pending_whatsapp", "test"), ("pending_whatsapp", "qr_ready", "runner")]


def test_illegal_transition_changes_nothing(store: Store) -> None:
    store.transitions.apply(Transition(1, SalonState.PENDING_WHATSAPP, actor="test"))
    with pytest.raises(IllegalTransition):
        store.transitions.apply(Transition(1, SalonState.ACTIVE, actor="test"))
    salon = store.salons.get(1)
    assert salon is not None and salon.state == SalonState.PENDING_WHATSAPP and salon.version == 1
    assert len(store.events.of(1)) == 1


def test_expected_states_guard_the_transition(store: Store) -> None:
    store.transitions.apply(Transition(1, SalonState.PENDING_WHATSAPP, actor="test"))
    with pytest.raises(IllegalTransition):
        store.transitions.apply(Transition(1, SalonState.QR_EXPIRED, actor="runner", expected=[SalonState.QR_READY]))


def test_connections_fan_out_index(store: Store) -> None:
    store.connections.add("c1", 7)
    store.connections.add("c2", 7)
    store.connections.add("c3", 8)
    assert sorted(store.connections.ids_of(7)) == ["c1", "c2"]
    assert store.connections.salon_of("c3") == 8
    store.connections.remove("c1")
    store.connections.remove("c1")  # a replayed $disconnect is harmless
    assert store.connections.ids_of(7) == ["c2"]
    assert store.connections.salon_of("c1") is None


def test_onboarding_start_and_repeat_visit(store: Store) -> None:
    user = UserData(name="Анна", salon_name="Лотос")
    now = time.time()
    salon = start_onboarding(store, 9, user, now)
    assert salon.state == SalonState.PENDING_WHATSAPP
    assert salon.activation_deadline == pytest.approx(now + 3600)
    session = store.sessions.get(9)
    assert session is not None and session.desired == "link" and session.generation == 1
    # A second visit while linking joins the same attempt.
    again = start_onboarding(store, 9, user, now + 5)
    assert again.state == SalonState.PENDING_WHATSAPP
    assert store.sessions.get(9).generation == 1  # type: ignore[union-attr]
    assert len(store.events.of(9)) == 1


def test_salon_secrets_live_beside_the_state_not_on_it(store: Store, table: Any) -> None:
    store.transitions.apply(Transition(
        3, SalonState.PENDING_WHATSAPP, actor="t", secrets={"api_key": "k", "webhook_secret": "w"}))
    salon = store.salons.get(3)
    assert salon is not None and "api_key" not in salon.model_dump_json()
    assert store.secrets.get(3) == {"api_key": "k", "webhook_secret": "w"}
    state = table.get_item(Key={"pk": "SALON#3", "sk": "STATE"})["Item"]
    assert "api_key" not in state and "webhook_secret" not in state


def test_put_salon_writes_a_record_the_store_reads_back(store: Store) -> None:
    salon = Salon(salon_id=8, state=SalonState.ACTIVE, version=6, updated_at=12.5, salon_name="Лотос")
    store.salons.put(salon)
    assert store.salons.get(8) == salon
    assert store.events.of(8) == []
