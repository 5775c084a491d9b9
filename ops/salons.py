"""One salon's onboarding, for ops: what it is doing, and the two safe nudges (retry the
activation, start a new pairing). Plain functions over aiadmin's Store: sessions and runner
heartbeats are read through its functions (their item shapes are the store's business)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from aiadmin.db import Store
from aiadmin.onboarding import OPERATOR, request_new_qr
from aiadmin.states import (
    ACTIVATION_UNDER_WAY,
    FAILED_STATES,
    IN_PROGRESS_STATES,
    LINKED_STATES,
    LINKING_STATES,
    RETRY_STATES,
    SalonState,
)

S = SalonState
ACTOR = "ops"
# A heartbeat older than this means the runner is gone (the health check uses the same bound).
RUNNER_STALE_SECONDS = 60


class NotApplicable(RuntimeError):
    """The nudge does not apply to the salon in its state; the message says what would."""


def _last_activation_answer(salon: Any, events: list[dict[str, Any]]) -> str | None:
    if salon.activation_error:
        return f"refused: {salon.activation_error}"
    for event in events:  # newest first
        reason = str(event.get("reason") or "")
        if reason.startswith("YClients"):
            return reason
    return None


def status(store: Store, salon_id: int, now: float, events: int = 10) -> dict[str, Any] | None:
    """Everything ops need to see why a salon is where it is; None for an unknown salon."""
    salon = store.salons.get(salon_id)
    if salon is None:
        return None
    log = sorted(store.events.of(salon_id), key=lambda e: float(e.get("at") or 0), reverse=True)
    session = store.sessions.get(salon_id)
    heartbeats = {h["runner_id"]: float(h["at"]) for h in store.members.heartbeats()}
    owner: dict[str, Any] | None = None
    if session is not None:
        heartbeat = heartbeats.get(session.owner) if session.owner else None
        owner = {
            "desired": session.desired, "generation": session.generation, "runner": session.owner,
            "owner_epoch": session.owner_epoch,
            "runner_heartbeat_age_seconds": round(now - heartbeat, 1) if heartbeat is not None else None,
        }
    return {
        "salon_id": salon_id, "state": salon.state.value, "since": salon.updated_at,
        "for_seconds": round(now - salon.updated_at, 1), "by": salon.updated_by, "version": salon.version,
        "consent_at": salon.consent_at, "activation_deadline": salon.activation_deadline,
        "last_activation_answer": _last_activation_answer(salon, log),
        "session": owner,
        "events": [{"at": e.get("at"), "from": e.get("from_state"), "to": e.get("to_state"), "actor": e.get("actor"),
                    "reason": e.get("reason")} for e in log[:events]],
    }


def retry_activation(store: Store, salon_id: int, now: float) -> str:
    """Ask the owning runner to activate again (as the owner's next "Подключить" would)."""
    salon = store.salons.get(salon_id)
    if salon is None:
        raise NotApplicable(f"salon {salon_id} is unknown")
    if salon.state != S.ACTIVATION_FAILED:
        raise NotApplicable(f"salon {salon_id} is {salon.state.value}: only activation_failed is retried "
                            "(linking salons activate by themselves once linked)")
    if salon.activation_deadline is not None and now >= salon.activation_deadline:
        raise NotApplicable(f"the owner's hour for activation ended {round(now - salon.activation_deadline)} s ago: "
                            "YClients would refuse; the owner presses «Подключить» in YClients again")
    store.events.record(salon_id, ACTOR, "activation retry requested", now=now, state=salon.state)
    store.sessions.request(salon_id, "run", renew_command=True)
    return "activation retry requested: the runner owning the session activates within seconds"


def new_pairing(store: Store, salon_id: int, now: float) -> str:
    """A fresh linking attempt (new QR on the owner's page). Never for a linked salon: only the
    owner may re-link (they start over from YClients)."""
    salon = store.salons.get(salon_id)
    if salon is None:
        raise NotApplicable(f"salon {salon_id} is unknown")
    if salon.state in RETRY_STATES:
        request_new_qr(store, salon_id, OPERATOR)
        return "new pairing started (the page shows a new QR)"
    if salon.state in LINKING_STATES:
        store.events.record(salon_id, ACTOR, "new pairing requested", now=now, state=salon.state)
        store.sessions.request(salon_id, "link")  # a new generation: the owner restarts the attempt
        return "new pairing started (the running attempt is replaced)"
    if salon.state in LINKED_STATES:
        raise NotApplicable(f"salon {salon_id} is {salon.state.value}: its WhatsApp is linked, and only its "
                            "owner may link it again (from YClients, «Подключить»)")
    raise NotApplicable(f"salon {salon_id} is {salon.state.value}: a new pairing needs the owner's consent: "
                        "they press «Подключить» in YClients")


@dataclass
class Stuck:
    salon_id: int
    state: str
    for_seconds: float
    updated_by: str
    hint: str


def _hint(state: SalonState) -> str:
    if state == S.ACTIVATION_FAILED:
        return "read the refusal (status); fix, then retry-activation"
    if state in LINKING_STATES:
        return "status (is a runner owning it?); new-pairing"
    if state in ACTIVATION_UNDER_WAY:
        return "status (runner, YClients' answers); YClients reachable? (doctor)"
    return "the owner starts over from YClients («Подключить»)"


@dataclass
class StuckQuery:
    in_progress_seconds: float = 600
    failed_within_seconds: float = 7 * 24 * 3600


def stuck(store: Store, now: float, query: StuckQuery | None = None) -> list[Stuck]:
    """Salons in progress for too long, and salons that failed recently, longest first."""
    query = query or StuckQuery()
    found = []
    for salon in store.salons.all():
        age = now - salon.updated_at
        late = salon.state in IN_PROGRESS_STATES and age >= query.in_progress_seconds
        failed = salon.state in FAILED_STATES and age <= query.failed_within_seconds
        if late or failed:
            found.append(Stuck(salon.salon_id, salon.state.value, round(age, 1), salon.updated_by, _hint(salon.state)))
    return sorted(found, key=lambda s: -s.for_seconds)

