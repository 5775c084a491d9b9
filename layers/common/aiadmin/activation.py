"""Activating the integration in YClients once the salon's WhatsApp is linked.

The rules (issue 3, ../shared/yclients-protocol.md §2):
- success: 201, or 403 "already installed" (a repeated call after the link is active);
- permanent failure: 400 ("Агрегатор не найден"), 401, 403, 404, 422 -> `activation_failed`,
  an event, the `ActivationFailed` metric ops alarm on;
- anything else (5xx, 429, timeouts, HTML, `success: false` in a 2xx) is retried with
  exponential backoff and jitter while the owner's hour lasts, then `expired_consent`;
- exactly one process activates a salon at a time: the move to `activating` is a conditional
  write, and while activating the salon carries an activation lock that the activating
  process renews before every call (a crashed runner's lock expires; another resumes).

No AWS in here: it takes a `Store` and a `YClientsClient`; waiting is the caller's `wait`,
so a stopping runner can interrupt a backoff at once.
"""

from __future__ import annotations

import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from aiadmin.models import Salon
from aiadmin.observability import logger, metrics
from aiadmin.states import IllegalTransition, SalonState
from aiadmin.store import ConcurrentUpdate, Store
from aiadmin.yclients import ActivationOutcome, YClientsClient

S = SalonState
# States from which a linked salon is (re)activated.
ACTIVATABLE_STATES = frozenset({S.WHATSAPP_CONNECTED, S.ACTIVATION_FAILED})


class ActivationEnd(StrEnum):
    ACTIVE = "active"
    FAILED = "failed"            # permanent refusal: activation_failed
    EXPIRED = "expired"          # the hour ran out: expired_consent
    BUSY = "busy"                # another process is activating this salon
    NOT_APPLICABLE = "not_applicable"
    INTERRUPTED = "interrupted"  # the caller stopped us, or the salon moved on (uninstall, logout)


@dataclass(frozen=True)
class ActivationPolicy:
    first_delay: float = 1.0
    max_delay: float = 60.0
    lock_seconds: float = 120.0
    channels: tuple[str, ...] = ("whatsapp",)


def webhook_url(public_base_url: str, salon_id: int, webhook_secret: str) -> str:
    """The per-salon entity webhook URL registered at activation: its secret authenticates YClients."""
    return f"{public_base_url.rstrip('/')}/webhook/yclients/{salon_id}/{webhook_secret}"


def backoff_delay(attempt: int, policy: ActivationPolicy, retry_after: float | None = None,
                  rng: random.Random | None = None) -> float:
    """Exponential backoff with jitter (between half and all of the step), never shorter than
    YClients' Retry-After."""
    ceiling = min(policy.max_delay, policy.first_delay * 2 ** (attempt - 1))
    delay = (rng or random).uniform(ceiling / 2, ceiling)
    return max(delay, retry_after or 0.0)


def _new_secrets() -> dict[str, str]:
    """A salon's API key for YClients and the secret of its entity webhook URL."""
    return {"api_key": secrets.token_urlsafe(32), "webhook_secret": secrets.token_urlsafe(24)}


