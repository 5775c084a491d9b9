"""Onboarding use cases against a moto table built from template.yaml: who a salon belongs to
(binding), repeat visits, re-linking, several locations, and a consent after an expired one."""

from __future__ import annotations

import time

import pytest

from aiadmin.db import Store
from aiadmin.db.transitions import Transition
from aiadmin.lifecycle import apply_lifecycle_event
from aiadmin.models import Salon, UserData
from aiadmin.onboarding import (
    ConsentEnded,
    ConsentRefused,
    Location,
    binding_refusal,
    request_new_qr,
    request_pairing_code,
    request_relink,
    start_locations,
    start_onboarding,
)
from aiadmin.states import SalonState
from tests.helpers import page_of

S = SalonState
OWNER = UserData(id="5101", name="Анна", salon_name="Лотос")
STRANGER = UserData(id="6666", name="Злоумышленник", phone="79990000000", email="x@example.ru",
                    salon_name="Чужой салон")
NO_ID = UserData(name="Без id")


def _linked(store: Store, salon_id: int = 101, state: S = S.ACTIVE) -> None:
    start_onboarding(store, salon_id, OWNER, time.time())
    store.transitions.apply(Transition(salon_id, S.PAIRING, "test"))
    store.transitions.apply(Transition(salon_id, S.WHATSAPP_CONNECTED, "test"))
    store.sessions.request(salon_id, "run")
    store.transitions.apply(Transition(salon_id, S.ACTIVATING, "test"))
    if state != S.ACTIVATING:
        store.transitions.apply(Transition(salon_id, state, "test"))


def test_the_first_consent_binds_the_salon_to_its_user(store: Store) -> None:
    salon = start_onboarding(store, 101, OWNER, time.time())
    assert salon.owner_user_id == "5101"
    stored = store.salons.get(101)
    assert stored is not None and stored.owner_user_id == "5101"


def test_altegios_user_id_binds_too(store: Store) -> None:
    start_onboarding(store, 101, UserData(user_id="777"), time.time())
    assert store.salons.get(101).owner_user_id == "777"  # type: ignore[union-attr]


@pytest.mark.parametrize("state", [S.PENDING_WHATSAPP, S.ACTIVE])
def test_another_user_is_refused_and_nothing_but_an_event_is_written(store: Store, state: S) -> None:
    if state == S.ACTIVE:
        _linked(store)
    else:
        start_onboarding(store, 101, OWNER, time.time())
    before = store.salons.get(101)
    session_before = store.sessions.get(101)
    events_before = len(store.events.of(101))
    with pytest.raises(ConsentRefused):
        start_onboarding(store, 101, STRANGER, time.time())
    assert store.salons.get(101) == before  # no name, no consent time, no state change
    assert store.sessions.get(101) == session_before  # no linking command
    events = store.events.of(101)
    assert len(events) == events_before + 1
    refusal = events[-1]
    assert refusal["reason"].startswith("consent refused") and refusal["details"] == {"user_id": "6666"}
    # Nothing of the refused user but their id.
    assert "Злоумышленник" not in str(refusal) and "79990000000" not in str(refusal)


def test_a_consent_without_a_user_id_is_refused_for_a_bound_salon_only(store: Store) -> None:
    start_onboarding(store, 102, NO_ID, time.time())  # an unbound salon: allowed, binds nobody
    assert store.salons.get(102).owner_user_id is None  # type: ignore[union-attr]
    start_onboarding(store, 102, OWNER, time.time())  # the first user id binds it
    assert store.salons.get(102).owner_user_id == "5101"  # type: ignore[union-attr]
    with pytest.raises(ConsentRefused):
        start_onboarding(store, 102, NO_ID, time.time())


def test_the_binding_resets_only_after_an_uninstall_and_a_fresh_pending_consent(store: Store) -> None:
    _linked(store)
    store.transitions.apply(Transition(101, S.FROZEN, "yclients"))
    with pytest.raises(ConsentRefused):  # frozen is not uninstalled
        start_onboarding(store, 101, STRANGER, time.time(), marketplace_status="pending")
    store.transitions.apply(Transition(101, S.UNINSTALLED, "yclients"))
    with pytest.raises(ConsentRefused):  # uninstalled, but YClients does not report a fresh consent
        start_onboarding(store, 101, STRANGER, time.time(), marketplace_status="active")
    salon = start_onboarding(store, 101, STRANGER, time.time(), marketplace_status="pending")
    assert salon.state == S.PENDING_WHATSAPP and salon.owner_user_id == "6666"
    with pytest.raises(ConsentRefused):  # and now the old owner is the stranger
        start_onboarding(store, 101, OWNER, time.time())


