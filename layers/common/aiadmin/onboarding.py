"""Onboarding use cases shared by the handlers and the runner. No AWS in the signatures:
they take a `Store` and plain values.

Salon binding (a non-negotiable of the design): a salon belongs to the YClients user whose
signed `user_data` first consented for it (`id`, or `user_id` as Altegio names it). A consent
for that salon from anyone else is refused (`ConsentRefused`: nothing written but an event
with the refused user's id, and a metric), until YClients reports the app uninstalled (our
`uninstalled` state, set by the lifecycle webhook or an uninstall through ops) and a fresh
*pending* consent arrives: that consent binds its own user. A consent whose `user_data` has no
user id may go ahead only while the salon is not bound, and binds nobody (YClients documents
every field as optional; refusing it outright would lock out every owner should YClients ever
leave the id out), and it is refused for a bound salon, whose owner it cannot prove to be.
"""

from __future__ import annotations

import hmac
import math
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from aiadmin.db import Store
from aiadmin.db.sessions import SessionCommand
from aiadmin.db.transitions import UNREAD, Transition, Unread
from aiadmin.i18n import DEFAULT_LANGUAGE, t
from aiadmin.models import Salon, StateMessage, UserData
from aiadmin.observability import logger, metrics
from aiadmin.phones import InvalidPhone, normalise_phone, phone_digits
from aiadmin.qr import render_svg
from aiadmin.states import (
    LINKING_STATES,
    PAIRING_CODE_STATES,
    REACTIVATED_WHEN_PENDING,
    RELINK_STATES,
    RESTART_ON_NEW_CONSENT,
    RETRY_STATES,
    IllegalTransition,
    SalonState,
)

# YClients' help pages ask for the activation within one hour of the owner's consent: the page
# asks the owner to finish within it. It is not our limit: the activation goes on while YClients
# still has the consent pending (see `aiadmin.activation`, which stops at 12 hours at most).
ACTIVATION_WINDOW_SECONDS = 3600
# Locations one redirect may carry: each costs a status call to YClients (5 per second) and a
# linking attempt, and the page shows them all.
MAX_LOCATIONS = 10

# Pairing codes make WhatsApp notify the phone they are for: an owner's page may ask for at
# most this many distinct numbers per hour, and wait `PAIRING_MIN_INTERVAL_SECONDS` (setting,
# default 30 s) between two requests.
PAIRING_PHONES_PER_HOUR = 3
PAIRING_WINDOW_SECONDS = 3600
DEFAULT_PAIRING_MIN_INTERVAL_SECONDS = 30.0


class PairingLimited(Exception):
    """A pairing-code request over the salon's limits; the message is for the owner (Russian),
    `key` and `params` render it in the owner's language (`aiadmin.i18n`)."""

    def __init__(self, key: str, retry_after: float, **params: int) -> None:
        super().__init__(t(DEFAULT_LANGUAGE, key, **params))
        self.key = key
        self.params = params
        self.retry_after = retry_after


# A salon item with no code to show (set on every new attempt and when one ends).
NO_CODES = {"qr": None, "qr_expires_at": None, "pairing_code": None, "code_expires_at": None}


class ConsentRefused(PermissionError):
    """The salon belongs to another YClients user (or to one this consent cannot prove to be)."""

    def __init__(self, salon_id: int, reason: str) -> None:
        super().__init__(f"salon {salon_id}: {reason}")
        self.salon_id = salon_id
        self.reason = reason


class ConsentEnded(PermissionError):
    """The page's token belongs to a consent that is no longer the salon's (uninstalled, bound
    to another user, or re-linked since): it may do nothing more."""

    def __init__(self, salon_id: int) -> None:
        super().__init__(f"salon {salon_id}: the token's consent has ended")
        self.salon_id = salon_id


def new_consent_id() -> str:
    """A salon's consent id: random, so one never repeats, not even for a salon recorded again
    after its old record expired."""
    return secrets.token_urlsafe(12)


