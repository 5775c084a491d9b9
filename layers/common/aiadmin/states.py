"""The salon state machine: one table of allowed transitions, every named set of states the
rest of the system acts on, what the owner's page may offer in each state, and the
owner-facing texts.

Every state change in the system goes through `check_transition`; an illegal one raises
`IllegalTransition` and is logged by the caller, never silently applied. A set of states
written anywhere else is a copy that drifts: callers (and the page, through `page_view`) read
them from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from aiadmin.i18n import DEFAULT_LANGUAGE, t


class SalonState(StrEnum):
    PENDING_WHATSAPP = "pending_whatsapp"
    QR_READY = "qr_ready"
    QR_EXPIRED = "qr_expired"
    CODE_READY = "code_ready"              # a pairing code for the owner's phone number is shown
    CODE_FAILED = "code_failed"            # WhatsApp gave no pairing code for that number
    LINK_REFUSED = "link_refused"          # WhatsApp refused the link (e.g. maximum of linked devices)
    PASSKEY_REQUIRED = "passkey_required"  # WhatsApp asked for a passkey a server cannot give
    PAIRING = "pairing"
    WHATSAPP_CONNECTED = "whatsapp_connected"
    ACTIVATING = "activating"
    ACTIVE = "active"
    ACTIVATION_FAILED = "activation_failed"
    FROZEN = "frozen"
    UNINSTALLED = "uninstalled"
    WHATSAPP_LOGGED_OUT = "whatsapp_logged_out"
    BANNED = "banned"
    CLIENT_OUTDATED = "client_outdated"
    EXPIRED_CONSENT = "expired_consent"


S = SalonState

# Ends of a linked session, reported by the engine; reachable from any linked state.
_SESSION_ENDS = {S.WHATSAPP_LOGGED_OUT, S.BANNED, S.CLIENT_OUTDATED}
# YClients can uninstall or freeze the app at any moment.
_LIFECYCLE = {S.UNINSTALLED, S.FROZEN}
# A linking attempt that WhatsApp refused after the phone scanned or entered the code.
_REFUSALS = {S.LINK_REFUSED, S.PASSKEY_REQUIRED}
# An attempt that ended without a link: the owner asks for a new code (or a new consent starts over).
_ATTEMPT_ENDED = frozenset({S.PENDING_WHATSAPP, S.EXPIRED_CONSENT} | _LIFECYCLE)
# A session that connected while its attempt still showed a code or was starting: WhatsApp
# linked the device, but the pairing event never reached the salon (lost, or refused while the
# owner's request moved the salon on). A connected session is WhatsApp's own word that the
# device is linked, so the salon is connected (and activated) rather than stranded in linking;
# going through `pairing` instead would log a pairing nobody saw.
_CONNECTED_UNANNOUNCED = frozenset({S.WHATSAPP_CONNECTED})

ALLOWED_TRANSITIONS: dict[SalonState | None, frozenset[SalonState]] = {
    None: frozenset({S.PENDING_WHATSAPP}),
    # pending -> pending: the owner asked for a pairing code (again) while the attempt starts.
    S.PENDING_WHATSAPP: frozenset({S.PENDING_WHATSAPP, S.QR_READY, S.CODE_READY, S.CODE_FAILED, S.PAIRING,
                                   S.EXPIRED_CONSENT} | _CONNECTED_UNANNOUNCED | _LIFECYCLE),
    # qr_ready -> qr_ready: the next code of the same attempt; -> pending: the owner chose a pairing code.
    S.QR_READY: frozenset({S.QR_READY, S.QR_EXPIRED, S.PAIRING, S.PENDING_WHATSAPP, S.CODE_READY, S.CODE_FAILED,
                           S.EXPIRED_CONSENT} | _CONNECTED_UNANNOUNCED | _REFUSALS | _LIFECYCLE),
    S.QR_EXPIRED: frozenset({S.PENDING_WHATSAPP, S.QR_READY, S.EXPIRED_CONSENT} | _LIFECYCLE),
    # The code stays valid for the rest of the 160 s attempt, then the attempt expires.
    S.CODE_READY: frozenset({S.PAIRING, S.QR_EXPIRED, S.PENDING_WHATSAPP, S.EXPIRED_CONSENT}
                            | _CONNECTED_UNANNOUNCED | _REFUSALS | _LIFECYCLE),
    S.CODE_FAILED: _ATTEMPT_ENDED,
    S.LINK_REFUSED: _ATTEMPT_ENDED,
    S.PASSKEY_REQUIRED: _ATTEMPT_ENDED,
    S.PAIRING: frozenset({S.WHATSAPP_CONNECTED, S.QR_EXPIRED, S.PENDING_WHATSAPP, S.PASSKEY_REQUIRED}
                         | _SESSION_ENDS | _LIFECYCLE),
    S.WHATSAPP_CONNECTED: frozenset({S.ACTIVATING, S.EXPIRED_CONSENT} | _SESSION_ENDS | _LIFECYCLE),
    S.ACTIVATING: frozenset({S.ACTIVE, S.ACTIVATION_FAILED, S.EXPIRED_CONSENT} | _SESSION_ENDS | _LIFECYCLE),
    S.ACTIVATION_FAILED: frozenset({S.ACTIVATING, S.PENDING_WHATSAPP} | _SESSION_ENDS | _LIFECYCLE),
    # -> pending: the owner explicitly asked to re-link WhatsApp on the page; -> activating: YClients
    # reports the app pending again (reinstalled while no uninstall webhook reached us).
    S.ACTIVE: frozenset({S.PENDING_WHATSAPP, S.ACTIVATING} | _SESSION_ENDS | _LIFECYCLE),
    # Unfrozen by a payment or a new activation; a new consent starts linking again.
    S.FROZEN: frozenset({S.ACTIVE, S.ACTIVATING, S.PENDING_WHATSAPP, S.UNINSTALLED}),
    S.UNINSTALLED: frozenset({S.PENDING_WHATSAPP}),
    S.WHATSAPP_LOGGED_OUT: frozenset({S.PENDING_WHATSAPP} | _LIFECYCLE),
    S.BANNED: frozenset({S.PENDING_WHATSAPP} | _LIFECYCLE),
    # After a library update the same keys connect again.
    S.CLIENT_OUTDATED: frozenset({S.PENDING_WHATSAPP, S.WHATSAPP_CONNECTED} | _LIFECYCLE),
    # -> activating: a new consent for a salon whose linked session outlived the old one.
    S.EXPIRED_CONSENT: frozenset({S.PENDING_WHATSAPP, S.ACTIVATING, S.UNINSTALLED}),
}

# ---- named sets of states -------------------------------------------------------------------

# Salon states of a linking attempt under way: a repeat visit joins it instead of starting another.
LINKING_STATES = frozenset({S.PENDING_WHATSAPP, S.QR_READY, S.CODE_READY, S.PAIRING})
# States from which the owner may ask for a new attempt ("Получить новый код") on the page.
RETRY_STATES = frozenset({S.QR_EXPIRED, S.CODE_READY, S.CODE_FAILED, S.LINK_REFUSED, S.PASSKEY_REQUIRED})
# States from which the owner may ask for a pairing code for a phone number instead of a QR.
PAIRING_CODE_STATES = frozenset({S.PENDING_WHATSAPP, S.QR_READY} | RETRY_STATES)
# States in which WhatsApp is linked: a repeat visit only shows the state.
LINKED_STATES = frozenset({S.WHATSAPP_CONNECTED, S.ACTIVATING, S.ACTIVE, S.ACTIVATION_FAILED, S.FROZEN})
# Linked salons the owner may link to another WhatsApp ("Перепривязать WhatsApp"), after a confirmation.
CONFIRMED_RELINK_STATES = frozenset({S.ACTIVE, S.ACTIVATION_FAILED})
# Salons whose device WhatsApp unlinked or blocked ("Привязать WhatsApp снова"): nothing is left to
# lose, so no confirmation, and the owner need not go back through YClients for it.
LINK_AGAIN_STATES = frozenset({S.WHATSAPP_LOGGED_OUT, S.BANNED})
# Salons the owner may explicitly link again from the page (socket action `relink`).
RELINK_STATES = CONFIRMED_RELINK_STATES | LINK_AGAIN_STATES
# States from which a new consent (the owner pressed "Подключить" again) starts linking over.
RESTART_ON_NEW_CONSENT = frozenset({S.UNINSTALLED, S.QR_EXPIRED, S.EXPIRED_CONSENT, S.WHATSAPP_LOGGED_OUT, S.BANNED,
                                    S.CODE_FAILED, S.LINK_REFUSED, S.PASSKEY_REQUIRED})
# Linked salons a new consent activates again on the same device when YClients reports the app
# pending (reinstalled while no uninstall webhook reached us, or a frozen salon reconnected).
REACTIVATED_WHEN_PENDING = frozenset({S.FROZEN, S.ACTIVE})
# States from which a linked salon is (re)activated.
ACTIVATABLE_STATES = frozenset({S.WHATSAPP_CONNECTED, S.ACTIVATION_FAILED})
# Linked, with the activation about to start or running: a connected session activates them.
ACTIVATION_UNDER_WAY = frozenset({S.WHATSAPP_CONNECTED, S.ACTIVATING})
# Moving towards active: too long in one of these is stuck (ops).
IN_PROGRESS_STATES = LINKING_STATES | ACTIVATION_UNDER_WAY
# Ended in a way the owner or ops must act on.
FAILED_STATES = frozenset({S.ACTIVATION_FAILED, S.EXPIRED_CONSENT, S.LINK_REFUSED, S.PASSKEY_REQUIRED,
                           S.CODE_FAILED} | _SESSION_ENDS)
# While these last, the owner is asked to finish within YClients' hour.
ON_THE_OWNERS_CLOCK = LINKING_STATES | RETRY_STATES | ACTIVATION_UNDER_WAY

# Where engine events may move a salon from (`wa_runner.mapping`; each is checked against
# ALLOWED_TRANSITIONS by the tests).
# An attempt shows the owner a code (a QR or a pairing code).
SHOWING_CODE = frozenset({S.QR_READY, S.CODE_READY})
# A new QR is shown: the attempt is starting, shows a QR, or its last QR just expired.
NEW_QR_FROM = frozenset({S.PENDING_WHATSAPP, S.QR_READY, S.QR_EXPIRED})
# WhatsApp's answer to a pairing-code request (a code, or none) lands on the attempt the
# request started: pending, or showing the QR that came first.
PAIRING_CODE_ANSWER_FROM = frozenset({S.PENDING_WHATSAPP, S.QR_READY})
# WhatsApp asks for a passkey after the phone scanned or entered the code.
PASSKEY_ASKED_FROM = SHOWING_CODE | {S.PAIRING}
# A salon whose session connects in one of these is now `whatsapp_connected` (see
# `_CONNECTED_UNANNOUNCED` for the states other than `pairing`).
CONNECTS_FROM = frozenset({S.PAIRING, S.PENDING_WHATSAPP, S.QR_READY, S.CODE_READY})

# ---- what the owner's page offers in each state ----------------------------------------------

# Where "Back to YClients" is the one next action.
_BACK_TO_YCLIENTS = frozenset({S.ACTIVE, S.CLIENT_OUTDATED, S.ACTIVATION_FAILED, S.EXPIRED_CONSENT, S.FROZEN,
                               S.UNINSTALLED})
# States of a salon past linking (or whose link ended): the page's status card shows them.
_STATUS_CARD = LINKED_STATES | _SESSION_ENDS | {S.EXPIRED_CONSENT, S.UNINSTALLED}
# An attempt not yet showing a pairing code: on a phone, the number form is shown at once
# (the QR cannot be scanned from the phone's own screen).
_PHONE_FORM_FIRST = frozenset({S.PENDING_WHATSAPP, S.QR_READY})
# The page's three steps (open WhatsApp, scan or enter the code, done); 4: all done.
_STEP: dict[SalonState, int] = {
    S.PENDING_WHATSAPP: 1, S.QR_READY: 2, S.CODE_READY: 2, S.QR_EXPIRED: 2, S.CODE_FAILED: 2, S.LINK_REFUSED: 2,
    S.PASSKEY_REQUIRED: 2, S.PAIRING: 3, S.WHATSAPP_CONNECTED: 3, S.ACTIVATING: 3, S.ACTIVE: 4,
}


class PageAction(StrEnum):
    """What the page may offer the owner; the page shows the control of each action it is given."""

    NEW_CODE = "new_code"      # a new attempt ("Получить новый код"; "link by QR" while a pairing code shows)
    BY_PHONE = "by_phone"      # a pairing code for a phone number instead of a QR
    RELINK = "relink"          # link a linked salon to another WhatsApp, after a confirmation
    LINK_AGAIN = "link_again"  # link again after WhatsApp unlinked or blocked the device (no confirmation)
    BACK = "back"              # "Back to YClients" is the one next action


@dataclass(frozen=True)
class PageView:
    """What the page shows for a state, beyond its texts: it copies no set of states."""

    actions: tuple[PageAction, ...]
    step: int | None            # the step shown as current (None: no steps shown)
    linked: bool                # WhatsApp is linked: the walk moves on to the next location
    on_the_clock: bool          # the owner is asked to finish within YClients' hour
    status_card: bool           # the status card (state, number, since) is shown
    phone_form_first: bool      # on a phone, the number form is shown at once


_ACTION_STATES: dict[PageAction, frozenset[SalonState]] = {
    PageAction.NEW_CODE: RETRY_STATES,
    PageAction.BY_PHONE: PAIRING_CODE_STATES,
    PageAction.RELINK: CONFIRMED_RELINK_STATES,
    PageAction.LINK_AGAIN: LINK_AGAIN_STATES,
    PageAction.BACK: _BACK_TO_YCLIENTS,
}


def page_view(state: SalonState) -> PageView:
    return PageView(
        actions=tuple(action for action, states in _ACTION_STATES.items() if state in states),
        step=_STEP.get(state),
        linked=state in LINKED_STATES,
        on_the_clock=state in ON_THE_OWNERS_CLOCK,
        status_card=state in _STATUS_CARD,
        phone_form_first=state in _PHONE_FORM_FIRST,
    )


class IllegalTransition(ValueError):
    def __init__(self, current: SalonState | None, new: SalonState) -> None:
        super().__init__(f"illegal transition {current or 'new'} -> {new}")
        self.current = current
        self.new = new


def check_transition(current: SalonState | None, new: SalonState) -> None:
    if new not in ALLOWED_TRANSITIONS[current]:
        raise IllegalTransition(current, new)


def is_allowed(current: SalonState | None, new: SalonState) -> bool:
    return new in ALLOWED_TRANSITIONS[current]


# What the owner reads on the onboarding page for each state: a title and what to do (Russian,
# the default; the page renders the owner's language from `aiadmin.i18n` by the state's name).
OWNER_TEXT: dict[SalonState, tuple[str, str]] = {
    state: (t(DEFAULT_LANGUAGE, f"state.{state.value}.title"), t(DEFAULT_LANGUAGE, f"state.{state.value}.hint"))
    for state in SalonState
}