def test_binding_refusal_reads_only_the_salon() -> None:
    assert binding_refusal(None, "1") is None
    assert binding_refusal(None, None) is None


def test_a_repeat_visit_to_an_active_salon_never_restarts_linking(store: Store) -> None:
    _linked(store)
    generation = store.sessions.get(101).generation  # type: ignore[union-attr]
    salon = start_onboarding(store, 101, OWNER, time.time(), marketplace_status="active")
    assert salon.state == S.ACTIVE
    session = store.sessions.get(101)
    assert session is not None and session.desired == "run" and session.generation == generation


def test_relinking_is_an_explicit_owner_request_for_a_linked_salon(store: Store) -> None:
    start_onboarding(store, 101, OWNER, time.time())
    assert request_relink(store, 101, time.time(), page_of(store, 101)) is None  # not linked: nothing to re-link
    store.transitions.apply(Transition(101, S.PAIRING, "test"))
    store.transitions.apply(Transition(101, S.WHATSAPP_CONNECTED, "test"))
    store.transitions.apply(Transition(101, S.ACTIVATING, "test"))
    store.transitions.apply(Transition(101, S.ACTIVE, "test"))
    store.sessions.request(101, "run")
    generation = store.sessions.get(101).generation  # type: ignore[union-attr]
    salon = request_relink(store, 101, time.time(), page_of(store, 101))
    assert salon is not None and salon.state == S.PENDING_WHATSAPP
    session = store.sessions.get(101)
    assert session is not None and session.desired == "link" and session.generation == generation + 1
    assert store.events.of(101)[-1]["actor"] == "owner"


@pytest.mark.parametrize("ended", [S.WHATSAPP_LOGGED_OUT, S.BANNED])
def test_an_unlinked_or_blocked_salon_can_be_linked_again_from_the_page(store: Store, ended: S) -> None:
    """Issue 12: the page's one next action for these ends is "Привязать WhatsApp снова"."""
    _linked(store, state=ended)
    generation = store.sessions.get(101).generation  # type: ignore[union-attr]
    salon = request_relink(store, 101, time.time(), page_of(store, 101))
    assert salon is not None and salon.state == S.PENDING_WHATSAPP
    session = store.sessions.get(101)
    assert session is not None and session.desired == "link" and session.generation == generation + 1


def test_a_consent_after_an_expired_activation_keeps_the_linked_device(store: Store) -> None:
    """Bug (issue 10): after `expired_consent` the next "Подключить" sent a `link` command, and
    the runner logged the working linked device out to start a new pairing."""
    _linked(store, state=S.EXPIRED_CONSENT)
    generation = store.sessions.get(101).generation  # type: ignore[union-attr]
    salon = start_onboarding(store, 101, OWNER, time.time())
    assert salon.state == S.ACTIVATING  # activated again on the linked session
    session = store.sessions.get(101)
    assert session is not None and session.desired == "run"  # never `link`: no logout, no new pairing
    assert session.generation == generation + 1  # a renewed command: the owning runner activates


def test_a_consent_after_an_expired_attempt_that_never_linked_starts_over(store: Store) -> None:
    start_onboarding(store, 101, OWNER, time.time())
    store.transitions.apply(Transition(101, S.EXPIRED_CONSENT, "test"))
    salon = start_onboarding(store, 101, OWNER, time.time())
    assert salon.state == S.PENDING_WHATSAPP
    assert store.sessions.get(101).desired == "link"  # type: ignore[union-attr]


def test_several_locations_are_checked_before_any_is_written(store: Store) -> None:
    start_onboarding(store, 202, STRANGER, time.time())  # 202 belongs to someone else
    with pytest.raises(ConsentRefused):
        start_locations(store, [Location(201, "pending"), Location(202, "pending")], OWNER, time.time())
    assert store.salons.get(201) is None  # nothing written for the free location either


def test_several_locations_each_get_their_own_onboarding(store: Store) -> None:
    _linked(store, 202)
    salons = start_locations(store, [Location(201, "pending"), Location(202, "active")], OWNER, time.time())
    assert [(s.salon_id, s.state) for s in salons] == [(201, S.PENDING_WHATSAPP), (202, S.ACTIVE)]
    # One name in user_data cannot name two locations: it is not used for them.
    assert store.salons.get(201).salon_name == ""  # type: ignore[union-attr]
    assert store.sessions.get(201).desired == "link"  # type: ignore[union-attr]
    assert store.sessions.get(202).desired == "run"  # type: ignore[union-attr]