@dataclass(frozen=True)
class Requester:
    """Who asks for a page command: a page socket (the consent its token names) or ops."""

    consent_id: str | None = None
    operator: bool = False

    def may_act_on(self, salon: Salon | None) -> bool:
        return salon is not None and (self.operator or salon.accepts_token_of(self.consent_id))

    def check(self, salon_id: int) -> Callable[[Salon | None], None]:
        """A `Transition.guard`: the write happens only while the consent is the salon's."""
        def guard(salon: Salon | None) -> None:
            if salon is not None and not self.may_act_on(salon):
                raise ConsentEnded(salon_id)
        return guard


OPERATOR = Requester(operator=True)


@dataclass(frozen=True)
class KeptSocket:
    """The socket that asked for a re-link: it moves onto the new consent with a new token
    (`token_id`, expiring at `token_exp`), which the page keeps for reconnecting."""

    connection_id: str
    slot: int | None
    token_id: str
    token_exp: float


def consenting_user(user: UserData) -> str | None:
    """The YClients user id in the signed `user_data` (`id`, or Altegio's `user_id`)."""
    value = (user.id or user.user_id or "").strip()
    return value[:64] or None


def binding_refusal(salon: Salon | None, user_id: str | None, marketplace_status: str = "pending") -> str | None:
    """Why this consent may not go ahead for the salon as read; None when it may."""
    if salon is None or not salon.owner_user_id:
        return None
    if salon.state == SalonState.UNINSTALLED and marketplace_status == "pending":
        return None  # YClients reported the app uninstalled; a fresh consent binds its own user
    if user_id is None:
        return "consent without a user id for a bound salon"
    if not hmac.compare_digest(user_id.encode(), salon.owner_user_id.encode()):
        return "salon bound to another YClients user"
    return None


def _bound_user(salon: Salon | None, user_id: str | None, marketplace_status: str) -> str | None:
    """Who the salon is bound to once this (allowed) consent is recorded."""
    if salon is None or not salon.owner_user_id or (
            salon.state == SalonState.UNINSTALLED and marketplace_status == "pending"):
        return user_id
    return salon.owner_user_id


def record_refusal(store: Store, salon_id: int, salon: Salon | None, user_id: str | None, reason: str,
                   actor: str = "redirect") -> None:
    """The refused consent on the salon's event log (the refused user's id only: no name, phone
    or email of theirs is kept) and as a metric ops can alarm on. `salon` as read: a salon we
    do not know gets no log."""
    metrics.add_metric(name="ConsentRefused", unit="Count", value=1)
    logger.warning("consent refused", extra={"salon_id": salon_id, "reason": reason})
    if salon is not None:
        store.events.record(salon_id, actor, f"consent refused: {reason}", {"user_id": user_id or ""},
                            state=salon.state)


@dataclass(frozen=True)
class Location:
    """One salon of a redirect, as YClients confirmed it."""

    salon_id: int
    marketplace_status: str  # `pending` or `active`


def check_consent(store: Store, salon_ids: Sequence[int], user: UserData,
                  marketplace_status: Callable[[int], str] = lambda _i: "pending",
                  seen: Mapping[int, Salon | None] | None = None) -> dict[int, Salon | None]:
    """Refuse (ConsentRefused, after recording it) when any of the salons is bound to someone
    else. Reads only (the salons not in `seen`), but for the refusal's event: call it before
    anything else is written. Returns the salons as read, for the writes that follow."""
    user_id = consenting_user(user)
    salons = {salon_id: seen[salon_id] if seen is not None and salon_id in seen else store.salons.get(salon_id)
              for salon_id in salon_ids}
    for salon_id, salon in salons.items():
        reason = binding_refusal(salon, user_id, marketplace_status(salon_id))
        if reason is not None:
            record_refusal(store, salon_id, salon, user_id, reason)
            raise ConsentRefused(salon_id, reason)
    return salons


