import itertools

import pytest

from aiadmin.models import Salon, StateMessage
from aiadmin.states import (
    ALLOWED_TRANSITIONS,
    OWNER_TEXT,
    PAIRING_CODE_STATES,
    RETRY_STATES,
    IllegalTransition,
    SalonState,
    check_transition,
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
