"""The page's commands for a new attempt and for a pairing code: what they write in the
salon's state and in the session lease the runner reads (moto DynamoDB)."""

import pytest

from aiadmin.onboarding import InvalidPhone, request_new_qr, request_pairing_code
from aiadmin.states import SalonState
from aiadmin.store import Store

S = SalonState


def _salon_in(store: Store, state: SalonState) -> None:
    store.transition(1, S.PENDING_WHATSAPP, actor="test")
    store.request_session(1, "link")
    if state == S.CODE_READY:
        store.transition(1, S.CODE_READY, actor="runner", attrs={"pairing_code": "ABCD-EFGH", "code_expires_at": 9.0})
    elif state != S.PENDING_WHATSAPP:
        store.transition(1, S.QR_READY, actor="runner", attrs={"qr": "code", "qr_expires_at": 1.0})
        if state != S.QR_READY:
            store.transition(1, state, actor="runner")


@pytest.mark.parametrize("state", [S.QR_READY, S.QR_EXPIRED, S.LINK_REFUSED, S.PASSKEY_REQUIRED, S.CODE_READY])
def test_a_pairing_code_request_starts_a_fresh_attempt_for_that_number(store: Store, state: SalonState) -> None:
    _salon_in(store, state)
    before = store.get_session(1)
    assert before is not None
    salon = request_pairing_code(store, 1, "8 (900) 123-45-67")
    assert salon is not None and salon.state == S.PENDING_WHATSAPP
    stored = store.get_salon(1)
    assert stored is not None and stored.qr is None and stored.pairing_code is None
    lease = store.get_session(1)
    assert lease is not None and lease.desired == "link" and lease.pair_phone == "79001234567"
    assert lease.generation == before.generation + 1


def test_a_bad_number_changes_nothing(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    before = (store.get_salon(1), store.get_session(1))
    with pytest.raises(InvalidPhone):
        request_pairing_code(store, 1, "12-34")
    assert (store.get_salon(1), store.get_session(1)) == before


def test_a_replayed_request_does_not_restart_the_attempt(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    request_pairing_code(store, 1, "+7 900 123-45-67")
    first = store.get_session(1)
    request_pairing_code(store, 1, "89001234567")  # the same number, typed differently
    assert store.get_session(1) == first
    request_pairing_code(store, 1, "+7 900 765-43-21")  # another number: a new attempt
    lease = store.get_session(1)
    assert first is not None and lease is not None
    assert lease.generation == first.generation + 1 and lease.pair_phone == "79007654321"


def test_no_pairing_code_for_a_linked_salon(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    for state in (S.PAIRING, S.WHATSAPP_CONNECTED):
        store.transition(1, state, actor="runner")
    before = store.get_session(1)
    assert request_pairing_code(store, 1, "+7 900 123-45-67") is None
    assert store.get_session(1) == before


@pytest.mark.parametrize("state", [S.QR_EXPIRED, S.LINK_REFUSED, S.PASSKEY_REQUIRED, S.CODE_READY])
def test_a_new_qr_after_a_code_attempt_forgets_the_number(store: Store, state: SalonState) -> None:
    _salon_in(store, S.QR_READY)
    request_pairing_code(store, 1, "+7 900 123-45-67")
    store.transition(1, S.CODE_READY, actor="runner", attrs={"pairing_code": "ABCD-EFGH"})
    if state != S.CODE_READY:
        store.transition(1, state, actor="runner")
    salon = request_new_qr(store, 1)
    assert salon is not None and salon.state == S.PENDING_WHATSAPP and salon.pairing_code is None
    lease = store.get_session(1)
    assert lease is not None and lease.pair_phone is None and lease.desired == "link"


def test_no_new_qr_while_one_is_shown(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    assert request_new_qr(store, 1) is None
