import itertools

import pytest

from aiadmin.states import ALLOWED_TRANSITIONS, OWNER_TEXT, IllegalTransition, SalonState, check_transition


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