def start_locations(store: Store, locations: Sequence[Location], user: UserData, now: float,
                    seen: Mapping[int, Salon | None] | None = None) -> list[Salon]:
    """Several locations of one redirect (`salon_ids[]`): every binding is checked before any is
    written, then each location is onboarded on its own (its own WhatsApp, its own activation).
    With several locations, `user_data`'s salon name cannot tell which one it names: it is not used.
    `seen`: the salons as the caller read them (each is read once per redirect; a change since
    is found by the conditional writes, which read it again)."""
    salons = check_consent(store, [loc.salon_id for loc in locations], user,
                           {loc.salon_id: loc.marketplace_status for loc in locations}.__getitem__, seen)
    if len(locations) > 1:
        user = user.model_copy(update={"salon_name": None})
    return [start_onboarding(store, loc.salon_id, user, now, loc.marketplace_status, seen=salons[loc.salon_id])
            for loc in locations]


def start_onboarding(store: Store, salon_id: int, user: UserData, now: float,
                     marketplace_status: str = "pending", seen: Salon | Unread | None = UNREAD,
                     _rejoin: bool = True) -> Salon:
    """Record the owner's consent and make sure a linking attempt runs.

    A repeat visit while linking joins the running attempt; a visit to a linked salon only
    shows its state (re-linking it is an explicit owner action, `request_relink`), except that
    a fresh consent retries a failed or expired activation and lets a frozen salon be activated
    again; a salon that is new, uninstalled, expired before it was linked, or unlinked starts
    over. `marketplace_status` is the app's status in YClients (`pending` or `active`).

    `seen` is the salon as the caller read it (read here otherwise). Raises ConsentRefused
    (recorded) when the salon is bound to another YClients user."""
    user_id = consenting_user(user)
    profile: dict[str, object] = {}
    if user.salon_name:
        profile["salon_name"] = user.salon_name[:200]
    if user.name:
        profile["user_name"] = user.name[:200]
    if owner_phone := phone_digits(user.phone):
        # Only to tell the owner, after linking, whether the linked WhatsApp is their own number.
        profile["owner_phone"] = owner_phone
    consent = {"consent_at": now, "activation_deadline": now + ACTIVATION_WINDOW_SECONDS}
    salon = store.salons.get(salon_id) if isinstance(seen, Unread) else seen

    def guard(current: Salon | None) -> None:
        reason = binding_refusal(current, user_id, marketplace_status)
        if reason is not None:
            record_refusal(store, salon_id, current, user_id, reason)
            raise ConsentRefused(salon_id, reason)

    guard(salon)
    if salon is None or salon.state in RESTART_ON_NEW_CONSENT:
        if salon is not None and salon.state == SalonState.EXPIRED_CONSENT and _still_linked(store, salon_id):
            # The consent ran out while the linked session waited for YClients: a new consent
            # activates that session again; it never logs a working device out (issue 10).
            salon = store.transitions.apply(Transition(
                salon_id, SalonState.ACTIVATING, actor="redirect",
                reason="owner consented again after the activation expired",
                attrs={**profile, **consent, "activation_error": None, "activation_owner": None,
                       "activation_lock_until": None},
                expected=[SalonState.EXPIRED_CONSENT], guard=guard, seen=salon))
            store.sessions.request(salon_id, "run", renew_command=True)
            return salon
        bound_user = _bound_user(salon, user_id, marketplace_status)
        bound: dict[str, object] = {"owner_user_id": bound_user}
        if salon is None or salon.consent_id is None or salon.state == SalonState.UNINSTALLED \
                or bound_user != salon.owner_user_id:
            # A new binding (or the first): every token of an earlier one ends.
            bound["consent_id"] = new_consent_id()
        try:
            salon = store.transitions.apply(Transition(
                salon_id, SalonState.PENDING_WHATSAPP, actor="redirect", reason="owner consent",
                attrs={**profile, **consent, **NO_CODES, **bound}, guard=guard, seen=salon,
                # Only from the state read: a consent that raced this one (a double press) and
                # started the attempt first is joined below, never overwritten with a new consent.
                expected=[salon.state if salon is not None else None] if "consent_id" in bound else None,
            ))
        except IllegalTransition:
            if not _rejoin:
                raise
            return start_onboarding(store, salon_id, user, now, marketplace_status, _rejoin=False)  # read again
        store.sessions.request(salon_id, "link")
        return salon
    if user_id is not None and not salon.owner_user_id:
        # The salon's first binding: the tokens of the consents that bound nobody end with it.
        bound_salon = store.salons.bind_owner(salon_id, user_id, new_consent_id())
        if bound_salon is None:  # bound by someone else meanwhile: refused and recorded (or joined)
            bound_salon = store.salons.get(salon_id)
            guard(bound_salon)
        salon = bound_salon or salon
    elif salon.consent_id is None:
        # Recorded before consents had ids: this consent gives it one (tokens without one end).
        salon = store.salons.update_profile(salon_id, {"consent_id": new_consent_id()})
    if salon.state == SalonState.ACTIVATION_FAILED or (
            salon.state in REACTIVATED_WHEN_PENDING and marketplace_status == "pending"):
        # A new consent opens a new hour; the runner owning the linked session activates again.
        # Active here but pending in YClients: the app was reinstalled without an uninstall
        # webhook reaching us (a test stand sends none). The linked device stays; its key is
        # sent again (were YClients' status merely stale, it answers "already installed").
        if salon.state != SalonState.ACTIVATION_FAILED:
            reason = "owner reconnected a frozen salon" if salon.state == SalonState.FROZEN \
                else "YClients reports the app pending again"
            salon = store.transitions.apply(Transition(
                salon_id, SalonState.ACTIVATING, actor="redirect", reason=reason,
                attrs={**profile, **consent, "activation_owner": None, "activation_lock_until": None},
                expected=[salon.state], guard=guard, seen=salon))
        else:
            salon = store.salons.update_profile(salon_id, {**profile, **consent})
        store.sessions.request(salon_id, "run", renew_command=True)
        return salon
    if salon.state == SalonState.FROZEN and marketplace_status == "active":
        # Paid in YClients meanwhile (the payment webhook may come later or never).
        salon = store.transitions.apply(Transition(
            salon_id, SalonState.ACTIVE, actor="redirect", reason="active in YClients again", attrs=profile,
            expected=[SalonState.FROZEN], guard=guard, seen=salon))
        store.sessions.request(salon_id, "run", renew_command=True)
        return salon
    if salon.state in LINKING_STATES:
        # Pressing "Подключить" again is a new consent in YClients: its hour starts again.
        profile.update(consent)
    if profile:
        salon = store.salons.update_profile(salon_id, profile)
    if salon.state in LINKING_STATES and store.sessions.get(salon_id) is None:
        store.sessions.request(salon_id, "link")
    return salon


