"""Claims, takeovers and hand-overs between runners, each runner built from its parts on one
moto table, with an in-memory engine and a fake clock (the tests call the steps)."""

from __future__ import annotations

import asyncio
from collections import Counter

from aiadmin.db import Store
from aiadmin.states import SalonState
from tests.unit.runner_fakes import (
    LEASE,
    FakeClock,
    claim_all,
    engine_of,
    handle,
    linked_sessions,
    live_through,
    make_runner,
    put_salon,
    resume_and_connect,
)
from wa_runner.engine import EventKind
from wa_runner.runner import RunnerLimits


def test_new_linking_attempts_are_claimed_first_and_each_runner_keeps_to_its_bounds(store: Store) -> None:
    clock = FakeClock()
    limits = RunnerLimits(max_pairings=1, resume_concurrency=1)  # resume backlog: 10
    a, b = make_runner(store, clock, runner_id="a", limits=limits), make_runner(store, clock, runner_id="b",
                                                                                 limits=limits)
    a.membership.join(clock.now)
    b.membership.join(clock.now)
    linked_sessions(store, range(1, 41))       # a mass resume waiting
    for salon_id in (100, 104):                # then two owners press "Подключить" (same shard)
        put_salon(store, salon_id, SalonState.PENDING_WHATSAPP)
        store.sessions.request(salon_id, "link")

    async def scenario() -> None:
        await a.claimer.claim_step(clock.now)  # shard 0: the linking attempt first, then resumes
        assert 100 in a.book and a.pairings_in_flight() == 1
        assert 104 not in a.book   # over a's pairing bound: left for another runner
        await claim_all(a, clock)
        assert a.resumes.waiting() == limits.resume_backlog  # no more than it can start soon
        await claim_all(b, clock)
        assert 104 in b.book
        assert b.resumes.waiting() == limits.resume_backlog

    asyncio.run(scenario())
    assert not a.book.salon_ids() & b.book.salon_ids()
    assert engine_of(a).sessions.keys() == {100} and engine_of(b).sessions.keys() == {104}


def test_a_mass_resume_is_claimed_at_every_poll_and_a_linking_attempt_still_goes_first(store: Store) -> None:
    """While resumes wait, every claim poll also takes a resume shard (not one poll in four), and
    a linking attempt that arrives meanwhile is claimed at the very next poll."""
    clock = FakeClock()
    runner = make_runner(store, clock, limits=RunnerLimits(resume_concurrency=10))  # resume backlog: 100
    runner.membership.join(clock.now)
    linked_sessions(store, range(1, 81))  # 20 in each of the 4 resume shards

    async def scenario() -> None:
        claimed = [await runner.claimer.claim_step(clock.now) for _ in range(4)]
        assert claimed == [0, 0, 0, 20]  # idle rhythm until the first resume shard's turn
        put_salon(store, 200, SalonState.PENDING_WHATSAPP)
        store.sessions.request(200, "link")
        assert await runner.claimer.claim_step(clock.now) == 21  # the linking attempt and the next shard
        assert 200 in runner.book and runner.pairings_in_flight() == 1
        assert [await runner.claimer.claim_step(clock.now) for _ in range(2)] == [20, 20]
        assert runner.resumes.waiting() == 80
        assert await runner.claimer.claim_step(clock.now) == 0  # seen empty: back to the idle rhythm

    asyncio.run(scenario())


def test_a_mass_resume_reads_the_salons_once_per_claim_page(store: Store) -> None:
    """Each claimed linked session is one conditional write; its salon is read with the others
    of its claim page, so connecting it costs no read of its own."""
    clock = FakeClock()
    runner = make_runner(store, clock, limits=RunnerLimits(resume_concurrency=10))
    runner.membership.join(clock.now)
    linked_sessions(store, range(1, 41))
    linked_sessions(store, [41], state=SalonState.WHATSAPP_CONNECTED)  # its activation was cut short
    calls: Counter[str] = Counter()
    store.table.meta.client.meta.events.register("before-call.dynamodb.*",
                                                 lambda model, **_: calls.update([model.name]))

    async def scenario() -> None:
        await claim_all(runner, clock)
        await resume_and_connect(runner, clock)
        runner.activations.join(5)

    asyncio.run(scenario())
    assert runner.status()["phases"] == {"connected": 41}
    assert calls["BatchGetItem"] == 4  # one per claim page (the 4 resume shards)
    # No per-session read: the only single reads are the activation's of salon 41.
    assert calls["GetItem"] <= 10
    salon = store.salons.get(41)
    assert salon is not None and salon.state == SalonState.ACTIVE


