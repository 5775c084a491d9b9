"""Onboarding use cases shared by the handlers and the runner. No AWS in the signatures:
they take a `Store` and plain values."""

from __future__ import annotations

import math
import time

from aiadmin.models import Salon, StateMessage, UserData
from aiadmin.phones import InvalidPhone, normalise_phone
from aiadmin.qr import render_svg
from aiadmin.states import LINKED_STATES, LINKING_STATES, PAIRING_CODE_STATES, RETRY_STATES, SalonState
from aiadmin.store import SessionCommand, Store

# YClients accepts the activation call within one hour of the owner's consent.
ACTIVATION_WINDOW_SECONDS = 3600

# States from which a new consent (the owner pressed "Подключить" again) starts over.
_RESTART_STATES = frozenset({
    SalonState.UNINSTALLED, SalonState.QR_EXPIRED, SalonState.EXPIRED_CONSENT,
    SalonState.WHATSAPP_LOGGED_OUT, SalonState.BANNED,
    SalonState.CODE_FAILED, SalonState.LINK_REFUSED, SalonState.PASSKEY_REQUIRED,
})
# Pairing codes make WhatsApp notify the phone they are for: an owner's page may ask for at
# most this many distinct numbers per hour, and wait `PAIRING_MIN_INTERVAL_SECONDS` (setting,
# default 30 s) between two requests.
PAIRING_PHONES_PER_HOUR = 3
PAIRING_WINDOW_SECONDS = 3600
DEFAULT_PAIRING_MIN_INTERVAL_SECONDS = 30.0


class PairingLimited(Exception):
    """A pairing-code request over the salon's limits; the message is for the owner."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


# A salon item with no code to show (set on every new attempt and when one ends).
NO_CODES = {"qr": None, "qr_expires_at": None, "pairing_code": None, "code_expires_at": None}


def start_onboarding(store: Store, salon_id: int, user: UserData, now: float,
                     marketplace_status: str = "pending") -> Salon:
    """Record the owner's consent and make sure a linking attempt runs.

    A repeat visit while linking joins the running attempt; a visit to a linked salon only
    shows its state, except that a fresh consent retries a failed activation and lets a frozen
    salon be activated again; a salon that is new, uninstalled, expired or unlinked starts over.
    `marketplace_status` is the app's status in YClients (`pending` or `active`)."""
    profile: dict[str, object] = {
        "salon_name": (user.salon_name or "")[:200],
        "user_name": (user.name or "")[:200],
    }
    consent = {"consent_at": now, "activation_deadline": now + ACTIVATION_WINDOW_SECONDS}
    salon = store.get_salon(salon_id)
    if salon is None or salon.state in _RESTART_STATES:
        salon = store.transition(
            salon_id, SalonState.PENDING_WHATSAPP, actor="redirect", reason="owner consent",
            attrs={**profile, **consent, **NO_CODES},
        )
        store.request_session(salon_id, "link")
        return salon
    if salon.state == SalonState.ACTIVATION_FAILED or (
            salon.state == SalonState.FROZEN and marketplace_status == "pending"):
        # A new consent opens a new hour; the runner owning the linked session activates again.
        if salon.state == SalonState.FROZEN:
            salon = store.transition(salon_id, SalonState.ACTIVATING, actor="redirect",
                                     reason="owner reconnected a frozen salon", attrs={**profile, **consent},
                                     expected=[SalonState.FROZEN])
        else:
            store.update_profile(salon_id, {**profile, **consent})
            salon = salon.model_copy(update={**profile, **consent})
        store.request_session(salon_id, "run", renew_command=True)
        return salon
    if salon.state == SalonState.FROZEN and marketplace_status == "active":
        # Paid in YClients meanwhile (the payment webhook may come later or never).
        salon = store.transition(salon_id, SalonState.ACTIVE, actor="redirect", reason="active in YClients again",
                                 attrs=profile, expected=[SalonState.FROZEN])
        store.request_session(salon_id, "run", renew_command=True)
        return salon
    if salon.state in LINKING_STATES:
        # Pressing "Подключить" again is a new consent in YClients: its hour starts again.
        profile.update(consent)
    store.update_profile(salon_id, profile)
    if salon.state in LINKING_STATES and store.get_session(salon_id) is None:
        store.request_session(salon_id, "link")
    return salon.model_copy(update=profile)


def request_new_qr(store: Store, salon_id: int) -> Salon | None:
    """The owner asked for a new QR code after the last attempt expired or was refused.
    None if not applicable."""
    salon = store.get_salon(salon_id)
    if salon is None or salon.state not in RETRY_STATES:
        return None
    salon = store.transition(salon_id, SalonState.PENDING_WHATSAPP, actor="owner", reason="new QR requested",
                             attrs=NO_CODES, expected=RETRY_STATES)
    store.request_session(salon_id, "link")
    return salon


def request_pairing_code(store: Store, salon_id: int, raw_phone: object, now: float | None = None,
                         min_interval: float = DEFAULT_PAIRING_MIN_INTERVAL_SECONDS) -> Salon | None:
    """The owner asked to link by phone number: a fresh attempt that asks WhatsApp for a
    pairing code for that number. None if not applicable in the salon's state.

    Raises InvalidPhone or PairingLimited (owner-facing messages) before anything changes. A
    replay of the same request while it is still starting changes nothing and is not counted."""
    phone = normalise_phone(raw_phone)
    salon = store.get_salon(salon_id)
    if salon is None or salon.state not in PAIRING_CODE_STATES:
        return None
    if salon.state == SalonState.PENDING_WHATSAPP:
        lease = store.get_session(salon_id)
        if lease is not None and lease.desired == "link" and lease.pair_phone == phone:
            return salon
    moment = time.time() if now is None else now
    verdict = store.admit_pairing_request(salon_id, phone, moment, min_interval, PAIRING_PHONES_PER_HOUR,
                                          PAIRING_WINDOW_SECONDS)
    if not verdict.allowed:
        wait = max(1, math.ceil(verdict.retry_after))
        if verdict.reason == "interval":
            raise PairingLimited(f"Новый код можно запросить через {wait} с.", verdict.retry_after)
        raise PairingLimited(
            f"За последний час коды уже запрошены для {PAIRING_PHONES_PER_HOUR} разных номеров. "
            f"Попробуйте снова через {math.ceil(wait / 60)} мин или привяжите WhatsApp по QR-коду.",
            verdict.retry_after)
    # The new attempt and the runner's command in one transaction: never one without the other.
    return store.transition(salon_id, SalonState.PENDING_WHATSAPP, actor="owner", reason="pairing code requested",
                            attrs=NO_CODES, expected=PAIRING_CODE_STATES,
                            command=SessionCommand("link", pair_phone=phone))


def state_message(salon: Salon, now: float) -> str:
    """The JSON the page receives for a salon's current state (with the QR drawn as SVG)."""
    svg = render_svg(salon.qr) if salon.state == SalonState.QR_READY and salon.qr else None
    return StateMessage.of(salon, now, qr_svg=svg).model_dump_json()


__all__ = ["ACTIVATION_WINDOW_SECONDS", "LINKED_STATES", "NO_CODES", "InvalidPhone", "PairingLimited",
           "request_new_qr", "request_pairing_code", "start_onboarding", "state_message"]