def test_an_active_salon_that_yclients_reports_pending_again_is_activated_again_on_its_device(
        store: Store) -> None:
    """Reinstalled without an uninstall webhook reaching us (a test stand sends none): the bound
    owner's new consent activates the linked session again; it is never re-linked."""
    _linked(store)
    generation = store.sessions.get(101).generation  # type: ignore[union-attr]
    salon = start_onboarding(store, 101, OWNER, time.time(), marketplace_status="pending")
    assert salon.state == S.ACTIVATING
    session = store.sessions.get(101)
    assert session is not None and session.desired == "run" and session.generation == generation + 1
    with pytest.raises(ConsentRefused):  # and only for its own owner
        start_onboarding(store, 101, STRANGER, time.time(), marketplace_status="pending")


def _consent(store: Store, salon_id: int = 101) -> str | None:
    salon = store.salons.get(salon_id)
    return salon.consent_id if salon else None


def test_a_salons_consent_changes_with_its_binding_and_not_with_a_repeat_visit(store: Store) -> None:
    """Issue 15: every token names the consent; a new one ends every older token. A repeat
    "Подключить" by the bound owner keeps it (their other tabs go on); an uninstall, a new
    owner's consent and a first binding each start a new one."""
    first = start_onboarding(store, 101, OWNER, time.time()).consent_id
    assert first is not None and first == _consent(store)
    assert start_onboarding(store, 101, OWNER, time.time()).consent_id == first
    assert apply_lifecycle_event(store, 101, "uninstall") == "uninstalled"
    after_uninstall = _consent(store)
    assert after_uninstall not in (None, first)
    # Another YClients user, after YClients reported the app uninstalled.
    reinstalled = start_onboarding(store, 101, STRANGER, time.time())
    assert reinstalled.consent_id not in (None, first, after_uninstall)
    assert reinstalled.consent_id == _consent(store)
    # A salon a consent without a user id started binds nobody; its first binding starts a new consent.
    unbound = start_onboarding(store, 102, NO_ID, time.time()).consent_id
    bound = start_onboarding(store, 102, OWNER, time.time())
    assert bound.owner_user_id == "5101" and bound.consent_id not in (None, unbound)
    assert bound.consent_id == _consent(store, 102)


def test_a_page_of_an_ended_consent_changes_nothing(store: Store) -> None:
    start_onboarding(store, 101, OWNER, time.time())
    old_page = page_of(store, 101)
    apply_lifecycle_event(store, 101, "uninstall")
    start_onboarding(store, 101, STRANGER, time.time())
    store.transitions.apply(Transition(101, S.QR_READY, "test", attrs={"qr": "code"}))
    store.transitions.apply(Transition(101, S.QR_EXPIRED, "test"))
    before, session = store.salons.get(101), store.sessions.get(101)
    for request in (lambda: request_new_qr(store, 101, old_page),
                    lambda: request_pairing_code(store, 101, "+7 900 123-45-67", old_page),
                    lambda: request_relink(store, 101, time.time(), old_page)):
        with pytest.raises(ConsentEnded):
            request()
    assert store.salons.get(101) == before and store.sessions.get(101) == session
    # The new owner's page may.
    assert request_new_qr(store, 101, page_of(store, 101)) is not None


def test_a_relink_starts_a_new_consent(store: Store) -> None:
    _linked(store)
    page = page_of(store, 101)
    salon = request_relink(store, 101, time.time(), page)
    assert salon is not None and salon.consent_id not in (None, page.consent_id)
    assert salon.consent_id == _consent(store)


def test_two_consents_racing_for_an_uninstalled_salon_share_one_consent(store: Store,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """A double press on "Подключить" after a reinstall: both redirects read the salon as
    uninstalled; the one that writes second must join the attempt the first started, not give
    the salon yet another consent (which would end the first page's token at once)."""
    start_onboarding(store, 101, OWNER, time.time())
    apply_lifecycle_event(store, 101, "uninstall")
    apply = store.transitions.apply
    raced: list[Salon] = []

    def first_the_other_press(change: Transition) -> Salon:
        if not raced:
            raced.append(Salon(salon_id=0, state=S.PENDING_WHATSAPP))  # only once
            raced[0] = start_onboarding(store, 101, OWNER, time.time())  # lands between the read and the write
        return apply(change)

    monkeypatch.setattr(store.transitions, "apply", first_the_other_press)
    mine = start_onboarding(store, 101, OWNER, time.time())
    assert mine.consent_id == raced[0].consent_id == _consent(store)
    assert mine.state == S.PENDING_WHATSAPP
