import itertools
import json

import pytest

from aiadmin.models import Salon, StateMessage
from aiadmin.states import (
    ACTIVATABLE_STATES,
    ACTIVATION_UNDER_WAY,
    ALLOWED_TRANSITIONS,
    CONFIRMED_RELINK_STATES,
    CONNECTS_FROM,
    FAILED_STATES,
    IN_PROGRESS_STATES,
    LINK_AGAIN_STATES,
    LINKED_STATES,
    LINKING_STATES,
    NEW_QR_FROM,
    OWNER_TEXT,
    PAIRING_CODE_ANSWER_FROM,
    PAIRING_CODE_STATES,
    PASSKEY_ASKED_FROM,
    REACTIVATED_WHEN_PENDING,
    RELINK_STATES,
    RESTART_ON_NEW_CONSENT,
    RETRY_STATES,
    SHOWING_CODE,
    IllegalTransition,
    SalonState,
    check_transition,
    page_view,
)


def test_the_happy_path_is_allowed() -> None:
    path = [None, "pending_whatsapp", "qr_ready", "qr_ready", "pairing", "whatsapp_connected", "activating", "active"]
    for old, new in itertools.pairwise(path):
        check_transition(SalonState(old) if old else None, SalonState(new))


@pytest.mark.parametrize(("old", "new"), [
    (None, SalonState.ACTIVE),
    (SalonState.PENDING_WHATSAPP, SalonState.ACTIVE),
    (SalonState.UNINSTALLED, SalonState.ACTIVE),
    (SalonState.ACTIVE, SalonState.QR_READY),
])
def test_illegal_transitions_are_refused(old: SalonState | None, new: SalonState) -> None:
    with pytest.raises(IllegalTransition):
        check_transition(old, new)


def test_every_state_has_transitions_and_owner_text() -> None:
    for state in SalonState:
        assert state in ALLOWED_TRANSITIONS
        title, hint = OWNER_TEXT[state]
        assert title and hint


def test_lifecycle_events_reach_every_live_state() -> None:
    for state in SalonState:
        if state not in (SalonState.UNINSTALLED, SalonState.EXPIRED_CONSENT):
            assert SalonState.UNINSTALLED in ALLOWED_TRANSITIONS[state], state


def test_the_pairing_code_path_is_allowed() -> None:
    path = [None, "pending_whatsapp", "qr_ready", "pending_whatsapp", "code_ready", "pairing", "whatsapp_connected"]
    for old, new in itertools.pairwise(path):
        check_transition(SalonState(old) if old else None, SalonState(new))


@pytest.mark.parametrize("ending", [SalonState.LINK_REFUSED, SalonState.PASSKEY_REQUIRED])
@pytest.mark.parametrize("showing", [SalonState.QR_READY, SalonState.CODE_READY])
def test_whatsapp_can_refuse_an_attempt_that_shows_a_code(showing: SalonState, ending: SalonState) -> None:
    check_transition(showing, ending)


def test_every_failed_attempt_can_be_retried_by_the_owner() -> None:
    for state in RETRY_STATES:
        check_transition(state, SalonState.PENDING_WHATSAPP)
    assert {SalonState.QR_EXPIRED, SalonState.CODE_FAILED, SalonState.LINK_REFUSED,
            SalonState.PASSKEY_REQUIRED} <= RETRY_STATES
    assert RETRY_STATES <= PAIRING_CODE_STATES
    for state in PAIRING_CODE_STATES:
        check_transition(state, SalonState.PENDING_WHATSAPP)


@pytest.mark.parametrize("state", [SalonState.LINK_REFUSED, SalonState.PASSKEY_REQUIRED, SalonState.CODE_FAILED])
def test_a_refused_attempt_never_jumps_to_linked(state: SalonState) -> None:
    for linked in (SalonState.PAIRING, SalonState.WHATSAPP_CONNECTED, SalonState.ACTIVE, SalonState.QR_READY):
        with pytest.raises(IllegalTransition):
            check_transition(state, linked)


