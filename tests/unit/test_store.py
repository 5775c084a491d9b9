import time
from typing import Any

import pytest

from aiadmin.models import Salon, UserData
from aiadmin.onboarding import start_onboarding
from aiadmin.states import IllegalTransition, SalonState
from aiadmin.store import LeaseLost, Store


def test_transition_writes_state_and_event(store: Store) -> None:
    store.transition(1, SalonState.PENDING_WHATSAPP, actor="test", reason="consent")
    salon = store.transition(1, SalonState.QR_READY, actor="runner", attrs={"qr": "code", "qr_expires_at": 12.5})
    assert salon.state == SalonState.QR_READY and salon.version == 2
    stored = store.get_salon(1)
    assert stored is not None and stored.qr == "code" and stored.qr_expires_at == 12.5
    events = store.events_of(1)
    assert [(e["from_state"], e["to_state"], e["actor"]) for e in events] == [
        (None, "pending_whatsapp", "test"), ("pending_whatsapp", "qr_ready", "runner")]


def test_illegal_transition_changes_nothing(store: Store) -> None:
    store.transition(1, SalonState.PENDING_WHATSAPP, actor="test")
    with pytest.raises(IllegalTransition):
        store.transition(1, SalonState.ACTIVE, actor="test")
    salon = store.get_salon(1)
    assert salon is not None and salon.state == SalonState.PENDING_WHATSAPP and salon.version == 1
    assert len(store.events_of(1)) == 1


def test_expected_states_guard_the_transition(store: Store) -> None:
    store.transition(1, SalonState.PENDING_WHATSAPP, actor="test")
    with pytest.raises(IllegalTransition):
        store.transition(1, SalonState.QR_EXPIRED, actor="runner", expected=[SalonState.QR_READY])


def test_connections_fan_out_index(store: Store) -> None:
    store.add_connection("c1", 7)
    store.add_connection("c2", 7)
    store.add_connection("c3", 8)
    assert sorted(store.connections_of(7)) == ["c1", "c2"]
    assert store.salon_of_connection("c3") == 8
    store.remove_connection("c1")
    store.remove_connection("c1")  # a replayed $disconnect is harmless
    assert store.connections_of(7) == ["c2"]
    assert store.salon_of_connection("c1") is None


def test_exactly_one_runner_claims_a_session(store: Store) -> None:
    store.request_session(5, "link")
    now = time.time()
    assert [s.salon_id for s in store.claimable_sessions(now)] == [5]
    first = store.claim_session(5, "runner-a", now, 30)
    second = store.claim_session(5, "runner-b", now, 30)
    assert first is not None and first.owner == "runner-a"
    assert second is None
    assert store.claimable_sessions(now + 1) == []
    assert store.renew_session(5, "runner-b", now, 30) is None
    assert store.renew_session(5, "runner-a", now, 30) is not None
    # An expired lease is claimable by another runner.
    assert store.claim_session(5, "runner-b", now + 31, 30) is not None
    assert store.renew_session(5, "runner-a", now + 31, 30) is None


def test_release_and_retire(store: Store) -> None:
    store.request_session(5, "link")
    now = time.time()
    store.claim_session(5, "runner-a", now, 30)
    store.release_session(5, "runner-a")
    assert [s.salon_id for s in store.claimable_sessions(now)] == [5]
    store.claim_session(5, "runner-b", now, 30)
    store.release_session(5, "runner-b", retire=True)
    assert store.claimable_sessions(now + 100) == []


def test_new_link_request_bumps_generation(store: Store) -> None:
    assert store.request_session(5, "link").generation == 1
    assert store.request_session(5, "run").generation == 1
    assert store.request_session(5, "link").generation == 2


def test_onboarding_start_and_repeat_visit(store: Store) -> None:
    user = UserData(name="Анна", salon_name="Лотос")
    now = time.time()
    salon = start_onboarding(store, 9, user, now)
    assert salon.state == SalonState.PENDING_WHATSAPP
    assert salon.activation_deadline == pytest.approx(now + 3600)
    session = store.get_session(9)
    assert session is not None and session.desired == "link" and session.generation == 1
    # A second visit while linking joins the same attempt.
    again = start_onboarding(store, 9, user, now + 5)
    assert again.state == SalonState.PENDING_WHATSAPP
    assert store.get_session(9).generation == 1  # type: ignore[union-attr]
    assert len(store.events_of(9)) == 1


def test_salon_secrets_live_beside_the_state_not_on_it(store: Store, table: Any) -> None:
    store.transition(3, SalonState.PENDING_WHATSAPP, actor="t", salon_secrets={"api_key": "k", "webhook_secret": "w"})
    salon = store.get_salon(3)
    assert salon is not None and "api_key" not in salon.model_dump_json()
    assert store.get_salon_secrets(3) == {"api_key": "k", "webhook_secret": "w"}
    state = table.get_item(Key={"pk": "SALON#3", "sk": "STATE"})["Item"]
    assert "api_key" not in state and "webhook_secret" not in state


