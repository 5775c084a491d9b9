"""YClients lifecycle events applied to a salon: the state change and the runner command."""

from __future__ import annotations

from aiadmin.models import SessionDesire
from aiadmin.states import IllegalTransition, SalonState
from aiadmin.store import Store


def apply_lifecycle_event(store: Store, salon_id: int, event: str) -> str:
    """Returns what happened: `uninstalled`, `frozen`, `unchanged` or `recorded`.

    Idempotent: a repeated event finds the salon already in the target state."""
    targets: dict[str, tuple[SalonState, SessionDesire]] = {
        "uninstall": (SalonState.UNINSTALLED, "stop"),
        "freeze": (SalonState.FROZEN, "pause"),
    }
    if event not in targets:
        return "recorded"
    target, desired = targets[event]
    salon = store.get_salon(salon_id)
    if salon is None or salon.state == target:
        return "unchanged"
    try:
        store.transition(salon_id, target, actor="yclients", reason=f"lifecycle {event}")
    except IllegalTransition:
        return "unchanged"
    if store.get_session(salon_id) is not None:
        store.request_session(salon_id, desired)
    return target.value
