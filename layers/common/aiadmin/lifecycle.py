"""YClients lifecycle events applied to a salon: the state change and the runner command,
written together in one transaction."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiadmin.db import Store
from aiadmin.db.pairing import PAIRING_SK
from aiadmin.db.salon_secrets import SECRETS_SK
from aiadmin.db.sessions import SessionCommand
from aiadmin.db.transitions import ConcurrentUpdate, Transition
from aiadmin.models import SessionDesire
from aiadmin.onboarding import NO_CODES, new_consent_id
from aiadmin.states import IllegalTransition, SalonState

ACTOR = "yclients"
_TARGETS: dict[str, tuple[SalonState, SessionDesire]] = {
    "uninstall": (SalonState.UNINSTALLED, "stop"),
    "freeze": (SalonState.FROZEN, "pause"),
}
# The owner's personal data we may hold (from `user_data`): removed on uninstall. The names
# of every version of the salon item are listed; removing an absent attribute is harmless.
OWNER_PERSONAL_FIELDS = ("user_name", "user_phone", "user_email", "owner_name", "owner_phone", "owner_email")


def apply_lifecycle_event(store: Store, salon_id: int, event: str, details: Mapping[str, Any] | None = None) -> str:
    """Returns what happened: `uninstalled`, `frozen`, `active` (a payment unfroze the salon),
    `unchanged` or `recorded` (kept in the salon's event log, no state change).

    Idempotent: a repeated event finds the salon already in the target state and answers as
    the first delivery did, changing nothing. Uninstall also
    forgets what the salon no longer needs (aiadmin.db has the TTL of what is left): the
    owner's name, phone and email, the codes on screen, the API key and webhook secret, the
    pairing-limit item and the session's `pair_phone`; the runner logs the session out and
    deletes its WhatsApp keys. It also ends the salon's consent: every token issued for it is
    refused from then on, and its open sockets are closed by the push of this change."""
    salon = store.salons.get(salon_id)
    if event == "payment":
        # A payment ends a freeze (the bot resumes on the kept session); otherwise it is only recorded.
        if salon is not None and salon.state == SalonState.FROZEN:
            try:
                store.transitions.apply(Transition(
                    salon_id, SalonState.ACTIVE, ACTOR, "payment received", expected=[SalonState.FROZEN],
                    command=SessionCommand("run")))
            except (IllegalTransition, ConcurrentUpdate):
                return "unchanged"
            return SalonState.ACTIVE.value
        if salon is not None:
            store.events.record(salon_id, ACTOR, "payment", details, state=salon.state)
        return "recorded"
    if event not in _TARGETS:
        if salon is not None:
            store.events.record(salon_id, ACTOR, f"unknown lifecycle event {event[:50]}", details, state=salon.state)
        return "recorded"
    target, desired = _TARGETS[event]
    if salon is None:
        return "unchanged"
    if salon.state == target:
        # A replay (or a repeat) finds its work done: the same answer as the first delivery.
        return target.value
    # A salon that never had a session gets no command (it would only make a runner claim nothing).
    command = SessionCommand(desired) if store.sessions.get(salon_id) is not None else None
    uninstall = target == SalonState.UNINSTALLED
    try:
        # Uninstalled: the consent ends, and with it every token of the salon: its open pages get
        # this state as their last message and are closed (`aiadmin.push`).
        store.transitions.apply(Transition(
            salon_id, target, actor=ACTOR, reason=f"lifecycle {event}", command=command,
            attrs={**NO_CODES, "consent_id": new_consent_id()} if uninstall else {},
            remove=OWNER_PERSONAL_FIELDS if uninstall else (), forget=(SECRETS_SK, PAIRING_SK) if uninstall else ()))
    except IllegalTransition:
        return "unchanged"
    return target.value
