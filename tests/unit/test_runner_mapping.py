"""The engine event -> salon state table (pure: no I/O, no clock)."""

from __future__ import annotations

import pytest

from aiadmin.states import CONNECTS_FROM, SalonState, is_allowed
from wa_runner.engine import EngineEvent, EventKind
from wa_runner.mapping import FollowUp, activation_wanted, react
from wa_runner.sessions import Phase

S = SalonState


@pytest.mark.parametrize("kind", list(EventKind))
def test_every_event_has_a_reaction_whose_state_is_reachable(kind: EventKind) -> None:
    reaction = react(EngineEvent(kind, 1, 1, code="c", expires_at=5.0, detail="why"))
    if reaction.state is not None:
        assert reaction.reason
        sources = reaction.expected or [s for s in S if is_allowed(s, reaction.state)]
        assert all(is_allowed(source, reaction.state) for source in sources), kind


def test_a_qr_is_shown_with_its_expiry_unless_the_attempt_links_by_code() -> None:
    event = EngineEvent(EventKind.QR, 1, 1, code="qr-code", expires_at=12.5)
    shown = react(event)
    assert shown.state == S.QR_READY and shown.attrs == {"qr": "qr-code", "qr_expires_at": 12.5}
    assert shown.phase == Phase.AWAITING_PHONE
    hidden = react(event, linking_by_code=True)
    assert hidden.state is None and hidden.phase == Phase.AWAITING_PHONE


def test_refusals_stop_the_attempt_and_clear_the_codes() -> None:
    reaction = react(EngineEvent(EventKind.LINK_REFUSED, 1, 1, detail="max devices"))
    assert reaction.stop and not reaction.logout and reaction.phase == Phase.IDLE
    assert reaction.state == S.LINK_REFUSED and reaction.reason == "max devices"
    assert reaction.attrs is not None and reaction.attrs["qr"] is None and reaction.attrs["pairing_code"] is None


def test_a_logout_unlinks_and_retires_while_a_ban_only_halts() -> None:
    logout = react(EngineEvent(EventKind.LOGGED_OUT, 1, 1))
    assert logout.logout and logout.follow_up == FollowUp.RETIRE and logout.metric == "SessionsLoggedOut"
    ban = react(EngineEvent(EventKind.BANNED, 1, 1))
    assert ban.stop and not ban.logout and ban.phase == Phase.HALTED and ban.follow_up == FollowUp.NONE


def test_a_disconnect_reconnects_only_a_session_that_should_run() -> None:
    reaction = react(EngineEvent(EventKind.DISCONNECTED, 1, 1))
    assert reaction.only_if_live and reaction.follow_up == FollowUp.RECONNECT and reaction.state is None


@pytest.mark.parametrize(("state", "retry", "wanted"), [
    (S.WHATSAPP_CONNECTED, False, True),
    (S.ACTIVATING, False, True),      # another process's activation whose lock may have expired
    (S.ACTIVATION_FAILED, False, False),  # a reconnect never calls YClients again
    (S.ACTIVATION_FAILED, True, True),    # an explicit retry does
    (S.ACTIVE, True, False),
    (S.FROZEN, False, False),
])
def test_when_a_connected_salon_is_activated(state: SalonState, retry: bool, wanted: bool) -> None:
    assert activation_wanted(state, retry) is wanted


def test_a_pairing_success_keeps_the_linked_number_and_clears_the_codes() -> None:
    reaction = react(EngineEvent(EventKind.PAIR_SUCCESS, 1, 1, detail="79001234567:12@s.whatsapp.net"))
    assert reaction.state == S.PAIRING and reaction.follow_up == FollowUp.MARK_LINKED
    assert reaction.attrs is not None and reaction.attrs["linked_phone"] == "79001234567"
    assert reaction.attrs["qr"] is None


def test_every_move_the_mapping_makes_is_one_the_state_machine_allows() -> None:
    """The mapping and ALLOWED_TRANSITIONS are one rule. Issue 16: the mapping moved a salon
    connected in `qr_ready` or `pending_whatsapp` to `whatsapp_connected`, which the state
    machine forbade, so the CONNECTED event was ignored and the salon never activated."""
    moves = {(source, reaction.state)
             for kind in EventKind
             for reaction in [react(EngineEvent(kind, 1, 1, code="c", expires_at=5.0, detail="why"))]
             if reaction.state is not None and reaction.expected is not None
             for source in reaction.expected}
    moves |= {(source, S.WHATSAPP_CONNECTED) for source in CONNECTS_FROM}  # the CONNECTED follow-up
    assert {(source, target) for source, target in moves if not is_allowed(source, target)} == set()
    assert {S.QR_READY, S.PENDING_WHATSAPP, S.CODE_READY, S.PAIRING} <= CONNECTS_FROM