def test_latest_heartbeat_of_all_runners(store: Store) -> None:
    assert store.latest_heartbeat() is None
    store.record_heartbeat("a", 100.0, 3)
    store.record_heartbeat("b", 250.5, 0)
    store.record_heartbeat("a", 200.0, 3)
    assert store.latest_heartbeat() == 250.5


def _owned_link(store: Store, salon_id: int, runner: str, now: float, lease: float = 30) -> None:
    store.request_session(salon_id, "link")
    assert store.claim_session(salon_id, runner, now, lease) is not None
    store.transition(salon_id, SalonState.PENDING_WHATSAPP, actor="redirect")


def test_fenced_transition_needs_a_live_lease_of_that_runner(store: Store) -> None:
    now = time.time()
    _owned_link(store, 5, "runner-a", now, lease=30)
    salon = store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "a"}, lease_owner="runner-a")
    assert salon.qr == "a"
    with pytest.raises(LeaseLost):  # another runner's write
        store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "b"}, lease_owner="runner-b")
    # The lease expires and runner-b takes it: runner-a's writes are refused from then on.
    assert store.claim_session(5, "runner-b", now + 31, 30) is not None
    with pytest.raises(LeaseLost):
        store.transition(5, SalonState.QR_READY, actor="runner", attrs={"qr": "stale"}, lease_owner="runner-a")
    stored = store.get_salon(5)
    assert stored is not None and stored.qr == "a" and stored.version == 2
    assert len(store.events_of(5)) == 2


def test_fenced_transition_refused_once_the_lease_ran_out(store: Store) -> None:
    _owned_link(store, 5, "runner-a", time.time() - 40, lease=30)  # expired ten seconds ago, nobody claimed it
    with pytest.raises(LeaseLost):
        store.transition(5, SalonState.QR_READY, actor="runner", lease_owner="runner-a")


def test_pairing_success_does_not_override_a_newer_command(store: Store) -> None:
    now = time.time()
    _owned_link(store, 5, "runner-a", now)
    store.request_session(5, "stop")  # uninstalled while the phone was scanning
    assert store.mark_linked(5, "runner-a", generation=1) is False
    assert store.get_session(5).desired == "stop"  # type: ignore[union-attr]
    _owned_link(store, 6, "runner-a", now)
    assert store.mark_linked(6, "runner-a", generation=1) is True
    assert store.get_session(6).desired == "run"  # type: ignore[union-attr]


def test_retiring_keeps_a_command_that_arrived_meanwhile(store: Store) -> None:
    now = time.time()
    _owned_link(store, 5, "runner-a", now)
    acted_on = store.get_session(5)
    assert acted_on is not None
    store.request_session(5, "link")  # the owner asked for a new code meanwhile
    assert store.release_session(5, "runner-a", retire=True, command=acted_on) is False
    assert store.get_session(5).owner == "runner-a"  # type: ignore[union-attr]
    current = store.get_session(5)
    assert store.release_session(5, "runner-a", retire=True, command=current) is True
    assert store.claimable_sessions(now + 100) == []
    # A later command puts it back, claimable at once (the retired lease left no expiry behind).
    store.request_session(5, "link")
    assert [s.salon_id for s in store.claimable_sessions(now)] == [5]


def test_claimable_linking_attempts_or_linked_sessions_only(store: Store) -> None:
    store.request_session(5, "link")
    store.request_session(6, "run")
    now = time.time()
    assert {s.salon_id for s in store.claimable_sessions(now)} == {5, 6}
    assert [s.salon_id for s in store.claimable_sessions(now, linking=False)] == [6]
    assert [s.salon_id for s in store.claimable_sessions(now, linked=False)] == [5]


def test_heartbeat_keeps_sessions_by_phase_and_pairings(store: Store) -> None:
    store.record_heartbeat("a", 100.0, 3, {"connected": 2, "linking": 1}, pairings=1)
    [beat] = store.runner_heartbeats()
    assert beat == {"runner_id": "a", "at": 100.0, "sessions": 3, "phases": {"connected": 2, "linking": 1},
                    "pairings": 1}


def test_put_salon_writes_a_record_the_store_reads_back(store: Store) -> None:
    salon = Salon(salon_id=8, state=SalonState.ACTIVE, version=6, updated_at=12.5, salon_name="Лотос")
    store.put_salon(salon)
    assert store.get_salon(8) == salon
    assert store.events_of(8) == []