def test_a_dead_runners_sessions_are_taken_over_after_its_lease_and_grace(store: Store) -> None:
    clock = FakeClock()
    dead, survivor = make_runner(store, clock, runner_id="dead"), make_runner(store, clock, runner_id="survivor")
    dead.membership.join(clock.now)
    linked_sessions(store, range(1, 6))

    async def scenario() -> None:
        await claim_all(dead, clock)
        await resume_and_connect(dead, clock)
        assert len(dead.book) == 5
        # SIGKILL: no more renewals. The survivor keeps renewing and looks.
        survivor.membership.join(clock.now)
        live_through(clock, LEASE, survivor)
        assert await survivor.claimer.takeover_step(clock.now) == 0  # within the grace: maybe only slow
        live_through(clock, survivor.membership.times.grace + 0.1, survivor)
        assert await survivor.claimer.takeover_step(clock.now) == 5
        await resume_and_connect(survivor, clock)

    asyncio.run(scenario())
    assert survivor.status()["phases"] == {"connected": 5}
    owners = store.sessions.get_many(range(1, 6))
    assert {(lease.owner, lease.owner_epoch) for lease in owners.values()} == {("survivor", 1)}
    # Nothing left of the dead runner: its membership is forgotten at the next look.
    asyncio.run(survivor.claimer.takeover_step(clock.now))
    assert {m.runner_id for m in store.members.all()} == {"survivor"}


def test_sigterm_hands_every_session_over_at_once(store: Store) -> None:
    clock = FakeClock()
    leaving, staying = make_runner(store, clock, runner_id="leaving"), make_runner(store, clock, runner_id="staying")
    leaving.membership.join(clock.now)
    staying.membership.join(clock.now)
    linked_sessions(store, range(1, 31))

    async def scenario() -> None:
        await claim_all(leaving, clock)
        await resume_and_connect(leaving, clock)
        await claim_all(leaving, clock)
        await resume_and_connect(leaving, clock)
        assert len(leaving.book) == 30
        await leaving._shutdown()
        assert engine_of(leaving).sessions == {}  # stopped, all of them
        # Claimable now, without waiting for any lease: the other runner takes them at its next polls.
        for _ in range(3):
            await claim_all(staying, clock)
            await resume_and_connect(staying, clock)

    asyncio.run(scenario())
    assert staying.status()["phases"] == {"connected": 30}
    [gone] = [m for m in store.members.all() if m.runner_id == "leaving"]
    assert gone.left


def test_a_frozen_runner_wakes_up_without_acting_on_sessions_it_lost(store: Store) -> None:
    """SIGSTOP at unit level: the frozen runner's clock jumps when it wakes; it acts on nothing
    before it has stopped everything, and never writes over the new owner."""
    clock = FakeClock()
    frozen, other = make_runner(store, clock, runner_id="frozen"), make_runner(store, clock, runner_id="other")
    frozen.membership.join(clock.now)
    linked_sessions(store, [1, 2])
    put_salon(store, 3, SalonState.PENDING_WHATSAPP)
    store.sessions.request(3, "link")

    async def scenario() -> None:
        await claim_all(frozen, clock)
        await resume_and_connect(frozen, clock)
        assert engine_of(frozen).sessions.keys() == {1, 2, 3}
        other.membership.join(clock.now)
        live_through(clock, LEASE + other.membership.times.grace + 1, other)  # frozen all along
        assert await other.claimer.takeover_step(clock.now) == 3
        await resume_and_connect(other, clock)
        # The frozen runner wakes: events and supervision first, before its membership thread runs.
        engine_of(frozen).crash(1)
        await handle(frozen, EventKind.QR, 3, code="stale-qr", expires_at=clock.now + 20)
        await frozen.restart_crashed(clock.now)
        await frozen.resumes.step(clock.now)
        await frozen.claimer.claim_step(clock.now)
        await frozen.intake.poll(clock.now)
        assert engine_of(frozen).starts(1) == 1  # not restarted
        frozen.membership.step(clock.now)  # the lapse is seen: everything stops
        await frozen._lapsed()
        assert engine_of(frozen).sessions == {}
        frozen.membership.step(clock.now + 1)  # joins again, with a new epoch and nothing of its own
        await frozen.intake.reconcile(clock.now + 1)
        assert len(frozen.book) == 0

    asyncio.run(scenario())
    salon = store.salons.get(3)
    assert salon is not None and salon.qr != "stale-qr"
    owners = store.sessions.get_many([1, 2, 3])
    assert {lease.owner for lease in owners.values()} == {"other"}