class Activator:
    """Runs one salon's activation to its end. `notify` receives every state change (the
    runner pushes it to the open pages)."""

    def __init__(self, store: Store, client: YClientsClient, public_base_url: str, owner: str,
                 policy: ActivationPolicy | None = None, notify: Callable[[Salon], None] = lambda _s: None,
                 clock: Callable[[], float] = time.time, actor: str = "runner") -> None:
        self._store = store
        self._client = client
        self._public_base_url = public_base_url
        self._owner = owner
        self._policy = policy or ActivationPolicy()
        self._notify = notify
        self._clock = clock
        self._actor = actor

    def run(self, salon_id: int, wait: Callable[[float], bool]) -> ActivationEnd:
        """`wait(seconds)` sleeps and returns False when the caller wants to stop."""
        started = self._begin(salon_id)
        if not isinstance(started, Salon):
            return started
        salon = started
        secrets_ = self._store.get_salon_secrets(salon_id)
        if not {"api_key", "webhook_secret"} <= secrets_.keys():
            # Entered `activating` from elsewhere (an unfrozen salon) without keys yet.
            secrets_ = _new_secrets()
            self._store.put_salon_secrets(salon_id, secrets_)
        url = webhook_url(self._public_base_url, salon_id, secrets_["webhook_secret"])
        attempt = 0
        while True:
            attempt += 1
            now = self._clock()
            if salon.activation_deadline is not None and now >= salon.activation_deadline:
                if not self._finish(salon_id, S.EXPIRED_CONSENT, "the hour for activation passed"):
                    return ActivationEnd.INTERRUPTED
                metrics.add_metric(name="ActivationExpired", unit="Count", value=1)
                return ActivationEnd.EXPIRED
            if not self._store.hold_activation(salon_id, self._owner, now, self._policy.lock_seconds):
                logger.warning("activation lock lost", extra={"salon_id": salon_id})
                return ActivationEnd.INTERRUPTED
            result = self._client.activate(salon_id, secrets_["api_key"], [url], list(self._policy.channels))
            if result.outcome in (ActivationOutcome.ACTIVATED, ActivationOutcome.ALREADY_ACTIVE):
                if not self._finish(salon_id, S.ACTIVE, f"YClients answered {result.status}"):
                    return ActivationEnd.INTERRUPTED
                metrics.add_metric(name="Activated", unit="Count", value=1)
                return ActivationEnd.ACTIVE
            if result.outcome == ActivationOutcome.PERMANENT_FAILURE:
                refusal = f"{result.status} {result.message}"[:300]
                if not self._finish(salon_id, S.ACTIVATION_FAILED, f"YClients refused: {refusal}",
                                    {"activation_error": refusal}):
                    return ActivationEnd.INTERRUPTED
                metrics.add_metric(name="ActivationFailed", unit="Count", value=1)
                logger.error("activation failed permanently", extra={"salon_id": salon_id, "refusal": refusal})
                return ActivationEnd.FAILED
            delay = backoff_delay(attempt, self._policy, result.retry_after)
            if salon.activation_deadline is not None:
                delay = min(delay, max(0.0, salon.activation_deadline - self._clock()))
            metrics.add_metric(name="ActivationRetried", unit="Count", value=1)
            logger.warning("activation failed, will retry", extra={
                "salon_id": salon_id, "attempt": attempt, "status": result.status,
                "yclients_message": result.message[:200], "retry_in_seconds": round(delay, 2)})
            if not wait(delay):
                return ActivationEnd.INTERRUPTED

    def _begin(self, salon_id: int) -> Salon | ActivationEnd:
        """Move to `activating` (new secrets) or take over an activation whose lock expired."""
        salon = self._store.get_salon(salon_id)
        if salon is None:
            return ActivationEnd.NOT_APPLICABLE
        now = self._clock()
        if salon.state in ACTIVATABLE_STATES:
            attrs = {
                "activation_owner": self._owner, "activation_lock_until": now + self._policy.lock_seconds,
                "activation_error": None,
            }
            try:
                # Conditional on the state read: of two concurrent triggers, one wins, the other sees a change.
                salon = self._store.transition(salon_id, S.ACTIVATING, self._actor, "activating in YClients",
                                               attrs, expected=[salon.state], salon_secrets=_new_secrets())
            except (IllegalTransition, ConcurrentUpdate):
                return ActivationEnd.BUSY
        elif salon.state == S.ACTIVATING:
            if not self._store.hold_activation(salon_id, self._owner, now, self._policy.lock_seconds):
                return ActivationEnd.BUSY
        else:
            return ActivationEnd.NOT_APPLICABLE
        self._notify(salon)
        return salon

    def _finish(self, salon_id: int, state: SalonState, reason: str, attrs: dict[str, object] | None = None) -> bool:
        """The final transition; False when the salon moved on meanwhile (uninstalled, unlinked,
        frozen): that newer state stands."""
        try:
            salon = self._store.transition(salon_id, state, self._actor, reason,
                                           {**(attrs or {}), "activation_owner": None, "activation_lock_until": None},
                                           expected=[S.ACTIVATING])
        except (IllegalTransition, ConcurrentUpdate):
            return False
        self._notify(salon)
        return True
