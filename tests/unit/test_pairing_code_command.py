"""The page's commands for a new attempt and for a pairing code: what they write in the
salon's state and in the session lease the runner reads (moto DynamoDB)."""

import threading
import time
from typing import Any

import pytest

from aiadmin.db import Store
from aiadmin.db.transitions import Transition
from aiadmin.onboarding import (
    PAIRING_PHONES_PER_HOUR,
    InvalidPhone,
    PairingLimited,
    Requester,
    request_new_qr,
    request_pairing_code,
)
from aiadmin.states import SalonState

S = SalonState

# A page of the salon's consent (these salons were recorded without a consent id).
PAGE = Requester()


def _salon_in(store: Store, state: SalonState) -> None:
    store.transitions.apply(Transition(1, S.PENDING_WHATSAPP, actor="test"))
    store.sessions.request(1, "link")
    if state == S.CODE_READY:
        store.transitions.apply(Transition(
            1, S.CODE_READY, actor="runner", attrs={"pairing_code": "ABCD-EFGH", "code_expires_at": 9.0}))
    elif state != S.PENDING_WHATSAPP:
        store.transitions.apply(Transition(1, S.QR_READY, actor="runner", attrs={"qr": "code", "qr_expires_at": 1.0}))
        if state != S.QR_READY:
            store.transitions.apply(Transition(1, state, actor="runner"))


@pytest.mark.parametrize("state", [S.QR_READY, S.QR_EXPIRED, S.LINK_REFUSED, S.PASSKEY_REQUIRED, S.CODE_READY])
def test_a_pairing_code_request_starts_a_fresh_attempt_for_that_number(store: Store, state: SalonState) -> None:
    _salon_in(store, state)
    before = store.sessions.get(1)
    assert before is not None
    salon = request_pairing_code(store, 1, "8 (900) 123-45-67", PAGE)
    assert salon is not None and salon.state == S.PENDING_WHATSAPP
    stored = store.salons.get(1)
    assert stored is not None and stored.qr is None and stored.pairing_code is None
    lease = store.sessions.get(1)
    assert lease is not None and lease.desired == "link" and lease.pair_phone == "79001234567"
    assert lease.generation == before.generation + 1