def test_owner_texts_say_what_to_do_for_the_new_outcomes() -> None:
    assert "Связанные устройства" in OWNER_TEXT[SalonState.LINK_REFUSED][1]
    assert "отвяжите" in OWNER_TEXT[SalonState.LINK_REFUSED][1]
    assert "ключ" in OWNER_TEXT[SalonState.PASSKEY_REQUIRED][1] and "Получить новый код" in \
        OWNER_TEXT[SalonState.PASSKEY_REQUIRED][1]
    assert "по номеру телефона" in OWNER_TEXT[SalonState.CODE_READY][1]


def test_the_page_gets_the_pairing_code_only_while_it_is_shown() -> None:
    salon = Salon(salon_id=1, state=SalonState.CODE_READY, pairing_code="ABCD-EFGH", code_expires_at=99.0,
                  qr="stale", qr_expires_at=5.0)
    message = StateMessage.of(salon, now=10.0)
    assert (message.pairing_code, message.code_expires_at, message.qr, message.qr_expires_at) == \
        ("ABCD-EFGH", 99.0, None, None)
    later = StateMessage.of(salon.model_copy(update={"state": SalonState.QR_EXPIRED}), now=200.0)
    assert later.pairing_code is None and later.code_expires_at is None


# ---- named sets: their values, and that the state machine lets each do what its name says ----

def _states(*names: str) -> frozenset[SalonState]:
    return frozenset(SalonState(name) for name in names)


# Each set's values as they were where it lived before issue 16 (moved, not changed), except
# CONNECTS_FROM, which gained code_ready with the fix of the CONNECTING contradiction.
@pytest.mark.parametrize(("named", "values"), [
    (LINKING_STATES, _states("pending_whatsapp", "qr_ready", "code_ready", "pairing")),
    (RETRY_STATES, _states("qr_expired", "code_ready", "code_failed", "link_refused", "passkey_required")),
    (PAIRING_CODE_STATES, _states("pending_whatsapp", "qr_ready", "qr_expired", "code_ready", "code_failed",
                                  "link_refused", "passkey_required")),
    (LINKED_STATES, _states("whatsapp_connected", "activating", "active", "activation_failed", "frozen")),
    (RELINK_STATES, _states("active", "activation_failed", "whatsapp_logged_out", "banned")),
    (RESTART_ON_NEW_CONSENT, _states("uninstalled", "qr_expired", "expired_consent", "whatsapp_logged_out", "banned",
                                     "code_failed", "link_refused", "passkey_required")),
    (REACTIVATED_WHEN_PENDING, _states("frozen", "active")),
    (ACTIVATABLE_STATES, _states("whatsapp_connected", "activation_failed")),
    (ACTIVATION_UNDER_WAY, _states("whatsapp_connected", "activating")),
    (IN_PROGRESS_STATES, _states("pending_whatsapp", "qr_ready", "code_ready", "pairing", "whatsapp_connected",
                                 "activating")),
    (FAILED_STATES, _states("activation_failed", "expired_consent", "link_refused", "passkey_required",
                            "code_failed", "whatsapp_logged_out", "banned", "client_outdated")),
    (NEW_QR_FROM, _states("pending_whatsapp", "qr_ready", "qr_expired")),
    (SHOWING_CODE, _states("qr_ready", "code_ready")),
    (PAIRING_CODE_ANSWER_FROM, _states("pending_whatsapp", "qr_ready")),
    (PASSKEY_ASKED_FROM, _states("qr_ready", "code_ready", "pairing")),
    (CONNECTS_FROM, _states("pairing", "pending_whatsapp", "qr_ready", "code_ready")),
], ids=["linking", "retry", "pairing_code", "linked", "relink", "restart", "reactivated", "activatable",
        "activation_under_way", "in_progress", "failed", "new_qr_from", "showing_code", "pairing_code_answer_from",
        "passkey_asked_from", "connects_from"])
def test_the_named_sets_keep_their_values(named: frozenset[SalonState], values: frozenset[SalonState]) -> None:
    assert named == values


def test_a_relink_is_confirmed_for_a_linked_salon_and_not_for_a_lost_device() -> None:
    assert CONFIRMED_RELINK_STATES | LINK_AGAIN_STATES == RELINK_STATES
    assert CONFIRMED_RELINK_STATES <= LINKED_STATES and not LINK_AGAIN_STATES & LINKED_STATES


