"""YClients lifecycle events applied to a salon: the state change and the runner command."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiadmin.models import SessionDesire
from aiadmin.states import IllegalTransition, SalonState
from aiadmin.store import ConcurrentUpdate, Store

ACTOR = "yclients"
_TARGETS: dict[str, tuple[SalonState, SessionDesire]] = {
    "uninstall": (SalonState.UNINSTALLED, "stop"),
    "freeze": (SalonState.FROZEN, "pause"),
}


def apply_lifecycle_event(store: Store, salon_id: int, event: str, details: Mapping[str, Any] | None = None) -> str:
    """Returns what happened: `uninstalled`, `frozen`, `active` (a payment unfroze the salon),
    `unchanged` or `recorded` (kept in the salon's event log, no state change).

    Idempotent: a repeated event finds the salon already in the target state."""
    salon = store.get_salon(salon_id)
    if event == "payment":
        # A payment ends a freeze (the bot resumes on the kept session); otherwise it is only recorded.
        if salon is not None and salon.state == SalonState.FROZEN:
            try:
                store.transition(salon_id, SalonState.ACTIVE, ACTOR, "payment received", expected=[SalonState.FROZEN])
            except (IllegalTransition, ConcurrentUpdate):
                return "unchanged"
            store.request_session(salon_id, "run")
            return SalonState.ACTIVE.value
        if salon is not None:
            store.record_event(salon_id, ACTOR, "payment", details)
        return "recorded"
    if event not in _TARGETS:
        if salon is not None:
            store.record_event(salon_id, ACTOR, f"unknown lifecycle event {event[:50]}", details)
        return "recorded"
    target, desired = _TARGETS[event]
    if salon is None or salon.state == target:
        return "unchanged"
    try:
        # Uninstalled: the salon's API key and webhook URL die with it; a reinstall gets new ones.
        attrs = {"api_key": None, "webhook_secret": None} if target == SalonState.UNINSTALLED else None
        store.transition(salon_id, target, actor=ACTOR, reason=f"lifecycle {event}", attrs=attrs)
    except IllegalTransition:
        return "unchanged"
    if store.get_session(salon_id) is not None:
        store.request_session(salon_id, desired)
    return target.value