def test_a_bad_number_changes_nothing(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    before = (store.salons.get(1), store.sessions.get(1))
    with pytest.raises(InvalidPhone):
        request_pairing_code(store, 1, "12-34", PAGE)
    assert (store.salons.get(1), store.sessions.get(1)) == before


def test_a_replayed_request_does_not_restart_the_attempt(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    request_pairing_code(store, 1, "+7 900 123-45-67", PAGE)
    first = store.sessions.get(1)
    request_pairing_code(store, 1, "89001234567", PAGE)  # the same number, typed differently
    assert store.sessions.get(1) == first
    # another number, later: a new attempt
    request_pairing_code(store, 1, "+7 900 765-43-21", PAGE, now=time.time() + 31)
    lease = store.sessions.get(1)
    assert first is not None and lease is not None
    assert lease.generation == first.generation + 1 and lease.pair_phone == "79007654321"


def test_no_pairing_code_for_a_linked_salon(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    for state in (S.PAIRING, S.WHATSAPP_CONNECTED):
        store.transitions.apply(Transition(1, state, actor="runner"))
    before = store.sessions.get(1)
    assert request_pairing_code(store, 1, "+7 900 123-45-67", PAGE) is None
    assert store.sessions.get(1) == before


@pytest.mark.parametrize("state", [S.QR_EXPIRED, S.LINK_REFUSED, S.PASSKEY_REQUIRED, S.CODE_READY])
def test_a_new_qr_after_a_code_attempt_forgets_the_number(store: Store, state: SalonState) -> None:
    _salon_in(store, S.QR_READY)
    request_pairing_code(store, 1, "+7 900 123-45-67", PAGE)
    store.transitions.apply(Transition(1, S.CODE_READY, actor="runner", attrs={"pairing_code": "ABCD-EFGH"}))
    if state != S.CODE_READY:
        store.transitions.apply(Transition(1, state, actor="runner"))
    salon = request_new_qr(store, 1, PAGE)
    assert salon is not None and salon.state == S.PENDING_WHATSAPP and salon.pairing_code is None
    lease = store.sessions.get(1)
    assert lease is not None and lease.pair_phone is None and lease.desired == "link"


def test_no_new_qr_while_one_is_shown(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    assert request_new_qr(store, 1, PAGE) is None


def _back_to_qr(store: Store) -> None:
    """WhatsApp ended the last attempt: the owner may ask again."""
    store.transitions.apply(Transition(1, S.QR_READY, actor="runner", attrs={"qr": "code"}))


def test_requests_closer_than_the_interval_are_refused_and_change_nothing(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    now = 1_000_000.0
    request_pairing_code(store, 1, "+7 900 111-11-11", PAGE, now=now, min_interval=30)
    _back_to_qr(store)
    before = (store.salons.get(1), store.sessions.get(1))
    with pytest.raises(PairingLimited, match="через 20 с") as refused:
        request_pairing_code(store, 1, "+7 900 222-22-22", PAGE, now=now + 10, min_interval=30)
    assert refused.value.retry_after == pytest.approx(20)
    assert (store.salons.get(1), store.sessions.get(1)) == before
    assert request_pairing_code(store, 1, "+7 900 222-22-22", PAGE, now=now + 30, min_interval=30) is not None


def test_at_most_three_distinct_numbers_per_hour(store: Store) -> None:
    _salon_in(store, S.QR_READY)
    now = 1_000_000.0
    numbers = [f"+7 900 000-00-0{i}" for i in range(1, 6)]
    for i, number in enumerate(numbers[:PAIRING_PHONES_PER_HOUR]):
        assert request_pairing_code(store, 1, number, PAGE, now=now + 40 * i, min_interval=30) is not None
        _back_to_qr(store)
    with pytest.raises(PairingLimited, match="3 разных номеров"):
        request_pairing_code(store, 1, numbers[3], PAGE, now=now + 200, min_interval=30)
    # A number already used this hour may be asked for again (a new code for the same phone).
    assert request_pairing_code(store, 1, numbers[0], PAGE, now=now + 240, min_interval=30) is not None
    _back_to_qr(store)
    # The hour after the first request, a new number is accepted again.
    assert request_pairing_code(store, 1, numbers[4], PAGE, now=now + 3601, min_interval=30) is not None


def _atomic_calls(store: Store) -> None:
    """moto's conditional writes are not atomic across threads (DynamoDB's are): serialise the
    table's calls so the test checks our conditions, not moto's thread safety."""
    lock = threading.Lock()
    table: Any = store.table

    for name in ("update_item", "get_item"):
        original = getattr(table, name)

        def locked(*args: Any, _original: Any = original, **kwargs: Any) -> Any:
            with lock:
                return _original(*args, **kwargs)

        setattr(table, name, locked)


def test_concurrent_requests_for_many_numbers_admit_one(store: Store) -> None:
    _atomic_calls(store)
    now = 1_000_000.0
    verdicts: list[bool] = []

    def ask(i: int) -> None:
        verdict = store.pairing.admit(1, f"7900000000{i}", now, 30, PAIRING_PHONES_PER_HOUR, 3600)
        verdicts.append(verdict.allowed)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert verdicts.count(True) == 1


def test_the_hour_and_the_interval_are_counted_across_threads(store: Store) -> None:
    _atomic_calls(store)
    allowed: list[str] = []

    def ask(i: int) -> None:
        # Ten numbers, each asked at a different moment past the interval: only three fit the hour.
        phone = f"7900000001{i}"
        if store.pairing.admit(1, phone, 1_000_000.0 + 31 * i, 30, PAIRING_PHONES_PER_HOUR, 3600).allowed:
            allowed.append(phone)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert 1 <= len(set(allowed)) <= PAIRING_PHONES_PER_HOUR
