"""This runner's membership: the one lease whose upkeep covers all its sessions.

The membership (`aiadmin.db.memberships`) is joined with a new epoch, renewed every
`renew_every` seconds on a thread of its own with its own DynamoDB client (slow activations,
pushes or hundreds of sessions' I/O never delay it), and checked locally before the runner
acts: `holds(now)` is true while the last confirmed renewal is more than `margin` seconds from
running out. Once it is not, the runner stops every session (`on_lapse`) before the others may
take them over (`grace` seconds after the expiry, by their clocks), and joins again with a new
epoch; its old sessions are then taken over like a dead runner's (by itself, or the others).

`step(now)` is the whole upkeep, for the thread's loop and for tests with a fake clock."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiadmin.db.memberships import Fence, Memberships
from aiadmin.observability import logger, metrics

# How often the keeper thread looks at the clock (a renewal is due, the membership lapsed).
TICK_SECONDS = 0.25
# After a failed renewal, the next try comes this soon (or at `renew_every`, if sooner).
RETRY_SECONDS = 1.0
# A changed status (the heartbeat's content) is written this soon, without waiting for the
# next renewal; an idle runner's status does not change, so it costs nothing then.
STATUS_SECONDS = 1.0


@dataclass(frozen=True)
class MembershipTimes:
    """All the membership's durations follow from its lease (RUNNER_LEASE_SECONDS)."""

    lease: float

    @property
    def renew_every(self) -> float:
        return self.lease / 6

    @property
    def margin(self) -> float:
        """The runner stops its sessions this long before its lease ends (its own clock)."""
        return self.lease / 5

    @property
    def grace(self) -> float:
        """The others wait this long after a lease ended before taking its sessions (clock skew)."""
        return self.lease / 10


class Membership:
    def __init__(self, members: Memberships, runner_id: str, lease_seconds: float,
                 status: Callable[[], Mapping[str, Any]] = dict,
                 on_lapse: Callable[[], None] = lambda: None) -> None:
        self._members = members
        self.runner_id = runner_id
        self.times = MembershipTimes(lease_seconds)
        self._status = status
        self._on_lapse = on_lapse
        self.epoch: int | None = None
        self.confirmed_until = 0.0   # the lease end of the last confirmed join or renewal
        self._last_try = 0.0
        self._failed = False
        self._written: Mapping[str, Any] | None = None  # the status the last renewal wrote
        # Set by the runner once every session of a lapsed membership is stopped.
        self.stopped_all = threading.Event()
        self._lapsed = False

    @property
    def fence(self) -> Fence:
        if self.epoch is None:
            raise RuntimeError("not a member yet")
        return Fence(self.runner_id, self.epoch)

    def holds(self, now: float) -> bool:
        """Whether the runner may act on its sessions now."""
        return self.epoch is not None and not self._lapsed and now < self.confirmed_until - self.times.margin

    def join(self, now: float) -> Fence:
        self.epoch = self._members.join(self.runner_id, now, self.times.lease, self._status())
        self.confirmed_until = now + self.times.lease
        self._last_try, self._failed, self._lapsed = now, False, False
        self.stopped_all.clear()
        logger.info("joined as a runner", extra={"runner_id": self.runner_id, "epoch": self.epoch})
        return self.fence

    def step(self, now: float) -> None:
        """Renew when due; on a lapse, have the runner stop everything, then join again."""
        if self.epoch is None:
            self._try(self.join, now)
            return
        if self._lapsed:
            if self.stopped_all.is_set():
                self._try(self.join, now)
            return
        if not self.holds(now):
            self._lapse(now)
            return
        status = dict(self._status())
        due = self._last_try + (min(RETRY_SECONDS, self.times.renew_every) if self._failed else self.times.renew_every)
        if status != self._written:
            due = min(due, self._last_try + STATUS_SECONDS)
        if now < due:
            return
        self._last_try = now
        try:
            renewed = self._members.renew(self.fence, now, self.times.lease, status)
        except Exception:
            logger.exception("membership renewal failed", extra={"runner_id": self.runner_id})
            metrics.add_metric(name="MembershipRenewalFailed", unit="Count", value=1)
            self._failed = True
            return
        self._failed = False
        if renewed:
            self._written = status
            # `now` was taken before the call: the lease may end earlier than written, never later.
            self.confirmed_until = max(self.confirmed_until, now + self.times.lease)
        else:
            self._lapse(now)  # expired or replaced in DynamoDB: never revived

    def leave(self, now: float) -> None:
        if self.epoch is not None:
            self._members.leave(self.fence, now)
            self._lapsed = True

    def _lapse(self, now: float) -> None:
        logger.error("membership lapsed: stopping every session", extra={
            "runner_id": self.runner_id, "epoch": self.epoch, "late_by": round(now - self.confirmed_until, 2)})
        metrics.add_metric(name="MembershipLapsed", unit="Count", value=1)
        self._lapsed = True
        self.stopped_all.clear()
        self._on_lapse()

    def _try(self, action: Callable[[float], object], now: float) -> None:
        if self._failed and now - self._last_try < RETRY_SECONDS:
            return
        self._last_try = now
        try:
            action(now)
            self._failed = False
        except Exception:
            logger.exception("membership join failed", extra={"runner_id": self.runner_id})
            self._failed = True


class MembershipKeeper(threading.Thread):
    """Runs `Membership.step` every TICK_SECONDS on its own thread until stopped."""

    def __init__(self, membership: Membership, clock: Callable[[], float]) -> None:
        super().__init__(name="membership", daemon=True)
        self._membership = membership
        self._clock = clock
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(TICK_SECONDS):
            try:
                self._membership.step(self._clock())
            except Exception:  # never let the keeper die: the runner would lapse silently
                logger.exception("membership step failed")
