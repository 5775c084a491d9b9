"""Engine event -> what the runner does: a pure table (no I/O, no clock).

`react(event, linking_by_code)` gives the session's next phase, whether the engine session
stops (and logs out), the salon state to write (with its attributes and the states it may be
written from) and what follows. `activation_wanted` says when a connected salon is activated."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from aiadmin.onboarding import NO_CODES
from aiadmin.phones import phone_of_jid
from aiadmin.states import (
    ACTIVATION_UNDER_WAY,
    NEW_QR_FROM,
    PAIRING_CODE_ANSWER_FROM,
    PASSKEY_ASKED_FROM,
    SHOWING_CODE,
    SalonState,
)
from wa_runner.engine import EngineEvent, EventKind
from wa_runner.sessions import Phase

S = SalonState


class FollowUp(StrEnum):
    NONE = "none"
    MARK_LINKED = "mark_linked"          # the pairing succeeded: the command becomes `run`
    CONNECTED = "connected"              # read the salon: connected state, activation
    RETIRE = "retire"                    # nothing left to run: out of the runner's book
    END_LINKING = "end_linking"          # the attempt's codes expired: `qr_expired`, then retire
    STREAM_REPLACED = "stream_replaced"  # another client has the keys: whose session is it?
    RECONNECT = "reconnect"              # the transport dropped: retry with backoff


@dataclass(frozen=True)
class Reaction:
    phase: Phase | None = None           # the session's next phase (None: as it is)
    stop: bool = False                   # stop the engine session
    logout: bool = False                 # ... and unlink the device, delete its keys
    state: SalonState | None = None      # the salon state to write
    reason: str = ""
    attrs: dict[str, Any] | None = None
    expected: frozenset[SalonState] | None = None  # states it may be written from
    metric: str | None = None
    follow_up: FollowUp = FollowUp.NONE
    only_if_live: bool = False           # only while the session should be running
    # The write belongs to the linking attempt that produced the event: it happens only while
    # that attempt is the session's command (the owner may have asked for a new one).
    of_attempt: bool = False


def _refusal(state: SalonState, expected: frozenset[SalonState]) -> Reaction:
    return Reaction(phase=Phase.IDLE, stop=True, state=state, attrs=NO_CODES, expected=expected,
                    metric=f"Linking_{state.value}", of_attempt=True)


_TABLE: dict[EventKind, Reaction] = {
    EventKind.QR: Reaction(phase=Phase.AWAITING_PHONE, state=S.QR_READY, reason="new QR code",
                           expected=NEW_QR_FROM, of_attempt=True),
    EventKind.PAIRING_CODE: Reaction(phase=Phase.AWAITING_PHONE, state=S.CODE_READY,
                                     reason="pairing code for the owner's number",
                                     expected=PAIRING_CODE_ANSWER_FROM, of_attempt=True),
    EventKind.QR_TIMEOUT: Reaction(follow_up=FollowUp.END_LINKING, reason="no scan within 160 s"),
    # Ends of a linking attempt that WhatsApp decided: the owner reads what to do and retries.
    EventKind.LINK_REFUSED: _refusal(S.LINK_REFUSED, SHOWING_CODE),
    EventKind.PASSKEY_REQUIRED: _refusal(S.PASSKEY_REQUIRED, PASSKEY_ASKED_FROM),
    EventKind.PAIRING_CODE_FAILED: _refusal(S.CODE_FAILED, PAIRING_CODE_ANSWER_FROM),
    EventKind.PAIR_SUCCESS: Reaction(phase=Phase.STARTING, state=S.PAIRING, reason="phone accepted the code",
                                     attrs=NO_CODES, follow_up=FollowUp.MARK_LINKED),
    # The salon becomes `whatsapp_connected` from `states.CONNECTS_FROM` only (the follow-up reads it first).
    EventKind.CONNECTED: Reaction(phase=Phase.CONNECTED, follow_up=FollowUp.CONNECTED),
    EventKind.LOGGED_OUT: Reaction(phase=Phase.HALTED, stop=True, logout=True, state=S.WHATSAPP_LOGGED_OUT,
                                   reason="device unlinked on the phone", metric="SessionsLoggedOut",
                                   follow_up=FollowUp.RETIRE),
    EventKind.BANNED: Reaction(phase=Phase.HALTED, stop=True, state=S.BANNED, metric="SessionsBanned"),
    EventKind.CLIENT_OUTDATED: Reaction(phase=Phase.HALTED, stop=True, state=S.CLIENT_OUTDATED,
                                        metric="SessionsClientOutdated"),
    EventKind.STREAM_REPLACED: Reaction(metric="StreamReplaced", follow_up=FollowUp.STREAM_REPLACED),
    # Not a stop of ours (those cancel the session quietly): reconnect if it should run.
    EventKind.DISCONNECTED: Reaction(follow_up=FollowUp.RECONNECT, only_if_live=True),
    # Chat messages and receipts go to AI Admin's queue (`EventHandler.handle`): no state, no phase.
    EventKind.MESSAGE: Reaction(),
    EventKind.RECEIPT: Reaction(),
}


def react(event: EngineEvent, linking_by_code: bool = False) -> Reaction:
    """What the runner does on `event`. `linking_by_code`: the attempt links with a pairing
    code for a phone number, so its QR codes are not shown."""
    reaction = _TABLE[event.kind]
    if event.kind == EventKind.QR:
        if linking_by_code:
            return Reaction(phase=Phase.AWAITING_PHONE)
        return _with(reaction, attrs={"qr": event.code, "qr_expires_at": event.expires_at})
    if event.kind == EventKind.PAIR_SUCCESS:
        # The linked device's JID carries the WhatsApp number: the owner's page shows it (masked).
        return _with(reaction, attrs={**NO_CODES, "linked_phone": phone_of_jid(event.detail)})
    if event.kind == EventKind.PAIRING_CODE:
        return _with(reaction, attrs={**NO_CODES, "pairing_code": event.code, "code_expires_at": event.expires_at})
    if reaction.state is not None and not reaction.reason:
        return _with(reaction, reason=event.detail or event.kind.value)
    return reaction


def _with(reaction: Reaction, **changes: Any) -> Reaction:
    return Reaction(**{**reaction.__dict__, **changes})


def activation_wanted(state: SalonState, retry_requested: bool) -> bool:
    """Whether a connected salon in `state` is activated now: a fresh link, or an activation
    under way (another process's lock may have expired). A failed one only on an explicit
    retry (a new consent, an ops retry): never because the session (re)connected."""
    if state in ACTIVATION_UNDER_WAY:
        return True
    return state == S.ACTIVATION_FAILED and retry_requested