@pytest.mark.parametrize(("states", "target"), [
    (RELINK_STATES, SalonState.PENDING_WHATSAPP),
    (RESTART_ON_NEW_CONSENT, SalonState.PENDING_WHATSAPP),
    (PAIRING_CODE_STATES, SalonState.PENDING_WHATSAPP),
    (REACTIVATED_WHEN_PENDING, SalonState.ACTIVATING),
    (ACTIVATABLE_STATES, SalonState.ACTIVATING),
    (CONNECTS_FROM, SalonState.WHATSAPP_CONNECTED),
], ids=["relink", "restart", "by_phone", "reactivate", "activate", "connects"])
def test_each_named_set_may_move_where_its_users_move_it(states: frozenset[SalonState], target: SalonState) -> None:
    for state in states:
        check_transition(state, target)


@pytest.mark.parametrize("state", [SalonState.QR_READY, SalonState.PENDING_WHATSAPP, SalonState.CODE_READY])
def test_a_session_connected_while_its_attempt_showed_a_code_connects_the_salon(state: SalonState) -> None:
    """Issue 16: WhatsApp connected the device, but no pairing event moved the salon first."""
    check_transition(state, SalonState.WHATSAPP_CONNECTED)


# ---- what the page offers in each state ------------------------------------------------------

# What the page showed in each state when it kept its own copies of these sets (before issue 16):
# (actions, step, linked, on the clock, status card, phone form first).
_PAGE: dict[str, tuple[set[str], int | None, bool, bool, bool, bool]] = {
    "pending_whatsapp": ({"by_phone"}, 1, False, True, False, True),
    "qr_ready": ({"by_phone"}, 2, False, True, False, True),
    "qr_expired": ({"new_code", "by_phone"}, 2, False, True, False, False),
    "code_ready": ({"new_code", "by_phone"}, 2, False, True, False, False),
    "code_failed": ({"new_code", "by_phone"}, 2, False, True, False, False),
    "link_refused": ({"new_code", "by_phone"}, 2, False, True, False, False),
    "passkey_required": ({"new_code", "by_phone"}, 2, False, True, False, False),
    "pairing": (set(), 3, False, True, False, False),
    "whatsapp_connected": (set(), 3, True, True, True, False),
    "activating": (set(), 3, True, True, True, False),
    "active": ({"relink", "back"}, 4, True, False, True, False),
    "activation_failed": ({"relink", "back"}, None, True, False, True, False),
    "frozen": ({"back"}, None, True, False, True, False),
    "uninstalled": ({"back"}, None, False, False, True, False),
    "whatsapp_logged_out": ({"link_again"}, None, False, False, True, False),
    "banned": ({"link_again"}, None, False, False, True, False),
    "client_outdated": ({"back"}, None, False, False, True, False),
    "expired_consent": ({"back"}, None, False, False, True, False),
}


@pytest.mark.parametrize("state", list(SalonState))
def test_the_page_is_told_what_to_offer_in_each_state(state: SalonState) -> None:
    actions, step, linked, on_the_clock, status_card, phone_form_first = _PAGE[state.value]
    view = page_view(state)
    assert {action.value for action in view.actions} == actions
    assert (view.step, view.linked, view.on_the_clock, view.status_card, view.phone_form_first) == \
        (step, linked, on_the_clock, status_card, phone_form_first)


def test_the_state_message_carries_the_page_view() -> None:
    message = StateMessage.of(Salon(salon_id=1, state=SalonState.ACTIVE), now=10.0)
    dumped = json.loads(message.model_dump_json())
    assert (dumped["actions"], dumped["step"], dumped["linked"], dumped["on_the_clock"], dumped["status_card"],
            dumped["phone_form_first"]) == (["relink", "back"], 4, True, False, True, False)
    expired = json.loads(StateMessage.of(Salon(salon_id=1, state=SalonState.QR_EXPIRED), now=10.0).model_dump_json())
    assert expired["actions"] == ["new_code", "by_phone"] and expired["step"] == 2
