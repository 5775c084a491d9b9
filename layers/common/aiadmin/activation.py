"""Activating the integration in YClients once the salon's WhatsApp is linked.

The rules (issue 3, ../shared/yclients-protocol.md §2):
- success: 201, or 403 "already installed" (a repeated call after the link is active);
- permanent failure: 400 ("Агрегатор не найден"), 401, 403, 404, 422 -> `activation_failed`,
  an event, the `ActivationFailed` metric ops alarm on;
- anything else (5xx, 429, timeouts, HTML, `success: false` in a 2xx) is retried with
  exponential backoff and jitter for as long as YClients keeps the consent pending: YClients'
  help pages say one hour, the platform's own notes 12 hours (7 days for some apps), so YClients
  decides, not our clock (issue 10). Within the owner's hour we just retry; past it, YClients
  is asked for the app's status every `status_check_seconds`, and once it no longer reports
  the app pending or active (the consent lapsed, the app was removed) the salon ends in
  `expired_consent`. 12 hours after the consent we stop anyway (`cap_seconds`), also
  `expired_consent`; the first call is always made, whatever the time;
- a refusal (the statuses above) is YClients' own answer and ends the activation at once: in
  `expired_consent` when YClients then no longer reports the app pending or active (the consent
  lapsed), in `activation_failed` otherwise;
- only the runner that owns the salon's session activates it: every write of the activation is
  fenced on the session (`Transition.fence`), and before every call to YClients the
  fence is checked again (`Transitions.hold_activation`). A runner that takes a session over mid-
  activation (its owner died) finds the salon `activating` and finishes the activation itself.

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

from aiadmin.db import Store
from aiadmin.db.memberships import Fence
from aiadmin.db.transitions import ConcurrentUpdate, LeaseLost, Transition
from aiadmin.models import Salon
from aiadmin.observability import logger, metrics
from aiadmin.states import ACTIVATABLE_STATES, IllegalTransition, SalonState
from aiadmin.yclients import ActivationOutcome, PartnerApiError, YClientsClient

S = SalonState
# YClients' help pages give the owner an hour; past it we ask YClients whether it still waits.
OWNER_HOUR_SECONDS = 3600.0
# App statuses in which YClients still accepts the activation (active: "already installed").
_STILL_WAITING = frozenset({"pending", "active"})
# How often the move to `activating` is tried when the salon changed between its read and write.
_BEGIN_ATTEMPTS = 3


class ActivationEnd(StrEnum):
    ACTIVE = "active"
    FAILED = "failed"            # permanent refusal: activation_failed
    EXPIRED = "expired"          # YClients no longer waits, or 12 hours passed: expired_consent
    BUSY = "busy"                # the salon's session is not ours: its owner activates it
    NOT_APPLICABLE = "not_applicable"
    INTERRUPTED = "interrupted"  # the caller stopped us, or the salon moved on (uninstall, logout)


@dataclass(frozen=True)
class ActivationPolicy:
    first_delay: float = 1.0
    max_delay: float = 60.0
    # Channels declared to YClients at activation: none unless `YCLIENTS_CHANNELS` names some
    # (declaring `whatsapp` offers YClients' client notifications to us).
    channels: tuple[str, ...] = ()
    # The longest we keep trying after the owner's consent, whatever YClients says.
    cap_seconds: float = 12 * 3600.0
    # Past the owner's hour, how often YClients is asked whether the consent is still pending.
    status_check_seconds: float = 300.0


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
    """Runs one salon's activation to its end, on behalf of the runner membership `fence`
    returns (the session's owner). `notify` receives every state change (the runner pushes it
    to the open pages)."""

    def __init__(self, store: Store, client: YClientsClient, public_base_url: str, fence: Callable[[], Fence],
                 policy: ActivationPolicy | None = None, notify: Callable[[Salon], None] = lambda _s: None,
                 clock: Callable[[], float] = time.time, actor: str = "runner") -> None:
        self._store = store
        self._client = client
        self._public_base_url = public_base_url
        self._fence = fence
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
        secrets_ = self._store.secrets.get(salon_id)
        if not {"api_key", "webhook_secret"} <= secrets_.keys():
            # Entered `activating` from elsewhere (an unfrozen salon) without keys yet.
            secrets_ = _new_secrets()
            self._store.secrets.put(salon_id, secrets_)
        url = webhook_url(self._public_base_url, salon_id, secrets_["webhook_secret"])
        consent_at = salon.consent_at if salon.consent_at is not None else self._clock()
        cap = consent_at + self._policy.cap_seconds
        hour_ends = salon.activation_deadline or consent_at + OWNER_HOUR_SECONDS
        status_checked_at = -float("inf")
        attempt = 0
        while True:
            attempt += 1
            now = self._clock()
            if attempt > 1 and now >= cap:
                return self._expire(salon_id, "12 hours since the consent passed")
            if not self._store.transitions.hold_activation(salon_id, self._fence()):
                logger.warning("activation ended: the salon moved on or its session is no longer ours",
                               extra={"salon_id": salon_id})
                return ActivationEnd.INTERRUPTED
            result = self._client.activate(salon_id, secrets_["api_key"], [url], list(self._policy.channels))
            if result.outcome in (ActivationOutcome.ACTIVATED, ActivationOutcome.ALREADY_ACTIVE):
                if not self._finish(salon_id, S.ACTIVE, f"YClients answered {result.status}"):
                    return ActivationEnd.INTERRUPTED
                metrics.add_metric(name="Activated", unit="Count", value=1)
                return ActivationEnd.ACTIVE
            if result.outcome == ActivationOutcome.PERMANENT_FAILURE:
                refusal = f"{result.status} {result.message}"[:300]
                if self._consent_lapsed(salon_id) is True:
                    return self._expire(salon_id, f"YClients refused ({refusal}) and no longer has the app pending",
                                        {"activation_error": refusal})
                if not self._finish(salon_id, S.ACTIVATION_FAILED, f"YClients refused: {refusal}",
                                    {"activation_error": refusal}):
                    return ActivationEnd.INTERRUPTED
                metrics.add_metric(name="ActivationFailed", unit="Count", value=1)
                logger.error("activation failed permanently", extra={"salon_id": salon_id, "refusal": refusal})
                return ActivationEnd.FAILED
            now = self._clock()
            if now >= hour_ends and now - status_checked_at >= self._policy.status_check_seconds:
                status_checked_at = now
                if self._consent_lapsed(salon_id) is True:
                    return self._expire(salon_id, "YClients no longer has the app pending")
            delay = min(backoff_delay(attempt, self._policy, result.retry_after), max(0.0, cap - now))
            metrics.add_metric(name="ActivationRetried", unit="Count", value=1)
            logger.warning("activation failed, will retry", extra={
                "salon_id": salon_id, "attempt": attempt, "status": result.status,
                "yclients_message": result.message[:200], "retry_in_seconds": round(delay, 2)})
            if not wait(delay):
                return ActivationEnd.INTERRUPTED

    def _consent_lapsed(self, salon_id: int) -> bool | None:
        """Whether YClients no longer has our app pending (or active) in the salon; None when it
        cannot say (down, throttled): then we go on as if it still waited."""
        try:
            status = self._client.app_status(salon_id)
        except PartnerApiError as exc:
            logger.warning("app status unavailable during activation", extra={"salon_id": salon_id, "error": str(exc)})
            return None
        return status not in _STILL_WAITING

    def _expire(self, salon_id: int, reason: str, attrs: dict[str, object] | None = None) -> ActivationEnd:
        if not self._finish(salon_id, S.EXPIRED_CONSENT, reason, attrs):
            return ActivationEnd.INTERRUPTED
        metrics.add_metric(name="ActivationExpired", unit="Count", value=1)
        logger.error("activation expired", extra={"salon_id": salon_id, "reason": reason})
        return ActivationEnd.EXPIRED

    def _begin(self, salon_id: int) -> Salon | ActivationEnd:
        """Move to `activating` (new secrets), or go on with an activation under way: the salon is
        `activating` and its session ours (its previous owner died, or another process moved it
        there). BUSY when the session is not ours."""
        for _ in range(_BEGIN_ATTEMPTS):
            salon = self._store.salons.get(salon_id)
            if salon is None:
                return ActivationEnd.NOT_APPLICABLE
            if salon.state == S.ACTIVATING:
                if not self._store.transitions.hold_activation(salon_id, self._fence()):
                    return ActivationEnd.BUSY
            elif salon.state in ACTIVATABLE_STATES:
                # A salon keeps its key while it is installed: YClients may hold it already (a
                # retried or repeated activation is answered "already installed" and does not
                # replace it). Uninstalling removes it, so a reinstall gets a new one.
                kept = self._store.secrets.get(salon_id)
                try:
                    # Conditional on the state read: a change meanwhile is looked at again.
                    salon = self._store.transitions.apply(Transition(
                        salon_id, S.ACTIVATING, self._actor, "activating in YClients", attrs={"activation_error": None},
                        expected=[salon.state], fence=self._fence(), seen=salon,
                        secrets=None if {"api_key", "webhook_secret"} <= kept.keys() else _new_secrets()))
                except (IllegalTransition, ConcurrentUpdate):
                    continue
                except LeaseLost:
                    return ActivationEnd.BUSY
            else:
                return ActivationEnd.NOT_APPLICABLE
            self._notify(salon)
            return salon
        return ActivationEnd.NOT_APPLICABLE

    def _finish(self, salon_id: int, state: SalonState, reason: str, attrs: dict[str, object] | None = None) -> bool:
        """The final transition; False when the salon moved on meanwhile (uninstalled, unlinked,
        frozen): that newer state stands."""
        try:
            salon = self._store.transitions.apply(Transition(
                salon_id, state, self._actor, reason, attrs=attrs or {}, expected=[S.ACTIVATING], fence=self._fence()))
        except (IllegalTransition, ConcurrentUpdate):
            return False
        self._notify(salon)
        return True