def _still_linked(store: Store, salon_id: int) -> bool:
    """Whether the salon's WhatsApp session is linked (the runner keeps it running)."""
    lease = store.sessions.get(salon_id)
    return lease is not None and lease.desired == "run"


def _readable(store: Store, salon_id: int, requester: Requester) -> Salon | None:
    """The salon, if `requester` may act on it; ConsentEnded if its token's consent ended."""
    salon = store.salons.get(salon_id)
    if salon is not None and not requester.may_act_on(salon):
        raise ConsentEnded(salon_id)
    return salon


def request_relink(store: Store, salon_id: int, now: float, requester: Requester,
                   kept: KeptSocket | None = None) -> Salon | None:
    """The owner explicitly asked, on the page and after a confirmation, to link the salon to a
    WhatsApp again (another phone, another number): a fresh linking attempt; the runner logs the
    old device out when it starts. None when the salon is not linked (nothing to re-link).
    Only the salon's own page can ask: the socket was opened with a token of the salon's consent.

    A re-link is also "sign out everywhere": it starts a new consent, so every older token ends
    and its sockets are closed; `kept`, the asking socket, moves onto the new consent in the same
    transaction (its page gets the new token from the caller)."""
    salon = _readable(store, salon_id, requester)
    if salon is None or salon.state not in RELINK_STATES:
        return None
    consent_id = new_consent_id()
    also = store.connections.reissue_items(kept.connection_id, salon_id, kept.slot, kept.token_exp, consent_id,
                                kept.token_id) if kept is not None else []
    # The activation after the new link confirms the integration YClients already has (its
    # "already installed" answer counts as success); its 12-hour bound starts now.
    return store.transitions.apply(Transition(
        salon_id, SalonState.PENDING_WHATSAPP, actor="owner", reason="owner asked to re-link",
        attrs={**NO_CODES, "consent_at": now, "activation_deadline": None, "consent_id": consent_id},
        expected=RELINK_STATES, command=SessionCommand("link"), guard=requester.check(salon_id), seen=salon,
        also=also))


