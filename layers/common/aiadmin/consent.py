"""An owner's consent, as YClients' redirect brings it: accepted only when `user_data` is signed
by YClients, no salon is bound to another user, and YClients confirms our app pending or active
in every salon (and, with the optional second check, that the user is one of the salon's users).
Then each location is onboarded. No AWS in the signatures: a `Store` and a YClients directory.

The checks run cheapest first and nothing is written before all have passed, but a refusal's
event on the salon's log: a forged link costs one HMAC, a refused user no call to YClients.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from aiadmin.db import Store
from aiadmin.models import Salon, UserData
from aiadmin.observability import logger, metrics
from aiadmin.onboarding import ConsentRefused, Location, check_consent, consenting_user, record_refusal, start_locations
from aiadmin.yclients import BadUserData, PartnerApiError, check_user_data

__all__ = ["BadUserData", "Consent", "ConsentRefused", "NotInstalled", "SalonDirectory", "YClientsUnavailable",
           "accept_consent"]

# YClients app states in which the owner may be onboarded.
INSTALLED_STATUSES = frozenset({"pending", "active"})


class SalonDirectory(Protocol):
    """What the consent asks YClients (`aiadmin.yclients.YClientsClient`)."""

    def app_status(self, salon_id: int) -> str | None: ...

    def salon_user_ids(self, salon_id: int) -> set[str] | None: ...


class YClientsUnavailable(Exception):
    """YClients could not say whether the salon has our app: nothing was written; try again."""

    def __init__(self, salon_id: int) -> None:
        super().__init__(f"salon {salon_id}: YClients app status unavailable")
        self.salon_id = salon_id


class NotInstalled(Exception):
    """YClients has our app neither pending nor active in the salon: nothing was written."""

    def __init__(self, salon_id: int, status: str | None) -> None:
        super().__init__(f"salon {salon_id}: app status {status}")
        self.salon_id = salon_id


@dataclass(frozen=True)
class Consent:
    """An accepted consent: the consenting user and each location's salon, onboarding."""

    user: UserData
    salons: list[Salon]


def accept_consent(store: Store, yclients: SalonDirectory, salon_ids: Sequence[int], user_data: str,
                   user_data_sign: str, signing_key: str, check_salon_users: bool = False,
                   clock: Callable[[], float] = time.time) -> Consent:
    """Check the consent and start onboarding its locations (the consent's time: `clock()` once
    YClients has confirmed them, which may take a wait for the rate limit). Raises BadUserData (a
    forged or unreadable link), ConsentRefused (recorded), YClientsUnavailable or NotInstalled;
    each leaves the salons as they were."""
    try:
        verified = check_user_data(user_data, user_data_sign, signing_key)
    except BadUserData as exc:
        logger.warning("redirect refused", extra={"reason": str(exc)})
        metrics.add_metric(name="RedirectRefused", unit="Count", value=1)
        raise
    # Which message YClients signed (the decoded bytes, as documented, or the string as sent).
    metrics.add_metric(name=f"UserDataSigned_{verified.form.value}", unit="Count", value=1)
    user = verified.user
    # Bindings first: a refused user costs no call to YClients. Each salon is read once, here.
    seen = check_consent(store, salon_ids, user)
    locations = [_confirm(store, yclients, salon_id, seen[salon_id], user, check_salon_users)
                 for salon_id in salon_ids]
    salons = start_locations(store, locations, user, clock(), seen)
    metrics.add_metric(name="RedirectAccepted", unit="Count", value=1)  # the funnel's first step
    return Consent(user, salons)


def _confirm(store: Store, yclients: SalonDirectory, salon_id: int, salon: Salon | None, user: UserData,
             check_salon_users: bool) -> Location:
    """`salon_id` is not signed: YClients must confirm our app pending or active in the salon."""
    try:
        status = yclients.app_status(salon_id)
    except PartnerApiError as exc:
        logger.warning("YClients app status unavailable", extra={"salon_id": salon_id, "error": str(exc)})
        raise YClientsUnavailable(salon_id) from exc
    if status not in INSTALLED_STATUSES:
        logger.warning("salon has no pending app", extra={"salon_id": salon_id, "status": status})
        raise NotInstalled(salon_id, status)
    if check_salon_users:
        _check_salon_user(store, yclients, salon_id, salon, user)
    return Location(salon_id, status or "pending")


def _check_salon_user(store: Store, yclients: SalonDirectory, salon_id: int, salon: Salon | None,
                      user: UserData) -> None:
    """The second, unverified check: refused only when YClients does list the salon's users and
    the consenting user is not among them; when it shows us none, the binding alone decides."""
    users = yclients.salon_user_ids(salon_id)
    if users is None:
        metrics.add_metric(name="SalonUsersUnavailable", unit="Count", value=1)
        return
    user_id = consenting_user(user)
    if user_id is None or user_id not in users:
        reason = "not a user of the salon in YClients"
        record_refusal(store, salon_id, salon, user_id, reason)
        raise ConsentRefused(salon_id, reason)
