"""The runner's membership with a fake clock (moto table): renewed only when due, a changed
status written soon, a lapse stops everything before joining again with a new epoch; slow or
failing DynamoDB within the lease costs nothing."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytest

from aiadmin.db import Store
from aiadmin.db.memberships import Fence, Memberships
from tests.unit.runner_fakes import LEASE, FakeClock
from wa_runner.membership import RETRY_SECONDS, Membership


class Counting(Memberships):
    """Counts renewals; a test can make them fail or take (fake) time."""

    def __init__(self, table: Any, clock: FakeClock) -> None:
        super().__init__(table)
        self.clock = clock
        self.renewals = 0
        self.failing = False
        self.call_seconds = 0.0

    def renew(self, fence: Fence, now: float, lease_seconds: float, status: Mapping[str, Any]) -> bool:
        self.renewals += 1
        self.clock.advance(self.call_seconds)  # the call takes that long
        if self.failing:
            raise ConnectionError("DynamoDB unreachable")
        return super().renew(fence, now, lease_seconds, status)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def dynamo(store: Store, clock: FakeClock) -> Counting:
    return Counting(store.table, clock)


def _run(membership: Membership, clock: FakeClock, seconds: float, tick: float = 0.25) -> None:
    end = clock.now + seconds
    while clock.now < end:
        membership.step(clock.now)
        clock.advance(tick)


def test_an_idle_membership_is_renewed_every_sixth_of_its_lease(dynamo: Counting, clock: FakeClock) -> None:
    membership = Membership(dynamo, "a", LEASE, status=lambda: {"sessions": 500})
    membership.join(clock.now)
    _run(membership, clock, 60)
    assert dynamo.renewals == pytest.approx(60 / (LEASE / 6), abs=1)
    assert membership.holds(clock.now)


def test_a_changed_status_is_written_within_a_second(dynamo: Counting, clock: FakeClock) -> None:
    status = {"sessions": 0}
    membership = Membership(dynamo, "a", LEASE, status=lambda: status)
    membership.join(clock.now)
    _run(membership, clock, 0.5)
    status = {"sessions": 1}
    _run(membership, clock, 1.25)
    [member] = dynamo.all()
    assert member.status == {"sessions": 1}


def test_a_lapse_stops_everything_before_joining_again(dynamo: Counting, clock: FakeClock) -> None:
    lapses: list[float] = []
    membership = Membership(dynamo, "a", LEASE, on_lapse=lambda: lapses.append(clock.now))
    first = membership.join(clock.now)
    dynamo.failing = True
    _run(membership, clock, LEASE)
    # Stopped acting a margin before the lease ends; the others wait a grace after it.
    assert len(lapses) == 1
    assert lapses[0] <= first_end(first, dynamo) - membership.times.margin + 0.25
    assert not membership.holds(clock.now)
    dynamo.failing = False
    _run(membership, clock, 5)
    assert membership.epoch == first.epoch  # no new epoch until every session is stopped
    membership.stopped_all.set()
    _run(membership, clock, 1)
    assert membership.epoch == first.epoch + 1 and membership.holds(clock.now)


def first_end(fence: Fence, dynamo: Memberships) -> float:
    [member] = [m for m in dynamo.all() if m.epoch == fence.epoch]
    return member.expires


def test_a_failed_renewal_is_tried_again_within_a_second(dynamo: Counting, clock: FakeClock) -> None:
    membership = Membership(dynamo, "a", LEASE)
    membership.join(clock.now)
    _run(membership, clock, LEASE / 6 + 0.25)
    dynamo.failing = True
    before = dynamo.renewals
    _run(membership, clock, 4)
    assert dynamo.renewals - before >= 4 / RETRY_SECONDS - 1
    dynamo.failing = False
    _run(membership, clock, 1.25)
    assert membership.holds(clock.now)  # 4 s of errors cost nothing


def test_dynamodb_answering_in_two_seconds_for_twenty_seconds_costs_nothing(dynamo: Counting,
                                                                            clock: FakeClock) -> None:
    lapses: list[float] = []
    membership = Membership(dynamo, "a", LEASE, on_lapse=lambda: lapses.append(clock.now))
    membership.join(clock.now)
    dynamo.call_seconds = 2.0
    slow_until = clock.now + 20
    while clock.now < slow_until:
        membership.step(clock.now)
        assert membership.holds(clock.now)
        clock.advance(0.25)
    dynamo.call_seconds = 0.0
    _run(membership, clock, 10)
    assert lapses == [] and membership.holds(clock.now)


def test_a_renewal_refused_by_dynamodb_is_a_lapse(dynamo: Counting, clock: FakeClock) -> None:
    lapses: list[float] = []
    membership = Membership(dynamo, "a", LEASE, on_lapse=lambda: lapses.append(clock.now))
    membership.join(clock.now)
    dynamo.join("a", clock.now, LEASE, {})  # another process joined under this id: our epoch is gone
    _run(membership, clock, LEASE / 6 + 0.5)
    assert len(lapses) == 1 and not membership.holds(clock.now)