def request_new_qr(store: Store, salon_id: int, requester: Requester) -> Salon | None:
    """The owner asked for a new QR code after the last attempt expired or was refused.
    None if not applicable. The new attempt and the runner's command are one transaction."""
    salon = _readable(store, salon_id, requester)
    if salon is None or salon.state not in RETRY_STATES:
        return None
    return store.transitions.apply(Transition(
        salon_id, SalonState.PENDING_WHATSAPP, actor="owner", reason="new QR requested", attrs=NO_CODES,
        expected=RETRY_STATES, command=SessionCommand("link"), guard=requester.check(salon_id), seen=salon))


def request_pairing_code(store: Store, salon_id: int, raw_phone: object, requester: Requester,
                         now: float | None = None,
                         min_interval: float = DEFAULT_PAIRING_MIN_INTERVAL_SECONDS) -> Salon | None:
    """The owner asked to link by phone number: a fresh attempt that asks WhatsApp for a
    pairing code for that number. None if not applicable in the salon's state.

    Raises InvalidPhone or PairingLimited (owner-facing messages), or ConsentEnded, before
    anything changes. A replay of the same request while it is still starting changes nothing
    and is not counted."""
    phone = normalise_phone(raw_phone)
    salon = _readable(store, salon_id, requester)
    if salon is None or salon.state not in PAIRING_CODE_STATES:
        return None
    if salon.state == SalonState.PENDING_WHATSAPP:
        lease = store.sessions.get(salon_id)
        if lease is not None and lease.desired == "link" and lease.pair_phone == phone:
            return salon
    moment = time.time() if now is None else now
    verdict = store.pairing.admit(salon_id, phone, moment, min_interval, PAIRING_PHONES_PER_HOUR,
                                          PAIRING_WINDOW_SECONDS)
    if not verdict.allowed:
        wait = max(1, math.ceil(verdict.retry_after))
        if verdict.reason == "interval":
            raise PairingLimited("pairing.interval", verdict.retry_after, seconds=wait)
        raise PairingLimited("pairing.hourly", verdict.retry_after, count=PAIRING_PHONES_PER_HOUR,
                             minutes=math.ceil(wait / 60))
    # The new attempt and the runner's command in one transaction: never one without the other.
    return store.transitions.apply(Transition(
        salon_id, SalonState.PENDING_WHATSAPP, actor="owner", reason="pairing code requested", attrs=NO_CODES,
        expected=PAIRING_CODE_STATES, command=SessionCommand("link", pair_phone=phone),
        guard=requester.check(salon_id), seen=salon))


def state_message(salon: Salon, now: float) -> str:
    """The JSON the page receives for a salon's current state (with the QR drawn as SVG)."""
    svg = render_svg(salon.qr) if salon.state == SalonState.QR_READY and salon.qr else None
    return StateMessage.of(salon, now, qr_svg=svg).model_dump_json()


__all__ = ["ACTIVATION_WINDOW_SECONDS", "MAX_LOCATIONS", "NO_CODES", "OPERATOR",
           "ConsentEnded", "ConsentRefused", "InvalidPhone", "KeptSocket", "Location", "PairingLimited", "Requester",
           "binding_refusal", "check_consent", "consenting_user", "new_consent_id", "request_new_qr",
           "request_pairing_code", "request_relink", "start_locations", "start_onboarding", "state_message"]
